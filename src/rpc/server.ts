import { setInterval as every } from 'node:timers/promises';
import { Server, ServerCredentials, type UntypedServiceImplementation } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { TlsRefusals, accessInterceptor, type AccessPolicy } from '../security/access.js';
import { ReloadingServerCredentials, TLS_MIN_VERSION, type TlsFiles } from '../security/tls-files.js';
import type { Readiness } from '../observability/http.js';
import { raiseServerFlowWindow } from './flow-window.js';
import { GrpcHealth } from './health.js';
import { LIMITS, checkInteger, checkName, checkNames, checkSpecJson } from './bounds.js';
import { peerByteStream, peerClientStream, peerUnary, serverStream, unary, type AdapterOptions, type PeerAdapterOptions } from './adapters.js';
import { stewardCtlService, stewardPeerService } from './proto.js';
import type { DeleteLocalRequest__Output } from './generated/etcdsteward/v1/DeleteLocalRequest.js';
import type { ForwardDeleteRequest__Output } from './generated/etcdsteward/v1/ForwardDeleteRequest.js';
import type { ForwardPruneRequest__Output } from './generated/etcdsteward/v1/ForwardPruneRequest.js';
import type { ListLocalRequest__Output } from './generated/etcdsteward/v1/ListLocalRequest.js';
import type { ReceiveSnapshotChunk__Output } from './generated/etcdsteward/v1/ReceiveSnapshotChunk.js';
import type { ReadLocalRequest__Output } from './generated/etcdsteward/v1/ReadLocalRequest.js';
import type { RestoreMemberRequest__Output } from './generated/etcdsteward/v1/RestoreMemberRequest.js';
import type {
  SaveEventInput,
  SnapshotInfo,
  StewardCtlHandlers,
  StewardPeerHandlers,
  PeerIdentity,
  SaveRequest,
  RestoreRequest,
  RestoreEventInput,
  RestoreSummary,
  RestorePrepareRequest,
  RestoreSwapRequest,
} from './types.js';

const SHUTDOWN_GRACE_MS = 5000;
/** How often a plaintext API says again that it is one: a forgotten dev flag must stay visible in the log. */
export const PLAINTEXT_WARNING_MS = 60_000;

export interface RpcServerOptions {
  host: string;
  port: number;
  handlers: StewardCtlHandlers;
  peer: StewardPeerHandlers;
  identity: PeerIdentity;
  logger: Logger;
  /**
   * mTLS (TLS 1.3 at least, client certificate verified against the CA, access by CN: security/access.ts).
   * Undefined: plaintext (--grpc-plaintext-dev, which config allows on loopback only), every call allowed.
   */
  tls?: { files: TlsFiles; policy: AccessPolicy } | undefined;
  /**
   * What grpc.health.v1.Health answers: SERVING while this says ready (the steward passes /readyz's own).
   * Default: always ready, i.e. SERVING whenever the API answers at all.
   */
  readiness?: Readiness;
  /** Without TLS, how often the plaintext warning repeats (default PLAINTEXT_WARNING_MS). */
  plaintextWarningMs?: number;
}

/** The steward's gRPC listener: mTLS, or plaintext on loopback for development. */
export class RpcServer {
  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly shutdown: AbortController,
  ) {}

  static async start(options: RpcServerOptions): Promise<RpcServer> {
    const log = options.logger.child({ component: 'rpc' });
    const shutdown = new AbortController();
    const { tls } = options;
    let refusals: TlsRefusals | undefined;
    const server = new Server({
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      ...(tls ? { interceptors: [accessInterceptor(tls.policy, () => refusals, log)] } : {}),
    });
    const adapter: PeerAdapterOptions = { log, shutdown: shutdown.signal, identity: options.identity, tls: tls !== undefined };
    server.addService(stewardCtlService, ctlImplementation(options.handlers, adapter));
    server.addService(stewardPeerService, peerImplementation(options.peer, adapter));
    const health = new GrpcHealth(options.readiness ?? { notReadyReason: () => null }, log);
    health.addTo(server);
    const credentials = tls ? new ReloadingServerCredentials(tls.files) : ServerCredentials.createInsecure();
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(`${options.host}:${options.port}`, credentials, (err, bound) => (err ? reject(err) : resolve(bound)));
    });
    raiseServerFlowWindow(server, log);
    // Not awaited: settles (saying NOT_SERVING, ending Watch streams) as soon as stop() aborts `shutdown`.
    void health.run(shutdown.signal).catch((err: unknown) => log.error({ err }, 'gRPC health updates failed'));
    const address = `${options.host}:${port}`;
    if (tls) {
      refusals = TlsRefusals.watch(server, log);
      log.info({ address, minVersion: TLS_MIN_VERSION, subject: tls.files.current.subject, adminCn: tls.policy.adminCn }, 'gRPC API listening with mTLS');
    } else {
      const warn = (): void => log.warn({ address }, 'gRPC API listening in PLAINTEXT (no TLS, no client authentication): loopback dev use only');
      warn();
      // Not awaited: ends (quietly) when stop() aborts `shutdown`; unref'd, so it never keeps the process up.
      void (async () => {
        for await (const _ of every(options.plaintextWarningMs ?? PLAINTEXT_WARNING_MS, undefined, { signal: shutdown.signal, ref: false })) warn();
      })().catch(() => undefined);
    }
    return new RpcServer(server, port, shutdown);
  }

  /**
   * Stops in stages: every call in flight sees its signal fire (its work stops), then gets a bounded
   * time to answer before the server cuts it: tryShutdown alone can hang.
   */
  async stop(): Promise<void> {
    this.shutdown.abort();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, SHUTDOWN_GRACE_MS);
      timer.unref();
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

