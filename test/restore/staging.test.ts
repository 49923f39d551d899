import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { statfs } from 'node:fs/promises';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { gzipSync } from 'node:zlib';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CancelledError, InvalidArgumentError, PreconditionError, type StewardError } from '../../src/errors/index.js';
import { freeBytes } from '../../src/restore/disk.js';
import { removeStaging, stageSnapshot, type StageAnnounce } from '../../src/restore/staging.js';
import { RestoreTool } from '../../src/restore/tool.js';
import { EtcdCluster, fillEtcd } from '../harness/etcd-cluster.js';

const run = (command: string, args: string[]): Promise<string> =>
  new Promise((resolve, reject) =>
    execFile(command, args, { env: { ...process.env, ETCDCTL_API: '3' } }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
const sha256 = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');
const announceOf = (bytes: Buffer, compressed = false): StageAnnounce => ({ snapshot: 'test.db', size: bytes.length, sha256: sha256(bytes), compressed });
const flipped = (bytes: Buffer, at: number): Buffer => {
  const copy = Buffer.from(bytes);
  copy[at] = (copy[at] as number) ^ 0x01;
  return copy;
};

/** Yields `bytes` in chunk sizes cycling through `sizes`: the network decides how a stream is cut. */
async function* chunked(bytes: Buffer, sizes: number[] = [1, 7, 4096, 65_537, 31, 1_000_000, 0, 32]): AsyncGenerator<Buffer> {
  let offset = 0;
  for (let i = 0; offset < bytes.length; i++) {
    const size = sizes[i % sizes.length] as number;
    yield bytes.subarray(offset, offset + size);
    offset += size;
  }
}

async function* thenHang(bytes: Buffer, onHang: () => void): AsyncGenerator<Buffer> {
  yield* chunked(bytes, [65_536]);
  onHang();
  // A sender that went quiet: only an abort (or the refusal) can end this transfer.
  await sleep(3_600_000, undefined, { ref: false });
}

async function rejection(promise: Promise<unknown>): Promise<StewardError> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (err: unknown) => err as StewardError,
  );
}

