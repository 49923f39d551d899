import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { link, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Readable, Transform, Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import {
  DeadlineError,
  InternalError,
  InvalidArgumentError,
  PreconditionError,
  StewardError,
  UnavailableError,
  abortedError,
  errorText,
  prefixOf,
} from '../errors/index.js';
import { EtcdIntegrityCheck } from '../snapshot/integrity.js';
import { STATE_FILE_MODE, ensureStateDir, fsyncDir } from '../state/atomic.js';
import type { RestoreTool } from './tool.js';

/** What the sender says it will send, before the first byte: the stored object as it sits in its location. */
export interface StageAnnounce {
  snapshot: string;
  /** Stored bytes (gzip bytes when compressed). */
  size: number;
  /** SHA-256 of the stored bytes, lowercase hex. */
  sha256: string;
  compressed: boolean;
}

export interface StagedSnapshot {
  path: string;
  /** Stored bytes received (as announced). */
  bytes: number;
  sha256: string;
  /** The snapshot as written to `path` (decompressed) and what `snapshot restore` reads. */
  rawBytes: number;
  rawSha256: string;
  revision: number;
  totalKeys: number;
}

const VERIFY = 'RESTORE_VERIFY_FAILED';
const VERIFY_HINT = 'the copy was corrupted or cut short on its way or where it is stored: send it again, or restore another snapshot';

/** Paths being staged by this process: two transfers into one file would interleave into garbage. */
const inProgress = new Set<string>();

/**
 * Writes a snapshot as it arrives to `${path}.part`, checks it on the way (the announced size, the stored
 * SHA-256, etcd's own trailer on the decompressed bytes), and only then renames it to `path` and asks the
 * restore tool for its revision. Whatever was staged at `path` before is removed first, so that a failed
 * transfer can never leave an older snapshot behind to be restored by mistake; on any failure or abort
 * neither file is left.
 */
export async function stageSnapshot(
  data: AsyncIterable<Buffer> | LocalCopy,
  announce: StageAnnounce,
  path: string,
  tool: RestoreTool,
  signal: AbortSignal,
  idleTimeoutMs = SENDER_IDLE_TIMEOUT_MS,
): Promise<StagedSnapshot> {
  checkAnnounce(announce);
  if (!path) throw new InvalidArgumentError('no staging path given');
  if (signal.aborted) throw abortedError(signal, signal.reason);
  const target = resolve(path);
  const part = `${target}.part`;
  if (inProgress.has(target)) {
    throw new PreconditionError('RESTORE_STAGING_BUSY', `a snapshot is already being staged at ${target}`, {
      hint: 'wait for the transfer in progress to end or abort it; only one snapshot is received per member at a time',
    });
  }
  inProgress.add(target);
  let handle: FileHandle | undefined;
  try {
    await ensureStateDir(dirname(target));
    // A .part left by a crashed steward is no transfer of ours: start afresh.
    await removeStaging(target);
    const linked = 'file' in data && !announce.compressed && (await linkCopy(data.file, part));
    const source =
      'file' in data ? createReadStream(linked ? part : data.file, { highWaterMark: FILE_READ_BYTES }) : sourceOf(data, idleTimeoutMs, announce.snapshot);
    // Uncompressed, the trailer check's running hash is the stored bytes' SHA-256 too: 1 GB is hashed once.
    const stored = new AnnouncedBytes(announce, announce.compressed);
    const check = new EtcdIntegrityCheck();
    const gunzip = announce.compressed ? createGunzip() : undefined;
    let diskError = (): unknown => undefined;
    let sink: Writable;
    if (linked) {
      sink = new Writable({ write: (_chunk, _encoding, callback) => callback() });
    } else {
      handle = await open(part, 'wx', STATE_FILE_MODE);
      await handle.chmod(STATE_FILE_MODE);
      const file = new FileSink(handle);
      sink = file;
      diskError = () => file.failure;
    }
    try {
      await pipeline([source, stored, ...(gunzip ? [gunzip] : []), check, sink], { signal });
    } catch (err) {
      throw classify(err, { compressed: gunzip !== undefined, diskError: diskError(), received: stored.bytes }, announce, signal);
    }
    await handle?.close();
    handle = undefined;
    signal.throwIfAborted();
    const storedSha256 = announce.compressed ? stored.sha256 : check.fileSha256;
    if (storedSha256 !== announce.sha256) {
      throw mismatch(`${announce.snapshot} does not match its announced SHA-256: expected ${announce.sha256}, got ${storedSha256}`);
    }
    await rename(part, target);
    await fsyncDir(dirname(target));
    const status = await tool.status(target, signal);
    return {
      path: target,
      bytes: stored.bytes,
      sha256: storedSha256,
      rawBytes: check.size,
      rawSha256: check.fileSha256,
      revision: status.revision,
      totalKeys: status.totalKeys,
    };
  } catch (err) {
    await handle?.close().catch(() => undefined);
    await removeStaging(target).catch(() => undefined);
    if (signal.aborted) throw abortedError(signal, err);
    if (err instanceof StewardError) throw err;
    throw new InternalError('RESTORE_STAGING_FAILED', `cannot write the snapshot ${announce.snapshot} to ${part}: ${errorText(err)}`, {
      hint: `check that ${dirname(target)} is writable by the steward and its volume has room for the snapshot`,
      cause: err,
    });
  } finally {
    inProgress.delete(target);
  }
}

/** This steward's own stored copy of the snapshot, staged without the network. */
export interface LocalCopy {
  file: string;
}

const FILE_READ_BYTES = 1024 * 1024;

/** Longest a sender may go quiet mid-transfer: far above any pause of a healthy stream, even from S3. */
export const SENDER_IDLE_TIMEOUT_MS = 120_000;

/**
 * A hard link stages the steward's own copy without writing it again: writing 1 GB into the page cache
 * costs ~2.7 s of CPU on the machines we measured, as much as the restore tool's own copy. The link is
 * then read back through the same checks as a received stream. Safe because nothing writes a staged
 * file: `snapshot restore` and `snapshot status` open it read-only, and removing it only unlinks a name.
 * Another filesystem (EXDEV) or one without links falls back to a copy.
 */
async function linkCopy(file: string, part: string): Promise<boolean> {
  try {
    await link(file, part);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EXDEV' || code === 'EPERM' || code === 'EMLINK' || code === 'ENOTSUP' || code === 'EOPNOTSUPP') return false;
    throw err;
  }
}

/** Removes a staged snapshot and its partial file; neither existing is fine. */
export async function removeStaging(path: string): Promise<void> {
  const target = resolve(path);
  try {
    await rm(`${target}.part`, { force: true });
    await rm(target, { force: true });
  } catch (err) {
    throw new InternalError('RESTORE_STAGING_FAILED', `cannot remove the staged snapshot ${target}: ${errorText(err)}`, {
      hint: `check the permissions of ${dirname(target)}`,
      cause: err,
    });
  }
}

function checkAnnounce(announce: StageAnnounce | undefined): void {
  if (typeof announce !== 'object' || announce === null)
    throw new InvalidArgumentError('a snapshot transfer must start with its announce (name, size, sha256)');
  const { snapshot, size, sha256, compressed } = announce;
  if (typeof snapshot !== 'string' || snapshot.length === 0 || snapshot.length > 255)
    throw new InvalidArgumentError('the announced snapshot name is empty or longer than 255 characters');
  // 32 bytes is the trailer alone; a gzip of anything is longer than its 18-byte frame.
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < (compressed ? 18 : 32)) {
    throw new InvalidArgumentError(`the announced size of ${snapshot} (${prefixOf(String(size), 40)}) is not a plausible snapshot size`);
  }
  if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256))
    throw new InvalidArgumentError(`the announced sha256 of ${snapshot} is not 64 lowercase hex digits`);
  if (typeof compressed !== 'boolean') throw new InvalidArgumentError(`the announce of ${snapshot} does not say whether it is compressed`);
}

