import { execFile } from 'node:child_process';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InternalError } from '../../src/errors/index.js';
import { RpcServer } from '../../src/rpc/server.js';
import type { SaveEventInput, SnapshotInfo, StewardCtlHandlers } from '../../src/rpc/types.js';
import { fillEtcd } from '../harness/etcd-cluster.js';
import { waitUntil } from '../harness/processes.js';
import { CTL_JS, StewardCluster, assertBuilt } from '../harness/steward-cluster.js';
import { unusedPeerHandlers } from '../harness/unused-handlers.js';

/** The ctl under a real pseudo-terminal (util-linux `script`, in Debian's essential bsdutils): stderr is a TTY. */
function ctlOnTerminal(args: string[]): Promise<{ code: number; out: string }> {
  const command = [process.execPath, CTL_JS, ...args].map((a) => `'${a}'`).join(' ');
  return new Promise((resolve) => {
    execFile('/usr/bin/script', ['-qec', command, '/dev/null'], { timeout: 60_000, env: { ...process.env, COLUMNS: '160' } }, (err, stdout) => {
      const code = err && typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : err ? 1 : 0;
      resolve({ code, out: stdout });
    });
  });
}

/** Today's text output of `save`, and nothing else: what a script reading stdout relies on. */
const SAVE_TEXT = /^snapshot (on-demand-node-1-\d{10}): (\d+\.\d (?:KiB|MiB)), sha256 [0-9a-f]{64}, revision \d+\n(?: {2}stored at \S+\n)+$/;

describe('etcd-stewardctl save: a progress bar on a terminal, unchanged output elsewhere (1 steward, real etcd)', () => {
  let cluster: StewardCluster;
  let endpoint: string;

  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 1, extraArgs: ['--etcd-disable-snapshots=true'] });
    await cluster.startAll();
    endpoint = cluster.node(0).grpc;
    await waitUntil('a leader', async () => ((await cluster.status(0).catch(() => undefined))?.isLeader ? true : undefined), 30_000, 200);
    // Names end in the second a snapshot is taken: each test saves under its own --name.
    // ~24 MiB: the steward reports every MiB, so the bar has many steps to take.
    await fillEtcd([cluster.node(0).clientUrl], 24);
  }, 120_000);
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('not a terminal: stderr stays empty and stdout is the same lines as ever; -o json is one object', async () => {
    const text = await cluster.ctl(['--endpoint', endpoint, 'save']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stderr).toBe('');
    expect(text.stdout).toMatch(SAVE_TEXT);
    const json = await cluster.ctl(['--endpoint', endpoint, '-o', 'json', 'save', '--name', 'json']);
    expect(json.code, json.stderr).toBe(0);
    expect(json.stderr).toBe('');
    expect(Object.keys(JSON.parse(json.stdout) as object)).toEqual(expect.arrayContaining(['name', 'size', 'sha256', 'locations']));
  });

  it('on a terminal: a bar with percent, bytes of the whole size, rate and ETA, ending at 100% of the saved size', async () => {
    const output = await ctlOnTerminal(['--endpoint', endpoint, 'save', '--name', 'tty']);
    expect(output.code, output.out).toBe(0);
    const bar = /snapshot \[=+\] 100% (\d+\.\d MiB) \/ (\d+\.\d MiB) {2}\d+(?:\.\d)? (?:B|KiB|MiB|GiB)\/s {2}ETA \d+s/.exec(output.out);
    expect(bar, output.out).not.toBeNull();
    expect(bar?.[1]).toBe(bar?.[2]);
    // The bar's size is the snapshot's: what the result line says was stored.
    const result = /snapshot tty-node-1-\d{10}: (\d+\.\d MiB), sha256/.exec(output.out);
    expect(result?.[1]).toBe(bar?.[2]);
    expect(Number.parseFloat(bar?.[2] ?? '0')).toBeGreaterThan(20);
    // The bar is drawn from the first report (1 MiB in), so it is seen short of the end before it is full.
    const percents = [...output.out.matchAll(/snapshot \[[=-]+\] (\d+)% /g)].map((m) => Number(m[1]));
    expect(percents[0]).toBeLessThan(10);
    expect(percents.at(-1)).toBe(100);
  });
});

describe('etcd-stewardctl save on a terminal against a scripted steward', () => {
  const MiB = 1024 * 1024;
  let server: RpcServer;
  let endpoint: string;
  const info = (name: string): SnapshotInfo => ({ name, size: 40 * MiB, sha256: 'ab'.repeat(32), locations: [`file:///x/${name}`], failures: [], revision: 7 });
  const scripts: Record<string, (emit: (event: SaveEventInput) => void) => Promise<SnapshotInfo>> = {
    // A steward from before SaveProgress.total: bytes only.
    old: async (emit) => {
      emit({ progress: { bytes: 8 * MiB } });
      return info('old-node-1-1700000000');
    },
    fails: async (emit) => {
      emit({ progress: { bytes: 10 * MiB, total: 40 * MiB } });
      await new Promise((resolve) => setTimeout(resolve, 150));
      throw new InternalError('SNAPSHOT_STREAM_FAILED', 'etcd closed the snapshot stream');
    },
  };

  beforeAll(async () => {
    assertBuilt();
    const unused = async (): Promise<never> => {
      throw new Error('not used');
    };
    const handlers: StewardCtlHandlers = {
      status: unused,
      save: async (request, emit) => {
        const script = scripts[request.name];
        if (!script) throw new Error(`no script for ${request.name}`);
        return script(emit);
      },
      list: unused,
      delete: unused,
      prune: unused,
      specGet: unused,
      specSet: unused,
      init: unused,
      restore: unused,
      restoreStatus: unused,
      restoreAbort: unused,
      verify: unused,
    };
    server = await RpcServer.start({
      host: '127.0.0.1',
      port: 0,
      handlers,
      peer: unusedPeerHandlers(),
      identity: { node: 'node-1', clusterId: () => '' },
      logger: pino({ level: 'silent' }),
    });
    endpoint = `127.0.0.1:${server.port}`;
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('a steward that sends no size: the byte counter and rate as before, cleared before the result', async () => {
    const output = await ctlOnTerminal(['--endpoint', endpoint, 'save', '--name', 'old']);
    expect(output.code, output.out).toBe(0);
    expect(output.out).toMatch(/snapshotting: 8\.0 MiB \(\d+(?:\.\d)? (?:B|KiB|MiB|GiB)\/s\)/);
    expect(output.out).not.toContain('snapshot [');
    expect(output.out).toContain('snapshot old-node-1-1700000000: 40.0 MiB, sha256');
  });

  it('a save that fails midway: the bar stays where it stopped, then the error and its exit code', async () => {
    const output = await ctlOnTerminal(['--endpoint', endpoint, 'save', '--name', 'fails']);
    expect(output.code).toBe(1);
    expect(output.out).toMatch(/snapshot \[=+-+\] 25% 10\.0 MiB \/ 40\.0 MiB/);
    expect(output.out).not.toMatch(/100%/);
    expect(output.out).toMatch(/error\[SNAPSHOT_STREAM_FAILED\]: etcd closed the snapshot stream/);
  });
});
