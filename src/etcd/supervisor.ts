import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExponentialBackoff, type IBackoff } from 'cockatiel';
import type { Logger } from 'pino';
import { InternalError, errorText } from '../errors/index.js';
import { ensureStateDir, writeFileAtomic } from '../state/atomic.js';
import { withSpecFlags } from './args.js';
import { forwardEtcdOutput } from './output.js';

export interface EtcdSupervisorOptions {
  binary: string;
  args: string[];
  stateDir: string;
  dataDir: string;
  stopGraceMs: number;
  maxBackoffMs: number;
  logger: Logger;
  /** Called each time etcd exited on its own (or could not be tracked) and is about to be started again. */
  onRestart?: () => void;
  onRunningChange?: (running: boolean) => void;
  /**
   * Asked before every start, restarts included; resolves false to skip this start. The signal aborts when
   * supervision stops or a pause is asked for, so a gate that waits never holds either up.
   */
  beforeStart?: (signal: AbortSignal) => Promise<boolean>;
  /**
   * Flags added at every start, read then (the cluster spec's etcdFlags): a changed spec reaches etcd on its
   * next (re)start, never by restarting a healthy member. A throw skips them for that start, logged.
   */
  specArgs?: () => string[];
}

/**
 * idle: run() not called yet · starting: asking beforeStart / spawning · running: the child is up ·
 * backing-off: it died, waiting before the next start · paused: stopped on request, not restarted until
 * resume() · stopping: run's signal aborted, the child is being stopped · stopped: run() has settled.
 */
export type SupervisorState = 'idle' | 'starting' | 'running' | 'backing-off' | 'paused' | 'stopping' | 'stopped';

/** A child that stayed up this long resets the backoff: the next crash is a new incident, not a crash loop. */
const STABLE_AFTER_MS = 60_000;

/** One spawned etcd: its exit is awaited from the moment it was spawned, so no exit can go unseen. */
interface Tracked {
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves once the loop has seen the exit and cleaned up after it (pid file removed, state updated). */
  handled: Promise<void>;
  markHandled: () => void;
  /** A pause asked it to stop: its exit is never a crash, even when a resume came before it. */
  stopRequested: boolean;
}

/**
 * Owns the etcd child process: starts it, restarts it with jittered exponential backoff when it dies, and
 * stops it with SIGTERM then SIGKILL. It never touches the data dir's contents.
 *
 * `run(signal)` settles once the child is gone and supervision has stopped. `pause()` stops etcd and keeps
 * supervising without restarting it (a restore needs the data dir); `resume(args?)` starts it again.
 */
export class EtcdSupervisor {
  private current: Tracked | undefined;
  private phase: SupervisorState = 'idle';
  private args: string[];
  private started: string[] = [];
  private paused = false;
  /** Aborted to cut short whatever the loop waits on (a gate, a backoff sleep) when a pause or resume comes. */
  private interrupt = new AbortController();
  private backoff: IBackoff<unknown> | undefined;
  private lastProblem = '';
  private readonly log: Logger;
  private readonly pidFile: string;

  constructor(private readonly options: EtcdSupervisorOptions) {
    this.log = options.logger.child({ component: 'supervisor' });
    this.pidFile = join(options.stateDir, 'etcd.pid');
    this.args = [...options.args];
  }

  get state(): SupervisorState {
    return this.phase;
  }

  /** The child's pid while it runs right now; undefined otherwise (an exited child is never reported). */
  get pid(): number | undefined {
    const child = this.current?.child;
    return child && child.exitCode === null && child.signalCode === null ? child.pid : undefined;
  }

  /**
   * etcd runs under supervision at this moment: the readiness a probe may report. Asks the kernel too, so an
   * etcd that just died counts as gone even before its exit has been reaped and reported to this process.
   */
  get running(): boolean {
    const pid = this.pid;
    return this.phase === 'running' && pid !== undefined && processRuns(pid);
  }

  /** Why the last start failed to be tracked (e.g. the pid file could not be written); empty otherwise. */
  get problem(): string {
    return this.lastProblem;
  }

  /** The arguments the last start used, the spec's flags included; empty before the first start. */
  get runningArgs(): string[] {
    return [...this.started];
  }

  private readSpecArgs(): string[] {
    try {
      return this.options.specArgs?.() ?? [];
    } catch (err) {
      // A spec written by hand may name a flag the steward owns: etcd still starts, with the steward's own.
      this.log.error({ err: errorText(err) }, "the cluster spec's etcd flags are not applied");
      return [];
    }
  }

