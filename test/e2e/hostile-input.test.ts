import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { credentials, status as grpcStatus, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StewardCtlClient } from '../../src/rpc/proto.js';
import { waitUntil } from '../harness/processes.js';
import { runCtl, StewardCluster } from '../harness/steward-cluster.js';

type Unary = (request: object, callback: (err: ServiceError | null, response?: unknown) => void) => void;

function rssMb(pid: number): number {
  const kb = Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  return kb / 1024;
}

/** One unary call's gRPC status code and message (OK is 0). */
function call(client: Client, method: string, request: object): Promise<{ code: number; details: string }> {
  return new Promise((resolve) => {
    const fn = (client as unknown as Record<string, Unary>)[method] as Unary;
    fn.call(client, request, (err) => resolve({ code: err?.code ?? grpcStatus.OK, details: err?.details ?? '' }));
  });
}

/** Opens a TCP connection to `address`, runs `act`, and resolves once the connection is closed or after `holdMs`. */
function rawConnection(address: string, act: (socket: Socket) => void, holdMs: number): Promise<'closed-by-server' | 'held'> {
  const [host, port] = address.split(':');
  return new Promise((resolve) => {
    const socket = connect({ host, port: Number(port) });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve('held');
    }, holdMs);
    // Flowing, so that the server's FIN is seen at all: a paused socket never emits 'end' or 'close'.
    socket.resume();
    socket.on('connect', () => act(socket));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve('closed-by-server');
    });
  });
}

async function inBatches<T>(count: number, batch: number, make: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let start = 0; start < count; start += batch) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(batch, count - start) }, (_, k) => make(start + k)))));
  }
  return out;
}

