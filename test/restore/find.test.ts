import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, truncate } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { createClusterClient, type Etcd3 } from '../../src/etcd/client.js';
import { NotFoundError, PreconditionError, exitCodeFor } from '../../src/errors/index.js';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { findSnapshot, listStores, type FoundSnapshot, type SnapshotStores } from '../../src/restore/find.js';
import { PeerPool, type PeerAddress } from '../../src/rpc/peer-pool.js';
import { RpcServer } from '../../src/rpc/server.js';
import type { StewardCtlHandlers, StewardPeerHandlers } from '../../src/rpc/types.js';
import type { SnapshotMetadata } from '../../src/snapshot/metadata.js';
import { metadataKey } from '../../src/snapshot/names.js';
import { S3Store } from '../../src/store/s3.js';
import type { BackupStore } from '../../src/store/store.js';
import { SnapshotHandlers } from '../../src/steward/snapshot-handlers.js';
import { SnapshotService } from '../../src/steward/snapshots.js';
import { freePort } from '../harness/ports.js';
import { S3Server } from '../harness/s3.js';

const logger = pino({ level: 'silent' });
const notHere = (): Promise<never> => Promise.reject(new PreconditionError('NOT_HERE', 'not served in this test'));

/** A snapshot's object and then its metadata (written last, as the snapshotter does) in one real store. */
async function putSnapshot(store: BackupStore, name: string, node: string, bytes: Buffer): Promise<SnapshotMetadata> {
  const signal = AbortSignal.timeout(20_000);
  const writer = await store.createWriter(name, signal);
  await writer.write(bytes);
  await writer.commit();
  const metadata: SnapshotMetadata = {
    formatVersion: 1,
    name,
    key: name,
    node,
    kind: 'on-demand',
    created: new Date(Number(name.split('-').pop()) * 1000).toISOString(),
    size: bytes.length,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    compressed: false,
    etcdVersion: '3.4.23',
    clusterId: 'cafe',
    revision: 42,
    fencingToken: '',
  };
  await store.putSmall(metadataKey(name), JSON.stringify(metadata), signal);
  return metadata;
}

async function sha256Of(source: AsyncIterable<Buffer>): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of source) hash.update(chunk);
  return hash.digest('hex');
}

/** One steward's snapshot parts, built as steward.ts builds them; etcd at `etcdEndpoint` (nothing listens there). */
async function stewardParts(
  name: string,
  dir: string,
  etcdEndpoint: string,
  s3: S3Store | undefined,
  peers: PeerAddress[],
): Promise<{ service: SnapshotService; handlers: SnapshotHandlers; client: Etcd3; pool: PeerPool }> {
  const config = await loadConfig(
    ['--grpc-plaintext-dev=true', `--name=${name}`, `--state-dir=${join(dir, 'state')}`, `--etcd-snapshot-dir=${join(dir, 'snapshots')}`],
    '0.0.0',
  );
  const client = createClusterClient([etcdEndpoint], { callTimeoutMs: 3000 });
  const pool = new PeerPool({ list: () => Promise.resolve(peers) }, { node: name, clusterId: () => '', fencingToken: () => '' });
  const service = new SnapshotService(
    {
      config,
      client,
      peers: pool,
      checkHealth: notHere,
      memberClient: () => client,
      metrics: new StewardMetrics(),
      logger,
      currentTerm: () => undefined,
      leader: () => Promise.resolve(undefined),
    },
    s3,
  );
  return { service, handlers: new SnapshotHandlers(service), client, pool };
}

