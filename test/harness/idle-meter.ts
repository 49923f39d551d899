import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** What one process cost over a measured window, read from /proc (no procps, no sampling profiler). */
export interface IdleCost {
  pid: number;
  /** Share of one core, in percent, over the window. */
  cpuPercent: number;
  /** Resident set size at the end of the window. */
  rssMb: number;
  /** TCP sockets that appeared during the window (a socket that lives < one sample period can be missed). */
  newTcpConnections: number;
  windowMs: number;
}

const CLOCK_TICKS_PER_SECOND = 100;

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15 of stat(5); fields[] starts at field 3 (state).
  return Number(fields[11]) + Number(fields[12]);
}

function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
  return kb / 1024;
}

function socketInodes(pid: number): string[] {
  const inodes: string[] = [];
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return inodes;
  }
  for (const fd of fds) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      const match = /^socket:\[(\d+)\]$/.exec(target);
      if (match?.[1]) inodes.push(match[1]);
    } catch {
      // Closed while we looked.
    }
  }
  return inodes;
}

/** Inodes of every TCP socket on the host (v4 and v6), so a process's socket fds can be told apart from pipes and UDP. */
function tcpSocketInodes(): Set<string> {
  const inodes = new Set<string>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const inode = line.trim().split(/\s+/)[9];
      if (inode && inode !== '0') inodes.add(inode);
    }
  }
  return inodes;
}

/**
 * Measures several processes at once over `windowMs`: CPU share, RSS at the end, and how many TCP sockets
 * each opened. Sockets are sampled every `sampleMs`; a connect-and-close loop that outruns the sampling
 * still shows as hundreds of new sockets, which is what the idle tests guard against.
 */
export async function measureIdle(pids: number[], windowMs: number, sampleMs = 100): Promise<IdleCost[]> {
  const startTicks = pids.map(cpuTicks);
  const seen = pids.map((pid) => new Set(socketInodes(pid)));
  const fresh = pids.map(() => new Set<string>());
  const started = Date.now();
  while (Date.now() - started < windowMs) {
    await sleep(sampleMs);
    const tcp = tcpSocketInodes();
    pids.forEach((pid, i) => {
      for (const inode of socketInodes(pid)) {
        if (seen[i]?.has(inode)) continue;
        seen[i]?.add(inode);
        if (tcp.has(inode)) fresh[i]?.add(inode);
      }
    });
  }
  const elapsed = Date.now() - started;
  return pids.map((pid, i) => ({
    pid,
    cpuPercent: (((cpuTicks(pid) - (startTicks[i] ?? 0)) / CLOCK_TICKS_PER_SECOND) * 1000 * 100) / elapsed,
    rssMb: rssMb(pid),
    newTcpConnections: fresh[i]?.size ?? 0,
    windowMs: elapsed,
  }));
}
