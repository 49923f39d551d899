import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Server } from '../harness/s3.js';
import { waitUntil } from '../harness/processes.js';
import { StewardCluster, runCtl } from '../harness/steward-cluster.js';
import { deleteKeys, keptDataDirs, looseModes, putKeys, quietStatus, restoreCtl, restoreStatus, save, userKeys } from '../harness/restore.js';

/** Whether something accepts TCP connections at a URL's host:port right now. */
function accepts(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ host: hostname, port: Number(port) });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

describe('restore: every member back to one verified snapshot (3 stewards, real etcd 3.4, real s3rver)', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  const a: Record<string, string> = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`/a/${i}`, `value-a-${i}`]));
  let leader = 0;
  let follower = 1;

  const clusterIds = async (): Promise<string[]> => Promise.all(cluster.nodes.map(async (n) => (await quietStatus(n))?.clusterId ?? ''));
  const everyMemberHolds = async (expected: Record<string, string>): Promise<void> => {
    for (const node of cluster.nodes) expect(await userKeys(node.clientUrl), node.name).toEqual(expected);
  };

  // node-1's kubelet manifest dir, a plain directory: its kube-apiserver.yaml is moved aside during the swap.
  let manifests = '';

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'snapshots' });
    cluster = await StewardCluster.create({ size: 3, extraArgs: [...s3.stewardArgs(), '--etcd-disable-snapshots=true', '--restore-checks-timeout=90s'] });
    manifests = join(cluster.root, 'manifests');
    mkdirSync(manifests);
    writeFileSync(join(manifests, 'kube-apiserver.yaml'), 'kind: Pod\n');
    cluster.setNodeArgs(0, [`--restore-pause-static-pods=${manifests}:kube-apiserver.yaml,${manifests}:absent.yaml`]);
    await cluster.startAll();
    ({ leader } = await cluster.waitForStableLeader(30_000));
    follower = (leader + 1) % 3;
  });
  afterAll(async () => {
    await cluster?.destroy();
    await s3?.stop();
  });

  it('without --yes prints the plan and changes nothing (exit 4); unknown name 3, malformed 2', async () => {
    await putKeys(cluster, a);
    const name = await save(cluster.node(leader));
    // Addressed to a follower: with quorum the leader coordinates, and the ctl follows it there.
    const plan = await restoreCtl(cluster.node(follower), [name]);
    expect(plan.code, plan.stderr).toBe(4);
    expect(plan.stderr).toContain('RESTORE_NOT_CONFIRMED');
    expect(plan.stderr).toContain(`the leader ${cluster.node(leader).name} at ${cluster.node(leader).grpc} coordinates the restore`);
    expect(plan.stdout).toContain(name);
    for (const node of cluster.nodes) expect(plan.stdout).toContain(node.name);
    expect(plan.stdout).toMatch(/revision|bump/i);
    for (const node of cluster.nodes) {
      expect(keptDataDirs(node)).toEqual([]);
      expect(existsSync(join(node.stateDir, 'restore', 'phase.json'))).toBe(false);
    }
    expect((await restoreCtl(cluster.node(leader), ['on-demand-node-9-1700000000', '--yes'])).code).toBe(3);
    expect((await restoreCtl(cluster.node(leader), ['../../etc/passwd', '--yes'])).code).toBe(2);
  });

  it("restores from the coordinator's local copy: A back exactly, B gone, one new cluster ID, old data dirs kept, clients quarantined meanwhile", async () => {
    const name = await save(cluster.node(leader));
    await putKeys(cluster, { '/b/1': 'new', '/b/2': 'new' });
    await deleteKeys(cluster, ['/a/0', '/a/1']);
    const before = await clusterIds();
    expect(new Set(before).size).toBe(1);
    // While the members are in RestartCluster, nothing may answer on their real client URLs.
    let quarantineSeen = 0;
    let leaked = '';
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        for (const node of cluster.nodes) {
          const status = await quietStatus(node);
          if (status?.restore?.phase === 'RestartCluster') {
            quarantineSeen += 1;
            if (node.index === 0 && existsSync(join(manifests, 'kube-apiserver.yaml')))
              leaked = 'kube-apiserver.yaml stayed in the manifest dir during the restore';
            // Still RestartCluster after the connection was accepted: no finish in between can explain it.
            if ((await accepts(node.clientUrl)) && (await quietStatus(node))?.restore?.phase === 'RestartCluster')
              leaked = `${node.name} accepted a client connection on ${node.clientUrl} during RestartCluster`;
          }
        }
      }
    })();
    const result = await restoreCtl(cluster.node(leader), [name, '--yes']).finally(() => (watching = false));
    await watcher;
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(result.stdout).toContain('Finished');
    expect(leaked).toBe('');
    expect(quarantineSeen).toBeGreaterThan(0);
    expect(readFileSync(join(manifests, 'kube-apiserver.yaml'), 'utf8')).toBe('kind: Pod\n');
    await cluster.waitForStableLeader(60_000);
    await everyMemberHolds(a);
    const after = await clusterIds();
    expect(new Set(after).size).toBe(1);
    expect(after[0]).not.toBe(before[0]);
    for (const node of cluster.nodes) expect(keptDataDirs(node).filter((d) => d.includes('-old-'))).toHaveLength(1);
    const status = await restoreStatus(cluster.node(follower));
    expect(status.members.map((m) => m.phase)).toEqual(['Finished', 'Finished', 'Finished']);
    expect(status.lockHolder).toBe('');
    const metrics = await (await fetch(`http://${cluster.node(leader).http}/metrics`)).text();
    expect(metrics).toMatch(/etcd_steward_restore_last_timestamp_seconds\{result="Finished"\} \d/);
    expect(metrics).toMatch(/etcd_steward_restore_bytes_distributed_total [1-9]/);
    expect(metrics).toMatch(/etcd_steward_restore_phase\{phase="Finished"\} 1/);
    // Snapshots, metadata, phase records, staging leftovers, the lock's local copy: owner only, everywhere.
    for (const node of cluster.nodes) expect(looseModes(node.stateDir)).toEqual([]);
  });

  it('restores from S3 a snapshot the coordinator has no local copy of', async () => {
    ({ leader } = await cluster.waitForStableLeader(60_000));
    follower = (leader + 1) % 3;
    const name = await save(cluster.node(follower));
    await putKeys(cluster, { '/c/1': 'after' });
    const result = await restoreCtl(cluster.node(leader), [name, '--yes']);
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(result.stdout).toContain(`s3://snapshots/backups/${name}`);
    await cluster.waitForStableLeader(60_000);
    await everyMemberHolds(a);
  });

  it('one byte flipped in the S3 object: Failed at Verify, exit 4, every data dir and key unchanged', async () => {
    ({ leader } = await cluster.waitForStableLeader(60_000));
    follower = (leader + 1) % 3;
    const name = await save(cluster.node(follower));
    const object = join(s3.dir, 'snapshots', 'backups', `${name}._S3rver_object`);
    const bytes = readFileSync(object);
    const middle = Math.floor(bytes.length / 2);
    bytes[middle] = (bytes[middle] ?? 0) ^ 0xff;
    writeFileSync(object, bytes);
    await putKeys(cluster, { '/d/1': 'kept' });
    const kept = await userKeys(cluster.node(0).clientUrl);
    const dirsBefore = cluster.nodes.map((n) => keptDataDirs(n));
    const idsBefore = await clusterIds();
    const result = await restoreCtl(cluster.node(leader), [name, '--yes']);
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(4);
    expect(result.stderr).toContain('RESTORE_VERIFY_FAILED');
    expect(cluster.nodes.map((n) => keptDataDirs(n))).toEqual(dirsBefore);
    await cluster.waitForStableLeader(60_000);
    expect(await clusterIds()).toEqual(idsBefore);
    await everyMemberHolds(kept);
    // Nothing staged is left behind on any member.
    for (const node of cluster.nodes) expect(readdirSync(join(node.stateDir, 'restore')).filter((f) => f !== 'phase.json')).toEqual([]);
    expect((await restoreStatus(cluster.node(leader))).lockHolder).toBe('');
  });

  it('a second restore while one holds the lock is refused (exit 4) naming the holder', async () => {
    ({ leader } = await cluster.waitForStableLeader(60_000));
    const name = await save(cluster.node(leader));
    const lock = join(s3.dir, 'snapshots', 'backups-control', 'restore-lock.json._S3rver_object');
    // Another coordinator's live lock, as its create-only write left it (s3rver cannot race two writers for us).
    const held = { restoreId: 'r-1-abcdef', snapshot: 'other-snapshot', sha256: '', coordinator: 'node-x', members: [], clusterToken: 't', bumpRevision: 0 };
    const now = new Date().toISOString();
    const { S3Store } = await import('../../src/store/s3.js');
    const control = new S3Store(s3.storeOptions('backups-control'));
    try {
      await control.putSmall('restore-lock.json', JSON.stringify({ ...held, takenAt: now, heartbeatAt: now }), AbortSignal.timeout(10_000));
      expect(existsSync(lock)).toBe(true);
      const result = await restoreCtl(cluster.node(leader), [name, '--yes']);
      expect(result.code, result.stderr).toBe(4);
      expect(result.stderr).toContain('RESTORE_LOCKED');
      expect(result.stderr).toContain('node-x');
    } finally {
      await control.delete('restore-lock.json', AbortSignal.timeout(10_000));
      control.close();
    }
  });

  it("restore --with-spec puts back the etcd flags the spec had when the snapshot was taken; the default keeps today's", async () => {
    ({ leader } = await cluster.waitForStableLeader(60_000));
    const specWith = async (flags: Record<string, string>): Promise<void> => {
      const got = await runCtl(['--endpoint', cluster.node(leader).grpc, '-o', 'json', 'spec', 'get']);
      const spec = JSON.parse(got.stdout) as Record<string, unknown>;
      const file = join(cluster.root, 'spec.json');
      writeFileSync(file, JSON.stringify({ ...spec, etcdFlags: flags }));
      const set = await runCtl(['--endpoint', cluster.node(leader).grpc, 'spec', 'set', file]);
      expect(set.code, set.stderr).toBe(0);
    };
    const flagsNow = async (): Promise<unknown> =>
      (JSON.parse((await runCtl(['--endpoint', cluster.node(leader).grpc, '-o', 'json', 'spec', 'get'])).stdout) as { etcdFlags: unknown }).etcdFlags;
    await specWith({ 'snapshot-count': '5000' });
    // The snapshot records the spec its steward has read: wait for the leader to have re-read it.
    await waitUntil(
      'the leader to know the new spec',
      async () => (((await quietStatus(cluster.node(leader)))?.specGeneration ?? 0) > 0 ? true : undefined),
      10_000,
    );
    const name = await save(cluster.node(leader));
    await specWith({ 'snapshot-count': '9000' });
    const kept = await restoreCtl(cluster.node(leader), [name, '--yes']);
    expect(kept.code, kept.stderr).toBe(0);
    ({ leader } = await cluster.waitForStableLeader(60_000));
    expect(await flagsNow()).toEqual({ 'snapshot-count': '9000' });
    const back = await restoreCtl(cluster.node(leader), [name, '--yes', '--with-spec']);
    expect(back.code, back.stderr).toBe(0);
    ({ leader } = await cluster.waitForStableLeader(60_000));
    expect(await flagsNow()).toEqual({ 'snapshot-count': '5000' });
  });

  it('a peer killed during Distribute: Failed, nothing touched, the cluster keeps serving', async () => {
    ({ leader } = await cluster.waitForStableLeader(60_000));
    const victim = (leader + 2) % 3;
    // ~64 MiB, so the distribution lasts long enough to kill a member in the middle of it.
    const big = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`/big/${i}`, 'x'.repeat(1024 * 1024)]));
    await putKeys(cluster, big);
    const name = await save(cluster.node(leader));
    const dirsBefore = cluster.nodes.map((n) => keptDataDirs(n));
    const running = restoreCtl(cluster.node(leader), [name, '--yes']);
    await waitUntil(
      'the victim to be receiving',
      async () => ((await quietStatus(cluster.node(victim)))?.restore?.phase === 'Distribute' ? true : undefined),
      60_000,
      20,
    );
    cluster.node(victim).process?.kill('SIGKILL');
    const result = await running;
    expect(result.code, `${result.stdout}\n${result.stderr}`).not.toBe(0);
    expect(result.stdout + result.stderr).toContain('no data dir was touched');
    expect(cluster.nodes.map((n) => keptDataDirs(n))).toEqual(dirsBefore);
    const survivors = [0, 1, 2].filter((i) => i !== victim);
    const keys = await userKeys(cluster.node(survivors[0] as number).clientUrl);
    expect(keys['/big/63']).toHaveLength(1024 * 1024);
    // Restarted, the killed steward drops its staging file and starts its old etcd.
    cluster.start(victim);
    await cluster.waitForStableLeader(60_000);
    const status = await restoreStatus(cluster.node(victim));
    expect(status.members.find((m) => m.node === cluster.node(victim).name)?.phase).toBe('Failed');
    expect(await userKeys(cluster.node(victim).clientUrl)).toEqual(keys);
    await deleteKeys(cluster, Object.keys(big));
  });

  it('--skip-member: a member whose steward is down is left out; back, it is held back by the bootstrap gate with the way to re-add it', async () => {
    ({ leader } = await cluster.waitForStableLeader(60_000));
    const victim = (leader + 1) % 3;
    const others = [0, 1, 2].filter((i) => i !== victim);
    await cluster.stop(victim);
    const name = await save(cluster.node(leader));
    const blocked = await restoreCtl(cluster.node(leader), [name, '--yes']);
    expect(blocked.code, blocked.stderr).toBe(4);
    expect(blocked.stderr).toContain('RESTORE_BLOCKED');
    const result = await restoreCtl(cluster.node(leader), [name, '--yes', '--skip-member', cluster.node(victim).name]);
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    await waitUntil(
      'the two restored members to agree on a leader',
      async () => {
        const statuses = await Promise.all(others.map((i) => quietStatus(cluster.node(i))));
        return statuses.every((s) => s && s.members.length === 2 && s.members.every((m) => m.healthy) && s.leader) ? true : undefined;
      },
      60_000,
    );
    cluster.start(victim);
    const held = await waitUntil(
      'the skipped member to be held back',
      async () => {
        const s = await quietStatus(cluster.node(victim));
        return s && !s.etcdRunning && /left this member out/.test(s.specProblem) ? s : undefined;
      },
      60_000,
      500,
    );
    expect(held.specProblem).toContain('etcdctl member add');
  });
});
