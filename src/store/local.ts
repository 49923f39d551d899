import { randomBytes } from 'node:crypto';
import { fsyncDir } from '../state/atomic.js';
import { createReadStream } from 'node:fs';
import { link, mkdir, open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { addAbortSignal, type Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { InternalError, InvalidArgumentError, NotFoundError, PreconditionError, StewardError, errorText } from '../errors/index.js';
import type { BackupStore, ObjectInfo, ObjectWriter, PutOptions } from './store.js';

const SMALL_LIMIT = 1024 * 1024;
/** `.<key>.tmp-<hex>`: the only names this store writes that are not committed objects. */
const TEMP_NAME = /^\..+\.tmp-[0-9a-f]+$/;

/**
 * Keys are single file names. Every store applies this rule (S3 too) so a key that works in one place
 * works in every other, and no key can climb out of the directory or hide among temp files.
 */
export function checkKey(key: string): void {
  if (key === '' || key.includes('/') || key.includes('\\') || key.includes('\0') || key.includes('..') || key.startsWith('.')) {
    throw new InvalidArgumentError(`invalid object key ${JSON.stringify(key)}: expected a plain file name without '/', '..' or a leading '.'`, {
      hint: 'use the snapshot name as listed by the store',
    });
  }
}

/** A directory of committed files; a write is invisible until it is fsynced and renamed into place. */
export class LocalStore implements BackupStore {
  readonly kind = 'local' as const;
  readonly dir: string;
  readonly location: string;

  constructor(dir: string) {
    this.dir = resolve(dir);
    this.location = pathToFileURL(this.dir).href;
  }

  urlFor(key: string): string {
    return pathToFileURL(this.pathOf(key)).href;
  }

  /** The file that holds `key`. */
  pathOf(key: string): string {
    checkKey(key);
    return join(this.dir, key);
  }

  async createWriter(key: string, signal: AbortSignal, options: PutOptions = {}): Promise<ObjectWriter> {
    checkKey(key);
    signal.throwIfAborted();
    await this.ensureDir();
    const tempPath = join(this.dir, `.${key}.tmp-${randomBytes(6).toString('hex')}`);
    let handle: FileHandle;
    try {
      handle = await open(tempPath, 'wx', 0o600);
    } catch (err) {
      throw fsError(`cannot create ${tempPath}`, this.dir, err);
    }
    return new LocalWriter(handle, tempPath, join(this.dir, key), this.dir, signal, options.createOnly ?? false);
  }

  async putSmall(key: string, body: string | Buffer, signal: AbortSignal, options: PutOptions = {}): Promise<void> {
    const writer = await this.createWriter(key, signal, options);
    try {
      await writer.write(typeof body === 'string' ? Buffer.from(body) : body);
      await writer.commit();
    } catch (err) {
      await writer.abort(err);
      throw err;
    }
  }

  async readSmall(key: string, signal: AbortSignal): Promise<Buffer> {
    checkKey(key);
    signal.throwIfAborted();
    const path = join(this.dir, key);
    const handle = await this.openForRead(path, key);
    try {
      const { size } = await handle.stat();
      if (size > SMALL_LIMIT) throw tooLarge(this.urlFor(key), size);
      return await handle.readFile({ signal });
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      throw err instanceof StewardError ? err : fsError(`cannot read ${path}`, this.dir, err);
    } finally {
      await handle.close().catch(() => {});
    }
  }

  async read(key: string, signal: AbortSignal): Promise<Readable> {
    checkKey(key);
    signal.throwIfAborted();
    const path = join(this.dir, key);
    // Opening first turns a missing file into NotFoundError here, not into an 'error' event later.
    const handle = await this.openForRead(path, key);
    return addAbortSignal(signal, createReadStream(path, { fd: handle }));
  }

  async head(key: string, signal: AbortSignal): Promise<ObjectInfo | undefined> {
    checkKey(key);
    signal.throwIfAborted();
    try {
      const info = await stat(join(this.dir, key));
      return info.isFile() ? { key, size: info.size, lastModified: info.mtime } : undefined;
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return undefined;
      throw fsError(`cannot stat ${join(this.dir, key)}`, this.dir, err);
    }
  }

  async list(prefix: string, signal: AbortSignal): Promise<ObjectInfo[]> {
    signal.throwIfAborted();
    let names: string[];
    try {
      const entries = await readdir(this.dir, { withFileTypes: true });
      names = entries.filter((e) => e.isFile() && !e.name.startsWith('.') && e.name.startsWith(prefix)).map((e) => e.name);
    } catch (err) {
      // Nothing was ever written: the directory is created on the first write.
      if (errnoOf(err) === 'ENOENT') return [];
      throw fsError(`cannot list ${this.dir}`, this.dir, err);
    }
    const infos: ObjectInfo[] = [];
    for (const name of names.sort()) {
      signal.throwIfAborted();
      const info = await this.head(name, signal);
      // Deleted between readdir and stat (retention running concurrently): it is simply gone.
      if (info) infos.push(info);
    }
    return infos;
  }

  async delete(key: string, signal: AbortSignal): Promise<void> {
    checkKey(key);
    signal.throwIfAborted();
    try {
      await unlink(join(this.dir, key));
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw fsError(`cannot delete ${join(this.dir, key)}`, this.dir, err);
    }
  }

  /**
   * Removes temp files left by a crash mid-write. Only files older than `olderThanMs` go, so a writer
   * still running (in this or another process) keeps its file. Returns the names removed.
   */
  async cleanupTempFiles(olderThanMs: number): Promise<string[]> {
    let names: string[];
    try {
      names = (await readdir(this.dir)).filter((name) => TEMP_NAME.test(name));
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return [];
      throw fsError(`cannot list ${this.dir}`, this.dir, err);
    }
    const removed: string[] = [];
    const cutoff = Date.now() - olderThanMs;
    for (const name of names) {
      try {
        if ((await stat(join(this.dir, name))).mtimeMs > cutoff) continue;
        await unlink(join(this.dir, name));
        removed.push(name);
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') throw fsError(`cannot remove ${join(this.dir, name)}`, this.dir, err);
      }
    }
    return removed;
  }

  private async ensureDir(): Promise<void> {
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw fsError(`cannot create ${this.dir}`, this.dir, err);
    }
  }

  private async openForRead(path: string, key: string): Promise<FileHandle> {
    try {
      return await open(path, 'r');
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') {
        throw new NotFoundError(`${this.urlFor(key)} does not exist`, { hint: 'list the store to see which snapshots exist', cause: err });
      }
      throw fsError(`cannot open ${path}`, this.dir, err);
    }
  }
}

