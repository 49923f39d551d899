import type { ClientReadableStream, Client, Metadata } from '@grpc/grpc-js';
import type { Etcd3 } from 'etcd3';

interface Pool {
  withConnection<T>(service: 'Maintenance', fn: (args: { client: Client; metadata: Metadata }) => T): Promise<T>;
}

interface SnapshotMessage {
  blob: Buffer;
}

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
    const call = (grpcClient as unknown as Record<string, (req: object, md: Metadata, opts: object) => ClientReadableStream<SnapshotMessage>>)
      .snapshot;
    if (!call) throw new Error('etcd3 Maintenance client has no snapshot method');
    return call.call(grpcClient, {}, metadata, { deadline });
  });
}

/** The snapshot's bytes, one Buffer per message (32 KiB each from etcd). */
export async function* snapshotBytes(stream: AsyncIterable<SnapshotMessage>): AsyncGenerator<Buffer> {
  for await (const message of stream) {
    if (message.blob.length > 0) yield message.blob;
  }
}
