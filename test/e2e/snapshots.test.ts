import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { unlink, utimes } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SnapshotRecord } from '../../src/rpc/types.js';
import { S3Store } from '../../src/store/s3.js';
import { S3Server } from '../harness/s3.js';
import { etcdTrailerOk, readJson, restoreWithEtcdctl, sha256File } from '../harness/snapshot-checks.js';
import { StewardCluster } from '../harness/steward-cluster.js';
import { waitUntil } from '../harness/processes.js';

/** What `ls -o json` prints: a SnapshotRecord without its internal fields. */
type LsEntry = Omit<SnapshotRecord, 'locationId' | 'key'>;

async function s3Sha256(store: S3Store, key: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of await store.read(key, AbortSignal.timeout(30_000))) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

describe('on-demand snapshots, inventory and reconcile (3 stewards, real s3rver)', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  let bucketStore: S3Store;
  const ls = async (node = 0): Promise<LsEntry[]> => {
    const result = await cluster.ctl(['--endpoint', cluster.node(node).grpc, '-o', 'json', 'ls']);
    expect(result.code, result.stderr).toBe(0);
    return JSON.parse(result.stdout) as LsEntry[];
  };

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'snapshots' });
    bucketStore = new S3Store(s3.storeOptions('backups'));
    cluster = await StewardCluster.create({
      size: 3,
      extraArgs: [...s3.stewardArgs(), '--etcd-disable-snapshots=true', '--etcd-snapshot-reconcile-interval=2s'],
    });
    await cluster.startAll();
    await cluster.waitForStableLeader(20_000);
  });
  afterAll(async () => {
    bucketStore?.close();
    await cluster?.destroy();
    await s3?.stop();
  });

  it('save stores identical, verifiable bytes locally and in S3', async () => {
    const result = await cluster.ctl(['--endpoint', cluster.node(1).grpc, '-o', 'json', 'save']);
    expect(result.code, result.stderr).toBe(0);
    const saved = JSON.parse(result.stdout) as { name: string; size: number; sha256: string; locations: string[] };
    expect(saved.name).toMatch(/^on-demand-node-2-\d{10}$/);
    expect(saved.locations).toHaveLength(2);
    const localPath = join(cluster.node(1).stateDir, 'snapshots', saved.name);
    expect(saved.locations).toContain(`file://${localPath}`);
    expect(saved.locations).toContain(`s3://snapshots/backups/${saved.name}`);
    expect(await sha256File(localPath)).toBe(saved.sha256);
    expect(await s3Sha256(bucketStore, saved.name)).toBe(saved.sha256);
    expect(await etcdTrailerOk(localPath)).toBe(true);
    const metadata = await readJson<Record<string, unknown>>(`${localPath}.metadata.json`);
    expect(metadata).toMatchObject({ name: saved.name, node: 'node-2', kind: 'on-demand', size: saved.size, sha256: saved.sha256, compressed: false });
    expect(metadata.revision).toBeGreaterThan(0);
    expect(metadata.etcdVersion).toBe('3.4.23');
    const restore = await restoreWithEtcdctl(localPath);
    expect(restore.code, restore.output).toBe(0);
    expect(existsSync(join(restore.dataDir, 'member', 'snap', 'db'))).toBe(true);
  });

  it('ls shows each snapshot once per location with exactly the documented fields', async () => {
    const entries = await ls(2);
    expect(entries.length).toBeGreaterThanOrEqual(2);
    for (const entry of entries) {
      expect(Object.keys(entry).sort()).toEqual(['compressed', 'created', 'kind', 'location', 'name', 'node', 'sha256', 'size', 'verified']);
    }
    const name = entries[0]?.name as string;
    expect(
      entries
        .filter((e) => e.name === name)
        .map((e) => e.location.split(':')[0])
        .sort(),
    ).toEqual(['file', 's3']);
    const text = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'list']);
    expect(text.stdout).toMatch(/NAME\s+NODE\s+LOCATION/);
    expect((await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'l'])).code).toBe(0);
  });

  it('rejects bad names and unknown snapshots without deleting anything', async () => {
    const before = await ls();
    for (const bad of ['../x', 'Upper', 'with space', 'a'.repeat(300), '']) {
      const result = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'save', '--name', bad]);
      expect(result.code, bad).toBe(2);
      expect(result.stderr).toMatch(/^error\[INVALID_ARGUMENT\]: --name: /);
    }
    const unknown = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'delete', 'no-such-snapshot', before[0]?.name as string]);
    expect(unknown.code).toBe(3);
    expect(unknown.stderr).toMatch(/error\[NOT_FOUND\]: no snapshot named no-such-snapshot/);
    expect(await ls()).toEqual(before);
    const retention = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'prune', '--snapshot-retention', '0']);
    expect(retention.code).toBe(2);
    const negative = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'prune', '--snapshot-retention=-3']);
    expect(negative.code).toBe(2);
  });

  it('delete removes a snapshot from every location and the inventory', async () => {
    const result = await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'save', '--name', 'before-upgrade']);
    expect(result.code, result.stderr).toBe(0);
    const { name } = JSON.parse(result.stdout) as { name: string };
    expect(name).toMatch(/^before-upgrade-node-1-\d+$/);
    // Delete through another steward: the local copy lives on node-1 and is removed over the peer API.
    const deleted = await cluster.ctl(['--endpoint', cluster.node(2).grpc, 'delete', name]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect((await ls()).some((e) => e.name === name)).toBe(false);
    expect(existsSync(join(cluster.node(0).stateDir, 'snapshots', name))).toBe(false);
    expect(await bucketStore.head(name, AbortSignal.timeout(5000))).toBeUndefined();
  });

  it('reconcile drops records of files deleted behind its back and adopts snapshots copied into S3', async () => {
    const saved = JSON.parse((await cluster.ctl(['--endpoint', cluster.node(2).grpc, '-o', 'json', 'save'])).stdout) as { name: string };
    const localPath = join(cluster.node(2).stateDir, 'snapshots', saved.name);
    await unlink(`${localPath}.metadata.json`);
    await unlink(localPath);
    await waitUntil(
      'the local record to disappear',
      async () => !(await ls()).some((e) => e.name === saved.name && e.location.startsWith('file:')),
      15_000,
      500,
    );
    expect((await ls()).some((e) => e.name === saved.name && e.location.startsWith('s3:'))).toBe(true);

    // An operator copies a snapshot (object + metadata) into the bucket under a new name.
    const source = (await ls()).find((e) => e.location.startsWith('s3:')) as LsEntry;
    const copyName = 'on-demand-imported-1700000000';
    const metadata = JSON.parse((await bucketStore.readSmall(`${source.name}.metadata.json`, AbortSignal.timeout(5000))).toString()) as Record<string, unknown>;
    const writer = await bucketStore.createWriter(copyName, AbortSignal.timeout(30_000));
    for await (const chunk of await bucketStore.read(source.name, AbortSignal.timeout(30_000))) await writer.write(chunk as Buffer);
    await writer.commit();
    await bucketStore.putSmall(`${copyName}.metadata.json`, JSON.stringify({ ...metadata, name: copyName, key: copyName }), AbortSignal.timeout(5000));
    const adopted = await waitUntil('the copied snapshot to appear', async () => (await ls()).find((e) => e.name === copyName), 15_000, 500);
    expect(adopted).toMatchObject({ location: `s3://snapshots/backups/${copyName}`, sha256: source.sha256, size: source.size });
  });

  it('prune keeps the newest N of each kind per location and prints what it removed', async () => {
    const names: string[] = [];
    for (let i = 0; i < 3; i++) {
      const result = await cluster.ctl(['--endpoint', cluster.node(1).grpc, '-o', 'json', 'save', '--name', 'prune-me']);
      expect(result.code, result.stderr).toBe(0);
      names.push((JSON.parse(result.stdout) as { name: string }).name);
      // Names carry whole seconds: wait so the three are distinct.
      await new Promise((resolve) => setTimeout(resolve, 1100));
    }
    const pruned = await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'prune', '--snapshot-retention', '1']);
    expect(pruned.code, pruned.stderr).toBe(0);
    const removed = JSON.parse(pruned.stdout) as LsEntry[];
    expect(removed.map((e) => e.name)).toEqual(expect.arrayContaining([names[0], names[1]]));
    expect(removed.some((e) => e.name === names[2])).toBe(false);
    const after = await ls();
    // Per location, one on-demand snapshot is left: the newest, which is names[2] at node-2's dir and in S3.
    const onDemandPerLocation = new Map<string, string[]>();
    for (const entry of after.filter((e) => e.kind === 'on-demand')) {
      const location = entry.location.slice(0, entry.location.lastIndexOf('/'));
      onDemandPerLocation.set(location, [...(onDemandPerLocation.get(location) ?? []), entry.name]);
    }
    for (const list of onDemandPerLocation.values()) expect(list).toHaveLength(1);
    expect(after.filter((e) => e.name === names[2]).length).toBe(2);
  });

  it('refuses to snapshot a cluster without quorum, with or without --force', async () => {
    await cluster.stop(0);
    await cluster.stop(1);
    const refused = await cluster.ctl(['--endpoint', cluster.node(2).grpc, 'save']);
    expect(refused.code).toBe(4);
    expect(refused.stderr).toMatch(/^error\[CLUSTER_UNHEALTHY\]: refusing to snapshot an unhealthy cluster: only \d of 3 members are healthy/);
    const forced = await cluster.ctl(['--endpoint', cluster.node(2).grpc, 'save', '--force']);
    expect(forced.code).toBe(4);
    expect(forced.stderr).toMatch(/^error\[NO_HEALTHY_MEMBER\]: /);
    const metrics = await (await fetch(`http://${cluster.node(2).http}/metrics`)).text();
    expect(metrics).toMatch(/etcd_steward_snapshot_failures_total\{reason="cluster_unhealthy"\} [1-9]/);
    expect(readdirSync(join(cluster.node(2).stateDir, 'snapshots')).filter((f) => f.startsWith('.'))).toEqual([]);
  });
});