describe('finding snapshots without etcd: own dir, real s3rver, a real peer steward over gRPC', () => {
  let root: string;
  let s3: S3Server;
  let s3Store: S3Store;
  let self: Awaited<ReturnType<typeof stewardParts>>;
  let peer: Awaited<ReturnType<typeof stewardParts>>;
  let peerServer: RpcServer;
  let blackHole: Server;
  const held: Socket[] = [];
  let stores: SnapshotStores;
  const shared = 'on-demand-node-1-1700000001';
  const peerOnly = 'on-demand-node-2-1700000002';
  const s3Only = 'on-demand-node-1-1700000003';
  const conflicting = 'on-demand-node-1-1700000004';
  const truncated = 'on-demand-node-1-1700000005';
  const meta: Record<string, SnapshotMetadata> = {};

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'steward-find-'));
    s3 = await S3Server.start({ bucket: 'snapshots' });
    s3Store = new S3Store(s3.storeOptions('backups'));
    const deadEtcd = `http://127.0.0.1:${await freePort()}`;
    // A steward that accepts connections and never answers: the bound, not the peer, ends the wait.
    blackHole = createServer((socket) => void held.push(socket));
    await new Promise<void>((resolve) => blackHole.listen(0, '127.0.0.1', resolve));
    const blackHolePort = (blackHole.address() as { port: number }).port;

    peer = await stewardParts('node-2', join(root, 'node-2'), deadEtcd, undefined, []);
    peerServer = await RpcServer.start({
      host: '127.0.0.1',
      port: 0,
      // Only List and the snapshot side of the peer API are called here; the restore calls are not served.
      handlers: { ...({} as StewardCtlHandlers), list: (r, ctx) => peer.handlers.list(r, ctx) },
      peer: { ...({} as StewardPeerHandlers), ...peer.handlers.peer },
      identity: { node: 'node-2', clusterId: () => '' },
      logger,
    });
    const peerAddress = { node: 'node-2', grpc: `127.0.0.1:${peerServer.port}` };
    self = await stewardParts('node-1', join(root, 'node-1'), deadEtcd, s3Store, [
      { node: 'node-1', grpc: '127.0.0.1:1' },
      peerAddress,
      // Listed twice (spec and registry): asked once, listed once.
      { ...peerAddress },
      { node: 'node-3', grpc: `127.0.0.1:${await freePort()}` },
      { node: 'node-4', grpc: `127.0.0.1:${blackHolePort}` },
    ]);
    stores = self.service.stores({ timeoutMs: 3000 });

    const local = self.service.local.store;
    const peerLocal = peer.service.local.store;
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    meta[shared] = await putSnapshot(local, shared, 'node-1', bytes);
    await putSnapshot(s3Store, shared, 'node-1', bytes);
    await putSnapshot(peerLocal, shared, 'node-1', bytes);
    meta[peerOnly] = await putSnapshot(peerLocal, peerOnly, 'node-2', randomBytes(200_000));
    meta[s3Only] = await putSnapshot(s3Store, s3Only, 'node-1', randomBytes(100_000));
    meta[conflicting] = await putSnapshot(local, conflicting, 'node-1', randomBytes(1000));
    await putSnapshot(s3Store, conflicting, 'node-1', randomBytes(1000));
    await putSnapshot(local, truncated, 'node-1', randomBytes(5000));
    meta[truncated] = await putSnapshot(s3Store, truncated, 'node-1', randomBytes(5000));
    await truncate(join(root, 'node-1', 'snapshots', truncated), 100);
  });
  afterAll(async () => {
    for (const socket of held) socket.destroy();
    blackHole?.close();
    await peerServer?.stop();
    for (const parts of [self, peer]) {
      parts?.pool.close();
      parts?.service.close();
      parts?.client.close();
    }
    await s3?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  const problemsOf = (found: { problems: string[] }): string => found.problems.join('\n');

  it('lists every reachable store once per (name, location), and names the stewards that did not answer, within the bound', async () => {
    const started = Date.now();
    const listed = await listStores(stores, AbortSignal.timeout(30_000));
    expect(Date.now() - started).toBeLessThan(5000);
    const at = (name: string): string[] =>
      listed.records
        .filter((r) => r.name === name)
        .map((r) => r.locationId)
        .sort();
    expect(at(shared)).toEqual(['local:node-1', 'local:node-2', 's3']);
    expect(at(peerOnly)).toEqual(['local:node-2']);
    expect(at(s3Only)).toEqual(['s3']);
    // The truncated local copy is not a snapshot; its S3 copy is.
    expect(at(truncated)).toEqual(['s3']);
    expect(listed.records.find((r) => r.name === peerOnly)).toMatchObject({
      node: 'node-2',
      size: 200_000,
      sha256: meta[peerOnly]?.sha256,
      location: `file://${join(root, 'node-2', 'snapshots', peerOnly)}`,
    });
    expect(listed.problems).toHaveLength(2);
    expect(problemsOf(listed)).toMatch(/node-3's dir \(steward at 127\.0\.0\.1:\d+\): cannot reach the steward/);
    expect(problemsOf(listed)).toMatch(/node-4's dir \(steward at 127\.0\.0\.1:\d+\): no answer within 3 s/);
    const sorted = [...listed.records].sort(
      (a, b) => a.created.localeCompare(b.created) || a.name.localeCompare(b.name) || a.locationId.localeCompare(b.locationId),
    );
    expect(listed.records).toEqual(sorted);
  });

  it('finds a snapshot everywhere it is, own dir first, then S3, then peers, and every source streams its bytes', async () => {
    const found = await findSnapshot(shared, stores, AbortSignal.timeout(30_000));
    expect(found.metadata).toEqual(meta[shared]);
    expect(found.metadataFrom).toBe('local');
    expect(found.sources.map((s) => [s.kind, s.node, s.url])).toEqual([
      ['local', 'node-1', `file://${join(root, 'node-1', 'snapshots', shared)}`],
      ['s3', 'node-1', `s3://snapshots/backups/${shared}`],
      ['peer', 'node-2', `file://${join(root, 'node-2', 'snapshots', shared)}`],
    ]);
    for (const source of found.sources) expect(await sha256Of(source.open(AbortSignal.timeout(30_000))), source.url).toBe(meta[shared]?.sha256);
    expect(problemsOf(found)).toMatch(/node-3.*\n.*node-4/);
  });

  it("finds a snapshot only a peer holds, with the metadata the peer's listing carries", async () => {
    const found: FoundSnapshot = await findSnapshot(peerOnly, stores, AbortSignal.timeout(30_000));
    expect(found.metadataFrom).toBe('peer');
    expect(found.metadata).toMatchObject({ name: peerOnly, node: 'node-2', size: 200_000, sha256: meta[peerOnly]?.sha256, compressed: false, revision: 0 });
    expect(found.sources.map((s) => s.kind)).toEqual(['peer']);
    expect(await sha256Of((found.sources[0] as FoundSnapshot['sources'][number]).open(AbortSignal.timeout(30_000)))).toBe(meta[peerOnly]?.sha256);
  });

  it('finds one only S3 holds, and passes over a broken own copy for a good S3 one, saying so', async () => {
    const onlyS3 = await findSnapshot(s3Only, stores, AbortSignal.timeout(30_000));
    expect(onlyS3.metadata).toEqual(meta[s3Only]);
    expect(onlyS3.sources.map((s) => s.kind)).toEqual(['s3']);
    const broken = await findSnapshot(truncated, stores, AbortSignal.timeout(30_000));
    expect(broken.metadata).toEqual(meta[truncated]);
    expect(broken.sources.map((s) => s.kind)).toEqual(['s3']);
    expect(problemsOf(broken)).toMatch(new RegExp(`this steward's dir .*: .*${truncated} is 100 bytes, not the 5000 its metadata records; not using it`));
  });

  it('leaves out a copy that holds other bytes under the same name', async () => {
    const found = await findSnapshot(conflicting, stores, AbortSignal.timeout(30_000));
    expect(found.metadata).toEqual(meta[conflicting]);
    expect(found.sources.map((s) => s.kind)).toEqual(['local']);
    expect(problemsOf(found)).toMatch(new RegExp(`s3://snapshots/backups/${conflicting} holds other bytes under the name ${conflicting}`));
  });

  it('is NOT_FOUND (exit 3) for a name no store holds, naming every store looked in and those that could not be', async () => {
    const err = await findSnapshot('on-demand-nowhere-1700000009', stores, AbortSignal.timeout(30_000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(exitCodeFor(err)).toBe(3);
    const message = (err as Error).message;
    expect(message).toMatch(/^no snapshot named on-demand-nowhere-1700000009 in any store: looked in /);
    for (const where of [`file://${join(root, 'node-1', 'snapshots')}`, 's3://snapshots/backups', "node-2's dir", "node-3's dir", "node-4's dir"]) {
      expect(message).toContain(where);
    }
    expect(message).toMatch(/these could not be looked in, and one of them may hold it: .*node-3.*node-4.*no answer within 3 s/);
  });

  it('reports an S3 that cannot answer as a problem and still lists the rest', async () => {
    const deadS3 = new S3Store({ ...s3.storeOptions('backups'), endpoint: `http://127.0.0.1:${await freePort()}`, timeoutMs: 1000 });
    try {
      const listed = await listStores({ ...stores, s3: { locationId: 's3', store: deadS3 } }, AbortSignal.timeout(30_000));
      expect(listed.records.some((r) => r.locationId === 's3')).toBe(false);
      expect(listed.records.filter((r) => r.name === shared).map((r) => r.locationId)).toEqual(['local:node-1', 'local:node-2']);
      expect(problemsOf(listed)).toMatch(/^S3 \(s3:\/\/snapshots\/backups\): /m);
    } finally {
      deadS3.close();
    }
  });

  it('ls with etcd unreachable lists the stores themselves and says why in fallback', async () => {
    const ctx = { signal: AbortSignal.timeout(20_000), metadata: new Metadata() };
    const listed = await self.handlers.list({ all: false }, ctx);
    expect(listed.fallback).toMatch(
      /^the snapshot inventory in etcd could not be read \(.+\); this listing comes from the snapshot stores themselves; these stores could not be listed, so it may be incomplete: .*node-3.*node-4/,
    );
    expect(listed.snapshots.filter((r) => r.name === shared).map((r) => r.locationId)).toEqual(['local:node-1', 'local:node-2', 's3']);
  });

  it("the peer's ReadLocalSnapshot is NOT_FOUND for a name its dir holds no complete copy of", async () => {
    const node2 = self.pool.peer({ node: 'node-2', grpc: `127.0.0.1:${peerServer.port}` });
    const err = await sha256Of(node2.readLocal(s3Only, AbortSignal.timeout(5000))).catch((e: unknown) => e);
    expect(exitCodeFor(err)).toBe(3);
    expect((err as Error).message).toMatch(new RegExp(`steward node-2 has no complete snapshot named ${s3Only}`));
  });
});
