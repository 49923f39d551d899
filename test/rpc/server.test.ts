import { setTimeout as sleep } from 'node:timers/promises';
import { Server, ServerCredentials, credentials, type Client, type ServiceError } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { StewardError, exitCodeFor } from '../../src/errors/index.js';
import { StewardClient } from '../../src/rpc/client.js';
import { PeerPool } from '../../src/rpc/peer-pool.js';
import { StewardCtlClient, stewardCtlService } from '../../src/rpc/proto.js';
import { RpcServer } from '../../src/rpc/server.js';
import type { CallContext, StewardCtlHandlers, StewardPeerHandlers } from '../../src/rpc/types.js';
import { statusOf } from '../harness/unused-handlers.js';

const logger = pino({ level: 'silent' });

/** Records what the handlers saw, so a test can tell whether server-side work ran and when it stopped. */
class Probe {
  calls: string[] = [];
  aborted: Array<{ method: string; reason: unknown; at: number }> = [];

  /** Work that runs until its signal fires, as a long snapshot or scan would. */
  async hang(method: string, ctx: CallContext): Promise<never> {
    this.calls.push(method);
    await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve(), { once: true }));
    this.aborted.push({ method, reason: ctx.signal.reason, at: Date.now() });
    throw ctx.signal.reason;
  }
}

function ctlHandlers(probe: Probe): StewardCtlHandlers {
  const spec = { specJson: '{}', generation: 1, location: 'x' };
  return {
    status: async () => {
      probe.calls.push('status');
      return statusOf();
    },
    save: (_request, _emit, ctx) => probe.hang('save', ctx),
    list: (_request, ctx) => probe.hang('list', ctx),
    delete: async (names) => {
      probe.calls.push(`delete:${names.length}`);
      return { deleted: [], failed: [] };
    },
    prune: async (retention) => {
      probe.calls.push(`prune:${retention}`);
      return { deleted: [], orphansRemoved: [], failed: [] };
    },
    specGet: (ctx) => probe.hang('specGet', ctx),
    specSet: async () => spec,
    init: async () => spec,
    restore: (_request, _emit, ctx) => probe.hang('restore', ctx),
    restoreStatus: (ctx) => probe.hang('restoreStatus', ctx),
    restoreAbort: (ctx) => probe.hang('restoreAbort', ctx),
    verify: (_name, ctx) => probe.hang('verify', ctx),
  };
}

const unusedPeer = async (): Promise<never> => {
  throw new Error('not used');
};

function peerHandlers(probe: Probe, consume?: (data: AsyncIterable<Buffer>) => Promise<{ bytes: number; sha256: string }>): StewardPeerHandlers {
  return {
    listLocalSnapshots: async (ctx) => {
      probe.calls.push(`listLocal from ${ctx.peer.caller}`);
      return { snapshots: [], orphans: [] };
    },
    deleteLocalSnapshot: async (name) => {
      probe.calls.push(`deleteLocal:${name}`);
    },
    forwardDelete: async () => ({ deleted: [], failed: [] }),
    forwardPrune: async () => ({ deleted: [], orphansRemoved: [], failed: [] }),
    receiveSnapshot: async (_announce, data) => ({
      ...(consume ? await consume(data) : { bytes: 0, sha256: '' }),
      revision: 0,
      totalKeys: 0,
      rawSha256: '',
      rawBytes: 0,
    }),
    readLocalSnapshot: unusedPeer,
    restorePrepare: unusedPeer,
    restoreSwap: unusedPeer,
    restoreFinish: unusedPeer,
    restoreAbort: unusedPeer,
    restoreMemberStatus: unusedPeer,
  };
}

const servers: RpcServer[] = [];
const clients: Array<{ close(): void }> = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});

async function start(probe: Probe, node = 'n1', consume?: Parameters<typeof peerHandlers>[1]): Promise<string> {
  const server = await RpcServer.start({
    host: '127.0.0.1',
    port: 0,
    handlers: ctlHandlers(probe),
    peer: peerHandlers(probe, consume),
    identity: { node, clusterId: () => 'c1' },
    logger,
  });
  servers.push(server);
  return `127.0.0.1:${server.port}`;
}

function ctl(endpoint: string, timeoutMs?: number): StewardClient {
  const client = new StewardClient(endpoint, timeoutMs);
  clients.push(client);
  return client;
}

async function rejection(promise: Promise<unknown>): Promise<StewardError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StewardError);
  return err as StewardError;
}

