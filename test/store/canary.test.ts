import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/observability/logger.js';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { runS3Canary } from '../../src/store/canary.js';
import { S3Store } from '../../src/store/s3.js';
import { S3FaultProxy } from '../harness/s3-fault-proxy.js';
import { S3Server } from '../harness/s3.js';
import { waitUntil } from '../harness/processes.js';

const gauge = async (metrics: StewardMetrics): Promise<number | undefined> => (await metrics.s3Healthy.get()).values[0]?.value;

describe('S3 canary (real s3rver behind the fault proxy)', () => {
  let s3: S3Server;
  let proxy: S3FaultProxy;
  let store: S3Store;

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'canary' });
    proxy = await S3FaultProxy.start(s3.port);
    proxy.validKeys.add(s3.accessKey);
    // --etcd-s3-timeout as deployed (5 min): only the canary's own bound can notice a hang in time.
    store = new S3Store({ ...s3.storeOptions('backups'), endpoint: proxy.endpoint, timeoutMs: 300_000 });
  });
  afterAll(async () => {
    store?.close();
    await proxy?.stop();
    await s3?.stop();
  });

  it('s3_healthy drops to 0 within one canary period when S3 hangs, and comes back when it answers', async () => {
    const metrics = new StewardMetrics();
    const stop = new AbortController();
    const intervalMs = 1000;
    const running = runS3Canary({ store, node: 'Node_1', intervalMs, metrics, logger: createLogger({ level: 'silent' }) }, stop.signal);
    try {
      await waitUntil('a healthy canary', async () => (await gauge(metrics)) === 1 || undefined, 10_000, 50);
      proxy.failNext(10_000, { kind: 'hang' });
      const hungAt = Date.now();
      await waitUntil('s3_healthy 0', async () => (await gauge(metrics)) === 0 || undefined, 10_000, 50);
      // At most one sleep (the interval) plus the per-canary bound (half the interval here).
      expect(Date.now() - hungAt).toBeLessThan(intervalMs + intervalMs / 2 + 500);
      proxy.clearFaults();
      await waitUntil('healthy again', async () => (await gauge(metrics)) === 1 || undefined, 10_000, 50);
    } finally {
      proxy.clearFaults();
      stop.abort();
      await running;
    }
    // The canary cleans up after itself.
    expect(await store.head('etcd-steward-canary-node_1', AbortSignal.timeout(5000))).toBeUndefined();
  });

  it('stops at once when its signal aborts, even in the middle of a hung call', async () => {
    const metrics = new StewardMetrics();
    const stop = new AbortController();
    proxy.failNext(10_000, { kind: 'hang' });
    try {
      const running = runS3Canary(
        { store, node: 'n2', intervalMs: 60_000, timeoutMs: 30_000, metrics, logger: createLogger({ level: 'silent' }) },
        stop.signal,
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
      const started = Date.now();
      stop.abort();
      await running;
      expect(Date.now() - started).toBeLessThan(1000);
    } finally {
      proxy.clearFaults();
    }
  });
});
