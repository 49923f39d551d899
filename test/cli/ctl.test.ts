import { describe, expect, it } from 'vitest';
import { unusedPeerHandlers } from '../harness/unused-handlers.js';
import { freePort } from '../harness/ports.js';
import { assertBuilt, runCtl } from '../harness/steward-cluster.js';

describe('etcd-stewardctl without a steward', () => {
  it('exits 5 with a clear message when the endpoint is dead', async () => {
    assertBuilt();
    const port = await freePort();
    const result = await runCtl(['--endpoint', `127.0.0.1:${port}`, 'status']);
    expect(result.code).toBe(5);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(
      new RegExp(`^error\\[STEWARD_UNREACHABLE\\]: cannot reach the steward at 127.0.0.1:${port} .* — check that etcd-steward is running there`),
    );
  });

  it('reads the endpoint from ETCD_STEWARD_ENDPOINT', async () => {
    const port = await freePort();
    const result = await runCtl(['status'], { ETCD_STEWARD_ENDPOINT: `127.0.0.1:${port}` });
    expect(result.code).toBe(5);
    expect(result.stderr).toContain(`127.0.0.1:${port}`);
  });

  it('exits 2 on usage errors', async () => {
    for (const args of [['status', '--bogus'], ['-o', 'yaml', 'status'], ['no-such-verb'], [], ['--endpoint', 'not an endpoint', 'status']]) {
      const result = await runCtl(args);
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr, args.join(' ')).toMatch(/error\[USAGE\]: .+ — /);
    }
  });

  it('--help exits 0', async () => {
    const result = await runCtl(['--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('status');
  });
});

describe('etcd-stewardctl input checks (before dialling)', () => {
  it('parses --snapshot-retention strictly: exit 2 for 1e3, 0x10, " 3", 4294967297', async () => {
    const port = await freePort();
    for (const bad of ['1e3', '0x10', ' 3', '4294967297', '3.5', '0']) {
      const result = await runCtl(['--endpoint', `127.0.0.1:${port}`, 'prune', '--snapshot-retention', bad]);
      expect(result.code, bad).toBe(2);
      expect(result.stderr, bad).toMatch(/^error\[INVALID_ARGUMENT\]: --snapshot-retention: .* — /);
    }
  });

  it('refuses a delete of 9,000 names at once, without a steward', async () => {
    const port = await freePort();
    const names = Array.from({ length: 9000 }, (_, i) => `on-demand-node-1-${1_700_000_000 + i}`);
    const started = Date.now();
    const result = await runCtl(['--endpoint', `127.0.0.1:${port}`, 'delete', ...names]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^error\[INVALID_ARGUMENT\]: delete: 9000 names in one call is too many \(at most 1000\)/);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});

describe('etcd-stewardctl Ctrl-C', () => {
  it('cancels the call: the steward-side work stops and ctl exits 130 with error[CANCELLED]', async () => {
    const { RpcServer } = await import('../../src/rpc/server.js');
    const { pino } = await import('pino');
    let started = false;
    let stoppedBy: unknown;
    const hang = async (ctx: { signal: AbortSignal }): Promise<never> => {
      started = true;
      await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve(), { once: true }));
      stoppedBy = ctx.signal.reason;
      throw ctx.signal.reason;
    };
    const unused = async (): Promise<never> => {
      throw new Error('not used');
    };
    const server = await RpcServer.start({
      host: '127.0.0.1',
      port: 0,
      handlers: {
        status: unused,
        save: unused,
        list: (_r, ctx) => hang(ctx),
        delete: unused,
        prune: unused,
        specGet: unused,
        specSet: unused,
        init: unused,
        restore: unused,
        restoreStatus: unused,
        restoreAbort: unused,
        verify: unused,
      },
      peer: unusedPeerHandlers(),
      identity: { node: 'n1', clusterId: () => '' },
      logger: pino({ level: 'silent' }),
    });
    try {
      const { spawn } = await import('node:child_process');
      const { CTL_JS } = await import('../harness/steward-cluster.js');
      const child = spawn(process.execPath, [CTL_JS, '--endpoint', `127.0.0.1:${server.port}`, 'ls'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      await expect.poll(() => started, { timeout: 10_000 }).toBe(true);
      child.kill('SIGINT');
      expect(await exited).toBe(130);
      expect(stderr).toMatch(/^error\[CANCELLED\]: /);
      await expect.poll(() => (stoppedBy as { code?: string } | undefined)?.code).toBe('CANCELLED');
    } finally {
      await server.stop();
    }
  });
});