describe('server adapters: cancellation and deadlines reach the handler', () => {
  it('a call the client cancels stops its server-side work and comes out as CANCELLED (exit 130)', async () => {
    const probe = new Probe();
    const client = ctl(await start(probe));
    const controller = new AbortController();
    const call = client.list(false, controller.signal);
    await expect.poll(() => probe.calls).toContain('list');
    const cancelledAt = Date.now();
    controller.abort();
    const err = await rejection(call);
    expect(err.code).toBe('CANCELLED');
    expect(exitCodeFor(err)).toBe(130);
    await expect.poll(() => probe.aborted.length).toBe(1);
    expect(probe.aborted[0]?.at ?? Infinity).toBeLessThan(cancelledAt + 1000);
    expect((probe.aborted[0]?.reason as StewardError).code).toBe('CANCELLED');
  });

  it('a passed deadline fires the handler signal and is DEADLINE_EXCEEDED (exit 6), not INTERNAL', async () => {
    const probe = new Probe();
    const client = ctl(await start(probe), 300);
    const err = await rejection(client.specGet());
    expect(err.code).toBe('DEADLINE_EXCEEDED');
    expect(exitCodeFor(err)).toBe(6);
    await expect.poll(() => probe.aborted.map((a) => (a.reason as StewardError).code)).toEqual(['DEADLINE_EXCEEDED']);
  });

  it('a cancelled save stream stops the save on the server', async () => {
    const probe = new Probe();
    const client = ctl(await start(probe));
    const controller = new AbortController();
    const call = client.save({ name: '', force: false }, () => undefined, controller.signal);
    await expect.poll(() => probe.calls).toContain('save');
    controller.abort();
    expect((await rejection(call)).code).toBe('CANCELLED');
    await expect.poll(() => probe.aborted.map((a) => a.method)).toEqual(['save']);
  });

  it('stopping the server aborts the work of every call in flight', async () => {
    const probe = new Probe();
    const endpoint = await start(probe);
    const client = ctl(endpoint);
    const call = client.list().catch((e: unknown) => e);
    await expect.poll(() => probe.calls).toContain('list');
    const started = Date.now();
    await servers.splice(0)[0]?.stop();
    expect(Date.now() - started).toBeLessThan(2000);
    expect((probe.aborted[0]?.reason as StewardError).code).toBe('STEWARD_SHUTTING_DOWN');
    expect(((await call) as StewardError).family).toMatch(/cancelled|unavailable/);
  });

  it('a save stream that ends without a result is the typed SAVE_NO_RESULT error', async () => {
    const server = new Server();
    server.addService(stewardCtlService, { Save: (call: { end(): void }) => call.end() });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    try {
      const err = await rejection(ctl(`127.0.0.1:${port}`).save({ name: '', force: false }, () => undefined));
      expect(err.code).toBe('SAVE_NO_RESULT');
      expect(exitCodeFor(err)).toBe(1);
    } finally {
      server.forceShutdown();
    }
  });
});

describe('server-side bounds: refused at once with INVALID_ARGUMENT, before any work', () => {
  it('a 3 MB name is refused at once and the same connection answers Status right after', async () => {
    const probe = new Probe();
    const client = ctl(await start(probe));
    await client.status();
    const started = Date.now();
    const err = await rejection(client.delete(['a'.repeat(3 * 1024 * 1024)]));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message.length).toBeLessThan(1100);
    const statusStarted = Date.now();
    await client.status();
    expect(Date.now() - statusStarted).toBeLessThan(1000);
    expect(statusStarted - started).toBeLessThan(3000);
    expect(probe.calls.filter((c) => c.startsWith('delete'))).toEqual([]);
  });

  it('a delete of 9,000 names is refused at once; 1,000 are accepted', async () => {
    const probe = new Probe();
    const client = ctl(await start(probe));
    const names = Array.from({ length: 9000 }, (_, i) => `on-demand-node-1-${1_700_000_000 + i}`);
    const started = Date.now();
    const err = await rejection(client.delete(names));
    expect(Date.now() - started).toBeLessThan(2000);
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toContain('9000 names');
    await client.delete(names.slice(0, 1000));
    expect(probe.calls).toEqual(['delete:1000']);
  });

  it('a retention out of range is refused by the server too (int64 on the wire: no wrap to 1)', async () => {
    const probe = new Probe();
    const client = ctl(await start(probe));
    for (const bad of [4294967297, -1, 10_001]) {
      const err = await rejection(client.prune(bad));
      expect(err.code, String(bad)).toBe('INVALID_ARGUMENT');
    }
    await client.prune(3);
    expect(probe.calls).toEqual(['prune:3']);
  });

  it('a spec over 1 MiB is refused before the handler', async () => {
    const probe = new Probe();
    const err = await rejection(ctl(await start(probe)).specSet(`{"x":"${'y'.repeat(1024 * 1024)}"}`));
    expect(err.code).toBe('INVALID_ARGUMENT');
  });
});

