import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StewardCluster } from '../harness/steward-cluster.js';
import { waitUntil } from '../harness/processes.js';

interface LsEntry {
  name: string;
  node: string;
  location: string;
  kind: string;
  created: string;
}

describe('scheduled snapshots and retention (3 stewards, per-second cron)', () => {
  let cluster: StewardCluster;
  const RETAIN = 3;
  const ls = async (): Promise<LsEntry[]> => {
    for (const node of cluster.nodes) {
      const result = await cluster.ctl(['--endpoint', node.grpc, '-o', 'json', 'ls']);
      if (result.code === 0) return JSON.parse(result.stdout) as LsEntry[];
    }
    throw new Error('no steward answered ls');
  };

  beforeAll(async () => {
    cluster = await StewardCluster.create({
      size: 3,
      electionTtl: '5s',
      extraArgs: ['--etcd-snapshot-schedule-cron=* * * * * *', `--etcd-snapshot-retention=${RETAIN}`, '--etcd-snapshot-reconcile-interval=3s'],
    });
    await cluster.startAll();
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('takes scheduled snapshots on the leader only and keeps exactly N per location', async () => {
    const { leader } = await cluster.waitForStableLeader(20_000);
    const leaderName = cluster.node(leader).name;
    const onDemand = await cluster.ctl(['--endpoint', cluster.node(leader).grpc, '-o', 'json', 'save']);
    expect(onDemand.code, onDemand.stderr).toBe(0);
    const keepMe = (JSON.parse(onDemand.stdout) as { name: string }).name;
    // Enough seconds for more than N scheduled snapshots, so retention has had to remove some.
    await waitUntil(
      'retention to have trimmed old scheduled snapshots',
      async () => {
        const logs = cluster.logs(leader);
        return (logs.match(/retention: removed an old scheduled snapshot/g)?.length ?? 0) >= 2;
      },
      30_000,
      500,
    );
    // A snapshot lands, then retention trims: between the two there may briefly be N+1, never more.
    const counts: number[] = [];
    const entries = await waitUntil(
      'exactly N scheduled snapshots in the leader dir',
      async () => {
        const all = await ls();
        const scheduled = all.filter((e) => e.kind === 'scheduled');
        expect(new Set(scheduled.map((e) => e.node))).toEqual(new Set([leaderName]));
        counts.push(scheduled.length);
        return scheduled.length === RETAIN ? all : undefined;
      },
      10_000,
      100,
    );
    expect(Math.max(...counts)).toBeLessThanOrEqual(RETAIN + 1);
    expect(entries.some((e) => e.name === keepMe)).toBe(true);
    for (const i of cluster.nodes.map((n) => n.index).filter((i) => i !== leader)) {
      expect(cluster.logs(i)).not.toContain('"msg":"snapshot stored"');
    }
  });

  it('the new leader continues the schedule after the leader is SIGKILLed', async () => {
    const { leader } = await cluster.waitForStableLeader(20_000);
    cluster.signal(leader, 'SIGKILL');
    const survivors = cluster.nodes.map((n) => n.index).filter((i) => i !== leader);
    const killedAt = new Date().toISOString();
    const next = await waitUntil(
      'a scheduled snapshot from a new leader',
      async () => {
        const entries = await ls().catch(() => []);
        return entries.find((e) => e.kind === 'scheduled' && e.created > killedAt && e.node !== cluster.node(leader).name);
      },
      30_000,
      500,
    );
    expect(survivors.map((i) => cluster.node(i).name)).toContain(next.node);
    // No slot is taken twice: scheduled snapshot names (one per second per leader) never repeat a second.
    const seconds = (await ls()).filter((e) => e.kind === 'scheduled').map((e) => e.name.split('-').pop());
    expect(new Set(seconds).size).toBe(seconds.length);
  });
});
