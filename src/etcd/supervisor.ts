import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExponentialBackoff, type IBackoff } from 'cockatiel';
import type { Logger } from 'pino';
import { InternalError, errorText } from '../errors/index.js';
import { ensureStateDir, writeFileAtomic } from '../state/atomic.js';
import { forwardEtcdOutput } from './output.js';

export interface EtcdSupervisorOptions {
  binary: string;
  args: string[];
  stateDir: string;
  dataDir: string;
  stopGraceMs: number;
  maxBackoffMs: number;
  logger: Logger;
  /** Called each time etcd exited on its own and is about to be started again. */
  onRestart?: () => void;
  onRunningChange?: (running: boolean) => void;
  /** Asked before every start, restarts included; resolves false to stop supervising (only when aborted). */
  beforeStart?: (signal: AbortSignal) => Promise<boolean>;
}

/** A child that stayed up this long resets the backoff: the next crash is a new incident, not a crash loop. */
const STABLE_AFTER_MS = 60_000;

/**
 * Owns the etcd child process: starts it, restarts it with jittered exponential backoff when it dies, and
 * stops it with SIGTERM then SIGKILL. It never touches the data dir's contents.
 *
 * States: idle → running (child up) ⇄ backing-off → stopped. `run(signal)` settles once the child is gone.
 */
export class EtcdSupervisor {
  private child: ChildProcess | undefined;
  private readonly log: Logger;
  private readonly pidFile: string;

  constructor(private readonly options: EtcdSupervisorOptions) {
    this.log = options.logger.child({ component: 'supervisor' });
    this.pidFile = join(options.stateDir, 'etcd.pid');
  }

  get pid(): number | undefined {
    return this.child?.exitCode === null ? this.child.pid : undefined;
  }

  async run(signal: AbortSignal): Promise<void> {
    await ensureStateDir(this.options.stateDir);
    await this.stopStaleEtcd();
    const backoffFactory = new ExponentialBackoff({ initialDelay: 500, maxDelay: this.options.maxBackoffMs });
    let backoff: IBackoff<unknown> | undefined;
    while (!signal.aborted) {
      if (this.options.beforeStart && !(await this.options.beforeStart(signal))) break;
      const startedAt = Date.now();
      const child = await this.spawnChild();
      const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
      const stop = (): void => void this.stopChild(child);
      signal.addEventListener('abort', stop, { once: true });
      // Aborted while etcd was being spawned: the listener above came too late to see it.
      if (signal.aborted) stop();
      const [code, exitSignal] = await exited;
      signal.removeEventListener('abort', stop);
      this.child = undefined;
      this.options.onRunningChange?.(false);
      await rm(this.pidFile, { force: true });
      if (signal.aborted) {
        this.log.info({ code, signal: exitSignal }, 'etcd stopped');
        break;
      }
      if (Date.now() - startedAt > STABLE_AFTER_MS) backoff = undefined;
      backoff = backoff === undefined ? backoffFactory.next() : backoff.next(undefined);
      this.log.error(
        { code, signal: exitSignal, restartInMs: Math.round(backoff.duration), uptimeMs: Date.now() - startedAt },
        'etcd exited unexpectedly; restarting it (check the component=etcd lines just before this for the cause)',
      );
      this.options.onRestart?.();
      await sleep(backoff.duration, undefined, { signal }).catch(() => undefined);
    }
  }

  private async spawnChild(): Promise<ChildProcess> {
    const child = spawn(this.options.binary, this.options.args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const spawned = new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    try {
      await spawned;
    } catch (err) {
      throw new InternalError('ETCD_SPAWN_FAILED', `cannot start ${this.options.binary}: ${errorText(err)}`, {
        hint: 'install etcd or point --etcd-binary at it',
        cause: err,
      });
    }
    child.on('error', (err) => this.log.error({ err }, 'etcd child process error'));
    const etcdLog = this.options.logger.child({ component: 'etcd' });
    if (child.stdout) forwardEtcdOutput(child.stdout, etcdLog);
    if (child.stderr) forwardEtcdOutput(child.stderr, etcdLog);
    this.child = child;
    await this.writePidFile(child.pid as number);
    this.options.onRunningChange?.(true);
    this.log.info({ pid: child.pid, dataDir: this.options.dataDir }, 'etcd started');
    return child;
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

  private async writePidFile(pid: number): Promise<void> {
    await writeFileAtomic(this.pidFile, `${pid}\n`);
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
