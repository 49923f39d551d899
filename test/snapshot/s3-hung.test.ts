import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMemberClient } from '../../src/etcd/client.js';
import { ClusterProbe } from '../../src/etcd/health.js';
import { createLogger } from '../../src/observability/logger.js';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { Snapshotter } from '../../src/snapshot/snapshotter.js';
import { LocalStore } from '../../src/store/local.js';
import { S3Store } from '../../src/store/s3.js';
import { EtcdCluster, fillEtcd } from '../harness/etcd-cluster.js';
import { S3FaultProxy } from '../harness/s3-fault-proxy.js';
import { S3Server } from '../harness/s3.js';
import { sha256File } from '../harness/snapshot-checks.js';

const MIB = 1024 * 1024;

describe('a hung S3 costs only the S3 copy (real etcd, real s3rver behind a proxy that holds every request)', () => {
  let etcd: EtcdCluster;
  let s3: S3Server;
  let proxy: S3FaultProxy;
  let hungStore: S3Store;
  let direct: S3Store;
  let probe: ClusterProbe;
  let snapshotter: Snapshotter;
  let metrics: StewardMetrics;
  const clients: Array<ReturnType<typeof createMemberClient>> = [];

  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
    s3 = await S3Server.start({ bucket: 'hung' });
    proxy = await S3FaultProxy.start(s3.port);
    proxy.validKeys.add(s3.accessKey);
    // --etcd-s3-timeout as deployed (5 min): the snapshot must not wait on it.
    hungStore = new S3Store({ ...s3.storeOptions('backups'), endpoint: proxy.endpoint, timeoutMs: 300_000, partSizeBytes: 5 * MIB, queueSize: 2 });
    direct = new S3Store(s3.storeOptions('backups'));
    probe = new ClusterProbe(etcd.endpoints, 2000);
    metrics = new StewardMetrics();
    snapshotter = new Snapshotter({
      node: 'etcd-1',
      stores: [
        { locationId: 'local:etcd-1', store: new LocalStore(join(etcd.root, 'snapshots')) },
        { locationId: 's3', store: hungStore },
      ],
      compress: false,
      timeoutMs: 120_000,
      checkHealth: (signal) => probe.probe(signal),
      memberClient: (endpoint) => {
        const client = createMemberClient(endpoint, { callTimeoutMs: 10_000 });
        clients.push(client);
        return client;
      },
      metrics,
      logger: createLogger({ level: 'silent' }),
      remoteIdleTimeoutMs: 1500,
      remoteCommitTimeoutMs: 2000,
    });
  });
  afterAll(async () => {
    proxy?.clearFaults();
    probe?.close();
    for (const client of clients) client.close();
    hungStore?.close();
    direct?.close();
    await proxy?.stop();
    await s3?.stop();
    await etcd?.stop();
  });

  const saveWhileHung = async (): Promise<{ ms: number; result: Awaited<ReturnType<Snapshotter['take']>> }> => {
    proxy.failNext(100_000, { kind: 'hang' });
    const started = Date.now();
    try {
      const result = await snapshotter.take({ kind: 'on-demand', fencingToken: '', signal: AbortSignal.timeout(60_000) });
      return { ms: Date.now() - started, result };
    } finally {
      proxy.clearFaults();
    }
  };

  it('a small snapshot (one S3 part, sent at commit): stored locally within seconds, the S3 failure reported', async () => {
    const { ms, result } = await saveWhileHung();
    expect(ms).toBeLessThan(6000);
    expect(result.copies.map((c) => c.locationId)).toEqual(['local:etcd-1']);
    expect(result.failures).toEqual([{ locationId: 's3', error: expect.stringMatching(/did not finish within 2000 ms/) as unknown as string }]);
    expect(await sha256File(join(etcd.root, 'snapshots', result.metadata.name))).toBe(result.metadata.sha256);
    expect(await direct.head(`${result.metadata.name}.metadata.json`, AbortSignal.timeout(5000))).toBeUndefined();
    expect((await metrics.snapshotFailures.get()).values.filter((v) => v.value > 0)).toEqual([{ labels: { reason: 'location_s3' }, value: 1 }]);
  });

  it('a 24 MiB snapshot (S3 stalls mid-stream): the local copy does not wait for S3, S3 is dropped as stalled', async () => {
    await fillEtcd(etcd.endpoints, 24);
    // The name check (a HEAD to S3) used to run before the stream: with S3 hung, nothing was written at all.
    const { ms, result } = await saveWhileHung();
    expect(ms).toBeLessThan(8000);
    expect(result.metadata.size).toBeGreaterThan(24 * MIB);
    expect(result.copies.map((c) => c.locationId)).toEqual(['local:etcd-1']);
    expect(result.failures).toHaveLength(1);
    expect(result.failures[0]?.error).toMatch(/accepted no snapshot data for 1500 ms|did not finish within 2000 ms/);
    expect(await sha256File(join(etcd.root, 'snapshots', result.metadata.name))).toBe(result.metadata.sha256);
  });

  it('S3 answering again: the next snapshot stores both copies', async () => {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const result = await snapshotter.take({ kind: 'on-demand', fencingToken: '', signal: AbortSignal.timeout(60_000) });
    expect(result.failures).toEqual([]);
    expect(result.copies.map((c) => c.locationId)).toEqual(['local:etcd-1', 's3']);
    expect((await direct.head(result.metadata.name, AbortSignal.timeout(5000)))?.size).toBe(result.metadata.size);
  });
});
