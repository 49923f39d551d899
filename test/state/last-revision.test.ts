import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ClusterProbe } from '../../src/etcd/health.js';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { LastRevisionFile, lastRevisionPath, readLastRevision } from '../../src/state/last-revision.js';
import { HealthMonitor } from '../../src/steward/health-monitor.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';

async function onDisk(stateDir: string): Promise<{ revision: number; ino: number } | undefined> {
  const path = lastRevisionPath(stateDir);
  const info = await stat(path).catch(() => undefined);
  if (!info) return undefined;
  return { revision: await readLastRevision(stateDir), ino: info.ino };
}

async function eventually(what: () => Promise<boolean>, timeoutMs = 2_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await what())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(10);
  }
}

describe('the last revision seen', () => {
  let root: string;
  let stateDir: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'last-revision-test-'));
    stateDir = join(root, 'state');
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('is 0 before anything was recorded', async () => {
    expect(await readLastRevision(stateDir)).toBe(0);
  });

  it('keeps the maximum, written at once the first time, as a 0600 file', async () => {
    const file = new LastRevisionFile(stateDir, { minIntervalMs: 60_000 });
    file.observe(120);
    await eventually(async () => (await onDisk(stateDir))?.revision === 120);
    expect((await stat(lastRevisionPath(stateDir))).mode & 0o777).toBe(0o600);
    file.observe(90);
    file.observe(-1);
    file.observe(Number.NaN);
    file.observe(3.5);
    await file.flush();
    expect(await readLastRevision(stateDir)).toBe(120);
  });

  it('writes at most once per interval, only when it grew, and flush() writes what is left', async () => {
    const file = new LastRevisionFile(stateDir, { minIntervalMs: 60_000 });
    file.observe(10);
    await eventually(async () => (await onDisk(stateDir))?.revision === 10);
    const first = (await onDisk(stateDir))!;
    // A health probe per iteration: none of them may write inside the interval.
    for (let revision = 11; revision <= 500; revision++) file.observe(revision);
    await sleep(200);
    expect(await onDisk(stateDir)).toEqual(first);
    await file.flush();
    expect((await onDisk(stateDir))?.revision).toBe(500);
    const flushed = (await onDisk(stateDir))!;
    expect(flushed.ino).not.toBe(first.ino);
    // Nothing grew: neither probes nor another flush rewrite the file.
    file.observe(500);
    file.observe(499);
    await file.flush();
    await sleep(100);
    expect(await onDisk(stateDir)).toEqual(flushed);
  });

  it('writes a grown value in the next slot on its own, then stays idle', async () => {
    const file = new LastRevisionFile(stateDir, { minIntervalMs: 300 });
    file.observe(1);
    await eventually(async () => (await onDisk(stateDir))?.revision === 1);
    const started = Date.now();
    file.observe(2);
    file.observe(3);
    await eventually(async () => (await onDisk(stateDir))?.revision === 3);
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    const written = (await onDisk(stateDir))!;
    for (let i = 0; i < 10; i++) {
      file.observe(3);
      await sleep(50);
    }
    expect(await onDisk(stateDir)).toEqual(written);
  });

  it('never lowers what an earlier run recorded (the member was restored from an older snapshot since)', async () => {
    const earlier = new LastRevisionFile(stateDir);
    earlier.observe(5_000);
    await earlier.flush();
    const later = new LastRevisionFile(stateDir);
    later.observe(40);
    await later.flush();
    expect(await readLastRevision(stateDir)).toBe(5_000);
    later.observe(6_000);
    await later.flush();
    expect(await readLastRevision(stateDir)).toBe(6_000);
  });

  it('reads a damaged or foreign file as 0, without throwing', async () => {
    await mkdir(stateDir, { recursive: true });
    for (const text of ['{"revision": 12', '', 'null', '"12"', '{"revision": "12"}', '{"revision": -3}', '{"revision": 1e300}', '[]']) {
      await writeFile(lastRevisionPath(stateDir), text);
      expect(await readLastRevision(stateDir)).toBe(0);
    }
    // Overwritten by the next write.
    const file = new LastRevisionFile(stateDir);
    file.observe(77);
    await file.flush();
    expect(JSON.parse(await readFile(lastRevisionPath(stateDir), 'utf8'))).toMatchObject({ revision: 77 });
  });

  it('a failed write is reported to onError in the background, thrown by flush(), and retried', async () => {
    // The state dir is a file: a failure even root meets (the tests may run as root, which ignores modes).
    await writeFile(stateDir, 'not a dir');
    const errors: unknown[] = [];
    const file = new LastRevisionFile(stateDir, { minIntervalMs: 50, onError: (err) => errors.push(err) });
    file.observe(9);
    await eventually(async () => errors.length > 0);
    expect(errors[0]).toMatchObject({ code: 'STATE_DIR_FAILED' });
    await expect(file.flush()).rejects.toMatchObject({ code: 'STATE_DIR_FAILED' });
    await rm(stateDir);
    file.observe(9);
    await eventually(async () => (await readLastRevision(stateDir)) === 9);
  });
});

describe("the health monitor records the local member's revision", () => {
  it('observes it on every probe and flushes when run() ends', async () => {
    const cluster = await EtcdCluster.start(1);
    const stateDir = join(cluster.root, 'state');
    const client = new Etcd3({ hosts: cluster.endpoints });
    const probe = new ClusterProbe(cluster.endpoints, 2_000);
    const controller = new AbortController();
    try {
      const lastRevision = new LastRevisionFile(stateDir, { minIntervalMs: 60_000 });
      const monitor = new HealthMonitor(probe, {
        intervalMs: 50,
        localMember: 'etcd-1',
        metrics: new StewardMetrics(),
        logger: pino({ level: 'silent' }),
        lastRevision,
      });
      const running = monitor.run(controller.signal);
      // The first probe writes at once.
      await eventually(async () => (await readLastRevision(stateDir)) > 0, 5_000);
      for (let i = 0; i < 10; i++) await client.put(`/k/${i}`).value('v');
      const revision = Number((await client.maintenance.status()).header.revision);
      await eventually(async () => monitor.lastHealth?.members[0]?.revision === revision, 5_000);
      // Throttled: the growth waits for its slot, and run()'s end writes it.
      expect(await readLastRevision(stateDir)).toBeLessThan(revision);
      controller.abort();
      await running;
      expect(await readLastRevision(stateDir)).toBe(revision);
    } finally {
      controller.abort();
      probe.close();
      client.close();
      await cluster.stop();
    }
  });
});
