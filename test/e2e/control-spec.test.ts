import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Store } from '../../src/store/s3.js';
import { waitUntil } from '../harness/processes.js';
import { S3Server } from '../harness/s3.js';
import { StewardCluster } from '../harness/steward-cluster.js';

const TTL_MS = 2000;

function s3Args(s3: S3Server, extra: string[] = []): string[] {
  return [
    ...s3.stewardArgs(),
    `--control-spec-ttl=${TTL_MS / 1000}s`,
    '--etcd-disable-snapshots=true',
    ...extra,
  ];
}

describe('the cluster spec cannot vanish silently (3 stewards, real s3rver)', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  let control: S3Store;
  const metric = async (index: number, name: string): Promise<number> => {
    const body = await (await fetch(`http://${cluster.node(index).http}/metrics`)).text();
    return Number(body.split('\n').find((l) => l.startsWith(`${name} `))?.split(' ')[1] ?? NaN);
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

  it('a new cluster starts only after init --yes, and every steward reads the spec', async () => {
    for (const i of allNodes()) {
      const status = await cluster.status(i);
      expect(status).toMatchObject({ specHealthy: true, specGeneration: 1, specProblem: '' });
    }
    const spec = await cluster.ctl(['--endpoint', cluster.node(1).grpc, '-o', 'json', 'spec', 'get']);
    expect(spec.code, spec.stderr).toBe(0);
    expect((JSON.parse(spec.stdout) as { members: unknown[] }).members).toHaveLength(3);
    for (const i of allNodes()) expect(cluster.logs(i)).toMatch(/waiting for 'etcd-stewardctl init --yes'|cluster spec readable/);
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
    await waitUntil('every steward to notice', async () => {
      for (const i of allNodes()) if ((await metric(i, 'etcd_steward_control_spec_healthy')) !== 0) return undefined;
      return true;
    }, 3 * TTL_MS, 100);
    console.log(`missing spec noticed by all 3 stewards in ${Date.now() - deletedAt} ms (TTL ${TTL_MS} ms)`);
    expect(Date.now() - deletedAt).toBeLessThan(TTL_MS + 1500);
    const logs = cluster.logs(0);
    expect(logs).toMatch(/"level":"error".*"fix":"etcd keeps running from its data dir and snapshots go on; put it back with 'etcd-stewardctl spec set .*last-cluster-spec\.json'.*"msg":"the cluster spec is missing at s3:\/\/snapshots\/backups-control\/cluster-spec\.json/);
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
    const restore = await cluster.ctl(['--endpoint', cluster.node(after.leader).grpc, 'spec', 'set', copy]);
    expect(restore.code, restore.stderr).toBe(0);
    await waitUntil('the metric back at 1 everywhere', async () => {
      for (const i of allNodes()) if ((await metric(i, 'etcd_steward_control_spec_healthy')) !== 1) return undefined;
      return true;
    }, 3 * TTL_MS, 100);
    expect((await cluster.status(0)).specGeneration).toBe(2);
  });

  it('a spec changed in S3 is picked up within one TTL without a restart', async () => {
    const current = JSON.parse((await control.readSmall('cluster-spec.json', AbortSignal.timeout(5000))).toString()) as Record<string, unknown>;
    const next = { ...current, generation: Number(current.generation) + 1, etcdFlags: { 'snapshot-count': '5000' } };
    const changedAt = Date.now();
    await control.putSmall('cluster-spec.json', JSON.stringify(next), AbortSignal.timeout(5000));
    await waitUntil('every steward to read the new generation', async () => {
      for (const i of allNodes()) if ((await cluster.status(i)).specGeneration !== next.generation) return undefined;
      return true;
    }, 3 * TTL_MS, 100);
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

  it('a steward with an empty data dir refuses to create a new cluster while snapshots exist', async () => {
    // A "new" node whose control files are gone but whose backups are still in the bucket.
    const stranger = await StewardCluster.create({ size: 1, extraArgs: s3Args(s3, ['--control-s3-folder=lost-control']) });
    try {
      await stranger.startAll();
      const log = await waitUntil('the refusal in the log', () => {
        const text = readFileSync(stranger.node(0).logFile, 'utf8');
        return text.includes('refusing to initialise a new etcd cluster') ? text : undefined;
      }, 15_000, 200);
      expect(log).toContain('snapshots exist');
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
