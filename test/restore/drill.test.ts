import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NotFoundError, PreconditionError, exitCodeFor } from '../../src/errors/index.js';
import { DRILL_DIR, runDrill, type DrillOptions } from '../../src/restore/drill.js';
import type { SnapshotStores } from '../../src/restore/find.js';
import { RestoreTool } from '../../src/restore/tool.js';
import type { SnapshotMetadata } from '../../src/snapshot/metadata.js';
import { metadataKey } from '../../src/snapshot/names.js';
import { LocalStore } from '../../src/store/local.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';
import { etcdProcessesUnder } from '../harness/processes.js';

const logLines: string[] = [];
const logger = pino({ level: 'info' }, { write: (line: string) => logLines.push(line) });

const run = (command: string, args: string[]): Promise<string> =>
  new Promise((resolve, reject) =>
    execFile(command, args, { env: { ...process.env, ETCDCTL_API: '3' } }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );

/** The snapshot's object, then its metadata (last, as the snapshotter writes them), in a real local store. */
async function putSnapshot(store: LocalStore, name: string, bytes: Buffer, revision: number): Promise<void> {
  const signal = AbortSignal.timeout(20_000);
  const writer = await store.createWriter(name, signal);
  await writer.write(bytes);
  await writer.commit();
  const metadata: SnapshotMetadata = {
    formatVersion: 1,
    name,
    key: name,
    node: 'node-a',
    kind: 'on-demand',
    created: new Date().toISOString(),
    size: bytes.length,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    compressed: false,
    etcdVersion: '3.4.23',
    clusterId: 'cafe',
    revision,
    fencingToken: '',
  };
  await store.putSmall(metadataKey(name), JSON.stringify(metadata), signal);
}

describe('runDrill (real etcd snapshot, real etcdctl, a real throwaway etcd)', () => {
  let etcd: EtcdCluster;
  let root: string;
  let tool: RestoreTool;
  let raw: Buffer;
  let revision: number;
  let stores: SnapshotStores;
  let store: LocalStore;
  let options: DrillOptions;
  const stateDir = (): string => join(root, 'state');

  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
    root = await mkdtemp(join(tmpdir(), 'drill-test-'));
    const client = new Etcd3({ hosts: etcd.endpoints });
    try {
      for (let i = 0; i < 25; i++) await client.put(`/drill/key-${i}`).value(`value-${i}`);
      revision = Number((await client.maintenance.status()).header.revision);
    } finally {
      client.close();
    }
    const file = join(root, 'saved.db');
    await run('etcdctl', ['--endpoints', etcd.endpoints[0] ?? '', 'snapshot', 'save', file]);
    raw = await readFile(file);
    tool = await RestoreTool.detect();
    store = new LocalStore(join(root, 'snapshots'));
    stores = { node: 'node-a', local: { locationId: 'local:node-a', store }, peers: { others: () => Promise.resolve([]) }, log: logger };
    options = { stores, tool, etcdBinary: 'etcd', stateDir: stateDir(), logger };
  }, 60_000);

  afterAll(async () => {
    await etcd?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('passes a good snapshot with the restored revision, key count and HashKV, and leaves nothing behind', async () => {
    await putSnapshot(store, 'good-node-a-1700000001', raw, revision);
    const result = await runDrill('good-node-a-1700000001', options, AbortSignal.timeout(120_000));
    expect(result.reason).toBe('');
    expect(result.passed).toBe(true);
    expect(result.revision).toBeGreaterThanOrEqual(revision);
    // 25 keys written; etcd's own (none in a plain cluster) would add to it.
    expect(result.keys).toBe(25);
    expect(result.hashKV).not.toBe(0);
    expect(result.source).toContain('good-node-a-1700000001');

    // The same HashKV as the source member at the same revision: the drill restored exactly what was saved.
    const client = new Etcd3({ hosts: etcd.endpoints });
    try {
      const pool = (client as unknown as { pool: { exec(s: string, m: string, p: unknown): Promise<{ hash: string }> } }).pool;
      const source = await pool.exec('Maintenance', 'HashKV', { revision: result.revision });
      expect(Number(source.hash)).toBe(result.hashKV);
    } finally {
      client.close();
    }
    expect(await readdir(join(stateDir(), DRILL_DIR))).toEqual([]);
    expect(await etcdProcessesUnder(join(stateDir(), DRILL_DIR))).toEqual([]);
    // The throwaway etcd's own log lines are the steward's, tagged drill.
    const etcdLines = logLines.map((l) => JSON.parse(l) as { component?: string; process?: string }).filter((l) => l.process === 'drill-etcd');
    expect(etcdLines.length).toBeGreaterThan(5);
    expect(etcdLines.every((l) => l.component === 'drill')).toBe(true);
  }, 150_000);

  it('fails a copy with one byte flipped, with a clear reason, and leaves no scratch dir', async () => {
    const bad = Buffer.from(raw);
    bad[4096] = (bad[4096] as number) ^ 0x01;
    // The metadata records the flipped bytes' SHA-256 (as if flipped before upload): only etcd's own trailer catches it.
    await putSnapshot(store, 'flipped-node-a-1700000002', bad, revision);
    const result = await runDrill('flipped-node-a-1700000002', options, AbortSignal.timeout(120_000));
    expect(result.passed).toBe(false);
    expect(result.failure).toBe('integrity');
    expect(result.reason).toMatch(/did not check out: .*(trailer|SHA-256|hash)/i);
    expect(result.hashKV).toBe(0);
    expect(await readdir(join(stateDir(), DRILL_DIR))).toEqual([]);
  }, 150_000);

  it('fails a stored object whose bytes changed after the metadata was written (SHA-256 mismatch)', async () => {
    await putSnapshot(store, 'rotted-node-a-1700000003', raw, revision);
    const bad = Buffer.from(raw);
    bad[100] = (bad[100] as number) ^ 0x80;
    const objects = await readdir(join(root, 'snapshots'));
    const object = objects.find((f) => f === 'rotted-node-a-1700000003');
    expect(object).toBeDefined();
    await writeFile(join(root, 'snapshots', object ?? ''), bad);
    const result = await runDrill('rotted-node-a-1700000003', options, AbortSignal.timeout(120_000));
    expect(result.passed).toBe(false);
    expect(result.failure).toBe('integrity');
    expect(await readdir(join(stateDir(), DRILL_DIR))).toEqual([]);
  }, 150_000);

  it('cancelled while its throwaway etcd runs: the etcd is stopped and the scratch dir removed before it settles', async () => {
    const controller = new AbortController();
    const before = logLines.length;
    // Aborted the moment the drill logs that its throwaway etcd started: mid-drill, not before or after it.
    const watch = setInterval(() => {
      if (logLines.slice(before).some((l) => l.includes('drill etcd started'))) controller.abort(new Error('operator pressed Ctrl-C'));
    }, 5);
    try {
      const err = await runDrill('good-node-a-1700000001', options, controller.signal).catch((e: unknown) => e);
      expect(controller.signal.aborted).toBe(true);
      expect(exitCodeFor(err)).toBe(130);
    } finally {
      clearInterval(watch);
    }
    expect(await readdir(join(stateDir(), DRILL_DIR))).toEqual([]);
    expect(await etcdProcessesUnder(join(stateDir(), DRILL_DIR))).toEqual([]);
  }, 60_000);

  it('refuses before anything when the disk has no room, and an unknown name is not found (exit 3)', async () => {
    const refused = await runDrill(
      'good-node-a-1700000001',
      { ...options, stateDir: join(root, 'state-full'), reserveBytes: Number.MAX_SAFE_INTEGER },
      AbortSignal.timeout(30_000),
    ).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(refused).toBeInstanceOf(PreconditionError);
    expect((refused as PreconditionError).code).toBe('DRILL_NO_SPACE');
    expect(exitCodeFor(refused)).toBe(4);
    // Refused before anything: not even the drill dir was created.
    await expect(readdir(join(root, 'state-full'))).rejects.toThrow(/ENOENT/);

    const unknown = await runDrill('nope-node-a-1700000009', options, AbortSignal.timeout(30_000)).catch((err: unknown) => err);
    expect(unknown).toBeInstanceOf(NotFoundError);
    expect(exitCodeFor(unknown)).toBe(3);
  }, 60_000);
});
