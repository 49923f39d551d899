import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';

export interface Readiness {
  /** Null when ready, otherwise why not: the probe's body tells an operator what is wrong. */
  notReadyReason(): string | null;
}

/**
 * Ready only if every check is, asked in order; the first reason wins. Each check reads live state (is etcd
 * running right now?) before any cached one (the last health probe), so a dead etcd is never reported ready
 * on the strength of a probe taken while it still ran.
 */
export function allReady(...checks: Readiness[]): Readiness {
  return {
    notReadyReason: () => {
      for (const check of checks) {
        const reason = check.notReadyReason();
        if (reason !== null) return reason;
      }
      return null;
    },
  };
}

/** /metrics, /healthz (the process answers) and /readyz (local member healthy and the API serving). */
export class ObservabilityServer {
  private constructor(
    private readonly server: Server,
    readonly address: { host: string; port: number },
  ) {}

  static async start(options: { host: string; port: number; registry: Registry; readiness: Readiness; logger: Logger }): Promise<ObservabilityServer> {
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405).end();
      } else if (path === '/metrics') {
        options.registry
          .metrics()
          .then((body) => res.writeHead(200, { 'content-type': options.registry.contentType }).end(body))
          .catch((err: unknown) => {
            options.logger.error({ err }, 'collecting metrics failed');
            res.writeHead(500).end();
          });
      } else if (path === '/healthz') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      } else if (path === '/readyz') {
        const reason = options.readiness.notReadyReason();
        res.writeHead(reason === null ? 200 : 503, { 'content-type': 'text/plain' }).end(reason === null ? 'ok\n' : `${reason}\n`);
      } else {
        res.writeHead(404).end();
      }
    });
    server.listen(options.port, options.host);
    await once(server, 'listening');
    const bound = server.address();
    const port = typeof bound === 'object' && bound ? bound.port : options.port;
    return new ObservabilityServer(server, { host: options.host, port });
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