describe('peers that know who they talk to; destructive work on the leader only (3 stewards, no S3)', () => {
  let cluster: StewardCluster;
  let leader: number;
  let confused: number;
  let other: number;
  const grpc = (i: number): string => cluster.node(i).grpc;
  const ls = async (node: number, all = false): Promise<LsEntry[] | { snapshots: LsEntry[]; orphans: Array<{ location: string; key: string }> }> => {
    const result = await cluster.ctl(['--endpoint', grpc(node), '-o', 'json', 'ls', ...(all ? ['--all'] : [])]);
    expect(result.code, result.stderr).toBe(0);
    return JSON.parse(result.stdout) as LsEntry[];
  };
  const save = async (node: number, base: string): Promise<string> => {
    const result = await cluster.ctl(['--endpoint', grpc(node), '-o', 'json', 'save', '--name', base]);
    expect(result.code, result.stderr).toBe(0);
    return (JSON.parse(result.stdout) as { name: string }).name;
  };

  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 3, extraArgs: ['--etcd-disable-snapshots=true', '--etcd-snapshot-reconcile-interval=2s'] });
    await cluster.startAll();
    ({ leader } = await cluster.waitForStableLeader(20_000));
    confused = (leader + 1) % 3;
    other = (leader + 2) % 3;
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('a steward whose registry entry points at the leader is refused, its records kept, and delete exits 1 naming it', async () => {
    const name = await save(confused, 'kept');
    const confusedNode = cluster.node(confused).name;
    // The static-pod default: the steward advertises an address that is really another steward's (here the leader's own).
    await cluster.stop(confused);
    cluster.setNodeArgs(confused, [`--advertise-grpc=${grpc(leader)}`]);
    cluster.start(confused);
    await waitUntil(
      'the restarted steward to register its wrong address',
      async () => (cluster.logs(confused).match(/registered with the other stewards/g)?.length ?? 0) >= 2 || undefined,
      30_000,
      250,
    );
    await cluster.waitForStableLeader(30_000);
    // Two reconcile intervals and more: the leader must not take its own answer for the confused node's dir.
    await waitUntil('the leader to refuse the wrong peer', async () => /WRONG_PEER|cannot reach steward/.test(cluster.logs(leader)) || undefined, 20_000, 500);
    await sleep(4500);
    const entries = (await ls(other)) as LsEntry[];
    expect(entries.filter((e) => e.name === name).map((e) => e.node)).toEqual([confusedNode]);
    const localPath = join(cluster.node(confused).stateDir, 'snapshots', name);
    expect(existsSync(localPath)).toBe(true);

    const deleted = await cluster.ctl(['--endpoint', grpc(other), 'delete', name]);
    expect(deleted.code, deleted.stderr).toBe(1);
    expect(deleted.stderr).toContain(`NOT removed: ${name}`);
    expect(deleted.stderr).toContain(confusedNode);
    expect(deleted.stderr).toMatch(/error\[PARTIAL_DELETE\]: delete removed 0 copies but could not remove 1/);
    expect(existsSync(localPath)).toBe(true);
    expect(((await ls(other)) as LsEntry[]).some((e) => e.name === name)).toBe(true);
  });

  it('prune through a follower is forwarded to the leader, which alone removes snapshots', async () => {
    const first = await save(leader, 'forwarded');
    await sleep(1100);
    const second = await save(leader, 'forwarded');
    const pruned = await cluster.ctl(['--endpoint', grpc(other), '-o', 'json', 'prune', '--snapshot-retention', '1']);
    expect(pruned.code, pruned.stderr).toBe(0);
    expect((JSON.parse(pruned.stdout) as LsEntry[]).map((e) => e.name)).toContain(first);
    expect(cluster.logs(other)).toContain('forwarding a destructive call to the leader');
    expect(cluster.logs(other)).not.toContain('retention: removed');
    expect(cluster.logs(leader)).toContain('retention: removed an old on-demand snapshot');
    const names = ((await ls(other)) as LsEntry[]).map((e) => e.name);
    expect(names).toContain(second);
    expect(names).not.toContain(first);
  });

  it('an orphaned data object is listed by ls --all and the metric, and prune removes it once past the grace', async () => {
    const name = await save(leader, 'orphan');
    const dir = join(cluster.node(leader).stateDir, 'snapshots');
    await unlink(join(dir, `${name}.metadata.json`));
    // Older than the grace (an hour at least), so prune may take it; a fresh one would be left alone.
    const past = new Date(Date.now() - 3 * 3600_000);
    await utimes(join(dir, name), past, past);
    const listed = await waitUntil(
      'the orphan to be listed',
      async () => {
        const all = (await ls(other, true)) as { orphans: Array<{ location: string; key: string }> };
        return all.orphans.find((o) => o.key === name);
      },
      15_000,
      500,
    );
    expect(listed.location).toBe(`file://${join(dir, name)}`);
    const metrics = await (await fetch(`http://${cluster.node(leader).http}/metrics`)).text();
    expect(metrics).toMatch(new RegExp(`etcd_steward_orphaned_objects\\{location="local:${cluster.node(leader).name}"\\} [1-9]`));
    const pruned = await cluster.ctl(['--endpoint', grpc(leader), 'prune']);
    expect(pruned.code, pruned.stderr).toBe(0);
    expect(pruned.stdout).toContain(`removed orphaned data object file://${join(dir, name)}`);
    expect(existsSync(join(dir, name))).toBe(false);
    expect(((await ls(other, true)) as { orphans: Array<{ key: string }> }).orphans.some((o) => o.key === name)).toBe(false);
  });
});