type WriterState = 'open' | 'committing' | 'committed' | 'aborted';

class LocalWriter implements ObjectWriter {
  private state: WriterState = 'open';
  private bytes = 0;
  private handleClosed = false;
  private aborting: Promise<void> | undefined;
  /** Every file operation runs through this chain, so an abort never closes the file under a write. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly onAbort = (): void => void this.abort(this.signal.reason);

  constructor(
    private readonly handle: FileHandle,
    private readonly tempPath: string,
    private readonly finalPath: string,
    private readonly dir: string,
    private readonly signal: AbortSignal,
    /** Commit by link(2), which refuses an existing name, instead of rename(2), which replaces it. */
    private readonly createOnly = false,
  ) {
    signal.addEventListener('abort', this.onAbort, { once: true });
  }

  async write(chunk: Buffer): Promise<void> {
    this.assertOpen();
    try {
      await this.serial(() => writeAll(this.handle, chunk));
    } catch (err) {
      await this.abort(err);
      throw fsError(`cannot write ${this.tempPath}`, this.dir, err);
    }
    this.bytes += chunk.length;
    // The signal fired while this chunk was being written: the file is already gone.
    this.assertOpen();
  }

  async commit(): Promise<{ size: number }> {
    this.assertOpen();
    this.state = 'committing';
    let renamed = false;
    try {
      return await this.serial(async () => {
        await this.handle.sync();
        await this.closeHandle();
        const { size } = await stat(this.tempPath);
        if (size !== this.bytes) {
          throw new InternalError('LOCAL_SIZE_MISMATCH', `${this.tempPath} holds ${size} bytes, ${this.bytes} were written`, {
            hint: `check the volume holding ${this.dir} for errors`,
          });
        }
        // Last moment to honour an abort: after the rename the object is visible.
        this.signal.throwIfAborted();
        if (this.aborting) throw new InternalError('STORE_WRITER_CLOSED', `the writer for ${this.finalPath} was aborted during commit`);
        if (this.createOnly) {
          await link(this.tempPath, this.finalPath).catch((err: unknown) => {
            const errno = errnoOf(err);
            if (errno === 'EEXIST') throw new PreconditionError('OBJECT_EXISTS', `${pathToFileURL(this.finalPath).href} already exists`);
            if (errno === 'ENOTSUP' || errno === 'EOPNOTSUPP' || errno === 'EPERM') {
              throw new InternalError('LOCAL_NO_HARDLINKS', `cannot create ${this.finalPath} exclusively: the filesystem refused a hard link (${errno})`, {
                hint: `put ${this.dir} on a filesystem with hard links (ext4, xfs, btrfs)`,
              });
            }
            throw err;
          });
          renamed = true;
          // The object is in place: a temp name left behind is only litter, never a reason to fail.
          await unlink(this.tempPath).catch(() => undefined);
        } else {
          await rename(this.tempPath, this.finalPath);
          renamed = true;
        }
        this.state = 'committed';
        await fsyncDir(this.dir);
        return { size };
      });
    } catch (err) {
      if (!renamed) await this.abort(err);
      if (this.signal.aborted && !renamed) throw this.signal.reason;
      throw err instanceof StewardError ? err : fsError(`cannot commit ${this.finalPath}`, this.dir, err);
    } finally {
      this.signal.removeEventListener('abort', this.onAbort);
    }
  }

  async abort(_reason?: unknown): Promise<void> {
    if (this.state === 'committed') return;
    this.state = 'aborted';
    this.signal.removeEventListener('abort', this.onAbort);
    // A second caller (the signal, then a failing write) waits for the same cleanup to finish.
    this.aborting ??= this.discard();
    return this.aborting;
  }

  /** Queued behind any write or commit step in flight, so the file is never closed under them. */
  private async discard(): Promise<void> {
    await this.serial(async () => {
      await this.closeHandle().catch(() => {});
      await unlink(this.tempPath).catch(() => {});
    }).catch(() => {});
  }

  private assertOpen(): void {
    if (this.state === 'open') return;
    if (this.signal.aborted) throw this.signal.reason;
    throw new InternalError('STORE_WRITER_CLOSED', `the writer for ${this.finalPath} is already ${this.state}`);
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private async closeHandle(): Promise<void> {
    if (this.handleClosed) return;
    this.handleClosed = true;
    await this.handle.close();
  }
}

