import { execFile } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fillEtcd } from '../harness/etcd-cluster.js';
import { waitUntil } from '../harness/processes.js';
import { CTL_JS, StewardCluster } from '../harness/steward-cluster.js';

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
    const json = await cluster.ctl(['--endpoint', endpoint, '-o', 'json', 'save']);
    expect(json.code, json.stderr).toBe(0);
    expect(json.stderr).toBe('');
    expect(Object.keys(JSON.parse(json.stdout) as object)).toEqual(expect.arrayContaining(['name', 'size', 'sha256', 'locations']));
  });

  // A real pseudo-terminal (util-linux `script`, in Debian's essential bsdutils) so stderr is a TTY.
  it('on a terminal: a bar with percent, bytes of the whole size, rate and ETA, ending at 100% of the saved size', async () => {
    const command = [process.execPath, CTL_JS, '--endpoint', endpoint, 'save'].map((a) => `'${a}'`).join(' ');
    const output = await new Promise<{ code: number; out: string }>((resolve) => {
      execFile('/usr/bin/script', ['-qec', command, '/dev/null'], { timeout: 60_000, env: { ...process.env, COLUMNS: '160' } }, (err, stdout) => {
        const code = err && typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : err ? 1 : 0;
        resolve({ code, out: stdout });
      });
    });
    expect(output.code, output.out).toBe(0);
    const bar = /snapshot \[=+\] 100% (\d+\.\d MiB) \/ (\d+\.\d MiB) {2}\d+(?:\.\d)? (?:B|KiB|MiB|GiB)\/s {2}ETA \d+s/.exec(output.out);
    expect(bar, output.out).not.toBeNull();
    expect(bar?.[1]).toBe(bar?.[2]);
    // The bar's size is the snapshot's: what the result line says was stored.
    const result = /snapshot on-demand-node-1-\d{10}: (\d+\.\d MiB), sha256/.exec(output.out);
    expect(result?.[1]).toBe(bar?.[2]);
    expect(Number.parseFloat(bar?.[2] ?? '0')).toBeGreaterThan(20);
    // The bar is drawn from the first report (1 MiB in), so it is seen short of the end before it is full.
    const percents = [...output.out.matchAll(/snapshot \[[=-]+\] (\d+)% /g)].map((m) => Number(m[1]));
    expect(percents[0]).toBeLessThan(10);
    expect(percents.at(-1)).toBe(100);
  });
});
