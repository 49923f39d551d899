/**
 * What the restore bench measures with, kept out of the bench itself: a VmRSS sampler over /proc, a child
 * run under /usr/bin/time -v (wall time and peak RSS), a concurrent etcd filler and the phase timeline of
 * `etcd-stewardctl restore -o json`'s NDJSON events.
 */
import { execFile } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';

function statusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match?.[1] === undefined ? undefined : Number(match[1]);
  } catch {
    return undefined;
  }
}

/** VmHWM since the last reset; the kernel resets it when "5" is written to clear_refs (Linux ≥ 4.0). */
export function peakRssMb(pid: number): number {
  return (statusKb(pid, 'VmHWM') ?? NaN) / 1024;
}

export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export interface RssSamples {
  pid: number;
  maxMb: number;
  /** When the maximum was seen (ms since the epoch). */
  maxAt: number;
  count: number;
  /** Every sample as [ms since the epoch, MB, CPU seconds used so far], for a phase-by-phase view. */
  samples: Array<[number, number, number]>;
}

const CLOCK_TICKS_PER_SECOND = 100;

/** utime + stime of stat(5) in seconds (fields 14 and 15). */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return NaN;
  }
}

/**
 * Samples VmRSS of every pid every `intervalMs` until `signal` aborts or `limitMs` passed, whichever is
 * first; resolves with what it saw. A pid that exits simply stops adding samples.
 */
export async function sampleRss(pids: number[], intervalMs: number, limitMs: number, signal: AbortSignal): Promise<RssSamples[]> {
  const results = pids.map((pid) => ({ pid, maxMb: 0, maxAt: 0, count: 0, samples: [] as Array<[number, number, number]> }));
  const deadline = Date.now() + limitMs;
  while (!signal.aborted && Date.now() < deadline) {
    const now = Date.now();
    for (const result of results) {
      const kb = statusKb(result.pid, 'VmRSS');
      if (kb === undefined) continue;
      const mb = kb / 1024;
      result.count += 1;
      result.samples.push([now, mb, cpuSeconds(result.pid)]);
      if (mb > result.maxMb) {
        result.maxMb = mb;
        result.maxAt = now;
      }
    }
    await sleep(intervalMs, undefined, { signal }).catch(() => undefined);
  }
  return results;
}

export interface TimedRun {
  seconds: number;
  /** "Maximum resident set size" of /usr/bin/time -v, or NaN without it. */
  peakRssMb: number;
  stdout: string;
  stderr: string;
}

const GNU_TIME = '/usr/bin/time';

/** Runs a command to its end (under /usr/bin/time -v where there is one); rejects on a non-zero exit. */
export function timedRun(command: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<TimedRun> {
  const withTime = existsSync(GNU_TIME);
  const [file, argv] = withTime ? [GNU_TIME, ['-v', command, ...args]] : [command, args];
  const started = process.hrtime.bigint();
  return new Promise((resolve, reject) =>
    execFile(file, argv, { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (err) return reject(new Error(`${command} ${args.join(' ')} failed: ${stderr.slice(-4000)}`, { cause: err }));
      const kb = /Maximum resident set size \(kbytes\):\s*(\d+)/.exec(stderr)?.[1];
      resolve({ seconds, peakRssMb: kb === undefined ? NaN : Number(kb) / 1024, stdout, stderr });
    }),
  );
}

/** Puts `megabytes` MiB of 512 KiB values (half random, so they do not compress to nothing), `concurrency` at a time. */
export async function fillConcurrently(endpoints: string[], megabytes: number, prefix: string, concurrency: number): Promise<void> {
  const client = new Etcd3({ hosts: endpoints });
  const total = Math.ceil(megabytes * 2);
  let next = 0;
  try {
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        const value = Buffer.alloc(512 * 1024);
        for (let i = next++; i < total; i = next++) {
          randomFillSync(value, 0, value.length / 2);
          await client.put(`${prefix}${String(i).padStart(8, '0')}`).value(value);
        }
      }),
    );
  } finally {
    client.close();
  }
}