  /**
   * What the spec asks of etcd that the running etcd was not started with, in words; '' when they agree or
   * etcd does not run. A changed spec reaches etcd at its next (re)start, and status says so meanwhile.
   */
  get pendingArgs(): string {
    if (!this.running) return '';
    const next = withSpecFlags(this.args, this.readSpecArgs());
    const running = new Set(this.started);
    const now = new Set(next);
    const added = next.filter((arg) => !running.has(arg));
    const dropped = this.started.filter((arg) => !now.has(arg));
    if (added.length === 0 && dropped.length === 0) return '';
    const parts = [...(added.length > 0 ? [`new: ${added.join(' ')}`] : []), ...(dropped.length > 0 ? [`no longer: ${dropped.join(' ')}`] : [])];
    return `the cluster spec's etcd flags changed since etcd started (${parts.join('; ')}); they apply at etcd's next restart`;
  }

  /** The arguments the next start uses, before the spec's flags are added. */
  get currentArgs(): string[] {
    return [...this.args];
  }

  async run(signal: AbortSignal): Promise<void> {
    await ensureStateDir(this.options.stateDir);
    await this.stopStaleEtcd();
    const backoffFactory = new ExponentialBackoff({ initialDelay: 500, maxDelay: this.options.maxBackoffMs });
    const onAbort = (): void => {
      this.phase = 'stopping';
      this.wake();
      if (this.current) void this.stopChild(this.current.child);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      while (!signal.aborted) {
        if (this.paused) {
          this.phase = 'paused';
          await this.waitForChange(signal);
          continue;
        }
        this.phase = 'starting';
        const attempt = AbortSignal.any([signal, this.interrupt.signal]);
        if (this.options.beforeStart && !(await this.options.beforeStart(attempt))) {
          // Skipped without a pause or a stop behind it: ask again in a moment, never in a tight loop.
          if (!signal.aborted && !this.paused)
            await sleep(1000, undefined, { signal: AbortSignal.any([signal, this.interrupt.signal]) }).catch(() => undefined);
          continue;
        }
        // Checked with no await between it and the spawn (spawnChild attaches everything before its first
        // await): a pause asked for before this line is always seen, one asked for after finds the child.
        if (signal.aborted || this.paused) continue;
        const startedAt = Date.now();
        const tracked = await this.spawnChild();
        this.phase = 'running';
        this.options.onRunningChange?.(true);
        const trackedOk = await this.writePidFile(tracked);
        const { code, signal: exitSignal } = await tracked.exited;
        this.current = undefined;
        this.options.onRunningChange?.(false);
        await rm(this.pidFile, { force: true }).catch((err: unknown) =>
          this.log.warn({ err: errorText(err), pidFile: this.pidFile }, 'cannot remove the pid file'),
        );
        tracked.markHandled();
        if (signal.aborted) {
          this.log.info({ code, signal: exitSignal }, 'etcd stopped');
          break;
        }
        if (this.paused) {
          this.log.info({ code, signal: exitSignal }, 'etcd stopped for a pause; supervision goes on and it is not restarted until resumed');
          continue;
        }
        if (tracked.stopRequested) {
          this.log.info({ code, signal: exitSignal }, 'etcd stopped for a pause that was resumed meanwhile; starting it again');
          continue;
        }
        if (Date.now() - startedAt > STABLE_AFTER_MS) this.backoff = undefined;
        this.backoff = this.backoff === undefined ? backoffFactory.next() : this.backoff.next(undefined);
        const restartInMs = Math.round(this.backoff.duration);
        if (trackedOk) {
          this.log.error(
            { code, signal: exitSignal, restartInMs, uptimeMs: Date.now() - startedAt },
            'etcd exited unexpectedly; restarting it (check the component=etcd lines just before this for the cause)',
          );
        } else {
          this.log.error({ restartInMs, problem: this.lastProblem }, 'etcd was stopped because it could not be tracked; starting it again after the backoff');
        }
        this.options.onRestart?.();
        this.phase = 'backing-off';
        await sleep(this.backoff.duration, undefined, { signal: AbortSignal.any([signal, this.interrupt.signal]) }).catch(() => undefined);
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.phase = 'stopped';
    }
  }

  /**
   * Stops etcd (SIGTERM, SIGKILL after the grace period) and keeps supervising without restarting it. Resolves
   * once etcd has exited and the exit was handled (at once if it was not running); a `signal` that aborts first
   * only stops the waiting, the pause stands. Also cuts short a wait in beforeStart or a backoff.
   */
  async pause(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    if (!this.paused) this.log.info({ state: this.phase }, 'pausing etcd: it is stopped and not restarted until resumed');
    this.paused = true;
    this.wake();
    const tracked = this.current;
    if (!tracked) return;
    tracked.stopRequested = true;
    void this.stopChild(tracked.child);
    if (!signal) return tracked.handled;
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      void tracked.handled.then(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
    });
  }

