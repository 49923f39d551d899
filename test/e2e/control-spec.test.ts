import { existsSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Store } from '../../src/store/s3.js';
import { waitUntil } from '../harness/processes.js';
import { S3Server } from '../harness/s3.js';
import { StewardCluster } from '../harness/steward-cluster.js';

const TTL_MS = 2000;

function s3Args(s3: S3Server, extra: string[] = []): string[] {
  return [...s3.stewardArgs(), `--control-spec-ttl=${TTL_MS / 1000}s`, '--etcd-disable-snapshots=true', ...extra];
}

describe('the cluster spec cannot vanish silently (3 stewards, real s3rver)', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  let control: S3Store;
  const metric = async (index: number, name: string): Promise<number> => {
    const body = await (await fetch(`http://${cluster.node(index).http}/metrics`)).text();
    return Number(
      body
        .split('\n')
        .find((l) => l.startsWith(`${name} `))
        ?.split(' ')[1] ?? NaN,
    );
  };
  const allNodes = (): number[] => cluster.nodes.map((n) => n.index);

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'snapshots' });
    control = new S3Store(s3.storeOptions('backups-control'));
    cluster = await StewardCluster.create({ size: 3, extraArgs: s3Args(s3) });
    await cluster.startAll();
    await cluster.waitForStableLeader(30_000);
  });
  afterAll(async () => {
    control?.close();
    await cluster?.destroy();
    await s3?.stop();
  });

  it('every steward reads the spec, and the formed cluster is recorded with the members that ran', async () => {
    const { statuses } = await cluster.waitForStableLeader(15_000);
    // Generation 1 is init's; the leader then records the cluster ID and the members that have run.
    const parsed = await waitUntil(
      'the formed cluster in the spec',
      async () => {
        const spec = await cluster.ctl(['--endpoint', cluster.node(1).grpc, '-o', 'json', 'spec', 'get']);
        const current = JSON.parse(spec.stdout) as {
          generation: number;
          members: unknown[];
          clusterId: string;
          startedMembers?: string[];
          fencingToken: string;
        };
        return current.startedMembers?.length === 3 ? current : undefined;
      },
      20_000,
      250,
    );
    expect(parsed.members).toHaveLength(3);
    expect(parsed.clusterId).toBe(statuses[0]?.clusterId);
    expect(parsed.startedMembers).toEqual(['node-1', 'node-2', 'node-3']);
    expect(parsed.generation).toBeGreaterThanOrEqual(2);
    expect(parsed.fencingToken).not.toBe('');
    await waitUntil(
      'every steward to read it',
      async () => {
        for (const i of allNodes()) {
          const status = await cluster.status(i);
          if (!status.specHealthy || status.specGeneration !== parsed.generation || status.specProblem !== '') return undefined;
        }
        return true;
      },
      4 * TTL_MS,
      200,
    );
    expect(cluster.logs(0) + cluster.logs(1) + cluster.logs(2)).toContain('the cluster has formed: recorded its ID and the members that have run');
  });

  it('a brand-new node waits with etcd stopped until init --yes, then starts', async () => {
    const fresh = await StewardCluster.create({ size: 1, extraArgs: s3Args(s3, ['--etcd-s3-folder=fresh', '--control-s3-folder=fresh-control']) });
    try {
      fresh.start(0);
      await waitUntil('the waiting message', () => (fresh.logs(0).includes("waiting for 'etcd-stewardctl init --yes'") ? true : undefined), 15_000, 200);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const waiting = await fresh.status(0);
      expect(waiting.etcdRunning).toBe(false);
      expect(waiting.specProblem).toMatch(/no cluster spec yet/);
      const init = await fresh.ctl(['--endpoint', fresh.node(0).grpc, 'init', '--yes']);
      expect(init.code, init.stderr).toBe(0);
      const { statuses } = await fresh.waitForStableLeader(30_000);
      expect(statuses[0]?.etcdRunning).toBe(true);
    } finally {
      await fresh.destroy();
    }
  });

  it('init --yes on a cluster with data exits 4 and changes nothing', async () => {
    const before = await control.readSmall('cluster-spec.json', AbortSignal.timeout(5000));
    const result = await cluster.ctl(['--endpoint', cluster.node(2).grpc, 'init', '--yes']);
    expect(result.code).toBe(4);
    expect(result.stderr).toMatch(/^error\[SPEC_EXISTS\]/);
    const unconfirmed = await cluster.ctl(['--endpoint', cluster.node(2).grpc, 'init']);
    expect(unconfirmed.code).toBe(4);
    expect(unconfirmed.stderr).toMatch(/^error\[UNCONFIRMED\]/);
    expect((await control.readSmall('cluster-spec.json', AbortSignal.timeout(5000))).equals(before)).toBe(true);
  });

  it('a deleted spec is loud within one TTL, snapshots go on, and a full restart keeps the same cluster', async () => {
    const client = new Etcd3({ hosts: cluster.nodes.map((n) => n.clientUrl) });
    await client.put('/app/important').value('keep me');
    client.close();
    const { statuses } = await cluster.waitForStableLeader(15_000);
    const clusterId = statuses[0]?.clusterId;

    // What a bucket lifecycle rule does to the control file.
    await control.delete('cluster-spec.json', AbortSignal.timeout(5000));
    const deletedAt = Date.now();
    await waitUntil(
      'every steward to notice',
      async () => {
        for (const i of allNodes()) if ((await metric(i, 'etcd_steward_control_spec_healthy')) !== 0) return undefined;
        return true;
      },
      3 * TTL_MS,
      100,
    );
    console.log(`missing spec noticed by all 3 stewards in ${Date.now() - deletedAt} ms (TTL ${TTL_MS} ms)`);
    expect(Date.now() - deletedAt).toBeLessThan(TTL_MS + 1500);
    const logs = cluster.logs(0);
    expect(logs).toMatch(
      /"level":"error".*"fix":"etcd keeps running from its data dir and snapshots go on; put it back with 'etcd-stewardctl spec set .*last-cluster-spec\.json'.*"msg":"the cluster spec is missing at s3:\/\/snapshots\/backups-control\/cluster-spec\.json/,
    );
    const status = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'status']);
    expect(status.stdout).toMatch(/^spec:\s+PROBLEM: the cluster spec is missing/m);
    // The spec is gone but the data is not: init must still refuse.
    const init = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'init', '--yes']);
    expect(init.code).toBe(4);
    expect(init.stderr).toMatch(/^error\[HAS_DATA\]: this node's data dir .* holds an etcd member/);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const saved = await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'save']);
    expect(saved.code, saved.stderr).toBe(0);
    expect((JSON.parse(saved.stdout) as { locations: string[] }).locations).toHaveLength(2);

    // Every steward restarts while the spec is gone: data dirs exist, so the same cluster comes back.
    await cluster.stopAll();
    await cluster.startAll();
    const after = await cluster.waitForStableLeader(30_000);
    expect(after.statuses.every((s) => s.clusterId === clusterId && !s.specHealthy)).toBe(true);
    const reader = new Etcd3({ hosts: cluster.nodes.map((n) => n.clientUrl) });
    expect(await reader.get('/app/important').string()).toBe('keep me');
    reader.close();

    // The operator puts the spec back from the copy a steward kept; every steward sees it within a TTL.
    const copy = join(cluster.node(after.leader).stateDir, 'last-cluster-spec.json');
    const copiedGeneration = (JSON.parse(readFileSync(copy, 'utf8')) as { generation: number }).generation;
    const restore = await cluster.ctl(['--endpoint', cluster.node(after.leader).grpc, 'spec', 'set', copy]);
    expect(restore.code, restore.stderr).toBe(0);
    await waitUntil(
      'the metric back at 1 everywhere',
      async () => {
        for (const i of allNodes()) if ((await metric(i, 'etcd_steward_control_spec_healthy')) !== 1) return undefined;
        return true;
      },
      3 * TTL_MS,
      100,
    );
    expect((await cluster.status(0)).specGeneration).toBe(copiedGeneration + 1);
  });

  it('a spec changed in S3 is picked up within one TTL without a restart', async () => {
    const current = JSON.parse((await control.readSmall('cluster-spec.json', AbortSignal.timeout(5000))).toString()) as Record<string, unknown>;
    const next = { ...current, generation: Number(current.generation) + 1, etcdFlags: { 'snapshot-count': '5000' } };
    const changedAt = Date.now();
    await control.putSmall('cluster-spec.json', JSON.stringify(next), AbortSignal.timeout(5000));
    await waitUntil(
      'every steward to read the new generation',
      async () => {
        for (const i of allNodes()) if ((await cluster.status(i)).specGeneration !== next.generation) return undefined;
        return true;
      },
      3 * TTL_MS,
      100,
    );
    expect(Date.now() - changedAt).toBeLessThan(TTL_MS + 1500);
    expect(cluster.logs(1)).toContain('"msg":"cluster spec changed"');
  });

  it('spec set refuses stale generations, non-leaders and invalid files', async () => {
    const { leader } = await cluster.waitForStableLeader(15_000);
    const follower = (leader + 1) % 3;
    const file = join(cluster.root, 'stale.json');
    const current = JSON.parse((await control.readSmall('cluster-spec.json', AbortSignal.timeout(5000))).toString()) as Record<string, unknown>;
    const { writeFile } = await import('node:fs/promises');
    await writeFile(file, JSON.stringify({ ...current, generation: 1 }));
    const stale = await cluster.ctl(['--endpoint', cluster.node(leader).grpc, 'spec', 'set', file]);
    expect(stale.code).toBe(4);
    expect(stale.stderr).toMatch(/^error\[STALE_GENERATION\]/);
    const notLeader = await cluster.ctl(['--endpoint', cluster.node(follower).grpc, 'spec', 'set', file]);
    expect(notLeader.code).toBe(4);
    expect(notLeader.stderr).toMatch(/^error\[NOT_LEADER\]/);
    await writeFile(file, JSON.stringify({ ...current, members: [] }));
    const invalid = await cluster.ctl(['--endpoint', cluster.node(leader).grpc, 'spec', 'set', file]);
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toMatch(/members/);
  });

  it('spec set refuses to drop a running member unless --force, and --force reaches the leader', async () => {
    const { leader } = await cluster.waitForStableLeader(15_000);
    const { writeFile } = await import('node:fs/promises');
    // The leader's view (etcd's record, which the control store copies): what a write is checked against.
    const read = async (): Promise<Record<string, unknown> & { generation: number; members: Array<{ name: string }>; startedMembers?: string[] }> => {
      const got = await cluster.ctl(['--endpoint', cluster.node(leader).grpc, '-o', 'json', 'spec', 'get']);
      if (got.code !== 0) throw new Error(got.stderr);
      return JSON.parse(got.stdout) as never;
    };
    const current = await read();
    const file = join(cluster.root, 'drop-member.json');
    const without = { members: current.members.filter((m) => m.name !== 'node-3'), startedMembers: current.startedMembers?.filter((n) => n !== 'node-3') };
    await writeFile(file, JSON.stringify({ ...current, ...without }));
    const refused = await cluster.ctl(['--endpoint', cluster.node(leader).grpc, 'spec', 'set', file]);
    expect(refused.code).toBe(4);
    expect(refused.stderr).toMatch(/^error\[RUNNING_MEMBER_DROPPED\].*node-3/);
    expect((await read()).generation).toBe(current.generation);
    const forced = await cluster.ctl(['--endpoint', cluster.node(leader).grpc, 'spec', 'set', '--force', file]);
    expect(forced.stderr).toBe('');
    expect(forced.code).toBe(0);
    const dropped = await read();
    expect(dropped.members.map((m) => m.name)).toEqual(['node-1', 'node-2']);
    // Put the member back for the tests that follow (a write is based on the generation it read; adding needs no force).
    await writeFile(file, JSON.stringify({ ...dropped, members: current.members, startedMembers: current.startedMembers }));
    const restored = await cluster.ctl(['--endpoint', cluster.node(leader).grpc, 'spec', 'set', file]);
    expect(restored.stderr).toBe('');
    expect((await read()).members).toEqual(current.members);
  });

  it('a member whose data dir is wiped under a running steward is held back, init is refused, and member replacement brings it back', async () => {
    const { leader, statuses } = await cluster.waitForStableLeader(15_000);
    const victim = (leader + 1) % 3;
    const node = cluster.node(victim);
    const writer = new Etcd3({ hosts: cluster.nodes.map((n) => n.clientUrl) });
    await writer.put('/app/after-wipe').value('still here');
    const recorded = JSON.parse((await control.readSmall('cluster-spec.json', AbortSignal.timeout(5000))).toString()) as { clusterId: string };
    expect(recorded.clusterId).toBe(statuses[0]?.clusterId);

    // The disk under the member is lost while the steward runs; etcd dies with it and the supervisor restarts it.
    const etcdPid = cluster.etcdPid(victim);
    expect(etcdPid).toBeDefined();
    await rm(node.dataDir, { recursive: true, force: true });
    process.kill(etcdPid as number, 'SIGKILL');
    await waitUntil(
      'the restart to be held back',
      () => (cluster.logs(victim).includes('refusing to start etcd: the data dir') ? true : undefined),
      15_000,
      200,
    );
    const fix =
      /"level":"error".*"fix":"replace this member from a running one: etcdctl member remove ([0-9a-f]+), etcdctl member add (\S+) --peer-urls=([^,]+), then restart this steward with --initial-cluster-state=existing"/.exec(
        cluster.logs(victim),
      );
    expect(fix?.slice(2)).toEqual([node.name, node.peerUrl]);
    // Held back, not retried into a new cluster: a few TTLs later etcd is still not running and the dir still empty.
    await new Promise((resolve) => setTimeout(resolve, 2 * TTL_MS));
    const held = await cluster.status(victim);
    expect(held.etcdRunning).toBe(false);
    expect(held.specHealthy).toBe(false);
    expect(held.specProblem).toMatch(/this member has run before; it lost its data and must not start a new cluster/);
    expect(existsSync(join(node.dataDir, 'member'))).toBe(false);

    // Even with the spec gone too, and with only its own client endpoint configured (the default),
    // init on that node is refused: the other members answer on their peer URLs.
    await cluster.stop(victim);
    cluster.setNodeArgs(victim, [`--etcd-endpoints=${node.clientUrl}`]);
    cluster.start(victim);
    await waitUntil('the steward API', async () => ((await cluster.status(victim).catch(() => undefined)) ? true : undefined), 15_000, 200);
    const spec = await control.readSmall('cluster-spec.json', AbortSignal.timeout(5000));
    await control.delete('cluster-spec.json', AbortSignal.timeout(5000));
    const init = await cluster.ctl(['--endpoint', node.grpc, 'init', '--yes']);
    expect(init.code).toBe(4);
    expect(init.stderr).toMatch(/^error\[CLUSTER_RUNNING\]: etcd answers at /);
    expect(init.stderr).toContain(cluster.node(leader).peerUrl);
    expect(await control.head('cluster-spec.json', AbortSignal.timeout(5000))).toBeUndefined();
    await control.putSmall('cluster-spec.json', spec, AbortSignal.timeout(5000));

    // The fix the log names: replace the member, then join with --initial-cluster-state=existing.
    const members = await writer.cluster.memberList({});
    const lost = members.members.find((m) => m.name === node.name);
    expect(lost).toBeDefined();
    // The log named the very member ID to remove, in etcdctl's hex.
    expect(fix?.[1]).toBe(BigInt(lost?.ID ?? '0').toString(16));
    await writer.cluster.memberRemove({ ID: lost?.ID ?? '' });
    await writer.cluster.memberAdd({ peerURLs: [node.peerUrl] });
    await cluster.stop(victim);
    cluster.setNodeArgs(victim, ['--initial-cluster-state=existing']);
    cluster.start(victim);
    const after = await cluster.waitForStableLeader(30_000);
    expect(after.statuses.every((s) => s.clusterId === statuses[0]?.clusterId)).toBe(true);
    const direct = new Etcd3({ hosts: [node.clientUrl] });
    expect(await direct.get('/app/after-wipe').string()).toBe('still here');
    direct.close();
    writer.close();
  });

  it('a member that never ran joins the others even though snapshots exist, but never starts a cluster of its own while they are down', async () => {
    const late = await StewardCluster.create({ size: 3, extraArgs: s3Args(s3, ['--etcd-s3-folder=late', '--control-s3-folder=late-control']) });
    const lateControl = new S3Store(s3.storeOptions('late-control'));
    try {
      late.start(0);
      late.start(1);
      await late.initIfNew();
      await waitUntil(
        'two members with a leader',
        async () => {
          const status = await late.status(0).catch(() => undefined);
          return status?.leader && status.members.filter((m) => m.healthy).length === 2 ? true : undefined;
        },
        30_000,
        250,
      );
      const saved = await late.ctl(['--endpoint', late.node(0).grpc, 'save', '--force']);
      expect(saved.code, saved.stderr).toBe(0);
      // The two are recorded as the members that ran.
      const formed = await waitUntil(
        'the formation in the spec',
        async () => {
          const stored = JSON.parse((await lateControl.readSmall('cluster-spec.json', AbortSignal.timeout(5000))).toString()) as {
            clusterId: string;
            startedMembers?: string[];
          };
          return stored.clusterId && stored.startedMembers?.length === 2 ? stored : undefined;
        },
        15_000,
        500,
      );
      expect(formed.startedMembers).toEqual(['node-1', 'node-2']);
      // While they are down, the member that never ran must not start a cluster of its own ...
      await Promise.all([late.stop(0), late.stop(1)]);
      late.start(2);
      await waitUntil(
        'node-3 to be held back',
        () => (late.logs(2).includes('formed while this member never started, and none of its members answers') ? true : undefined),
        20_000,
        200,
      );
      expect((await late.status(2)).etcdRunning).toBe(false);
      // ... and joins them once they are back.
      late.start(0);
      late.start(1);
      const { statuses } = await late.waitForStableLeader(30_000);
      expect(statuses.every((s) => s.members.length === 3)).toBe(true);
      expect(late.logs(2)).toMatch(/"why":"[^"]*never started[^"]*: joining them"/);
      // The third member is recorded as run once it has joined.
      await waitUntil(
        'every member recorded as run',
        async () => {
          const stored = JSON.parse((await lateControl.readSmall('cluster-spec.json', AbortSignal.timeout(5000))).toString()) as {
            clusterId: string;
            startedMembers?: string[];
          };
          return stored.clusterId === statuses[0]?.clusterId && stored.startedMembers?.length === 3 ? true : undefined;
        },
        15_000,
        500,
      );
    } finally {
      lateControl.close();
      await late.destroy();
    }
  });

  it('a steward with an empty data dir refuses to create a new cluster while snapshots exist', async () => {
    // A "new" node whose control files are gone but whose backups are still in the bucket.
    const stranger = await StewardCluster.create({ size: 1, extraArgs: s3Args(s3, ['--control-s3-folder=lost-control']) });
    try {
      // Started as an operator would find it, without the harness's init.
      stranger.start(0);
      const log = await waitUntil(
        'the refusal in the log',
        () => {
          const text = readFileSync(stranger.node(0).logFile, 'utf8');
          return text.includes('refusing to initialise a new etcd cluster') ? text : undefined;
        },
        15_000,
        200,
      );
      expect(log).toMatch(/snapshot\(s\) exist and there is no cluster spec/);
      const status = await stranger.status(0);
      expect(status.etcdRunning).toBe(false);
      const init = await stranger.ctl(['--endpoint', stranger.node(0).grpc, 'init', '--yes']);
      expect(init.code).toBe(4);
      expect(init.stderr).toMatch(/^error\[SNAPSHOTS_EXIST\]/);
    } finally {
      await stranger.destroy();
    }
  });
});
