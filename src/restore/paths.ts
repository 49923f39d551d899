import { stat } from 'node:fs/promises';
import { connect, createServer } from 'node:net';

/** Where a restore keeps a member's replaced data dir: beside it, named by the time, never deleted but by retention. */
export function oldDataDirFor(dataDir: string, at = new Date()): string {
  return `${dataDir}-old-${Math.floor(at.getTime() / 1000)}`;
}

/**
 * `<data-dir>-<kind>-<unix-ts>` that does not exist yet: a second restore within the same second (or after the
 * clock was set back) must neither fail on a kept dir nor record one, which recover() and abort() would then
 * take for the dir this restore moved aside and put in place. The next free second keeps the name trimmable.
 */
export async function unusedAside(dataDir: string, kind: 'old' | 'restored', at = new Date()): Promise<string> {
  for (let ts = Math.floor(at.getTime() / 1000); ; ts++) {
    const path = `${dataDir}-${kind}-${ts}`;
    if (!(await exists(path))) return path;
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * A loopback port of the kernel's choosing: no API server is configured with it. https when etcd serves
 * clients with TLS (`tls`): etcd takes the scheme of its listen URL as whether to serve TLS there.
 */
export async function quarantineEndpoint(tls = false): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!address || typeof address === 'string') throw new Error('no port for the quarantine endpoint');
  return `${tls ? 'https' : 'http'}://127.0.0.1:${address.port}`;
}

export async function portFree(endpoint: string): Promise<boolean> {
  const port = Number(new URL(endpoint).port);
  const server = createServer();
  return new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** Whether something accepts TCP connections at a URL's host:port now (1 s at most). */
export function accepts(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ host: hostname.replace(/^\[|\]$/g, ''), port: Number(port) });
    const done = (result: boolean): void => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
