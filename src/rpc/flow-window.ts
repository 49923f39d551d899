import type { Http2SecureServer, Http2Server, Http2Session } from 'node:http2';
import type { Server } from '@grpc/grpc-js';
import type { Logger } from 'pino';

/**
 * HTTP/2's default 64 KiB flow-control window makes a bulk stream wait for a WINDOW_UPDATE every 64 KiB:
 * measured here (grpc-js 1.14, loopback, 512 KiB messages) a 1 GB client stream ran at ~295 MB/s with it
 * and ~1.2 GB/s with 4 MiB. A restore sends the snapshot to every member at once, so this is most of its
 * distribution time. 4 MiB is what one stream may have in flight per receiver: bounded, and small next
 * to the staging file it lands in.
 */
export const FLOW_CONTROL_WINDOW_BYTES = 4 * 2 ** 20;

/** For a client channel: the window the peer may fill before we read (server-streamed snapshot reads). */
export const CLIENT_WINDOW_OPTIONS = { 'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW_BYTES };

type AnyHttp2Server = Http2Server | Http2SecureServer;

/**
 * grpc-js has no server option for the window (its client has one), so after bind the window is raised
 * on the server's HTTP/2 listeners: the stream window by SETTINGS, the connection window on each new
 * session. They are a private field of grpc-js; if a release renames it, the server still works at the
 * default window and says so once.
 */
export function raiseServerFlowWindow(server: Server, log: Logger): void {
  const listeners = http2Listeners(server);
  if (!listeners) {
    log.warn(
      'cannot raise the HTTP/2 flow-control window of the gRPC server (grpc-js internals changed): snapshot transfers to this steward run at the 64 KiB default, several times slower',
    );
    return;
  }
  for (const listener of listeners) {
    listener.updateSettings({ initialWindowSize: FLOW_CONTROL_WINDOW_BYTES });
    listener.on('session', (session: Http2Session) => {
      try {
        session.setLocalWindowSize(FLOW_CONTROL_WINDOW_BYTES);
      } catch (err) {
        log.debug({ err }, 'cannot raise the connection window of an HTTP/2 session');
      }
    });
  }
}

/** The bound server's HTTP/2 listeners (plain or TLS), or undefined if grpc-js no longer keeps them there. */
export function http2Listeners(server: Server): AnyHttp2Server[] | undefined {
  // Private grpc-js state: typed loosely on purpose and checked before use.
  const listeners = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(listeners instanceof Map) || listeners.size === 0) return undefined;
  return [...(listeners.keys() as IterableIterator<AnyHttp2Server>)];
}
