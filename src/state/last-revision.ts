import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ensureStateDir, writeFileAtomic } from './atomic.js';

/**
 * The highest revision this steward saw its own member at, kept in `<state-dir>/last-revision.json` so that a
 * restore can compute a revision bump with etcd down (a restored keyspace whose revision went backwards
 * leaves Kubernetes watch caches holding state the cluster no longer has). The file can lag the member by
 * up to `minIntervalMs` of growth, and by whatever a crash lost: a bump computed from it needs a margin.
 */
export function lastRevisionPath(stateDir: string): string {
  return join(stateDir, 'last-revision.json');
}

/** 0 when nothing was recorded, and also when the file is unreadable or damaged: the caller's margin covers it. */
export async function readLastRevision(stateDir: string): Promise<number> {
  try {
    const parsed: unknown = JSON.parse(await readFile(lastRevisionPath(stateDir), 'utf8'));
    const revision = typeof parsed === 'object' && parsed !== null ? (parsed as { revision?: unknown }).revision : undefined;
    return typeof revision === 'number' && Number.isSafeInteger(revision) && revision > 0 ? revision : 0;
  } catch {
    return 0;
  }
}

export interface LastRevisionFileOptions {
  /** At most one write per interval; default 30 s. */
  minIntervalMs?: number;
  /** A background write failed (flush() throws instead); the next observe() retries it. */
  onError?: (err: unknown) => void;
}

/**
 * Remembers the highest revision observed and persists it atomically (0600), at most once per interval and
 * only when it grew. Idle costs nothing: a timer exists only while a grown value waits for its slot, and it
 * is unref'd (flush() on shutdown writes what is left).
 */
export class LastRevisionFile {
  private readonly path: string;
  private readonly minIntervalMs: number;
  private seen = 0;
  /** What the file holds (or more), once known; undefined until the first write read it. */
  private persisted: number | undefined;
  private lastAttemptAt = Number.NEGATIVE_INFINITY;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;

  constructor(
    private readonly stateDir: string,
    private readonly options: LastRevisionFileOptions = {},
  ) {
    this.path = lastRevisionPath(stateDir);
    this.minIntervalMs = options.minIntervalMs ?? 30_000;
  }

  /** Cheap enough for every health probe: a comparison, and at most one pending timer. */
  observe(revision: number): void {
    if (!Number.isSafeInteger(revision) || revision <= 0) return;
    if (revision > this.seen) this.seen = revision;
    if (this.seen > (this.persisted ?? 0)) this.schedule();
  }

  /** Writes what was observed and not yet written, now; waits for a write in flight. Throws if the write fails. */
  async flush(): Promise<void> {
    await this.writing?.catch(() => undefined);
    // After the wait: the write that just ended may have scheduled the next one.
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.seen > (this.persisted ?? 0)) await this.startWrite();
  }

  private schedule(): void {
    if (this.timer || this.writing) return;
    const delay = Math.max(0, this.lastAttemptAt + this.minIntervalMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.startWrite().catch((err: unknown) => this.options.onError?.(err));
    }, delay);
    this.timer.unref();
  }

  private startWrite(): Promise<void> {
    const write = this.write().then(
      () => {
        this.writing = undefined;
        // What grew while this write ran gets the next slot.
        if (this.seen > (this.persisted ?? 0)) this.schedule();
      },
      (err: unknown) => {
        // No retry timer of its own: a volume that stays read-only would fail every interval with nothing new
        // to say. The next observe() retries, still at most once per interval.
        this.writing = undefined;
        throw err;
      },
    );
    this.writing = write;
    return write;
  }

  private async write(): Promise<void> {
    this.lastAttemptAt = Date.now();
    // The file may hold more than this run saw (the member was restored from an older snapshot since): keep the max.
    if (this.persisted === undefined) {
      await ensureStateDir(this.stateDir);
      this.persisted = await readLastRevision(this.stateDir);
    }
    const revision = this.seen;
    if (revision <= this.persisted) return;
    await writeFileAtomic(this.path, `${JSON.stringify({ revision, recordedAt: new Date().toISOString() })}\n`);
    this.persisted = Math.max(this.persisted, revision);
  }
}
