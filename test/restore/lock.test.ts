import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PreconditionError, type StewardError } from '../../src/errors/index.js';
import { LOCK_STALE_AFTER_MS, RESTORE_LOCK_KEY, RestoreLock, lockIsStale, type RestoreLockRecord } from '../../src/restore/lock.js';
import { LocalStore } from '../../src/store/local.js';

const signal = (): AbortSignal => AbortSignal.timeout(10_000);

function lockRecord(restoreId: string, overrides: Partial<RestoreLockRecord> = {}): RestoreLockRecord {
  const now = new Date().toISOString();
  return {
    restoreId,
    snapshot: 'etcd-snapshot-node-1-1700000000',
    sha256: 'cd'.repeat(32),
    coordinator: 'node-1',
    members: ['node-1', 'node-2', 'node-3'],
    clusterToken: `token-${restoreId}`,
    bumpRevision: 6000,
    takenAt: now,
    heartbeatAt: now,
    ...overrides,
  };
}

async function rejection(promise: Promise<unknown>): Promise<StewardError> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (err: unknown) => err as StewardError,
  );
}

describe('RestoreLock over a real LocalStore dir', () => {
  let dir: string;
  let lock: RestoreLock;
  const lockFile = (): string => join(dir, RESTORE_LOCK_KEY);

  beforeEach(async () => {
    dir = join(await mkdtemp(join(tmpdir(), 'restore-lock-')), 'control');
    lock = new RestoreLock(new LocalStore(dir));
  });
  afterEach(async () => {
    await rm(join(dir, '..'), { recursive: true, force: true });
  });

  it('take writes the record where the location says; read gives it back', async () => {
    expect(await lock.read(signal())).toBeUndefined();
    const record = lockRecord('r-1');
    await lock.take(record, signal());
    expect(lock.location).toBe(pathToFileURL(lockFile()).href);
    expect(JSON.parse(await readFile(lockFile(), 'utf8'))).toEqual(record);
    expect(await lock.read(signal())).toEqual(record);
    // Only the committed lock: no temp file left beside it.
    expect(await readdir(dir)).toEqual([RESTORE_LOCK_KEY]);
  });

  it('a second take is refused with RESTORE_LOCKED naming the holder, and the holder keeps the lock', async () => {
    const held = lockRecord('r-1', { takenAt: '2026-01-01T10:00:00.000Z', heartbeatAt: '2026-01-01T10:05:00.000Z' });
    await lock.take(held, signal());
    const err = await rejection(lock.take(lockRecord('r-2', { coordinator: 'node-2' }), signal()));
    expect(err).toBeInstanceOf(PreconditionError);
    expect(err.code).toBe('RESTORE_LOCKED');
    expect(err.message).toBe(
      `restore r-1 of etcd-snapshot-node-1-1700000000, coordinated by node-1 since 2026-01-01T10:00:00.000Z (last heartbeat 2026-01-01T10:05:00.000Z) holds the restore lock at ${lock.location}`,
    );
    expect(err.hint).toContain("resume it with 'etcd-stewardctl restore etcd-snapshot-node-1-1700000000 --yes'");
    expect(await lock.read(signal())).toEqual(held);
    // The same restore taking it again is refused too: take is create-only, never an overwrite.
    expect((await rejection(lock.take(held, signal()))).code).toBe('RESTORE_LOCKED');
  });

  it('of coordinators racing for the lock exactly one wins', async () => {
    const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => lock.take(lockRecord(`r-${i}`, { coordinator: `node-${i}` }), signal())));
    const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    expect(won).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect((r.reason as StewardError).code).toBe('RESTORE_LOCKED');
    expect((await lock.read(signal()))?.restoreId).toBe(`r-${won[0]}`);
  });

  it('refresh moves the heartbeat forward and persists it; for another restore it is RESTORE_LOCK_LOST', async () => {
    const taken = lockRecord('r-1', { heartbeatAt: new Date(Date.now() - 30_000).toISOString() });
    await lock.take(taken, signal());
    const refreshed = await lock.refresh(taken, signal());
    expect(Date.parse(refreshed.heartbeatAt)).toBeGreaterThan(Date.parse(taken.heartbeatAt));
    expect(Date.now() - Date.parse(refreshed.heartbeatAt)).toBeLessThan(5_000);
    expect(refreshed).toEqual({ ...taken, heartbeatAt: refreshed.heartbeatAt });
    expect(await lock.read(signal())).toEqual(refreshed);

    const lost = await rejection(lock.refresh(lockRecord('r-2'), signal()));
    expect(lost.code).toBe('RESTORE_LOCK_LOST');
    expect(lost.message).toContain('no longer names restore r-2');
    expect(await lock.read(signal())).toEqual(refreshed);

    // A coordinator whose lock was removed under it learns so on its next heartbeat.
    await lock.release('r-1', signal());
    expect((await rejection(lock.refresh(refreshed, signal()))).code).toBe('RESTORE_LOCK_LOST');
    expect(await lock.read(signal())).toBeUndefined();
  });

  it('release removes the lock only for the restore ID it names; releasing nothing is fine', async () => {
    const record = lockRecord('r-1');
    await lock.take(record, signal());
    await lock.release('r-2', signal());
    expect(await lock.read(signal())).toEqual(record);
    await lock.release('r-1', signal());
    expect(await lock.read(signal())).toBeUndefined();
    expect(await readdir(dir)).toEqual([]);
    await lock.release('r-1', signal());
    // Free again: the next restore takes it.
    await lock.take(lockRecord('r-3'), signal());
    expect((await lock.read(signal()))?.restoreId).toBe('r-3');
  });

  it('a damaged lock file reads as RESTORE_LOCK_UNREADABLE, never as "no lock", and still blocks a take', async () => {
    await lock.take(lockRecord('r-1'), signal());
    await writeFile(lockFile(), '{"restoreId": "r-1", "snap');
    expect((await rejection(lock.read(signal()))).code).toBe('RESTORE_LOCK_UNREADABLE');
    const err = await rejection(lock.take(lockRecord('r-2'), signal()));
    expect(err.code).toBe('RESTORE_LOCKED');
    expect(err.message).toBe(`another restore holds the restore lock at ${lock.location}`);
  });

  it('lockIsStale: a heartbeat older than LOCK_STALE_AFTER_MS has no coordinator behind it', () => {
    const now = Date.parse('2026-01-01T12:00:00.000Z');
    const at = (msAgo: number): RestoreLockRecord => lockRecord('r-1', { heartbeatAt: new Date(now - msAgo).toISOString() });
    expect(LOCK_STALE_AFTER_MS).toBe(45_000);
    expect(lockIsStale(at(0), now)).toBe(false);
    expect(lockIsStale(at(10_000), now)).toBe(false);
    expect(lockIsStale(at(LOCK_STALE_AFTER_MS), now)).toBe(false);
    expect(lockIsStale(at(LOCK_STALE_AFTER_MS + 1), now)).toBe(true);
    expect(lockIsStale(at(3_600_000), now)).toBe(true);
  });
});
