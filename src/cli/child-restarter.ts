import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExponentialBackoff, type IBackoff } from 'cockatiel';

/** A child that stayed up this long resets the backoff: its next death is a new incident, not a crash loop. */
const STABLE_AFTER_MS = 60_000;

export interface RestartedChild {
  name: string;
  /** Restarts so far (not counting the first start). */
  readonly restarts: number;
  readonly current: ChildProcess | undefined;
}

export interface ChildRestarterOptions {
  name: string;
  start: () => ChildProcess;
  /** Where the child's own output goes, named in every restart message. */
  logFile: string;
  /** How long SIGTERM may take before SIGKILL at shutdown. */
  stopGraceMs: number;
  maxBackoffMs?: number;
  report: (line: string) => void;
}

/**
 * What a kubelet does for a static pod, for `make run`'s children: a child that dies is started again
 * with jittered exponential backoff (logged and counted); only the caller's signal stops it for good, with
 * SIGTERM and then SIGKILL after the grace period. `run(signal)` settles once the child is gone.
 */
export class ChildRestarter implements RestartedChild {
  private child: ChildProcess | undefined;
  private restartCount = 0;

  constructor(private readonly options: ChildRestarterOptions) {}

  get name(): string {
    return this.options.name;
  }

  get restarts(): number {
    return this.restartCount;
  }

  get current(): ChildProcess | undefined {
    return this.child;
  }

  async run(signal: AbortSignal): Promise<void> {
    const backoffFactory = new ExponentialBackoff({ initialDelay: 1000, maxDelay: this.options.maxBackoffMs ?? 30_000 });
    let backoff: IBackoff<unknown> | undefined;
    while (!signal.aborted) {
      const startedAt = Date.now();
      const child = this.options.start();
      this.child = child;
      // Attached before anything is awaited: a child that dies at once is still seen.
      const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
      const stop = (): void => void this.stop(child, exited);
      signal.addEventListener('abort', stop, { once: true });
      const [code, exitSignal] = await exited;
      signal.removeEventListener('abort', stop);
      if (signal.aborted) break;
      if (Date.now() - startedAt > STABLE_AFTER_MS) backoff = undefined;
      backoff = backoff === undefined ? backoffFactory.next() : backoff.next(undefined);
      this.restartCount += 1;
      const how = exitSignal ? `was killed by ${exitSignal}` : `exited with code ${code}`;
      this.options.report(
        `restart: ${this.options.name} ${how} after ${((Date.now() - startedAt) / 1000).toFixed(1)}s; starting it again in ${(backoff.duration / 1000).toFixed(1)}s (restart ${this.restartCount}; see ${this.options.logFile})`,
      );
      await sleep(backoff.duration, undefined, { signal }).catch(() => undefined);
    }
    this.child = undefined;
  }

  private async stop(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), this.options.stopGraceMs);
    await exited;
    clearTimeout(timer);
  }
}