async function writeAll(handle: FileHandle, chunk: Buffer): Promise<void> {
  let offset = 0;
  while (offset < chunk.length) {
    const { bytesWritten } = await handle.write(chunk, offset, chunk.length - offset);
    offset += bytesWritten;
  }
}

function tooLarge(url: string, size: number): InvalidArgumentError {
  return new InvalidArgumentError(`${url} is ${size} bytes, more than the ${SMALL_LIMIT} bytes a metadata object may have`, {
    hint: 'this key is not a metadata object; check which key was asked for',
  });
}

function errnoOf(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function fsError(what: string, dir: string, err: unknown): StewardError {
  const errno = errnoOf(err);
  if (errno === 'ENOSPC' || errno === 'EDQUOT') {
    return new InternalError('LOCAL_NO_SPACE', `${what}: ${errorText(err)}`, {
      cause: err,
      hint: `free space on the volume holding ${dir} or keep fewer snapshots`,
    });
  }
  if (errno === 'EACCES' || errno === 'EPERM' || errno === 'EROFS') {
    return new InternalError('LOCAL_ACCESS_DENIED', `${what}: ${errorText(err)}`, {
      cause: err,
      hint: `make ${dir} writable by the user etcd-steward runs as`,
    });
  }
  return new InternalError('LOCAL_IO_ERROR', `${what}: ${errorText(err)}`, { cause: err, hint: `check the volume holding ${dir}` });
}
