import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StewardError } from '../../src/errors/index.js';
import { ensureStateDir, writeFileAtomic } from '../../src/state/atomic.js';

const modeOf = async (path: string): Promise<number> => (await stat(path)).mode & 0o777;

describe('state files: one atomic, owner-only write', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'state-test-'));
  });
  afterEach(async () => {
    await chmod(root, 0o700).catch(() => undefined);
    await rm(root, { recursive: true, force: true });
  });

  it('writes the content with mode 0600, replaces an older 0644 file, and leaves no temp file behind', async () => {
    const path = join(root, 'etcd.pid');
    await writeFile(path, 'old\n', { mode: 0o644 });
    await chmod(path, 0o644);
    await writeFileAtomic(path, '1234\n');
    expect(await readFile(path, 'utf8')).toBe('1234\n');
    expect(await modeOf(path)).toBe(0o600);
    expect(await readdir(root)).toEqual(['etcd.pid']);
  });

  it('a failed write throws STATE_WRITE_FAILED naming the path, keeps the old file and removes its temp file', async () => {
    const dir = join(root, 'ro');
    await mkdir(dir);
    const path = join(dir, 'last-cluster-spec.json');
    await writeFile(path, 'kept');
    // Tests run as root, which ignores directory permissions: a target under a regular file fails for anyone.
    const impossible = join(path, 'child.json');
    const err = await writeFileAtomic(impossible, 'x').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StewardError);
    expect((err as StewardError).code).toBe('STATE_WRITE_FAILED');
    expect((err as StewardError).message).toContain(impossible);
    expect(await readFile(path, 'utf8')).toBe('kept');
    expect(await readdir(dir)).toEqual(['last-cluster-spec.json']);
  });

  it('an aborted write changes nothing', async () => {
    const path = join(root, 'phase.json');
    await writeFile(path, 'before');
    const controller = new AbortController();
    controller.abort(new Error('stop'));
    await expect(writeFileAtomic(path, 'after', controller.signal)).rejects.toThrow('stop');
    expect(await readFile(path, 'utf8')).toBe('before');
    expect(await readdir(root)).toEqual(['phase.json']);
  });

  it('creates the state dir 0700 and tightens an existing 0755 dir and its 0644 files', async () => {
    const fresh = join(root, 'a', 'state');
    await ensureStateDir(fresh);
    expect(await modeOf(fresh)).toBe(0o700);

    const old = join(root, 'old-state');
    await mkdir(old, { mode: 0o755 });
    await chmod(old, 0o755);
    await writeFile(join(old, 'last-cluster-spec.json'), '{}');
    await chmod(join(old, 'last-cluster-spec.json'), 0o644);
    await mkdir(join(old, 'control'), { mode: 0o755 });
    await chmod(join(old, 'control'), 0o755);
    await ensureStateDir(old);
    expect(await modeOf(old)).toBe(0o700);
    expect(await modeOf(join(old, 'control'))).toBe(0o700);
    expect(await modeOf(join(old, 'last-cluster-spec.json'))).toBe(0o600);
  });

  it('a state dir path that is a file fails with STATE_DIR_FAILED', async () => {
    const file = join(root, 'not-a-dir');
    await writeFile(file, '');
    const err = await ensureStateDir(join(file, 'state')).catch((e: unknown) => e);
    expect((err as StewardError).code).toBe('STATE_DIR_FAILED');
  });
});
