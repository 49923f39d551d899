import { once } from 'node:events';
import { connect } from 'node:http2';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { FLOW_CONTROL_WINDOW_BYTES, raiseServerFlowWindow } from '../../src/rpc/flow-window.js';

describe('the gRPC server raises HTTP/2 flow-control windows (snapshot transfers are window-bound at 64 KiB)', () => {
  let server: Server | undefined;
  afterEach(() => server?.forceShutdown());

  it('a client sees the raised stream window in the server SETTINGS and the raised connection window', async () => {
    server = new Server();
    const port = await new Promise<number>((resolve, reject) =>
      server?.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
    );
    raiseServerFlowWindow(server, pino({ level: 'silent' }));
    const session = connect(`http://127.0.0.1:${port}`);
    try {
      await once(session, 'remoteSettings');
      expect(session.remoteSettings.initialWindowSize).toBe(FLOW_CONTROL_WINDOW_BYTES);
      // The connection window arrives as a WINDOW_UPDATE just after SETTINGS.
      const deadline = Date.now() + 2000;
      while ((session.state.remoteWindowSize ?? 0) < FLOW_CONTROL_WINDOW_BYTES && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(session.state.remoteWindowSize).toBeGreaterThanOrEqual(FLOW_CONTROL_WINDOW_BYTES);
    } finally {
      session.destroy();
    }
  });

  it('says so, and keeps serving at the default, when grpc-js no longer has the listeners where we look', () => {
    const warnings: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => warnings.push(line) });
    raiseServerFlowWindow(new Server(), log);
    expect(warnings.join('')).toMatch(/cannot raise the HTTP\/2 flow-control window/);
  });
});
