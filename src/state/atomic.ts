import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InternalError, errorText } from '../errors/index.js';

/** State files hold cluster tokens, peer addresses and restore progress: only the steward's user reads them. */
export const STATE_FILE_MODE = 0o600;
export const STATE_DIR_MODE = 0o700;

/**
 * The one way a state file is written (pid file, mirrored spec, `last-cluster-spec.json`, restore phases):
 * a temp file beside the target (same dir, so the rename stays on one filesystem), write, fsync, rename over
 * the target, fsync the dir. A crash at any point leaves either the old file or the new one, never a torn
 * one; a failed write removes its temp file and throws a typed error naming the path.
 */
export async function writeFileAtomic(path: string, data: string | Buffer, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.tmp-${randomBytes(6).toString('hex')}`);
  let renamed = false;
  try {
    const handle = await open(temp, 'wx', STATE_FILE_MODE);
    try {
      // open()'s mode is filtered by the umask; a umask can only take bits away, but say the mode outright.
      await handle.chmod(STATE_FILE_MODE);
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    // Last moment to honour an abort: after the rename the new content is visible.
    signal?.throwIfAborted();
    await rename(temp, path);
    renamed = true;
    await fsyncDir(dir);
  } catch (err) {
    if (!renamed) await unlink(temp).catch(() => undefined);
    if (signal?.aborted && !renamed) throw signal.reason;
    throw new InternalError('STATE_WRITE_FAILED', `cannot write ${path}: ${errorText(err)}`, {
      hint: `check that ${dir} is writable by the steward and that its volume is not full or read-only`,
      cause: err,
    });
  }
}

/** Without this the rename itself may not survive a power loss. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Creates the state dir owner-only (0700), and tightens one that exists with looser bits (older stewards
 * created it 0755 and their files 0644): the dir, the regular files directly in it (0600) and its subdirs
 * (0700: the mirrored control store, restore phases, the default snapshot dir).
 */
export async function ensureStateDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: STATE_DIR_MODE });
    if (((await stat(dir)).mode & 0o077) !== 0) await chmod(dir, STATE_DIR_MODE);
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      if (!entry.isFile() && !entry.isDirectory()) continue;
      const path = join(dir, entry.name);
      const mode = (await stat(path).catch(() => undefined))?.mode;
      if (mode !== undefined && (mode & 0o077) !== 0) await chmod(path, entry.isDirectory() ? STATE_DIR_MODE : STATE_FILE_MODE).catch(() => undefined);
    }
  } catch (err) {
    throw new InternalError('STATE_DIR_FAILED', `cannot prepare the state dir ${dir}: ${errorText(err)}`, {
      hint: 'check --state-dir: it must be a directory the steward can create and own',
      cause: err,
    });
  }
}
