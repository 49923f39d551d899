import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMemberClient } from '../../src/etcd/client.js';
import { ClusterProbe } from '../../src/etcd/health.js';
import { createLogger } from '../../src/observability/logger.js';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { parseMetadata } from '../../src/snapshot/metadata.js';
import { Snapshotter } from '../../src/snapshot/snapshotter.js';
import { LocalStore } from '../../src/store/local.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';
import { freePort } from '../harness/ports.js';
import { waitUntil } from '../harness/processes.js';

/** Log lines as parsed objects, for asserting on what an operator would read. */
function captureLog(): { lines: Array<Record<string, unknown>>; logger: ReturnType<typeof createLogger> } {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { lines, logger: createLogger({ level: 'info', destination }) };
}

describe('snapshots of a degraded cluster (3 real etcd members, one killed)', () => {
  let etcd: EtcdCluster;
  let probe: ClusterProbe;
  const clients: Array<ReturnType<typeof createMemberClient>> = [];
  beforeAll(async () => {
    etcd = await EtcdCluster.start(3);
    probe = new ClusterProbe(etcd.endpoints, 2000);
    await waitUntil('every member healthy', async () => (await probe.probe()).members.every((m) => m.healthy) || undefined, 20_000);
  });
  afterAll(async () => {
    probe?.close();
    for (const client of clients) client.close();
    await etcd?.stop();
  });

  const snapshotter = (dir: string, logger: ReturnType<typeof createLogger>, node: string): Snapshotter =>
    new Snapshotter({
      node,
      stores: [{ locationId: `local:${node}`, store: new LocalStore(dir) }],
      compress: false,
      timeoutMs: 60_000,
      checkHealth: (signal) => probe.probe(signal),
      memberClient: (endpoint) => {
        const client = createMemberClient(endpoint, { callTimeoutMs: 10_000 });
        clients.push(client);
        return client;
      },
      metrics: new StewardMetrics(),
      logger,
    });

  it("the recorded revision is the snapshot's own: writes between the health probe and the stream are in it", async () => {
    const dir = join(etcd.root, 'snapshots-revision');
    const writer = new Etcd3({ hosts: etcd.endpoints });
    let probed = 0;
    const taker = new Snapshotter({
      node: 'etcd-1',
      stores: [{ locationId: 'local:etcd-1', store: new LocalStore(dir) }],
      compress: false,
      timeoutMs: 60_000,
      // The probe, then writes landing after it and before the stream opens.
      checkHealth: async (signal) => {
        const health = await probe.probe(signal);
        probed = Math.max(...health.members.map((m) => m.revision));
        for (let i = 0; i < 25; i++) await writer.put(`between/${i}`).value('x');
        return health;
      },
      memberClient: (endpoint) => {
        const client = createMemberClient(endpoint, { callTimeoutMs: 10_000 });
        clients.push(client);
        return client;
      },
      metrics: new StewardMetrics(),
      logger: createLogger({ level: 'silent' }),
    });
    try {
      const result = await taker.take({ kind: 'on-demand', fencingToken: '', signal: AbortSignal.timeout(60_000) });
      const afterWrites = Number((await writer.get('between/24').exec()).header.revision);
      expect(result.metadata.revision).toBeGreaterThanOrEqual(probed + 25);
      expect(result.metadata.revision).toBe(afterWrites);
      // What etcd's own tool reads from the file (bbolt meta page, then the key bucket's last revision).
      const status = await new Promise<{ revision: number }>((resolve, reject) =>
        execFile(
          'etcdctl',
          ['snapshot', 'status', join(dir, result.metadata.name), '-w', 'json'],
          { env: { ...process.env, ETCDCTL_API: '3' } },
          (err, stdout) => (err ? reject(err) : resolve(JSON.parse(stdout) as { revision: number })),
        ),
      );
      expect(result.metadata.revision).toBe(status.revision);
    } finally {
      writer.close();
    }
  });

  it('one of three members down: the scheduled snapshot is taken from a healthy member and records the member down', async () => {
    const killed = etcd.members[2];
    if (!killed) throw new Error('no third member');
    const exited = once(killed.process, 'exit');
    killed.process.kill('SIGKILL');
    await exited;
    await waitUntil(
      'the probe to see the member down',
      async () => (await probe.probe()).members.some((m) => m.name === killed.name && !m.reachable) || undefined,
      20_000,
    );

    const dir = join(etcd.root, 'snapshots-degraded');
    const { lines, logger } = captureLog();
    // The steward on the killed member's node is the one asked: its own member is down.
    const result = await snapshotter(dir, logger, killed.name).take({ kind: 'scheduled', fencingToken: '7', signal: AbortSignal.timeout(60_000) });
    expect(result.copies).toHaveLength(1);
    expect(result.metadata.degraded).toEqual([{ member: killed.name, problem: expect.stringMatching(/^unreachable/) as unknown as string }]);
    const stored = parseMetadata(await readFile(join(dir, `${result.metadata.name}.metadata.json`), 'utf8'));
    expect(stored?.degraded?.map((d) => d.member)).toEqual([killed.name]);
    const started = lines.find((l) => l.msg === 'snapshot started');
    expect(started?.source).not.toBe(killed.name);
    expect(lines.some((l) => typeof l.msg === 'string' && l.msg.startsWith('cluster is degraded') && JSON.stringify(l.degraded).includes(killed.name))).toBe(
      true,
    );
  });

  it('ClusterProbe.probe stops at once when its signal aborts, even with a member that never answers', async () => {
    // A black hole: accepts TCP and never speaks HTTP/2, so a call to it waits for its deadline.
    const sockets = new Set<Socket>();
    const server: Server = createServer((socket) => sockets.add(socket));
    const port = await freePort();
    server.listen(port, '127.0.0.1');
    await once(server, 'listening');
    const stuck = new ClusterProbe([`http://127.0.0.1:${port}`, ...etcd.endpoints], 10_000);
    try {
      const controller = new AbortController();
      const started = Date.now();
      const probing = stuck.probe(controller.signal);
      setTimeout(() => controller.abort(new Error('steward shutting down')), 300);
      await expect(probing).rejects.toThrow('steward shutting down');
      expect(Date.now() - started).toBeLessThan(1500);
      // An already aborted signal starts no call at all.
      const before = sockets.size;
      await expect(stuck.probe(AbortSignal.abort(new Error('gone')))).rejects.toThrow('gone');
      expect(sockets.size).toBe(before);
    } finally {
      stuck.close();
      for (const socket of sockets) socket.destroy();
      server.close();
    }
  });
});
