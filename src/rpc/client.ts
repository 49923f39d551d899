import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { credentials, type Client, type ClientReadableStream, type ClientWritableStream, type ServiceError } from '@grpc/grpc-js';
import { InternalError, abortedError, fromGrpcError } from '../errors/index.js';
import { StewardCtlClient, StewardPeerClient } from './proto.js';
import type {
  DeleteResponse,
  ListResponse,
  LocalListing,
  PeerHeader,
  PeerReplyHeader,
  PruneResponse,
  ReceiveSnapshotChunkInput,
  ReceiveSnapshotResponse,
  SaveEvent,
  SnapshotInfo,
  SpecResponse,
  StatusResponse,
} from './types.js';

interface Cancellable {
  cancel(): void;
}
type UnaryMethod = (request: object, options: { deadline: number }, callback: (err: ServiceError | null, response: unknown) => void) => Cancellable;

/** Promise-returning calls with errors mapped to StewardError and an AbortSignal that cancels the call. */
abstract class BaseClient {
  protected abstract readonly client: Client;

  constructor(
    readonly endpoint: string,
    protected readonly timeoutMs: number,
  ) {}

  close(): void {
    this.client.close();
  }

  protected unary<Res>(method: string, request: object, signal: AbortSignal | undefined, timeoutMs = this.timeoutMs): Promise<Res> {
    // grpc-js builds one method per RPC on the client; indexing by name keeps this class generic.
    const fn = (this.client as unknown as Record<string, UnaryMethod>)[method];
    if (!fn) throw new Error(`no RPC method ${method}`);
    signal?.throwIfAborted();
    return new Promise((resolve, reject) => {
      const call = fn.call(this.client, request, { deadline: Date.now() + timeoutMs }, (err, response) => {
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(signal?.aborted ? abortedError(signal, err) : fromGrpcError(err, this.endpoint));
        else resolve(response as Res);
      });
      // Cancelling sends RST_STREAM: the server sees 'cancelled' and its handler's signal fires.
      const onAbort = (): void => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

const KEEPALIVE = { 'grpc.keepalive_time_ms': 20_000, 'grpc.keepalive_timeout_ms': 10_000 };

/** The ctl's view of a steward. */
export class StewardClient extends BaseClient {
  protected readonly client: Client;

  constructor(endpoint: string, timeoutMs = 15_000) {
    super(endpoint, timeoutMs);
    // Keepalive: a save has no deadline, so a steward host that vanishes mid-save must still be noticed.
    this.client = new StewardCtlClient(endpoint, credentials.createInsecure(), KEEPALIVE);
  }

  status(signal?: AbortSignal): Promise<StatusResponse> {
    return this.unary<StatusResponse>('status', {}, signal);
  }

  list(all = false, signal?: AbortSignal): Promise<ListResponse> {
    return this.unary<ListResponse>('list', { all }, signal);
  }

  delete(names: string[], signal?: AbortSignal): Promise<DeleteResponse> {
    return this.unary<DeleteResponse>('delete', { names }, signal, 10 * 60_000);
  }

  prune(retention: number, signal?: AbortSignal): Promise<PruneResponse> {
    return this.unary<PruneResponse>('prune', { retention }, signal, 10 * 60_000);
  }

  specGet(signal?: AbortSignal): Promise<SpecResponse> {
    return this.unary<SpecResponse>('specGet', {}, signal);
  }

  specSet(specJson: string, signal?: AbortSignal, force = false): Promise<SpecResponse> {
    return this.unary<SpecResponse>('specSet', { specJson, force }, signal);
  }

  init(confirm: boolean, signal?: AbortSignal): Promise<SpecResponse> {
    return this.unary<SpecResponse>('init', { confirm }, signal);
  }

  /** Streams progress to `onProgress` and resolves with the stored snapshot. No deadline: a save may be long. */
  save(request: { name: string; force: boolean }, onProgress: (bytes: number) => void, signal?: AbortSignal): Promise<SnapshotInfo> {
    signal?.throwIfAborted();
    const call = (this.client as unknown as { save(req: object): ClientReadableStream<SaveEvent> }).save(request);
    const onAbort = (): void => call.cancel();
    signal?.addEventListener('abort', onAbort, { once: true });
    return new Promise<SnapshotInfo>((resolve, reject) => {
      let result: SnapshotInfo | undefined;
      let failed = false;
      call.on('data', (event: SaveEvent) => {
        if (event.result) result = event.result;
        else if (event.progress) onProgress(event.progress.bytes);
      });
      call.on('error', (err: ServiceError) => {
        failed = true;
        reject(signal?.aborted ? abortedError(signal, err) : fromGrpcError(err, this.endpoint));
      });
      call.on('end', () => {
        if (failed) return;
        if (result) resolve(result);
        else
          reject(
            new InternalError('SAVE_NO_RESULT', `the steward at ${this.endpoint} ended the save without a result`, {
              hint: 'run etcd-stewardctl ls to see whether the snapshot was stored, and the steward log for why',
            }),
          );
      });
    }).finally(() => signal?.removeEventListener('abort', onAbort));
  }
}

/** One steward's client for another's peer API. Callers go through PeerPool, which adds and checks headers. */
export class PeerClient extends BaseClient {
  protected readonly client: Client;

  constructor(endpoint: string, timeoutMs = 30_000) {
    super(endpoint, timeoutMs);
    this.client = new StewardPeerClient(endpoint, credentials.createInsecure(), KEEPALIVE);
  }

  listLocalSnapshots(header: PeerHeader, signal: AbortSignal): Promise<LocalListing & { header: PeerReplyHeader | null }> {
    return this.unary('listLocalSnapshots', { header }, signal);
  }

  deleteLocalSnapshot(header: PeerHeader, name: string, key: string, signal: AbortSignal): Promise<{ header: PeerReplyHeader | null }> {
    return this.unary('deleteLocalSnapshot', { header, name, key }, signal);
  }

  forwardDelete(header: PeerHeader, names: string[], signal: AbortSignal): Promise<{ header: PeerReplyHeader | null; response: DeleteResponse | null }> {
    return this.unary('forwardDelete', { header, names }, signal, 10 * 60_000);
  }

  forwardPrune(header: PeerHeader, retention: number, signal: AbortSignal): Promise<{ header: PeerReplyHeader | null; response: PruneResponse | null }> {
    return this.unary('forwardPrune', { header, retention }, signal, 10 * 60_000);
  }

  /**
   * Streams `source` (chunks of 64 KiB–1 MiB: grpc-js counts messages, not bytes) to the peer, waiting
   * for 'drain' whenever grpc-js buffers 16 messages, and resolves with the peer's reply.
   */
  async receiveSnapshot(header: PeerHeader, source: AsyncIterable<Buffer>, signal: AbortSignal): Promise<ReceiveSnapshotResponse> {
    signal.throwIfAborted();
    let call: ClientWritableStream<ReceiveSnapshotChunkInput> | undefined;
    const reply = new Promise<ReceiveSnapshotResponse>((resolve, reject) => {
      call = (
        this.client as unknown as {
          receiveSnapshot(
            options: object,
            cb: (err: ServiceError | null, res?: ReceiveSnapshotResponse) => void,
          ): ClientWritableStream<ReceiveSnapshotChunkInput>;
        }
      ).receiveSnapshot({}, (err, res) =>
        err ? reject(signal.aborted ? abortedError(signal, err) : fromGrpcError(err, this.endpoint)) : resolve(res as ReceiveSnapshotResponse),
      );
    });
    const stream = call as ClientWritableStream<ReceiveSnapshotChunkInput>;
    const onAbort = (): void => stream.cancel();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      const messages = (async function* () {
        yield { header };
        for await (const data of source) yield { data };
      })();
      // pipeline into the call stream applies its backpressure; the call's own status comes through `reply`.
      await Promise.all([pipeline(messages, stream as unknown as Writable, { signal }).catch((err: unknown) => reply.then(() => Promise.reject(err))), reply]);
      return await reply;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }
}