export interface RestoreEventLine {
  event: 'plan' | 'progress' | 'result';
  phase?: string;
  member?: string;
  bytes?: number;
  total?: number;
  message?: string;
  at?: string;
  durationSeconds?: number;
  bytesDistributed?: number;
}

export function parseEvents(stdout: string): RestoreEventLine[] {
  return stdout
    .split('\n')
    .filter((line) => line.trim().startsWith('{'))
    .map((line) => JSON.parse(line) as RestoreEventLine);
}

export interface Timeline {
  /** Cluster-wide phase events (member ''), in order, with their time (ms since the epoch). */
  phases: Array<{ phase: string; at: number; message: string }>;
  /** Per member: when its last Distribute chunk was sent, when it verified, when its swap ended. */
  members: Record<string, { streamedAt?: number; verifiedAt?: number; restoredAt?: number; bytes: number }>;
}

export function timeline(events: RestoreEventLine[]): Timeline {
  const result: Timeline = { phases: [], members: {} };
  for (const e of events) {
    if (e.event !== 'progress' || !e.at || !e.phase) continue;
    const at = Date.parse(e.at);
    if (!e.member) {
      result.phases.push({ phase: e.phase, at, message: e.message ?? '' });
      continue;
    }
    const member = (result.members[e.member] ??= { bytes: 0 });
    if (e.phase === 'Distribute') {
      member.streamedAt = at;
      member.bytes = e.bytes ?? member.bytes;
    } else if (e.phase === 'Verify') member.verifiedAt = at;
    else if (e.phase === 'Restore') member.restoredAt = at;
  }
  return result;
}

/** Max RSS of the samples that fall in [from, to). */
export function maxBetween(samples: Array<[number, number, number]>, from: number, to: number): number {
  let max = 0;
  for (const [at, mb] of samples) if (at >= from && at < to && mb > max) max = mb;
  return max;
}

/** Share of one core used between the first and the last sample in [from, to], in percent (NaN with < 2 samples). */
export function cpuPercentBetween(samples: Array<[number, number, number]>, from: number, to: number): number {
  const inside = samples.filter(([at]) => at >= from && at <= to);
  const first = inside[0];
  const last = inside[inside.length - 1];
  if (!first || !last || last[0] === first[0]) return NaN;
  return ((last[2] - first[2]) / ((last[0] - first[0]) / 1000)) * 100;
}

/** What one steward's log says about its etcd during a window: every stop (SIGTERM to exit) and its restore step. */
export interface EtcdStops {
  /** Seconds from "stopping etcd" to "etcd stopped", each stop in the window in order. */
  stops: number[];
  /** etcd's own "leadership transfer failed" lines (it waited its request timeout for a peer that was stopping too). */
  failedTransfers: number;
  /** Seconds from the first stop's end to "restored data dir swapped in" (etcdctl snapshot restore + its status check + renames). */
  restoreSeconds: number;
}

export function etcdStops(log: string, from: number, to: number): EtcdStops {
  const result: EtcdStops = { stops: [], failedTransfers: 0, restoreSeconds: NaN };
  let stopping: number | undefined;
  let firstStopped: number | undefined;
  for (const line of log.split('\n')) {
    if (!line.startsWith('{')) continue;
    let entry: { time?: string; msg?: string };
    try {
      entry = JSON.parse(line) as { time?: string; msg?: string };
    } catch {
      continue;
    }
    const at = Date.parse(entry.time ?? '');
    if (!(at >= from && at <= to) || !entry.msg) continue;
    if (entry.msg.startsWith('stopping etcd')) stopping = at;
    else if (entry.msg.startsWith('etcd stopped for a pause') && stopping !== undefined) {
      result.stops.push((at - stopping) / 1000);
      firstStopped ??= at;
      stopping = undefined;
    } else if (entry.msg === 'leadership transfer failed') result.failedTransfers += 1;
    else if (entry.msg === 'restored data dir swapped in' && firstStopped !== undefined) result.restoreSeconds = (at - firstStopped) / 1000;
  }
  return result;
}
