import type { ClientReadableStream, Client, Metadata } from '@grpc/grpc-js';
import type { Etcd3 } from 'etcd3';

interface Pool {
  withConnection<T>(service: 'Maintenance', fn: (args: { client: Client; metadata: Metadata }) => T): Promise<T>;
}

interface SnapshotMessage {
  blob: Buffer;
  /** uint64, a string from etcd3's loader: the db bytes still to come after this message. */
  remaining_bytes?: string | number;
}

/** Bytes streamed so far and the snapshot's whole size (0 while etcd has not said). */
export interface SnapshotProgress {
  bytes: number;
  total: number;
}

/** etcd sends the db (remaining_bytes counts down to 0 over it), then a message with its sha256. */
const SHA256_TRAILER_BYTES = 32;

/**
 * Opens `Maintenance.Snapshot` on a single-member client. etcd3's own `maintenance.snapshot()` passes the
 * auth metadata where grpc-js expects the request, so with etcd auth on every call fails with "user name
 * is empty"; this calls the underlying grpc client with (request, metadata, options) in the right order.
 * The deadline bounds the whole transfer.
 */
export async function openSnapshotStream(client: Etcd3, deadline: number): Promise<ClientReadableStream<SnapshotMessage>> {
  // The pool is private in etcd3's typings; etcd3 1.1.2 is pinned and unmaintained, so it will not move.
  const pool = (client.maintenance as unknown as { client: Pool }).client;
  return pool.withConnection('Maintenance', ({ client: grpcClient, metadata }) => {
    const call = (grpcClient as unknown as Record<string, (req: object, md: Metadata, opts: object) => ClientReadableStream<SnapshotMessage>>).snapshot;
    if (!call) throw new Error('etcd3 Maintenance client has no snapshot method');
    return call.call(grpcClient, {}, metadata, { deadline });
  });
}

/**
 * The snapshot's bytes, one Buffer per message (32 KiB each from etcd). `onMessage` hears, before each
 * Buffer is yielded, how far the stream is: every message carries remaining_bytes, so the total is known
 * from the first one on (a tiny db sent in one message says 0: then the total is what arrived).
 */
export async function* snapshotBytes(stream: AsyncIterable<SnapshotMessage>, onMessage?: (progress: SnapshotProgress) => void): AsyncGenerator<Buffer> {
  let bytes = 0;
  let total = 0;
  for await (const message of stream) {
    bytes += message.blob.length;
    const remaining = Number(message.remaining_bytes ?? 0);
    if (remaining > 0 && Number.isSafeInteger(remaining)) total = bytes + remaining + SHA256_TRAILER_BYTES;
    onMessage?.({ bytes, total: Math.max(total, bytes) });
    if (message.blob.length > 0) yield message.blob;
  }
}

/**
 * The member's revision by a linearizable read (a Range that goes through raft's ReadIndex), taken right
 * before the snapshot stream opens on the same member: the snapshot then holds every write up to this
 * revision. Writes that land between this read and the stream's start are in the snapshot too, so the value
 * is the snapshot's revision or a little below it, never above it, unlike the health probe's, which is older.
 */
export async function linearizableRevision(client: Etcd3, signal: AbortSignal): Promise<number> {
  signal.throwIfAborted();
  // A count-only Range of one key: nothing is read but the header.
  const reading = client.kv.range({ key: Buffer.from('etcd-steward/revision'), count_only: true, serializable: false });
  const aborted = new Promise<never>((_resolve, reject) => {
    signal.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
  aborted.catch(() => undefined);
  const response = await Promise.race([reading, aborted]);
  return Number(response.header.revision);
}
