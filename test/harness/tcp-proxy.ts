import { createServer, connect, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { freePort } from './ports.js';

/**
 * A loopback TCP proxy a test can cut: `cut()` destroys every open connection and refuses new ones,
 * the way a network partition or a dead load balancer looks to a client; `restore()` lets traffic through.
 */
export class TcpProxy {
  private readonly sockets = new Set<Socket>();
  private blocked = false;
  bytesUp = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
    const port = await freePort();
    const server = createServer();
    const proxy = new TcpProxy(server, port);
    server.on('connection', (client) => proxy.accept(client, targetHost, targetPort));
    server.listen(port, '127.0.0.1');
    await once(server, 'listening');
    return proxy;
  }

  private accept(client: Socket, host: string, port: number): void {
    if (this.blocked) {
      client.destroy();
      return;
    }
    const upstream = connect(port, host);
    this.sockets.add(client).add(upstream);
    client.on('data', (chunk: Buffer) => {
      this.bytesUp += chunk.length;
    });
    client.pipe(upstream).pipe(client);
    const close = (): void => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  }

  cut(): void {
    this.blocked = true;
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
  }

  restore(): void {
    this.blocked = false;
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