function ctlImplementation(handlers: StewardCtlHandlers, options: AdapterOptions): UntypedServiceImplementation {
  return {
    Status: unary('Status', options, (_request: object, ctx) => handlers.status(ctx)),
    Save: serverStream(
      'Save',
      options,
      (request: SaveRequest, emit: (event: SaveEventInput) => void, ctx) => handlers.save(request, emit, ctx),
      (result: SnapshotInfo): SaveEventInput => ({ result }),
      (request) => checkName(request.name, '--name'),
    ),
    List: unary('List', options, (request: { all: boolean }, ctx) => handlers.list(request, ctx)),
    Delete: unary(
      'Delete',
      options,
      (request: { names: string[] }, ctx) => handlers.delete(request.names, ctx),
      (request) => checkNames(request.names, 'delete'),
    ),
    Prune: unary(
      'Prune',
      options,
      (request: { retention: number }, ctx) => handlers.prune(request.retention, ctx),
      (request) => checkInteger(request.retention, '--snapshot-retention', 0, LIMITS.retentionMax),
    ),
    SpecGet: unary('SpecGet', options, (_request: object, ctx) => handlers.specGet(ctx)),
    SpecSet: unary(
      'SpecSet',
      options,
      (request: { specJson: string; force: boolean }, ctx) => handlers.specSet(request.specJson, ctx, { force: request.force }),
      (request) => checkSpecJson(request.specJson),
    ),
    Init: unary('Init', options, (request: { confirm: boolean }, ctx) => handlers.init(request.confirm, ctx)),
    Restore: serverStream(
      'Restore',
      options,
      (request: RestoreRequest, emit: (event: RestoreEventInput) => void, ctx) => handlers.restore(request, emit, ctx),
      (result: RestoreSummary): RestoreEventInput => ({ result }),
      (request) => {
        checkName(request.name, 'name');
        checkNames(request.skipMembers, '--skip-member');
      },
    ),
    RestoreStatus: unary('RestoreStatus', options, (_request: object, ctx) => handlers.restoreStatus(ctx)),
    RestoreAbort: unary('RestoreAbort', options, (_request: object, ctx) => handlers.restoreAbort(ctx)),
    Verify: unary(
      'Verify',
      options,
      (request: { name: string }, ctx) => handlers.verify(request.name, ctx),
      (request) => checkName(request.name, 'name'),
    ),
  };
}

function peerImplementation(handlers: StewardPeerHandlers, options: PeerAdapterOptions): UntypedServiceImplementation {
  return {
    ListLocalSnapshots: peerUnary('ListLocalSnapshots', options, (_request: ListLocalRequest__Output, ctx) => handlers.listLocalSnapshots(ctx)),
    DeleteLocalSnapshot: peerUnary(
      'DeleteLocalSnapshot',
      options,
      async (request: DeleteLocalRequest__Output, ctx) => {
        await handlers.deleteLocalSnapshot(request.name, request.key, ctx);
        return {};
      },
      (request) => {
        checkName(request.name, 'name');
        checkName(request.key, 'key');
      },
    ),
    ForwardDelete: peerUnary(
      'ForwardDelete',
      options,
      async (request: ForwardDeleteRequest__Output, ctx) => ({ response: await handlers.forwardDelete(request.names, ctx) }),
      (request) => checkNames(request.names, 'delete'),
    ),
    ForwardPrune: peerUnary(
      'ForwardPrune',
      options,
      async (request: ForwardPruneRequest__Output, ctx) => ({ response: await handlers.forwardPrune(request.retention, ctx) }),
      (request) => checkInteger(request.retention, '--snapshot-retention', 0, LIMITS.retentionMax),
    ),
    ReceiveSnapshot: peerClientStream('ReceiveSnapshot', options, (first: ReceiveSnapshotChunk__Output, data, ctx) =>
      handlers.receiveSnapshot(first.announce, data, ctx),
    ),
    ReadLocalSnapshot: peerByteStream(
      'ReadLocalSnapshot',
      options,
      (request: ReadLocalRequest__Output, ctx) => handlers.readLocalSnapshot(request.name, ctx),
      (request) => checkName(request.name, 'name'),
    ),
    RestorePrepare: peerUnary(
      'RestorePrepare',
      options,
      (request: RestorePrepareRequest, ctx) => handlers.restorePrepare(request, ctx),
      (request) => checkName(request.snapshot, 'snapshot'),
    ),
    RestoreSwap: peerUnary(
      'RestoreSwap',
      options,
      (request: RestoreSwapRequest, ctx) => handlers.restoreSwap(request, ctx),
      (request) => checkName(request.snapshot, 'snapshot'),
    ),
    RestoreFinish: peerUnary('RestoreFinish', options, async (_request: RestoreMemberRequest__Output, ctx) => ({ state: await handlers.restoreFinish(ctx) })),
    RestoreAbort: peerUnary('RestoreAbort', options, async (_request: RestoreMemberRequest__Output, ctx) => ({ state: await handlers.restoreAbort(ctx) })),
    RestoreMemberStatus: peerUnary('RestoreMemberStatus', options, async (_request: RestoreMemberRequest__Output, ctx) => ({
      state: await handlers.restoreMemberStatus(ctx),
    })),
  };
}