describe('hostile input on the gRPC port: a clear status for each, no crash, memory bounded (1 steward, real etcd)', () => {
  let cluster: StewardCluster;
  let client: Client;
  let pid: number;

  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 1, extraArgs: ['--etcd-disable-snapshots=true'] });
    await cluster.startAll();
    await cluster.waitForStableLeader(60_000);
    client = new StewardCtlClient(cluster.node(0).grpc, credentials.createInsecure());
    pid = cluster.node(0).process?.pid as number;
  });
  afterAll(async () => {
    client?.close();
    await cluster?.destroy();
  });

  it('refuses oversized, deeply nested and wrong-typed specs and names that leave the snapshot dir, each with its status', async () => {
    // The leader completes the spec (cluster ID, started members) once etcd runs: compare after that.
    const specBefore = await waitUntil(
      'the leader to have recorded the cluster in the spec',
      async () => {
        const got = await runCtl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'spec', 'get']);
        return got.code === 0 && (JSON.parse(got.stdout) as { clusterId?: string }).clusterId ? got : undefined;
      },
      30_000,
      250,
    );
    // Over grpc-js's 4 MiB receive limit: refused before any handler runs.
    expect((await call(client, 'specSet', { specJson: 'x'.repeat(5 * 2 ** 20), force: false })).code).toBe(grpcStatus.RESOURCE_EXHAUSTED);
    // Over our own 1 MiB limit for a spec.
    const big = await call(client, 'specSet', { specJson: `{"a":"${'y'.repeat(2 * 2 ** 20)}"}`, force: false });
    expect(big.code).toBe(grpcStatus.INVALID_ARGUMENT);
    expect(big.details.length).toBeLessThan(400);
    const nested = await call(client, 'specSet', { specJson: `${'['.repeat(200_000)}${']'.repeat(200_000)}`, force: false });
    expect(nested.code).toBe(grpcStatus.INVALID_ARGUMENT);
    expect(nested.details.length).toBeLessThan(400);
    const wrongType = await call(client, 'specSet', { specJson: '{"members": 5, "clusterToken": ["x"]}', force: false });
    expect(wrongType.code).toBe(grpcStatus.INVALID_ARGUMENT);
    for (const name of ['../../etc/passwd', '/etc/passwd', 'a/../../b', '..']) {
      const deleted = await runCtl(['--endpoint', cluster.node(0).grpc, 'delete', name]);
      expect(deleted.code, `${name}: ${deleted.stderr}`).toBe(2);
      const restored = await runCtl(['--endpoint', cluster.node(0).grpc, 'restore', name]);
      expect(restored.code, `${name}: ${restored.stderr}`).toBe(2);
    }
    // A NUL cannot pass through argv; straight over the wire the name matches no snapshot (no path is built from it).
    expect((await call(client, 'delete', { names: ['x\u0000y'] })).code).toBe(grpcStatus.NOT_FOUND);
    // The spec in the store is the one it was: nothing above changed it.
    const spec = await runCtl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'spec', 'get']);
    expect({ code: spec.code, stdout: spec.stdout }).toEqual({ code: specBefore.code, stdout: specBefore.stdout });
  });

  it('garbage bytes are cut off by the server; silent connections do not stop it serving', async () => {
    const address = cluster.node(0).grpc;
    const garbage = await inBatches(40, 20, () => rawConnection(address, (socket) => socket.write(randomBytes(64 * 1024)), 5000));
    expect(garbage.every((outcome) => outcome === 'closed-by-server')).toBe(true);
    // Half-open: connected, never a byte. While 50 are held open, the API still answers.
    const silent = Array.from({ length: 50 }, () => rawConnection(address, () => undefined, 4000));
    const during = await runCtl(['--endpoint', address, 'status']);
    expect(during.code, during.stderr).toBe(0);
    await Promise.all(silent);
  });

  it('a flood of bad calls leaves the steward serving with its memory bounded', async () => {
    const before = rssMb(pid);
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, rssMb(pid))), 100);
    const bad: Array<[string, object]> = [
      ['specSet', { specJson: `{"a":"${'z'.repeat(1_100_000)}"}`, force: false }],
      ['specSet', { specJson: '{'.repeat(50_000), force: false }],
      ['delete', { names: Array.from({ length: 1001 }, (_, i) => `n${i}`) }],
      ['delete', { names: ['../../x'] }],
      ['prune', { retention: -1 }],
      ['list', { all: true }],
    ];
    const codes = await inBatches(1200, 48, (i) => {
      const [method, request] = bad[i % bad.length] as [string, object];
      return call(client, method, request).then((r) => r.code);
    });
    clearInterval(sampler);
    // Every malformed call got an answer (list is the one good call in the mix).
    expect(codes.filter((code) => code === grpcStatus.INVALID_ARGUMENT).length).toBeGreaterThanOrEqual(800);
    expect(codes.filter((code) => code === grpcStatus.OK).length).toBe(200);
    console.log(`steward RSS: ${before.toFixed(0)} MB before, ${peak.toFixed(0)} MB peak during 1200 bad calls, ${rssMb(pid).toFixed(0)} MB after`);
    expect(peak - before).toBeLessThan(120);
    const after = await runCtl(['--endpoint', cluster.node(0).grpc, 'status']);
    expect(after.code, after.stderr).toBe(0);
  });
});

describe('hostile input on a TLS gRPC port (1 steward, mTLS)', () => {
  let cluster: StewardCluster;

  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 1, grpcTls: true, extraArgs: ['--etcd-disable-snapshots=true'] });
    await cluster.startAll();
    await cluster.waitForStableLeader(60_000);
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('garbage instead of a ClientHello is cut off; half-open handshakes do not stop the API; the steward lives on', async () => {
    const address = cluster.node(0).grpc;
    const pid = cluster.node(0).process?.pid as number;
    const before = rssMb(pid);
    const garbage = await inBatches(40, 20, () => rawConnection(address, (socket) => socket.write(randomBytes(16 * 1024)), 5000));
    expect(garbage.every((outcome) => outcome === 'closed-by-server')).toBe(true);
    // A TLS record header announcing a ClientHello that never comes, and connections that never speak.
    const halfOpen = [
      ...Array.from({ length: 30 }, () => rawConnection(address, (socket) => socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])), 4000)),
      ...Array.from({ length: 30 }, () => rawConnection(address, () => undefined, 4000)),
    ];
    const during = await cluster.ctl(['--endpoint', address, 'status'], {}, 'viewer');
    expect(during.code, during.stderr).toBe(0);
    await Promise.all(halfOpen);
    const after = await cluster.ctl(['--endpoint', address, 'status'], {}, 'viewer');
    expect(after.code, after.stderr).toBe(0);
    expect(rssMb(pid) - before).toBeLessThan(60);
  });
});
