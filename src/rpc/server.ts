import {
  Server,
  ServerCredentials,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServerWritableStream,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { toGrpcStatus } from '../errors/index.js';
import { stewardCtlService, stewardPeerService } from './proto.js';
import type { SaveEvent, SaveRequest, StewardCtlHandlers, StewardPeerHandlers } from './types.js';

const SHUTDOWN_GRACE_MS = 5000;

/**
 * The steward's gRPC listener. Plaintext for now, which config only allows on loopback; mTLS plugs in
 * at `credentials` when the production-hardening issue lands, together with the peer service.
 */
export class RpcServer {
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(options: { host: string; port: number; handlers: StewardCtlHandlers; peer: StewardPeerHandlers; logger: Logger }): Promise<RpcServer> {
    const log = options.logger.child({ component: 'rpc' });
    const server = new Server({ 'grpc.keepalive_time_ms': 30_000, 'grpc.keepalive_timeout_ms': 10_000 });
    server.addService(stewardCtlService, ctlImplementation(options.handlers, log));
    server.addService(stewardPeerService, peerImplementation(options.peer, log));
    const credentials = ServerCredentials.createInsecure();
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(`${options.host}:${options.port}`, credentials, (err, bound) => (err ? reject(err) : resolve(bound)));
    });
    log.warn({ address: `${options.host}:${port}` }, 'gRPC API listening in PLAINTEXT (no TLS, no client authentication): loopback dev use only');
    return new RpcServer(server, port);
  }

  /** Lets calls in flight finish for a bounded time, then cuts them: tryShutdown alone can hang. */
  async stop(): Promise<void> {
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

function ctlImplementation(handlers: StewardCtlHandlers, log: Logger): UntypedServiceImplementation {
  return {
    Status: unary('Status', log, () => handlers.status()),
    Save: (call: ServerWritableStream<SaveRequest, SaveEvent>): void => {
      // A ctl that hangs up (Ctrl-C) cancels the call; the snapshot in progress is aborted with it.
      const cancelled = new AbortController();
      call.on('cancelled', () => cancelled.abort(new Error('the client cancelled the call')));
      handlers
        .save(call.request, (event) => call.write(event), cancelled.signal)
        .then((result) => {
          call.write({ result });
          call.end();
        })
        .catch((err: unknown) => {
          log.warn({ err, method: 'Save' }, 'call failed');
          call.emit('error', toGrpcStatus(err));
        });
    },
    List: unary('List', log, async () => ({ snapshots: await handlers.list() })),
    Delete: unary('Delete', log, async (request: { names: string[] }) => ({ deleted: await handlers.delete(request.names) })),
    Prune: unary('Prune', log, async (request: { retention: number }) => ({ deleted: await handlers.prune(request.retention) })),
    SpecGet: unary('SpecGet', log, () => handlers.specGet()),
    SpecSet: unary('SpecSet', log, (request: { specJson: string }) => handlers.specSet(request.specJson)),
    Init: unary('Init', log, (request: { confirm: boolean }) => handlers.init(request.confirm)),
  };
}

function peerImplementation(handlers: StewardPeerHandlers, log: Logger): UntypedServiceImplementation {
  return {
    ListLocalSnapshots: unary('ListLocalSnapshots', log, async () => ({ snapshots: await handlers.listLocalSnapshots() })),
    DeleteLocalSnapshot: unary('DeleteLocalSnapshot', log, async (request: { name: string; key: string }) => {
      await handlers.deleteLocalSnapshot(request.name, request.key);
      return {};
    }),
  };
}

function unary<Req, Res>(method: string, log: Logger, handler: (request: Req) => Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
    handler(call.request).then(
      (response) => callback(null, response),
      (err: unknown) => {
        log.warn({ err, method }, 'call failed');
        callback(toGrpcStatus(err));
      },
    );
  };
}