/** Counts and hashes the stored bytes; refuses the first byte past the announced size, and a short or different stream at its end. */
class AnnouncedBytes extends Transform {
  private readonly hash = createHash('sha256');
  bytes = 0;
  sha256 = '';

  constructor(
    private readonly announce: StageAnnounce,
    private readonly hashing: boolean,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.announce.size) {
      callback(mismatch(`${this.announce.snapshot} is longer than announced: expected ${this.announce.size} bytes, got at least ${this.bytes}`));
      return;
    }
    if (this.hashing) this.hash.update(chunk);
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    const { snapshot, size, sha256 } = this.announce;
    if (this.bytes !== size) {
      callback(mismatch(`${snapshot} ended short: expected ${size} bytes, got ${this.bytes}`));
      return;
    }
    if (!this.hashing) {
      callback();
      return;
    }
    this.sha256 = this.hash.digest('hex');
    if (this.sha256 !== sha256) {
      callback(mismatch(`${snapshot} does not match its announced SHA-256: expected ${sha256}, got ${this.sha256}`));
      return;
    }
    callback();
  }
}

const mismatch = (message: string, cause?: unknown): PreconditionError => new PreconditionError(VERIFY, message, { hint: VERIFY_HINT, cause });

/** Which stage failed decides what the failure means: the sender's bytes, the disk, or the caller's source. */
function classify(
  err: unknown,
  seen: { compressed: boolean; diskError: unknown; received: number },
  announce: StageAnnounce,
  signal: AbortSignal,
): StewardError {
  if (signal.aborted) return abortedError(signal, err);
  if (err instanceof PreconditionError && err.code === VERIFY) return err;
  if (err instanceof InternalError && (err.code === 'SNAPSHOT_TRUNCATED' || err.code === 'SNAPSHOT_CORRUPT')) {
    return mismatch(`${announce.snapshot} failed etcd's integrity check${seen.compressed ? ' after decompression' : ''}: ${err.message}`, err);
  }
  if (seen.compressed && isZlibError(err)) return mismatch(`${announce.snapshot} is announced as compressed but is not valid gzip: ${errorText(err)}`, err);
  if (err !== undefined && err === seen.diskError) {
    return new InternalError('RESTORE_STAGING_FAILED', `cannot write the snapshot ${announce.snapshot} to disk: ${errorText(err)}`, {
      hint: 'check that the staging dir is writable by the steward and its volume has room for the snapshot',
      cause: err,
    });
  }
  if (err instanceof StewardError) return err;
  return new UnavailableError(
    'RESTORE_TRANSFER_FAILED',
    `the transfer of ${announce.snapshot} broke off after ${seen.received} of ${announce.size} bytes: ${errorText(err)}`,
    {
      hint: 'check the sending steward and the network between the nodes, then send the snapshot again',
      cause: err,
    },
  );
}

