import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { specEtcdArgs } from '../../src/etcd/args.js';
import { EtcdSupervisor, type EtcdSupervisorOptions } from '../../src/etcd/supervisor.js';
import { freePort } from '../harness/ports.js';
import { isAlive, waitUntil } from '../harness/processes.js';

/** Real etcd processes under a real supervisor; each test gets its own data dir and ports. */

function capture(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  return { logger: pino({ level: 'debug' }, { write: (line: string) => void lines.push(line) }), lines };
}

async function etcdArgs(dataDir: string, clientPort?: number): Promise<{ args: string[]; clientPort: number }> {
  const client = clientPort ?? (await freePort());
  const peer = await freePort();
  return {
    clientPort: client,
    args: [
      '--name=sup',
      `--data-dir=${dataDir}`,
      `--listen-client-urls=http://127.0.0.1:${client}`,
      `--advertise-client-urls=http://127.0.0.1:${client}`,
      `--listen-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-cluster=sup=http://127.0.0.1:${peer}`,
      '--initial-cluster-state=new',
      '--logger=zap',
      '--log-outputs=stderr',
    ],
  };
}

/** Every live etcd process on this data dir, read from /proc (independent of what the supervisor believes). */
async function etcdsOn(dataDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.split('\0').includes(`--data-dir=${dataDir}`) && isAlive(Number(entry))) pids.push(Number(entry));
  }
  return pids;
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

async function etcdAnswers(port: number): Promise<boolean> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(1000) });
    return response.ok;
  } catch {
    return false;
  }
}

interface Running {
  supervisor: EtcdSupervisor;
  run: Promise<void>;
  stop: AbortController;
  restarts: number[];
  lines: string[];
}

