import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { LayeredPeerDirectory } from '../../src/rpc/layered-directory.js';
import type { PeerAddress, PeerDirectory } from '../../src/rpc/peer-pool.js';

const fixed = (entries: PeerAddress[]): PeerDirectory => ({ list: async () => entries });
const failing = (message: string): PeerDirectory => ({
  list: async () => {
    throw new Error(message);
  },
});
const logger = pino({ level: 'silent' });

describe('peer addresses: the spec first, the etcd registry as a cache', () => {
  it("takes the spec's address over the registry's and fills only the members the spec has none for", async () => {
    const spec = fixed([{ node: 'a', grpc: '10.0.0.1:7401' }]);
    const registry = fixed([
      { node: 'a', grpc: '127.0.0.1:7401' },
      { node: 'b', grpc: '10.0.0.2:7401' },
    ]);
    const list = await new LayeredPeerDirectory(spec, registry, logger).list(new AbortController().signal);
    expect(list).toEqual([
      { node: 'a', grpc: '10.0.0.1:7401' },
      { node: 'b', grpc: '10.0.0.2:7401' },
    ]);
  });

  it('answers from the spec with etcd down, and from the registry with the spec unreadable', async () => {
    const signal = new AbortController().signal;
    const spec = fixed([{ node: 'a', grpc: '10.0.0.1:7401' }]);
    expect(await new LayeredPeerDirectory(spec, failing('etcd: no quorum'), logger).list(signal)).toEqual([{ node: 'a', grpc: '10.0.0.1:7401' }]);
    const registry = fixed([{ node: 'b', grpc: '10.0.0.2:7401' }]);
    expect(await new LayeredPeerDirectory(failing('S3 down'), registry, logger).list(signal)).toEqual([{ node: 'b', grpc: '10.0.0.2:7401' }]);
  });

  it("with neither readable, fails with the spec's error", async () => {
    await expect(new LayeredPeerDirectory(failing('no spec'), failing('no etcd'), logger).list(new AbortController().signal)).rejects.toThrow('no spec');
  });
});

describe('peer addresses with etcd hanging', () => {
  it('answers from the spec within about a second when the etcd registry does not answer at all', async () => {
    const spec = fixed([{ node: 'a', grpc: '10.0.0.1:7401' }]);
    const hanging: PeerDirectory = { list: () => new Promise(() => undefined) };
    const started = Date.now();
    expect(await new LayeredPeerDirectory(spec, hanging, logger).list(new AbortController().signal)).toEqual([{ node: 'a', grpc: '10.0.0.1:7401' }]);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('still waits for the registry when the spec cannot be read', async () => {
    const slow: PeerDirectory = { list: () => new Promise((resolve) => setTimeout(() => resolve([{ node: 'b', grpc: '10.0.0.2:7401' }]), 1500)) };
    expect(await new LayeredPeerDirectory(failing('S3 down'), slow, logger).list(new AbortController().signal)).toEqual([{ node: 'b', grpc: '10.0.0.2:7401' }]);
  });
});

describe('peer addresses: a registry that fails while the spec is still being read', () => {
  it('is no unhandled rejection', async () => {
    const slowSpec: PeerDirectory = { list: () => new Promise((resolve) => setTimeout(() => resolve([{ node: 'a', grpc: '10.0.0.1:7401' }]), 200)) };
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      expect(await new LayeredPeerDirectory(slowSpec, failing('circuit breaker open'), logger).list(new AbortController().signal)).toEqual([
        { node: 'a', grpc: '10.0.0.1:7401' },
      ]);
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    expect(unhandled).toEqual([]);
  });
});