describe('peer header', () => {
  it('a peer that is not the node the caller meant refuses the call, and the caller gets a typed WRONG_PEER naming the node', async () => {
    const probe = new Probe();
    const endpoint = await start(probe, 'node-2');
    // The directory says node-3 lives at node-2's address, as a wrong --advertise-grpc would.
    const pool = new PeerPool({ list: async () => [{ node: 'node-3', grpc: endpoint }] }, { node: 'node-1', clusterId: () => 'c1', fencingToken: () => '' });
    clients.push(pool);
    const [peer] = await pool.others(AbortSignal.timeout(5000));
    const err = await rejection(
      (peer as NonNullable<typeof peer>).deleteLocal('on-demand-node-3-1700000000', 'on-demand-node-3-1700000000', AbortSignal.timeout(5000)),
    );
    expect(err.code).toBe('WRONG_PEER');
    expect(err.message).toContain('node-3');
    expect(probe.calls).toEqual([]);
    const right = await pool.peer({ node: 'node-2', grpc: endpoint }).listLocal(AbortSignal.timeout(5000));
    expect(right.snapshots).toEqual([]);
    expect(probe.calls).toEqual(['listLocal from node-1']);
  });

  it('a peer of another etcd cluster is refused', async () => {
    const probe = new Probe();
    const endpoint = await start(probe, 'node-2');
    const pool = new PeerPool({ list: async () => [] }, { node: 'node-1', clusterId: () => 'other-cluster', fencingToken: () => '' });
    clients.push(pool);
    const err = await rejection(pool.peer({ node: 'node-2', grpc: endpoint }).listLocal(AbortSignal.timeout(5000)));
    expect(err.code).toBe('WRONG_CLUSTER');
    expect(probe.calls).toEqual([]);
  });
});

describe('client-stream adapter', () => {
  it('streams 16 MiB to a slow consumer with bounded buffering, and the digest matches', async () => {
    const probe = new Probe();
    const CHUNK = 256 * 1024;
    const TOTAL = 64;
    let consumed = 0;
    let sent = 0;
    let maxAhead = 0;
    const endpoint = await start(probe, 'node-2', async (data) => {
      const { createHash } = await import('node:crypto');
      const hash = createHash('sha256');
      for await (const chunk of data) {
        // A slow disk: 5 ms a chunk.
        await sleep(5);
        consumed += chunk.length;
        hash.update(chunk);
      }
      return { bytes: consumed, sha256: hash.digest('hex') };
    });
    const pool = new PeerPool({ list: async () => [] }, { node: 'node-1', clusterId: () => 'c1', fencingToken: () => '' });
    clients.push(pool);
    const { createHash } = await import('node:crypto');
    const expected = createHash('sha256');
    async function* source(): AsyncGenerator<Buffer> {
      for (let i = 0; i < TOTAL; i++) {
        const chunk = Buffer.alloc(CHUNK, i);
        expected.update(chunk);
        sent += chunk.length;
        maxAhead = Math.max(maxAhead, sent - consumed);
        yield chunk;
      }
    }
    const reply = await pool
      .peer({ node: 'node-2', grpc: endpoint })
      .sendSnapshot('r1', { snapshot: 's', size: CHUNK * TOTAL, sha256: '', compressed: false }, source(), AbortSignal.timeout(60_000));
    expect(reply.bytes).toBe(CHUNK * TOTAL);
    expect(reply.sha256).toBe(expected.digest('hex'));
    // Measured 9.0 MiB ahead at most, for 16 MiB and for 64 MiB sent alike: the message buffers of both ends
    // and the HTTP/2 windows, independent of the total.
    console.log(`client stream: ${(CHUNK * TOTAL) / 2 ** 20} MiB sent, at most ${(maxAhead / 2 ** 20).toFixed(1)} MiB ahead of the consumer`);
    expect(maxAhead).toBeLessThan(12 * 1024 * 1024);
  });
});

// Keeps the raw generated client importable from tests (a contract of src/rpc/proto.ts).
export const rawClient = (endpoint: string): Client => new StewardCtlClient(endpoint, credentials.createInsecure());
export type { ServiceError };
