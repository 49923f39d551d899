import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { once } from 'node:events';
import { freePort } from './ports.js';

/** `extra` is raw XML added to the error body (real S3 adds e.g. the canonical request to SignatureDoesNotMatch); `hang` never answers. */
type Fault = ({ kind: 'status'; status: number; code: string; extra?: string } | { kind: 'drop' } | { kind: 'hang' }) & {
  /** Only requests with this HTTP method take the fault; others pass it by (it waits for one that matches). */
  method?: string;
};

/**
 * An HTTP reverse proxy in front of s3rver that behaves like a real S3 would when things go wrong:
 * credentials that expire or are rotated away (403 ExpiredToken / InvalidAccessKeyId), 5xx answers and
 * dropped connections. s3rver itself knows one access key and checks no signature, so the proxy decides
 * which keys are valid and forwards accepted requests under s3rver's key.
 */
export class S3FaultProxy {
  /** Access keys accepted now; an expired one gets ExpiredToken, an unknown one InvalidAccessKeyId. */
  readonly validKeys = new Set<string>();
  readonly expiredKeys = new Set<string>();
  private readonly faults: Fault[] = [];
  private failUntil = 0;
  requests = 0;
  rejected = 0;
  /** PUTs that asked for create-only (If-None-Match: *). */
  conditionalPuts = 0;
  readonly seenKeys = new Set<string>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly targetPort: number,
    private readonly targetKey: string,
  ) {}

  static async start(targetPort: number, targetKey = 'S3RVER'): Promise<S3FaultProxy> {
    const port = await freePort();
    const server = createServer();
    const proxy = new S3FaultProxy(server, port, targetPort, targetKey);
    server.on('request', (req, res) => proxy.handle(req, res));
    server.listen(port, '127.0.0.1');
    await once(server, 'listening');
    return proxy;
  }

  get endpoint(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** The next `count` requests fail this way (in order), then traffic flows again. */
  failNext(count: number, fault: Fault): void {
    for (let i = 0; i < count; i++) this.faults.push(fault);
  }

  clearFaults(): void {
    this.faults.length = 0;
  }

  /** Every request answers 500 until `ms` from now: an outage. */
  outage(ms: number): void {
    this.failUntil = Date.now() + ms;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    this.requests += 1;
    const key = /Credential=([^/]+)\//.exec(req.headers.authorization ?? '')?.[1] ?? '';
    this.seenKeys.add(key);
    const index = this.faults.findIndex((f) => f.method === undefined || f.method === req.method);
    const fault =
      (index >= 0 ? this.faults.splice(index, 1)[0] : undefined) ??
      (Date.now() < this.failUntil ? ({ kind: 'status', status: 500, code: 'InternalError' } satisfies Fault as Fault) : undefined);
    if (fault?.kind === 'drop') {
      this.rejected += 1;
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'hang') {
      this.rejected += 1;
      req.resume();
      return;
    }
    if (fault?.kind === 'status') return this.refuse(req, res, fault.status, fault.code, fault.extra);
    if (this.expiredKeys.has(key)) return this.refuse(req, res, 403, 'ExpiredToken');
    if (!this.validKeys.has(key)) return this.refuse(req, res, 403, 'InvalidAccessKeyId');
    const headers = { ...req.headers };
    if (headers.authorization) headers.authorization = headers.authorization.replace(`Credential=${key}/`, `Credential=${this.targetKey}/`);
    if (req.method === 'PUT' && req.headers['if-none-match'] === '*') {
      this.conditionalPuts += 1;
      // s3rver ignores If-None-Match on PUT; real S3 (and MinIO) answer 412 when the key exists. Emulated with a HEAD.
      const headHeaders = { ...headers, 'content-length': '0' };
      // s3rver answers a conditional HEAD of an existing key with 304, and a HEAD carries no body.
      delete headHeaders['if-none-match'];
      delete headHeaders['transfer-encoding'];
      const head = request({ host: '127.0.0.1', port: this.targetPort, method: 'HEAD', path: req.url, headers: headHeaders }, (answer) => {
        answer.resume();
        if (answer.statusCode === 200) return this.refuse(req, res, 412, 'PreconditionFailed');
        this.forward(req, res, headers);
      });
      head.on('error', () => res.destroy());
      head.end();
      return;
    }
    this.forward(req, res, headers);
  }

  private forward(req: IncomingMessage, res: ServerResponse, headers: IncomingMessage['headers']): void {
    const upstream = request({ host: '127.0.0.1', port: this.targetPort, method: req.method, path: req.url, headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  }

  private refuse(req: IncomingMessage, res: ServerResponse, status: number, code: string, extra = ''): void {
    this.rejected += 1;
    // Drain the body first: the SDK waits for its upload to be read before it reads the answer.
    req.resume();
    req.on('end', () => {
      res.writeHead(status, { 'content-type': 'application/xml' });
      res.end(
        `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected by the test proxy</Message>${extra}<RequestId>test</RequestId></Error>`,
      );
    });
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** A forward HTTP proxy (absolute-URI requests and CONNECT) that counts what passes through it. */
export class ForwardProxy {
  requests = 0;
  readonly targets = new Set<string>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(): Promise<ForwardProxy> {
    const port = await freePort();
    const server = createServer();
    const proxy = new ForwardProxy(server, port);
    server.on('request', (req, res) => {
      proxy.requests += 1;
      const target = new URL(req.url ?? '/');
      proxy.targets.add(target.host);
      const upstream = request(
        { host: target.hostname, port: target.port, method: req.method, path: target.pathname + target.search, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on('error', () => res.destroy());
      req.pipe(upstream);
    });
    server.on('connect', (req, socket, head) => {
      proxy.requests += 1;
      const [host, port] = (req.url ?? '').split(':');
      proxy.targets.add(req.url ?? '');
      const upstream = connect(Number(port), host ?? '127.0.0.1', () => {
        socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        upstream.write(head);
        upstream.pipe(socket).pipe(upstream);
      });
      upstream.on('error', () => socket.destroy());
      socket.on('error', () => upstream.destroy());
    });
    server.listen(port, '127.0.0.1');
    await once(server, 'listening');
    return proxy;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
