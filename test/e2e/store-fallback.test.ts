import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exitCodeFor } from '../../src/errors/index.js';
import { StewardClient } from '../../src/rpc/client.js';
import { PeerPool, type Peer } from '../../src/rpc/peer-pool.js';
import type { SnapshotRecord } from '../../src/rpc/types.js';
import { S3Server } from '../harness/s3.js';
import { sha256File } from '../harness/snapshot-checks.js';
import { StewardCluster } from '../harness/steward-cluster.js';
import { waitUntil } from '../harness/processes.js';

type LsEntry = Omit<SnapshotRecord, 'locationId' | 'key'>;

/** Reads every byte a peer streams; returns their SHA-256 and count. */
async function drain(source: AsyncIterable<Buffer>): Promise<{ sha256: string; bytes: number; chunks: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  let chunks = 0;
  for await (const chunk of source) {
    hash.update(chunk);
    bytes += chunk.length;
    chunks += 1;
  }
  return { sha256: hash.digest('hex'), bytes, chunks };
}

describe('snapshots without etcd: ls from the stores themselves, a peer streams its local copy (3 stewards, real s3rver)', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  let pool: PeerPool;
  let onNode1: { name: string; size: number; sha256: string };
  let onNode3: { name: string; size: number; sha256: string };
  const peer = (index: number): Peer => pool.peer({ node: cluster.node(index).name, grpc: cluster.node(index).grpc });
  const list = async (index: number, all = false): Promise<{ snapshots: SnapshotRecord[]; orphans: unknown[]; fallback: string; ms: number }> => {
    const client = new StewardClient(cluster.node(index).grpc);
    const started = Date.now();
    try {
      return { ...(await client.list(all)), ms: Date.now() - started };
    } finally {
      client.close();
    }
  };
  const save = async (index: number): Promise<{ name: string; size: number; sha256: string }> => {
    const result = await cluster.ctl(['--endpoint', cluster.node(index).grpc, '-o', 'json', 'save']);
    expect(result.code, result.stderr).toBe(0);
    return JSON.parse(result.stdout) as { name: string; size: number; sha256: string };
  };

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'snapshots' });
    cluster = await StewardCluster.create({ size: 3, extraArgs: [...s3.stewardArgs(), '--etcd-disable-snapshots=true'] });
    await cluster.startAll();
    await cluster.waitForStableLeader(30_000);
    // The caller's identity: a test, not a member; no cluster ID, so only the node name is checked.
    pool = new PeerPool({ list: () => Promise.resolve([]) }, { node: 'test', clusterId: () => '', fencingToken: () => '' });
    onNode1 = await save(0);
    onNode3 = await save(2);
    // Peers are found through the cluster spec with etcd down: wait until the leader has put every address in it.
    await waitUntil(
      'every member grpc address in the spec',
      async () => {
        const result = await cluster.ctl(['--endpoint', cluster.node(2).grpc, '-o', 'json', 'spec', 'get']);
        if (result.code !== 0) return undefined;
        const spec = JSON.parse(result.stdout) as { members?: Array<{ grpc?: string }> };
        return spec.members?.length === 3 && spec.members.every((m) => m.grpc) ? true : undefined;
      },
      30_000,
      500,
    );
  });
  afterAll(async () => {
    pool?.close();
    for (const index of [0, 1]) {
      const pid = cluster?.etcdPid(index);
      if (pid) process.kill(pid, 'SIGCONT');
    }
    await cluster?.destroy();
    await s3?.stop();
  });

  it('with etcd up, ls reads the inventory and says nothing of a fallback', async () => {
    const listed = await list(2);
    expect(listed.fallback).toBe('');
    expect(listed.snapshots.filter((r) => r.name === onNode1.name).map((r) => r.locationId)).toEqual(expect.arrayContaining(['local:node-1', 's3']));
  });

  it('ReadLocalSnapshot streams the bytes of the local file, whose sha256 is the metadata', async () => {
    const path = join(cluster.node(0).stateDir, 'snapshots', onNode1.name);
    const metadata = JSON.parse(await readFile(`${path}.metadata.json`, 'utf8')) as { sha256: string; size: number };
    const read = await drain(peer(0).readLocal(onNode1.name, AbortSignal.timeout(30_000)));
    expect(read.bytes).toBe(metadata.size);
    expect(read.sha256).toBe(metadata.sha256);
    expect(read.sha256).toBe(await sha256File(path));
    expect(read.sha256).toBe(onNode1.sha256);
  });

  it('ReadLocalSnapshot of a name the dir does not hold is NOT_FOUND (exit 3), as is one whose metadata is gone', async () => {
    const err = await drain(peer(0).readLocal('on-demand-nowhere-1700000000', AbortSignal.timeout(10_000))).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'NOT_FOUND', family: 'not-found' });
    expect(exitCodeFor(err)).toBe(3);
    expect((err as Error).message).toMatch(/steward node-1 has no complete snapshot named on-demand-nowhere-1700000000/);
    // node-3's snapshot is not in node-1's dir (only in node-3's and S3).
    await expect(drain(peer(0).readLocal(onNode3.name, AbortSignal.timeout(10_000)))).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('with two etcd members frozen (no quorum), ls on the third lists every store, peers included, and says why', async () => {
    for (const index of [0, 1]) process.kill(cluster.etcdPid(index) as number, 'SIGSTOP');
    try {
      const listed = await list(2, true);
      expect(listed.fallback).toMatch(/^the snapshot inventory in etcd could not be read \(.+\); this listing comes from the snapshot stores themselves/);
      expect(listed.ms).toBeLessThan(15_000);
      const where = (name: string): string[] =>
        listed.snapshots
          .filter((r) => r.name === name)
          .map((r) => r.locationId)
          .sort();
      // node-1's copy comes from node-1's steward over the peer API: its steward answers while its etcd is frozen.
      expect(where(onNode1.name)).toEqual(['local:node-1', 's3']);
      expect(where(onNode3.name)).toEqual(['local:node-3', 's3']);
      const local1 = listed.snapshots.find((r) => r.name === onNode1.name && r.locationId === 'local:node-1');
      expect(local1).toMatchObject({
        size: onNode1.size,
        sha256: onNode1.sha256,
        location: `file://${join(cluster.node(0).stateDir, 'snapshots', onNode1.name)}`,
      });
      // A peer still streams its copy with its etcd frozen.
      expect((await drain(peer(0).readLocal(onNode1.name, AbortSignal.timeout(30_000)))).sha256).toBe(onNode1.sha256);
    } finally {
      for (const index of [0, 1]) process.kill(cluster.etcdPid(index) as number, 'SIGCONT');
    }
    await cluster.waitForStableLeader(30_000);
    expect((await list(2)).fallback).toBe('');
  });

  it('with two stewards stopped, ls -o json on the survivor still lists the snapshots and the fallback names the stores it could not list', async () => {
    await cluster.stop(0);
    await cluster.stop(1);
    const result = await cluster.ctl(['--endpoint', cluster.node(2).grpc, '-o', 'json', 'ls']);
    expect(result.code, result.stderr).toBe(0);
    const entries = JSON.parse(result.stdout) as LsEntry[];
    expect(entries.filter((e) => e.name === onNode1.name).map((e) => e.location)).toEqual([`s3://snapshots/backups/${onNode1.name}`]);
    expect(
      entries
        .filter((e) => e.name === onNode3.name)
        .map((e) => e.location.split(':')[0])
        .sort(),
    ).toEqual(['file', 's3']);
    const listed = await list(2);
    expect(listed.fallback).toMatch(/^the snapshot inventory in etcd could not be read/);
    expect(listed.fallback).toMatch(
      /these stores could not be listed, so it may be incomplete: .*node-1's dir \(steward at 127\.0\.0\.1:\d+\): .*node-2's dir/,
    );
    expect(listed.ms).toBeLessThan(15_000);
  });
});
