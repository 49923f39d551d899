import type { Readable } from 'node:stream';

/**
 * Where snapshots and their metadata live: a local dir or an S3 prefix, behind one small interface so
 * the snapshotter, reconcile and retention never care which. Keys are relative to the store's root
 * (`<name>`, `<name>.metadata.json`); every call takes an AbortSignal.
 */
export interface ObjectInfo {
  key: string;
  size: number;
  lastModified: Date;
}

export interface PutOptions {
  createOnly?: boolean;
}

export interface ObjectWriter {
  /** Resolves once the chunk is accepted; awaiting it is the backpressure. The chunk is handed over: never modify it afterwards. */
  write(chunk: Buffer): Promise<void>;
  /** Makes the object visible under its key (local: fsync + rename; S3: complete the upload) and reports its size as stored. */
  commit(): Promise<{ size: number }>;
  /** Leaves no trace: the temp file is removed, the multipart upload aborted. Never throws. */
  abort(reason?: unknown): Promise<void>;
}

export interface BackupStore {
  readonly kind: 'local' | 's3';
  /** `file:///abs/dir` or `s3://bucket/folder`: what an operator sees in `ls`. */
  readonly location: string;
  /** The URL of one key, e.g. `file:///abs/dir/name` or `s3://bucket/folder/name`. */
  urlFor(key: string): string;
  /** Streams a large object; nothing is visible at `key` until `commit()`. */
  createWriter(key: string, signal: AbortSignal): Promise<ObjectWriter>;
  /**
   * Writes a small object (metadata JSON) atomically. With `createOnly` it fails with OBJECT_EXISTS if the
   * key exists, decided by the store itself (local: link(2); S3: `If-None-Match: *`), not by a prior read.
   */
  putSmall(key: string, body: string | Buffer, signal: AbortSignal, options?: PutOptions): Promise<void>;
  /** Reads a small object whole; rejects objects over 1 MiB. Throws NotFoundError if missing. */
  readSmall(key: string, signal: AbortSignal): Promise<Buffer>;
  /** Streams an object. Throws NotFoundError if missing. */
  read(key: string, signal: AbortSignal): Promise<Readable>;
  /** Size and modification time, or undefined if missing. */
  head(key: string, signal: AbortSignal): Promise<ObjectInfo | undefined>;
  /** Every committed object whose key starts with `prefix` (never temp files or unfinished uploads). */
  list(prefix: string, signal: AbortSignal): Promise<ObjectInfo[]>;
  /** Removes an object; missing is not an error. */
  delete(key: string, signal: AbortSignal): Promise<void>;
}

/** A store under its location ID: `local:<node>` or `s3`, one inventory record per snapshot and location. */
export interface NamedStore {
  locationId: string;
  store: BackupStore;
}