describe('stageSnapshot (real etcd snapshot, real etcdctl)', () => {
  let etcd: EtcdCluster;
  let root: string;
  let tool: RestoreTool;
  let raw: Buffer;
  let gz: Buffer;
  let expected: { revision: number; totalKey: number };
  let n = 0;
  const nextPath = async (): Promise<{ dir: string; path: string }> => {
    const dir = join(root, `stage-${++n}`, 'staging');
    return { dir, path: join(dir, 'snapshot.db') };
  };
  /** Nothing visible: no final file, no .part, nothing else in the staging dir. */
  const expectNothingLeft = async (dir: string): Promise<void> => {
    expect(await readdir(dir).catch(() => [])).toEqual([]);
  };

  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
    root = await mkdtemp(join(tmpdir(), 'restore-staging-'));
    await fillEtcd(etcd.endpoints, 3);
    const client = new Etcd3({ hosts: etcd.endpoints });
    try {
      for (let i = 0; i < 25; i++) await client.put(`/staging/${i}`).value(`v${i}`);
    } finally {
      client.close();
    }
    const file = join(root, 'saved.db');
    await run('etcdctl', ['--endpoints', etcd.endpoints[0] as string, 'snapshot', 'save', file]);
    raw = await readFile(file);
    gz = gzipSync(raw);
    expected = JSON.parse(await run('etcdctl', ['snapshot', 'status', file, '-w', 'json'])) as { revision: number; totalKey: number };
    tool = await RestoreTool.detect();
  });

  afterAll(async () => {
    await etcd?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('stages a plain snapshot yielded in arbitrary chunk sizes: verified, 0600 in a 0700 dir, revision and keys as etcdctl says', async () => {
    const { dir, path } = await nextPath();
    const staged = await stageSnapshot(chunked(raw), announceOf(raw), path, tool, AbortSignal.timeout(30_000));
    expect(staged).toEqual({
      path,
      bytes: raw.length,
      sha256: sha256(raw),
      rawBytes: raw.length,
      rawSha256: sha256(raw),
      revision: expected.revision,
      totalKeys: expected.totalKey,
    });
    expect(sha256(await readFile(path))).toBe(sha256(raw));
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect(await readdir(dir)).toEqual(['snapshot.db']);
  });

  it('stages a gzip-compressed snapshot: hashes what came over the wire, writes and checks the decompressed bytes', async () => {
    const { dir, path } = await nextPath();
    const staged = await stageSnapshot(chunked(gz, [3, 999, 16_384]), announceOf(gz, true), path, tool, AbortSignal.timeout(30_000));
    expect(staged.bytes).toBe(gz.length);
    expect(staged.sha256).toBe(sha256(gz));
    expect(staged.rawBytes).toBe(raw.length);
    expect(staged.rawSha256).toBe(sha256(raw));
    expect(staged.revision).toBe(expected.revision);
    expect(staged.totalKeys).toBe(expected.totalKey);
    expect(sha256(await readFile(path))).toBe(sha256(raw));
    expect(await readdir(dir)).toEqual(['snapshot.db']);
  });

  it("stages this steward's own stored copy by a hard link (nothing written again), through the same checks", async () => {
    const { dir, path } = await nextPath();
    const stored = join(root, `stored-${n}.db`);
    await writeFile(stored, raw, { mode: 0o600 });
    const staged = await stageSnapshot({ file: stored }, announceOf(raw), path, tool, AbortSignal.timeout(30_000));
    expect(staged.sha256).toBe(sha256(raw));
    expect(staged.revision).toBe(expected.revision);
    expect(staged.totalKeys).toBe(expected.totalKey);
    expect((await stat(path)).ino).toBe((await stat(stored)).ino);
    expect(await readdir(dir)).toEqual(['snapshot.db']);
    // Removing the staged file only unlinks its name: the stored snapshot stays whole.
    await removeStaging(path);
    expect(sha256(await readFile(stored))).toBe(sha256(raw));
  });

  it('refuses a stored copy that does not match the announce, leaving the stored file as it was and nothing staged', async () => {
    const { dir, path } = await nextPath();
    const stored = join(root, `stored-${n}.db`);
    const bad = flipped(raw, 100);
    await writeFile(stored, bad, { mode: 0o600 });
    const err = await rejection(stageSnapshot({ file: stored }, announceOf(raw), path, tool, AbortSignal.timeout(30_000)));
    expect(err).toBeInstanceOf(PreconditionError);
    expect(err.code).toBe('RESTORE_VERIFY_FAILED');
    await expectNothingLeft(dir);
    expect(sha256(await readFile(stored))).toBe(sha256(bad));
  });

  it('stages a compressed stored copy by reading and decompressing it (a link would stage gzip bytes)', async () => {
    const { path } = await nextPath();
    const stored = join(root, `stored-${n}.db.gz`);
    await writeFile(stored, gz, { mode: 0o600 });
    const staged = await stageSnapshot({ file: stored }, announceOf(gz, true), path, tool, AbortSignal.timeout(30_000));
    expect(staged.rawSha256).toBe(sha256(raw));
    expect((await stat(path)).ino).not.toBe((await stat(stored)).ino);
    expect(sha256(await readFile(path))).toBe(sha256(raw));
  });

  it('refuses a flipped byte against the announced SHA-256, naming expected and got, and leaves nothing', async () => {
    for (const [bytes, compressed] of [
      [raw, false],
      [gz, true],
    ] as const) {
      const { dir, path } = await nextPath();
      const err = await rejection(
        stageSnapshot(chunked(flipped(bytes, Math.floor(bytes.length / 2))), announceOf(bytes, compressed), path, tool, AbortSignal.timeout(30_000)),
      );
      expect(err).toBeInstanceOf(PreconditionError);
      expect(err.code).toBe('RESTORE_VERIFY_FAILED');
      // Uncompressed, one hash serves both checks, and etcd's trailer (checked first) catches the flip.
      if (!compressed) expect(err.message).toMatch(/integrity check/);
      await expectNothingLeft(dir);
    }
  });

  it("refuses a flipped byte that the sender's own hash covers: etcd's trailer catches it (plain and compressed)", async () => {
    const corruptRaw = flipped(raw, 4096 + 17);
    for (const [bytes, compressed] of [
      [corruptRaw, false],
      [gzipSync(corruptRaw), true],
    ] as const) {
      const { dir, path } = await nextPath();
      const err = await rejection(stageSnapshot(chunked(bytes), announceOf(bytes, compressed), path, tool, AbortSignal.timeout(30_000)));
      expect(err).toBeInstanceOf(PreconditionError);
      expect(err.code).toBe('RESTORE_VERIFY_FAILED');
      expect(err.message).toMatch(/integrity check/);
      await expectNothingLeft(dir);
    }
    // Compressed bytes that are no gzip at all.
    const { dir, path } = await nextPath();
    const err = await rejection(stageSnapshot(chunked(raw), announceOf(raw, true), path, tool, AbortSignal.timeout(30_000)));
    expect(err.code).toBe('RESTORE_VERIFY_FAILED');
    expect(err.message).toContain('not valid gzip');
    await expectNothingLeft(dir);
  });

  it('refuses a stream longer than announced as soon as the excess arrives, and leaves nothing', async () => {
    const { dir, path } = await nextPath();
    let hung = false;
    const longer = Buffer.concat([raw, Buffer.from('one byte too many')]);
    const err = await rejection(
      stageSnapshot(
        thenHang(longer, () => (hung = true)),
        announceOf(raw),
        path,
        tool,
        AbortSignal.timeout(30_000),
      ),
    );
    expect(err.code).toBe('RESTORE_VERIFY_FAILED');
    expect(Number(new RegExp(`expected ${raw.length} bytes, got at least (\\d+)`).exec(err.message)?.[1])).toBeGreaterThan(raw.length);
    // Refused while the sender was still sending: it never got to go quiet.
    expect(hung).toBe(true);
    await expectNothingLeft(dir);
  });

  it('refuses a stream shorter than announced, and one whose announced hash is wrong', async () => {
    const short = await nextPath();
    let err = await rejection(stageSnapshot(chunked(raw.subarray(0, raw.length - 100)), announceOf(raw), short.path, tool, AbortSignal.timeout(30_000)));
    expect(err.code).toBe('RESTORE_VERIFY_FAILED');
    expect(err.message).toContain(`expected ${raw.length} bytes, got ${raw.length - 100}`);
    await expectNothingLeft(short.dir);

    const wrong = await nextPath();
    const announce = { ...announceOf(raw), sha256: 'a'.repeat(64) };
    err = await rejection(stageSnapshot(chunked(raw), announce, wrong.path, tool, AbortSignal.timeout(30_000)));
    expect(err.code).toBe('RESTORE_VERIFY_FAILED');
    expect(err.message).toContain(`expected ${'a'.repeat(64)}, got ${sha256(raw)}`);
    await expectNothingLeft(wrong.dir);
  });

  it('stops at once on abort mid-stream, even with the sender stuck, and leaves nothing', async () => {
    const { dir, path } = await nextPath();
    const controller = new AbortController();
    const pending = stageSnapshot(
      thenHang(raw.subarray(0, raw.length / 2), () => setImmediate(() => controller.abort())),
      announceOf(raw),
      path,
      tool,
      controller.signal,
    );
    const started = Date.now();
    const err = await rejection(pending);
    expect(err).toBeInstanceOf(CancelledError);
    expect(Date.now() - started).toBeLessThan(5_000);
    await expectNothingLeft(dir);
  });

  it('gives up on a sender that goes quiet mid-stream (DEADLINE_EXCEEDED), and leaves nothing', async () => {
    const { dir, path } = await nextPath();
    const started = Date.now();
    const err = await rejection(
      stageSnapshot(
        thenHang(raw, () => undefined),
        announceOf(raw),
        path,
        tool,
        AbortSignal.timeout(30_000),
        300,
      ),
    );
    expect(err.code, err.message).toBe('RESTORE_SENDER_IDLE');
    expect(err.family).toBe('deadline');
    expect(err.message).toMatch(/sent nothing for 0 s/);
    expect(Date.now() - started).toBeLessThan(5000);
    await expectNothingLeft(dir);
  });

  it('removes what was staged at the path before, so a failed transfer never leaves an older snapshot to restore', async () => {
    const { dir, path } = await nextPath();
    await stageSnapshot(chunked(raw), announceOf(raw), path, tool, AbortSignal.timeout(30_000));
    await writeFile(`${path}.part`, 'left by a crashed steward');
    const err = await rejection(stageSnapshot(chunked(raw.subarray(0, 1000)), announceOf(raw), path, tool, AbortSignal.timeout(30_000)));
    expect(err.code).toBe('RESTORE_VERIFY_FAILED');
    await expectNothingLeft(dir);
    // A stale .part does not stop the next transfer.
    await writeFile(`${path}.part`, 'left by a crashed steward');
    await stageSnapshot(chunked(gz), announceOf(gz, true), path, tool, AbortSignal.timeout(30_000));
    expect(await readdir(dir)).toEqual(['snapshot.db']);
  });

  it('refuses a second transfer into the same path while one runs', async () => {
    const { path } = await nextPath();
    const controller = new AbortController();
    let hanging!: () => void;
    const hung = new Promise<void>((resolve) => (hanging = resolve));
    const first = stageSnapshot(thenHang(raw.subarray(0, 100_000), hanging), announceOf(raw), path, tool, controller.signal);
    await hung;
    const err = await rejection(stageSnapshot(chunked(raw), announceOf(raw), path, tool, AbortSignal.timeout(30_000)));
    expect(err.code).toBe('RESTORE_STAGING_BUSY');
    controller.abort();
    expect(await rejection(first)).toBeInstanceOf(CancelledError);
  });

  it('refuses a missing or invalid announce with INVALID_ARGUMENT before touching the disk', async () => {
    const { dir, path } = await nextPath();
    const good = announceOf(raw);
    const bad: unknown[] = [
      undefined,
      { ...good, sha256: 'xyz' },
      { ...good, sha256: good.sha256.toUpperCase() },
      { ...good, size: -1 },
      { ...good, size: 1.5 },
      { ...good, snapshot: '' },
      { ...good, compressed: 'yes' },
    ];
    for (const announce of bad) {
      const err = await rejection(stageSnapshot(chunked(raw), announce as StageAnnounce, path, tool, AbortSignal.timeout(30_000)));
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect(err.code).toBe('INVALID_ARGUMENT');
    }
    await expectNothingLeft(dir);
  });

  it('removeStaging removes the staged file and its .part; missing ones are fine', async () => {
    const { dir, path } = await nextPath();
    await removeStaging(path);
    await mkdir(dir, { recursive: true });
    await writeFile(path, 'x');
    await writeFile(`${path}.part`, 'y');
    await removeStaging(path);
    await expectNothingLeft(dir);
  });

  it('freeBytes reports bavail*bsize for a path or its nearest existing ancestor', async () => {
    const fs = await statfs(root);
    const free = await freeBytes(join(root, 'does', 'not', 'exist', 'yet'));
    expect(free).toBeGreaterThan(0);
    // The same filesystem; other writers may change it a little between the two reads.
    expect(Math.abs(free - fs.bavail * fs.bsize)).toBeLessThan(64 * 1024 * 1024);
    await writeFile(join(root, 'a-file'), 'x');
    expect(await freeBytes(join(root, 'a-file', 'below-a-file'))).toBeGreaterThan(0);
  });
});
