import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { credentials, type ChannelCredentials, type Client, type ClientReadableStream, type ClientWritableStream, type ServiceError } from '@grpc/grpc-js';
import { InternalError, abortedError, fromGrpcError } from '../errors/index.js';
import { CLIENT_WINDOW_OPTIONS } from './flow-window.js';
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
  RestoreEvent,
  RestoreSummary,
  RestoreStatusResponse,
  VerifyResponse,
  RestoreMemberState,
  RestorePrepareResponse,
  RestoreSwapResponse,
  SnapshotAnnounce,
  InitialMember,
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

  /** A server stream whose last event carries the result; every earlier event goes to `onEvent`. */
  protected finalEvent<Event, Res>(
    call: ClientReadableStream<Event>,
    onEvent: (event: Event) => void,
    resultOf: (event: Event) => Res | undefined,
    noResultCode: string,
    signal?: AbortSignal,
  ): Promise<Res> {
    const onAbort = (): void => call.cancel();
    signal?.addEventListener('abort', onAbort, { once: true });
    return new Promise<Res>((resolve, reject) => {
      let result: Res | undefined;
      let failed = false;
      call.on('data', (event: Event) => {
        const last = resultOf(event);
        if (last !== undefined) result = last;
        else onEvent(event);
      });
      call.on('error', (err: ServiceError) => {
        failed = true;
        reject(signal?.aborted ? abortedError(signal, err) : fromGrpcError(err, this.endpoint));
      });
      call.on('end', () => {
        if (failed) return;
        if (result !== undefined) resolve(result);
        else
          reject(
            new InternalError(noResultCode, `the steward at ${this.endpoint} ended the call without a result`, {
              hint: 'see the steward log for why; etcd-stewardctl status shows where things stand',
            }),
          );
      });
    }).finally(() => signal?.removeEventListener('abort', onAbort));
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

  /** `channelCredentials`: mTLS (security/ctl-tls.ts) or, by default, plaintext for a --grpc-plaintext-dev steward. */
  constructor(endpoint: string, timeoutMs = 15_000, channelCredentials: ChannelCredentials = credentials.createInsecure()) {
    super(endpoint, timeoutMs);
    // Keepalive: a save has no deadline, so a steward host that vanishes mid-save must still be noticed.
    this.client = new StewardCtlClient(endpoint, channelCredentials, KEEPALIVE);
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

  restoreStatus(signal?: AbortSignal): Promise<RestoreStatusResponse> {
    return this.unary<RestoreStatusResponse>('restoreStatus', {}, signal, 60_000);
  }

  restoreAbort(signal?: AbortSignal): Promise<RestoreStatusResponse> {
    return this.unary<RestoreStatusResponse>('restoreAbort', {}, signal, 10 * 60_000);
  }

  /** A drill is bounded by the steward (DRILL_TIMEOUT_MS, 10 min); the call waits a little longer for its answer. */
  verify(name: string, signal?: AbortSignal): Promise<VerifyResponse> {
    return this.unary<VerifyResponse>('verify', { name }, signal, 11 * 60_000);
  }

  /**
   * Streams every event to `onEvent` in order, the summary (`result`) included, and resolves with the
   * summary. A failed restore sends its Failed summary and then ends the call with an error: `onEvent`
   * has seen that summary before the promise rejects, so the caller can show it. No deadline: a restore
   * takes as long as its snapshot takes to move; keepalive notices a steward that vanished.
   */
  restore(
    request: { name: string; yes: boolean; skipMembers: string[]; withSpec: boolean },
    onEvent: (event: RestoreEvent) => void,
    signal?: AbortSignal,
  ): Promise<RestoreSummary> {
    signal?.throwIfAborted();
    const call = (this.client as unknown as { restore(req: object): ClientReadableStream<RestoreEvent> }).restore(request);
    // finalEvent hands only non-result events to onEvent; the result goes to onEvent here as it arrives.
    const resultOf = (event: RestoreEvent): RestoreSummary | undefined => {
      if (!event.result) return undefined;
      onEvent(event);
      return event.result;
    };
    return this.finalEvent(call, onEvent, resultOf, 'RESTORE_NO_RESULT', signal);
  }

  /**
   * Streams progress to `onProgress` (bytes so far, the snapshot's size or 0 from a steward that does not
   * say) and resolves with the stored snapshot. No deadline: a save may be long.
   */
  save(
    request: { name: string; force: boolean },
    onProgress: (progress: { bytes: number; total: number }) => void,
    signal?: AbortSignal,
  ): Promise<SnapshotInfo> {
    signal?.throwIfAborted();
    const call = (this.client as unknown as { save(req: object): ClientReadableStream<SaveEvent> }).save(request);
    return this.finalEvent(
      call,
      (event) => {
        if (event.progress) onProgress({ bytes: event.progress.bytes, total: event.progress.total });
      },
      (event) => event.result ?? undefined,
      'SAVE_NO_RESULT',
      signal,
    );
  }
}

/** One steward's client for another's peer API. Callers go through PeerPool, which adds and checks headers. */
export class PeerClient extends BaseClient {
  protected readonly client: Client;

  /** `channelCredentials`: the steward's own mTLS identity (TlsFiles.channelCredentials), or plaintext in dev mode. */
  constructor(endpoint: string, timeoutMs = 30_000, channelCredentials: ChannelCredentials = credentials.createInsecure()) {
    super(endpoint, timeoutMs);
    this.client = new StewardPeerClient(endpoint, channelCredentials, { ...KEEPALIVE, ...CLIENT_WINDOW_OPTIONS });
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
  restorePrepare(header: PeerHeader, snapshot: string, stagingBytes: number, signal: AbortSignal): Promise<RestorePrepareResponse> {
    return this.unary('restorePrepare', { header, snapshot, stagingBytes }, signal, 60_000);
  }

  restoreSwap(
    header: PeerHeader,
    request: { snapshot: string; initialCluster: InitialMember[]; clusterToken: string; bumpRevision: number; sha256: string },
    signal: AbortSignal,
  ): Promise<RestoreSwapResponse> {
    // Restoring a large db into a fresh dir takes a while (1.2 GB: ~5 s here); a slow disk much longer.
    return this.unary('restoreSwap', { header, ...request }, signal, 30 * 60_000);
  }

  restoreMember(
    method: 'restoreFinish' | 'restoreAbort' | 'restoreMemberStatus',
    header: PeerHeader,
    signal: AbortSignal,
  ): Promise<{ header: PeerReplyHeader | null; state: RestoreMemberState | null }> {
    return this.unary(method, { header }, signal, method === 'restoreMemberStatus' ? 15_000 : 10 * 60_000);
  }

  /** The stored bytes of one snapshot in the peer's local dir; the first message is the reply header. */
  readLocalSnapshot(header: PeerHeader, name: string, signal: AbortSignal): { reply: Promise<PeerReplyHeader | null>; data: AsyncIterable<Buffer> } {
    signal.throwIfAborted();
    const call = (
      this.client as unknown as { readLocalSnapshot(req: object): ClientReadableStream<{ header: PeerReplyHeader | null; data: Buffer }> }
    ).readLocalSnapshot({
      header,
      name,
    });
    const onAbort = (): void => call.cancel();
    signal.addEventListener('abort', onAbort, { once: true });
    const endpoint = this.endpoint;
    const iterator = call[Symbol.asyncIterator]() as AsyncIterator<{ header: PeerReplyHeader | null; data: Buffer }>;
    let firstHeader: (value: PeerReplyHeader | null) => void = () => undefined;
    let firstFailed: (err: unknown) => void = () => undefined;
    const reply = new Promise<PeerReplyHeader | null>((resolve, reject) => {
      firstHeader = resolve;
      firstFailed = reject;
    });
    // Read by the caller as it consumes the data; an unawaited reply must not turn into an unhandled rejection.
    reply.catch(() => undefined);
    const data = (async function* (): AsyncGenerator<Buffer> {
      let sawHeader = false;
      try {
        for (;;) {
          const next = await iterator.next();
          if (next.done) break;
          if (!sawHeader) {
            sawHeader = true;
            firstHeader(next.value.header);
          }
          if (next.value.data && next.value.data.length > 0) yield next.value.data;
        }
        if (!sawHeader) firstHeader(null);
      } catch (err) {
        const mapped = signal.aborted ? abortedError(signal, err) : fromGrpcError(err as ServiceError, endpoint);
        firstFailed(mapped);
        throw mapped;
      } finally {
        signal.removeEventListener('abort', onAbort);
        call.cancel();
      }
    })();
    return { reply, data };
  }

  async receiveSnapshot(header: PeerHeader, announce: SnapshotAnnounce, source: AsyncIterable<Buffer>, signal: AbortSignal): Promise<ReceiveSnapshotResponse> {
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
        yield { header, announce };
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