  /** Starts etcd again after a pause, with `args` from now on if given; the backoff starts afresh. */
  resume(args?: string[]): void {
    if (args) this.args = [...args];
    if (!this.paused) return;
    this.log.info({ args: args ? 'new' : 'unchanged' }, 'resuming etcd');
    this.paused = false;
    this.backoff = undefined;
    this.wake();
  }

  private wake(): void {
    this.interrupt.abort();
    this.interrupt = new AbortController();
  }

  private async waitForChange(signal: AbortSignal): Promise<void> {
    const interrupted = this.interrupt.signal;
    if (signal.aborted || interrupted.aborted) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        signal.removeEventListener('abort', done);
        interrupted.removeEventListener('abort', done);
        resolve();
      };
      signal.addEventListener('abort', done, { once: true });
      interrupted.addEventListener('abort', done, { once: true });
    });
  }

  /**
   * Spawns etcd and attaches its exit handling before anything is awaited, so an etcd that dies at once
   * (a bad flag, a port in use) is seen and restarted. A binary that cannot be run at all throws.
   */
  private async spawnChild(): Promise<Tracked> {
    const args = withSpecFlags(this.args, this.readSpecArgs());
    const child = spawn(this.options.binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid === undefined) {
      // Node leaves pid unset when the spawn failed and reports why with 'error' on a later tick; there is
      // no process, so there is no exit to miss while waiting for the reason.
      const [err] = (await once(child, 'error')) as [Error];
      throw new InternalError('ETCD_SPAWN_FAILED', `cannot start ${this.options.binary}: ${errorText(err)}`, {
        hint: 'install etcd or point --etcd-binary at it',
        cause: err,
      });
    }
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    child.on('error', (err) => this.log.error({ err }, 'etcd child process error'));
    const etcdLog = this.options.logger.child({ component: 'etcd' });
    if (child.stdout) forwardEtcdOutput(child.stdout, etcdLog);
    if (child.stderr) forwardEtcdOutput(child.stderr, etcdLog);
    let markHandled = (): void => undefined;
    const handled = new Promise<void>((resolve) => (markHandled = resolve));
    this.log.info({ pid: child.pid, dataDir: this.options.dataDir, etcdFlags: args.length - this.args.length }, 'etcd started');
    this.started = args;
    // Set before this function returns, so a pause or an abort in the very next tick finds the child.
    this.current = { child, exited, handled, markHandled, stopRequested: false };
    return this.current;
  }

  /** False if the pid file could not be written: that child is stopped, since an untracked etcd would outlive a crash unseen. */
  private async writePidFile(tracked: Tracked): Promise<boolean> {
    try {
      await writeFileAtomic(this.pidFile, `${tracked.child.pid as number}\n`);
      this.lastProblem = '';
      return true;
    } catch (err) {
      this.lastProblem = `cannot write the pid file ${this.pidFile}, so etcd was stopped: ${errorText(err)}`;
      this.log.error({ err: errorText(err), pid: tracked.child.pid, hint: (err as InternalError).hint }, this.lastProblem);
      await this.stopChild(tracked.child);
      return false;
    }
  }

  private async stopChild(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    this.log.info({ pid: child.pid, graceMs: this.options.stopGraceMs }, 'stopping etcd (SIGTERM)');
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => {
      this.log.warn({ pid: child.pid }, 'etcd did not stop within the grace period; sending SIGKILL');
      child.kill('SIGKILL');
    }, this.options.stopGraceMs);
    await exited;
    clearTimeout(timer);
  }

  /**
   * A steward that was SIGKILLed leaves its etcd running. Two etcds cannot share a data dir, so the
   * orphan is stopped before a supervised one starts; it is only stopped if it really is etcd on our data dir.
   */
  private async stopStaleEtcd(): Promise<void> {
    const pid = Number.parseInt(await readFile(this.pidFile, 'utf8').catch(() => ''), 10);
    if (!Number.isInteger(pid) || pid <= 0) return;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    const args = cmdline.split('\0');
    if (!args.includes(`--data-dir=${this.options.dataDir}`)) return;
    this.log.warn({ pid }, 'an etcd left by an earlier steward still runs on this data dir; stopping it before starting a supervised one');
    await signalAndWait(pid, 'SIGTERM', this.options.stopGraceMs);
    if (isAlive(pid)) await signalAndWait(pid, 'SIGKILL', 5000);
    await rm(this.pidFile, { force: true });
  }
}

const HAS_PROC = existsSync('/proc/self/stat');

/** Alive and not a zombie: /proc where there is one (a zombie still answers kill(0)), else kill(0). */
function processRuns(pid: number): boolean {
  if (!HAS_PROC) return isAlive(pid);
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    return isAlive(pid);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function signalAndWait(pid: number, sig: NodeJS.Signals, timeoutMs: number): Promise<void> {
  try {
    process.kill(pid, sig);
  } catch {
    return;
  }
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid) && Date.now() < deadline) await sleep(100);
}
