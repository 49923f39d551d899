/**
 * What an idle embedded default costs: `make run`'s three stewards, their etcd members and nothing else
 * going on. Prints, per process: share of a core, RSS, and new TCP connections over the window.
 * Targets (issue 9): every steward < 1 % of a core and ≤ 110 MB RSS, idle etcd members ≤ 2 %, no churn.
 * Run: make bench   (BENCH_IDLE_SECONDS=60 by default; the cluster settles for 15 s first).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, it } from 'vitest';
import { measureIdle } from '../harness/idle-meter.js';
import { freePort } from '../harness/ports.js';
import { killGroup, waitUntil } from '../harness/processes.js';
import { REPO_ROOT } from '../harness/steward-cluster.js';

const WINDOW_S = Number(process.env.BENCH_IDLE_SECONDS ?? 60);
const SETTLE_MS = 15_000;

function processes(): Array<{ pid: number; ppid: number; args: string[] }> {
  const list: Array<{ pid: number; ppid: number; args: string[] }> = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      list.push({ pid: Number(entry), ppid, args: readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0') });
    } catch {
      // Exited while we looked.
    }
  }
  return list;
}

describe('idle cost of make run', () => {
  let run: ChildProcess | undefined;
  let dir = '';
  afterAll(async () => {
    if (run?.pid && run.exitCode === null) {
      run.kill('SIGTERM');
      await Promise.race([once(run, 'exit'), sleep(45_000)]);
      killGroup(run.pid);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it(`prints CPU, RSS and new connections of every steward and etcd over ${WINDOW_S} s`, async () => {
    dir = await mkdtemp(join(tmpdir(), 'steward-idle-bench-'));
    const ports = async (): Promise<string> => [await freePort(), await freePort(), await freePort()].join(',');
    run = spawn(
      process.execPath,
      [
        join(REPO_ROOT, 'dist/cli/local-cluster.js'),
        `--dir=${dir}`,
        `--grpc-ports=${await ports()}`,
        `--http-ports=${await ports()}`,
        `--client-ports=${await ports()}`,
        `--peer-ports=${await ports()}`,
        `--s3-port=${await freePort()}`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'], detached: true },
    );
    let output = '';
    run.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    await waitUntil('make run to be ready', () => output.includes('Ready in'), 90_000, 250);
    await sleep(SETTLE_MS);
    const all = processes();
    const stewards = all.filter((p) => p.args.some((a) => a.endsWith('dist/cli/steward.js')) && p.args.some((a) => a.startsWith(`--state-dir=${dir}`)));
    const etcds = all.filter((p) => stewards.some((s) => s.pid === p.ppid) && p.args[0]?.endsWith('etcd'));
    const name = (p: { args: string[] }): string => p.args.find((a) => a.startsWith('--name='))?.slice('--name='.length) ?? '?';
    const targets = [...stewards.map((p) => ({ label: `steward ${name(p)}`, pid: p.pid })), ...etcds.map((p) => ({ label: `etcd ${name(p)}`, pid: p.pid }))];
    const costs = await measureIdle(
      targets.map((t) => t.pid),
      WINDOW_S * 1000,
      100,
    );
    console.log(`idle make run over ${WINDOW_S} s (after ${SETTLE_MS / 1000} s to settle):`);
    console.log('process          cpu %   rss MB   new TCP connections');
    costs.forEach((cost, i) => {
      const label = targets[i]?.label ?? '?';
      console.log(`${label.padEnd(16)} ${cost.cpuPercent.toFixed(2).padStart(5)}   ${cost.rssMb.toFixed(0).padStart(6)}   ${cost.newTcpConnections}`);
    });
  });
});