function isZlibError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('Z_');
}

/**
 * A Readable over the caller's chunks. Readable.from would wait for the iterator's return() on destroy, and
 * a source stuck awaiting the network would hold an abort up until it woke; here destroy lets go at once.
 */
function sourceOf(data: AsyncIterable<Buffer>, idleTimeoutMs: number, snapshot: string): Readable {
  const iterator = data[Symbol.asyncIterator]();
  let finished = false;
  // A sender that holds its stream open and sends nothing would hold this member's restore lock forever.
  const nextOrIdle = async (): Promise<IteratorResult<unknown>> => {
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new DeadlineError(`the sender of ${snapshot} sent nothing for ${Math.round(idleTimeoutMs / 1000)} s`, {
              code: 'RESTORE_SENDER_IDLE',
              hint: 'check the coordinating steward and the network between the nodes; nothing was staged, run the restore again',
            }),
          ),
        idleTimeoutMs,
      );
    });
    try {
      return await Promise.race([iterator.next(), idle]);
    } finally {
      clearTimeout(timer);
    }
  };
  return new Readable({
    highWaterMark: 256 * 1024,
    // One chunk per call: the stream machinery never calls read() again before the push.
    read(): void {
      const pull = async (): Promise<void> => {
        for (;;) {
          const next = await nextOrIdle();
          if (this.destroyed) return;
          if (next.done) {
            finished = true;
            this.push(null);
            return;
          }
          const chunk: unknown = next.value;
          if (!(chunk instanceof Uint8Array)) throw new InvalidArgumentError('a snapshot transfer yielded something other than bytes');
          // An empty push would count as no data and is skipped rather than relied on.
          if (chunk.length === 0) continue;
          this.push(chunk);
          return;
        }
      };
      pull().catch((err: unknown) => {
        finished = true;
        this.destroy(err instanceof Error ? err : new Error(String(err)));
      });
    },
    destroy(err, callback): void {
      if (!finished) {
        finished = true;
        Promise.resolve()
          .then(() => iterator.return?.())
          .catch(() => undefined);
      }
      callback(err);
    },
  });
}

/**
 * Writes to a FileHandle we keep: a stream made by handle.createWriteStream({ autoClose: false }) holds a
 * reference that makes handle.close() wait forever. The file is fsynced before the stream finishes.
 */
class FileSink extends Writable {
  /** The disk's own error, told apart from one the pipeline passes down from upstream. */
  failure: Error | undefined;

  constructor(private readonly handle: FileHandle) {
    super({ highWaterMark: 1024 * 1024 });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    writeAll(this.handle, chunk).then(
      () => callback(),
      (err: Error) => callback((this.failure = err)),
    );
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.handle.sync().then(
      () => callback(),
      (err: Error) => callback((this.failure = err)),
    );
  }
}

async function writeAll(handle: FileHandle, chunk: Buffer): Promise<void> {
  let offset = 0;
  while (offset < chunk.length) offset += (await handle.write(chunk, offset, chunk.length - offset)).bytesWritten;
}