describe('EtcdSupervisor (real etcd)', () => {
  let root: string;
  const started: Running[] = [];
  let dirs = 0;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'supervisor-test-'));
  });
  afterEach(async () => {
    for (const r of started.splice(0)) {
      r.stop.abort();
      await r.run.catch(() => undefined);
    }
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const dirsFor = (): { dataDir: string; stateDir: string } => {
    dirs += 1;
    return { dataDir: join(root, `data-${dirs}`), stateDir: join(root, `state-${dirs}`) };
  };

  function start(options: Partial<EtcdSupervisorOptions> & Pick<EtcdSupervisorOptions, 'args' | 'dataDir' | 'stateDir'>): Running {
    const { logger, lines } = capture();
    const restarts: number[] = [];
    const supervisor = new EtcdSupervisor({
      binary: 'etcd',
      stopGraceMs: 5000,
      maxBackoffMs: 2000,
      logger,
      onRestart: () => restarts.push(Date.now()),
      ...options,
    });
    const stop = new AbortController();
    const running = { supervisor, run: supervisor.run(stop.signal), stop, restarts, lines };
    started.push(running);
    return running;
  }

  async function shutdown(running: Running): Promise<number> {
    const begun = Date.now();
    running.stop.abort();
    await running.run;
    return Date.now() - begun;
  }

  it('an etcd that exits at once (its client port is taken) is restarted with backoff, and shutdown is prompt', async () => {
    const { dataDir, stateDir } = dirsFor();
    const blocker: Server = createServer();
    const taken = await freePort();
    await new Promise<void>((resolve) => blocker.listen(taken, '127.0.0.1', resolve));
    try {
      const { args } = await etcdArgs(dataDir, taken);
      const running = start({ args, dataDir, stateDir });
      await waitUntil('three restarts', () => (running.restarts.length >= 3 ? true : undefined), 15_000, 50);
      const gaps = running.restarts.slice(1).map((t, i) => t - (running.restarts[i] ?? t));
      console.log(`restart gaps of an etcd that exits at once: ${gaps.join(', ')} ms`);
      const delays = running.lines.filter((l) => l.includes('etcd exited unexpectedly')).map((l) => (JSON.parse(l) as { restartInMs: number }).restartInMs);
      expect(delays.length).toBeGreaterThanOrEqual(3);
      expect(delays.every((d) => d > 0 && d <= 2000)).toBe(true);
      expect(running.lines.some((l) => l.includes('"component":"etcd"') && /address already in use/.test(l))).toBe(true);
      const ms = await shutdown(running);
      console.log(`shutdown of a crash-looping etcd took ${ms} ms`);
      expect(ms).toBeLessThan(2000);
      expect(running.supervisor.state).toBe('stopped');
      expect(await etcdsOn(dataDir)).toEqual([]);
    } finally {
      blocker.close();
    }
  });

  it('a process that exits before its pid file is even written is seen, restarted with backoff, and shutdown is prompt', async () => {
    // etcd itself takes longer to die of a bad flag than the pid file takes to write, so the window the old
    // supervisor lost exits in is shown with a binary that exits in about a millisecond.
    const { dataDir, stateDir } = dirsFor();
    const running = start({ binary: 'false', args: [`--data-dir=${dataDir}`], dataDir, stateDir });
    await waitUntil('three restarts', () => (running.restarts.length >= 3 ? true : undefined), 15_000, 20);
    expect(running.lines.filter((l) => l.includes('etcd exited unexpectedly') && l.includes('"code":1')).length).toBeGreaterThanOrEqual(3);
    expect(await shutdown(running)).toBeLessThan(1000);
    expect(running.supervisor.state).toBe('stopped');
  });

  it('a pid file that cannot be written stops that etcd, says so, and tries again with backoff; shutdown is prompt', async () => {
    const { dataDir, stateDir } = dirsFor();
    // A directory where the pid file goes: the rename onto it fails for anyone, root included.
    await mkdir(join(stateDir, 'etcd.pid'), { recursive: true });
    const { args } = await etcdArgs(dataDir);
    const running = start({ args, dataDir, stateDir });
    await waitUntil('two failed tracks', () => (running.restarts.length >= 2 ? true : undefined), 15_000, 50);
    expect(running.lines.some((l) => l.includes('cannot write the pid file') && l.includes('"level":50'))).toBe(true);
    expect(running.supervisor.problem).toMatch(/cannot write the pid file .*etcd\.pid, so etcd was stopped/);
    // Between attempts no untracked etcd is left running on the data dir.
    await waitUntil(
      'no etcd between attempts',
      async () => (running.supervisor.state === 'backing-off' && (await etcdsOn(dataDir)).length === 0 ? true : undefined),
      10_000,
      20,
    );
    expect(await shutdown(running)).toBeLessThan(7000);
    expect(await etcdsOn(dataDir)).toEqual([]);
  });

  it('pause stops etcd (process gone, port closed) and nothing restarts it; resume with new arguments runs etcd with them', async () => {
    const { dataDir, stateDir } = dirsFor();
    const first = await etcdArgs(dataDir);
    const running = start({ args: first.args, dataDir, stateDir });
    await waitUntil('etcd to answer', () => etcdAnswers(first.clientPort), 20_000, 100);
    const pid = running.supervisor.pid;
    expect(pid).toBeDefined();
    expect(running.supervisor.state).toBe('running');

    await running.supervisor.pause();
    expect(isAlive(pid as number)).toBe(false);
    expect(await portOpen(first.clientPort)).toBe(false);
    expect(running.supervisor.state).toBe('paused');
    expect(running.supervisor.pid).toBeUndefined();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(await etcdsOn(dataDir)).toEqual([]);
    expect(running.supervisor.state).toBe('paused');
    expect(running.restarts).toEqual([]);

    const moved = await freePort();
    const next = first.args.map((a) => a.replace(`:${first.clientPort}`, `:${moved}`));
    running.supervisor.resume(next);
    await waitUntil('etcd to answer on the new port', () => etcdAnswers(moved), 20_000, 100);
    const [resumed] = await etcdsOn(dataDir);
    expect((await readFile(`/proc/${resumed}/cmdline`, 'utf8')).split('\0')).toContain(`--listen-client-urls=http://127.0.0.1:${moved}`);
    expect(await portOpen(first.clientPort)).toBe(false);
    expect(running.supervisor.state).toBe('running');
    expect(running.supervisor.currentArgs).toEqual(next);
    expect(running.restarts).toEqual([]);
  });

  it('a pause racing an exit of its own resolves and does not restart; shutdown while paused is prompt', async () => {
    const { dataDir, stateDir } = dirsFor();
    const { args, clientPort } = await etcdArgs(dataDir);
    const running = start({ args, dataDir, stateDir });
    await waitUntil('etcd to answer', () => etcdAnswers(clientPort), 20_000, 100);
    const pid = running.supervisor.pid as number;
    process.kill(pid, 'SIGKILL');
    await running.supervisor.pause();
    expect(running.supervisor.state).toBe('paused');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(await etcdsOn(dataDir)).toEqual([]);
    expect(running.restarts).toEqual([]);
    expect(await shutdown(running)).toBeLessThan(500);
    expect(running.supervisor.state).toBe('stopped');
  });

  it('a pause during the backoff of a crash loop resolves at once and ends the loop', async () => {
    const { dataDir, stateDir } = dirsFor();
    const blocker: Server = createServer();
    const taken = await freePort();
    await new Promise<void>((resolve) => blocker.listen(taken, '127.0.0.1', resolve));
    try {
      const { args } = await etcdArgs(dataDir, taken);
      const running = start({ args, dataDir, stateDir, maxBackoffMs: 5000 });
      await waitUntil('a restart', () => (running.restarts.length >= 1 ? true : undefined), 15_000, 20);
      const begun = Date.now();
      await running.supervisor.pause();
      expect(Date.now() - begun).toBeLessThan(6000);
      const count = running.restarts.length;
      await new Promise((resolve) => setTimeout(resolve, 2000));
      expect(running.restarts.length).toBe(count);
      expect(running.supervisor.state).toBe('paused');
      expect(await etcdsOn(dataDir)).toEqual([]);
    } finally {
      blocker.close();
    }
  });

  it('a resume that overtakes its pause starts etcd again without counting a crash', async () => {
    const { dataDir, stateDir } = dirsFor();
    const { args, clientPort } = await etcdArgs(dataDir);
    const running = start({ args, dataDir, stateDir });
    await waitUntil('etcd to answer', () => etcdAnswers(clientPort), 20_000, 100);
    const before = running.supervisor.pid as number;
    const paused = running.supervisor.pause();
    running.supervisor.resume();
    await paused;
    expect(isAlive(before)).toBe(false);
    await waitUntil('etcd to answer again', () => etcdAnswers(clientPort), 20_000, 100);
    expect(running.supervisor.pid).not.toBe(before);
    expect(running.restarts).toEqual([]);
  });

  it('a pause whose wait is aborted still stands', async () => {
    const { dataDir, stateDir } = dirsFor();
    const { args, clientPort } = await etcdArgs(dataDir);
    const running = start({ args, dataDir, stateDir });
    await waitUntil('etcd to answer', () => etcdAnswers(clientPort), 20_000, 100);
    const wait = new AbortController();
    const paused = running.supervisor.pause(wait.signal);
    wait.abort(new Error('caller gave up'));
    await expect(paused).rejects.toThrow('caller gave up');
    await waitUntil(
      'etcd to stop',
      async () => ((await etcdsOn(dataDir)).length === 0 && running.supervisor.state === 'paused' ? true : undefined),
      10_000,
      50,
    );
  });

  it("reads the spec's flags at every start: a changed spec reaches the next etcd, an owned flag is skipped with an error logged", async () => {
    const { dataDir, stateDir } = dirsFor();
    const { args, clientPort } = await etcdArgs(dataDir);
    let flags: Record<string, string> = { 'snapshot-count': '5000' };
    const running = start({ args, dataDir, stateDir, specArgs: () => specEtcdArgs(flags) });
    const cmdline = async (): Promise<string[]> => {
      const [pid] = await etcdsOn(dataDir);
      return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    };
    await waitUntil('etcd to answer', () => etcdAnswers(clientPort), 20_000, 100);
    expect(await cmdline()).toContain('--snapshot-count=5000');
    expect(running.supervisor.runningArgs).toContain('--snapshot-count=5000');

    flags = { 'snapshot-count': '7000' };
    // Nothing restarts a healthy etcd for a new spec.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await cmdline()).toContain('--snapshot-count=5000');
    await running.supervisor.pause();
    running.supervisor.resume();
    await waitUntil('etcd to answer again', () => etcdAnswers(clientPort), 20_000, 100);
    expect(await cmdline()).toContain('--snapshot-count=7000');

    flags = { 'data-dir': '/elsewhere' };
    await running.supervisor.pause();
    running.supervisor.resume();
    await waitUntil('etcd to answer on its own flags', () => etcdAnswers(clientPort), 20_000, 100);
    const last = await cmdline();
    expect(last.filter((a) => a.startsWith('--data-dir='))).toEqual([`--data-dir=${dataDir}`]);
    expect(last.some((a) => a.startsWith('--snapshot-count'))).toBe(false);
    expect(running.lines.some((line) => line.includes("the cluster spec's etcd flags are not applied") && line.includes('--data-dir'))).toBe(true);
  });
});
