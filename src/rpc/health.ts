import { setInterval as every } from 'node:timers/promises';
import type { Server, ServerUnaryCall, ServerWritableStream, UntypedServiceImplementation, sendUnaryData } from '@grpc/grpc-js';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';
import type { Logger } from 'pino';
import type { Readiness } from '../observability/http.js';

/**
 * The standard `grpc.health.v1.Health` service (grpc-node's own `grpc-health-check` package), so that
 * Kubernetes' gRPC probes, grpc_health_probe and service meshes can ask the steward the usual way.
 * SERVING exactly when /readyz answers 200 (the same Readiness), under '' (the whole server) and the ctl
 * service's name; NOT_SERVING otherwise, and from the moment the server begins to stop.
 */
export const HEALTH_SERVICES = ['', 'etcdsteward.v1.StewardCtl'] as const;

/** How often Watch streams are brought up to date; Check always reads the live state. */
export const HEALTH_REFRESH_MS = 1000;

export class GrpcHealth {
  private readonly health = new HealthImplementation(Object.fromEntries(HEALTH_SERVICES.map((s) => [s, 'NOT_SERVING' as ServingStatus])));
  private status: ServingStatus = 'NOT_SERVING';
  private stopped = false;
  private readonly watching = new Set<ServerWritableStream<unknown, unknown>>();

  constructor(
    private readonly readiness: Readiness,
    private readonly log: Logger,
  ) {}

  /**
   * Adds the service to `server`. Check is wrapped to refresh first: a probe never sees a status up to a
   * second old. Watch streams end once run() has told them NOT_SERVING, else tryShutdown would wait on
   * them until its deadline forces every call down.
   */
  addTo(server: Server): void {
    this.health.addToServer({
      addService: (service, implementation) => {
        const { check, watch } = implementation;
        const wrapped: UntypedServiceImplementation = {
          ...implementation,
          check: (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
            this.refresh();
            (check as (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => void)(call, callback);
          },
          watch: (call: ServerWritableStream<unknown, unknown>) => {
            this.refresh();
            (watch as (call: ServerWritableStream<unknown, unknown>) => void)(call);
            if (this.stopped) {
              call.end();
              return;
            }
            this.watching.add(call);
            call.on('cancelled', () => this.watching.delete(call));
          },
        };
        server.addService(service as Parameters<Server['addService']>[0], wrapped);
      },
    });
  }

  /**
   * Keeps Watch streams current until `signal` (the server's shutdown) fires, then says NOT_SERVING to
   * them and ends them: in that order, as a write after end is an error on the stream. Settles when stopped.
   */
  async run(signal: AbortSignal): Promise<void> {
    this.refresh();
    try {
      for await (const _ of every(HEALTH_REFRESH_MS, undefined, { signal, ref: false })) this.refresh();
    } catch (err) {
      if (!signal.aborted) throw err;
    }
    this.stopped = true;
    this.set('NOT_SERVING', 'the gRPC API is stopping');
    for (const call of this.watching) call.end();
    this.watching.clear();
  }

  private refresh(): void {
    if (this.stopped) return;
    const reason = this.readiness.notReadyReason();
    this.set(reason === null ? 'SERVING' : 'NOT_SERVING', reason);
  }

  /** Only on a change: the library writes to every watcher on each setStatus, changed or not. */
  private set(status: ServingStatus, reason: string | null): void {
    if (status === this.status) return;
    this.status = status;
    for (const service of HEALTH_SERVICES) this.health.setStatus(service, status);
    this.log.info({ status, ...(reason === null ? {} : { reason }) }, 'gRPC health status changed');
  }
}
