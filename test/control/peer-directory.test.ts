import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ControlStore, SPEC_KEY, render } from '../../src/control/control-store.js';
import { SpecPeerDirectory } from '../../src/control/peer-directory.js';
import type { ClusterSpec } from '../../src/control/spec.js';
import { LocalStore } from '../../src/store/local.js';

const spec = (generation: number, port: number): ClusterSpec => ({
  formatVersion: 1,
  generation,
  members: [
    { name: 'node-1', peerUrl: 'http://127.0.0.1:2380', grpc: `127.0.0.1:${port}` },
    { name: 'node-2', peerUrl: 'http://127.0.0.2:2380', grpc: `127.0.0.2:${port}` },
    // From an older spec, before addresses were recorded: not listed.
    { name: 'node-3', peerUrl: 'http://127.0.0.3:2380' },
  ],
  etcdVersion: '3.4.23',
  clusterToken: 't',
  clusterId: '',
  etcdFlags: {},
  updatedAt: '2026-01-01T00:00:00Z',
  fencingToken: '',
});

describe('SpecPeerDirectory: peers from the spec, with etcd down', () => {
  let root: string;
  let stateDir: string;
  let store: LocalStore;
  // Points at nothing: a directory read must never need etcd.
  let client: Etcd3;
  let directory: SpecPeerDirectory;
  let latest: ClusterSpec | undefined;

  beforeAll(() => {
    client = new Etcd3({ hosts: 'http://127.0.0.1:1' });
  });
  afterAll(() => client.close());
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'peers-dir-'));
    stateDir = join(root, 'state');
    await mkdir(stateDir);
    store = new LocalStore(join(stateDir, 'control'));
    latest = undefined;
    directory = new SpecPeerDirectory({ control: new ControlStore(store, client), stateDir, latest: () => latest, logger: pino({ level: 'silent' }) });
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('lists every member that has an address, from the mirrored spec', async () => {
    await store.putSmall(SPEC_KEY, render(spec(3, 7401)), AbortSignal.timeout(5000));
    expect(await directory.list(AbortSignal.timeout(5000))).toEqual([
      { node: 'node-1', grpc: '127.0.0.1:7401' },
      { node: 'node-2', grpc: '127.0.0.2:7401' },
    ]);
  });

  it('answers from the newest generation among memory, the control store and the kept copy', async () => {
    await store.putSmall(SPEC_KEY, render(spec(3, 7401)), AbortSignal.timeout(5000));
    await writeFile(join(stateDir, 'last-cluster-spec.json'), render(spec(4, 7402)));
    expect((await directory.list(AbortSignal.timeout(5000)))[0]?.grpc).toBe('127.0.0.1:7402');
    latest = spec(5, 7403);
    expect((await directory.list(AbortSignal.timeout(5000)))[0]?.grpc).toBe('127.0.0.1:7403');
  });

  it('falls back to the kept copy when the control store is damaged, and says why when nothing can be read', async () => {
    await store.putSmall(SPEC_KEY, '{"not": "a spec"}', AbortSignal.timeout(5000));
    await writeFile(join(stateDir, 'last-cluster-spec.json'), render(spec(2, 7404)));
    expect((await directory.list(AbortSignal.timeout(5000)))[1]).toEqual({ node: 'node-2', grpc: '127.0.0.2:7404' });
    await rm(join(stateDir, 'last-cluster-spec.json'));
    await expect(directory.list(AbortSignal.timeout(5000))).rejects.toMatchObject({
      code: 'PEERS_UNKNOWN',
      message: expect.stringMatching(/not a valid cluster spec/) as unknown,
    });
  });
});
