import { z } from 'zod';
import { NotFoundError, PreconditionError, StewardError } from '../errors/index.js';
import type { BackupStore } from '../store/store.js';

export const RESTORE_LOCK_KEY = 'restore-lock.json';
/** A coordinator rewrites its lock this often; one silent for STALE_AFTER_MS has no coordinator behind it. */
export const LOCK_HEARTBEAT_MS = 10_000;
export const LOCK_STALE_AFTER_MS = 45_000;

const lockSchema = z.object({
  restoreId: z.string().min(1).max(64),
  snapshot: z.string().min(1).max(255),
  sha256: z.string().max(64),
  coordinator: z.string().min(1).max(255),
  members: z.array(z.string().max(255)).max(100),
  clusterToken: z.string().min(1).max(255),
  bumpRevision: z.number().int().nonnegative(),
  takenAt: z.string(),
  heartbeatAt: z.string(),
});

/** What the restore lock records: enough for another coordinator to resume the same restore. */
export type RestoreLockRecord = z.infer<typeof lockSchema>;

/**
 * The one restore at a time, in the control store next to the cluster spec: taken with a create-only write
 * (S3 `If-None-Match: *`, a local `link(2)`), the same mechanism `init` uses, so two coordinators racing
 * cannot both win where the store enforces it. Released at Finished, Failed or abort.
 */
export class RestoreLock {
  constructor(private readonly store: BackupStore) {}

  get location(): string {
    return this.store.urlFor(RESTORE_LOCK_KEY);
  }

  async read(signal: AbortSignal): Promise<RestoreLockRecord | undefined> {
    let text: string;
    try {
      text = (await this.store.readSmall(RESTORE_LOCK_KEY, signal)).toString('utf8');
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
    const parsed = lockSchema.safeParse(safeJson(text));
    if (!parsed.success) {
      throw new PreconditionError('RESTORE_LOCK_UNREADABLE', `the restore lock at ${this.location} is not a valid lock record`, {
        hint: `inspect it; if no restore runs, remove ${this.location} and run the restore again`,
      });
    }
    return parsed.data;
  }

  /** Takes the lock, or throws RESTORE_LOCKED naming who holds it. */
  async take(record: RestoreLockRecord, signal: AbortSignal): Promise<void> {
    try {
      await this.store.putSmall(RESTORE_LOCK_KEY, render(record), signal, { createOnly: true });
    } catch (err) {
      if (err instanceof StewardError && err.code === 'OBJECT_EXISTS') {
        const holder = await this.read(signal).catch(() => undefined);
        throw lockedError(holder, this.location);
      }
      throw err;
    }
  }

  /** The holder's heartbeat: a lock nobody refreshes may be taken over by a resume. */
  async refresh(record: RestoreLockRecord, signal: AbortSignal): Promise<RestoreLockRecord> {
    const current = await this.read(signal);
    if (current?.restoreId !== record.restoreId) {
      throw new PreconditionError('RESTORE_LOCK_LOST', `the restore lock at ${this.location} no longer names restore ${record.restoreId}`, {
        hint: 'another coordinator took over or the lock was removed: etcd-stewardctl restore status',
      });
    }
    const next = { ...record, heartbeatAt: new Date().toISOString() };
    await this.store.putSmall(RESTORE_LOCK_KEY, render(next), signal);
    return next;
  }

  /** Removes the lock if it still names `restoreId`. */
  async release(restoreId: string, signal: AbortSignal): Promise<void> {
    const current = await this.read(signal).catch(() => undefined);
    if (current && current.restoreId !== restoreId) return;
    await this.store.delete(RESTORE_LOCK_KEY, signal);
  }
}

export function lockIsStale(record: RestoreLockRecord, now = Date.now()): boolean {
  return now - Date.parse(record.heartbeatAt) > LOCK_STALE_AFTER_MS;
}

export function lockedError(holder: RestoreLockRecord | undefined, location: string): PreconditionError {
  const who = holder
    ? `restore ${holder.restoreId} of ${holder.snapshot}, coordinated by ${holder.coordinator} since ${holder.takenAt} (last heartbeat ${holder.heartbeatAt})`
    : 'another restore';
  return new PreconditionError('RESTORE_LOCKED', `${who} holds the restore lock at ${location}`, {
    hint: holder
      ? `wait for it (etcd-stewardctl restore status), resume it with 'etcd-stewardctl restore ${holder.snapshot} --yes' once its coordinator is gone, or end it with 'etcd-stewardctl restore abort'`
      : 'etcd-stewardctl restore status shows who holds it',
  });
}

function render(record: RestoreLockRecord): string {
  return `${JSON.stringify(lockSchema.parse(record), null, 2)}\n`;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
