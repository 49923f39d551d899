import type { Logger } from 'pino';
import type { Fence } from '../election/election.js';
import { NotFoundError, errorText } from '../errors/index.js';
import type { StewardMetrics } from '../observability/metrics.js';
import type { InventoryRecord, InventoryStore, OrphanRecord } from './inventory.js';
import { orphanName, type LocationScan } from './scan.js';

/** A place snapshots live: this node's dir, another node's dir (over the peer API), or S3. */
export interface SnapshotLocation {
  /** Decided by the keeper's side (`local:<node>`, `s3`), never taken from what a peer says. */
  locationId: string;
  scan(signal: AbortSignal): Promise<LocationScan>;
  remove(name: string, key: string, signal: AbortSignal): Promise<void>;
}

export interface KeeperOptions {
  inventory: InventoryStore;
  /** Every location known now; one that cannot be reached fails its scan or remove (and keeps its records). */
  locations: (signal: AbortSignal) => Promise<SnapshotLocation[]>;
  metrics: Pick<StewardMetrics, 'snapshots' | 'orphanedObjects'>;
  logger: Logger;
}

export interface RemovalFailure {
  record: InventoryRecord;
  error: string;
}

export interface DeleteOutcome {
  deleted: InventoryRecord[];
  /** Copies that could not be removed; their records stay in the inventory. */
  failed: RemovalFailure[];
}

export interface OrphanOutcome {
  removed: OrphanRecord[];
  failed: Array<{ orphan: OrphanRecord; error: string }>;
}

/**
 * Keeps the inventory true to what is stored: reconcile (add what is found, drop records of what is
 * gone, note orphans), retention (newest N per kind and location), delete, orphan removal. Every pass
 * runs alone: a second one (a scheduled retention, an operator's prune, the reconcile loop) waits for the
 * first, so two passes never decide on the same records at once. Destructive passes take the leader's
 * fence and re-check it before each removal.
 */
export class InventoryKeeper {
  private readonly log: Logger;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: KeeperOptions) {
    this.log = options.logger.child({ component: 'inventory' });
  }

  /** Runs `pass` after every pass queued before it; a pass whose signal fired while waiting does not start. */
  private exclusive<T>(signal: AbortSignal, pass: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => {
      signal.throwIfAborted();
      return pass();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  reconcile(signal: AbortSignal, fence?: Fence): Promise<{ added: number; removed: number; orphans: number }> {
    return this.exclusive(signal, async () => {
      const { inventory } = this.options;
      const records = await inventory.list();
      let added = 0;
      let removed = 0;
      let orphans = 0;
      for (const location of await this.options.locations(signal)) {
        let found: LocationScan;
        try {
          found = await location.scan(signal);
        } catch (err) {
          signal.throwIfAborted();
          this.log.warn({ location: location.locationId, err: errorText(err) }, 'cannot list this location; keeping its records until it answers');
          continue;
        }
        const known = new Map(records.filter((r) => r.locationId === location.locationId).map((r) => [r.name, r]));
        for (const scanned of found.records) {
          // The location's id is ours to decide: whatever the scan says, the record belongs where it was found.
          const record = { ...scanned, locationId: location.locationId };
          if (!known.has(record.name)) {
            await inventory.put(record, fence);
            added += 1;
            this.log.info({ snapshot: record.name, location: location.locationId }, 'reconcile: found a snapshot the inventory did not list; added it');
          }
          known.delete(record.name);
        }
        for (const gone of known.values()) {
          await inventory.remove(gone.name, gone.locationId, fence);
          removed += 1;
          this.log.warn({ snapshot: gone.name, location: location.locationId }, 'reconcile: a listed snapshot is no longer stored; removed its record');
        }
        const locationOrphans = found.orphans.map((o) => ({ ...o, locationId: location.locationId }));
        await inventory.setOrphans(location.locationId, locationOrphans, fence);
        orphans += locationOrphans.length;
        if (locationOrphans.length > 0) {
          this.log.warn(
            { location: location.locationId, orphans: locationOrphans.length, sample: locationOrphans.slice(0, 3).map((o) => o.key) },
            'reconcile: data objects without metadata (orphans); prune removes them',
          );
        }
      }
      await this.updateCounts();
      return { added, removed, orphans };
    });
  }

  async record(records: InventoryRecord[], fence?: Fence): Promise<void> {
    for (const record of records) await this.options.inventory.put(record, fence);
    await this.updateCounts();
  }

  /**
   * Removes the oldest snapshots beyond `keep` of each kind at each location; returns what it removed.
   * Automatic retention passes only 'scheduled'; an operator's prune also trims on-demand snapshots.
   */
  applyRetention(keep: number, signal: AbortSignal, fence?: Fence, kinds: ReadonlyArray<InventoryRecord['kind']> = ['scheduled']): Promise<DeleteOutcome> {
    return this.exclusive(signal, async () => {
      const records = await this.options.inventory.list();
      const outcome: DeleteOutcome = { deleted: [], failed: [] };
      const locations = await this.options.locations(signal);
      const groups = locations.flatMap((location) => kinds.map((kind) => ({ location, kind })));
      // The newest snapshot a restore drill proved restorable stays, however old: it may be the only one known to restore.
      const verified = newestVerified(records);
      for (const { location, kind } of groups) {
        const newestFirst = records
          .filter((r) => r.locationId === location.locationId && r.kind === kind)
          .sort((a, b) => b.created.localeCompare(a.created) || b.name.localeCompare(a.name));
        for (const record of newestFirst.slice(keep)) {
          signal.throwIfAborted();
          if (record.name === verified) {
            this.log.info(
              { snapshot: record.name, location: record.locationId, kind, keep },
              'retention: keeping the newest snapshot that passed a restore drill',
            );
            continue;
          }
          try {
            // Fenced record removal first: a stale leader is refused before it touches any stored file.
            await this.options.inventory.remove(record.name, record.locationId, fence);
            await location.remove(record.name, record.key, signal);
            outcome.deleted.push(record);
            this.log.info({ snapshot: record.name, location: record.locationId, kind, keep }, `retention: removed an old ${kind} snapshot`);
          } catch (err) {
            outcome.failed.push({ record, error: errorText(err) });
            this.log.error({ snapshot: record.name, location: record.locationId, err: errorText(err) }, 'retention: could not remove a snapshot');
          }
        }
      }
      await this.updateCounts();
      return outcome;
    });
  }

  /**
   * Removes orphaned data objects last modified more than `graceMs` ago: an object younger than that may
   * belong to a snapshot whose metadata is being written right now, and is left alone.
   */
  pruneOrphans(graceMs: number, signal: AbortSignal, fence?: Fence, now = Date.now()): Promise<OrphanOutcome> {
    return this.exclusive(signal, async () => {
      const outcome: OrphanOutcome = { removed: [], failed: [] };
      for (const location of await this.options.locations(signal)) {
        let found: LocationScan;
        try {
          found = await location.scan(signal);
        } catch (err) {
          signal.throwIfAborted();
          this.log.warn({ location: location.locationId, err: errorText(err) }, 'prune: cannot list this location; its orphans stay');
          continue;
        }
        const left: OrphanRecord[] = [];
        for (const scanned of found.orphans) {
          const orphan = { ...scanned, locationId: location.locationId };
          const name = orphanName(orphan.key);
          if (name === undefined || now - Date.parse(orphan.modified) < graceMs) {
            left.push(orphan);
            continue;
          }
          try {
            await this.options.inventory.checkFence(fence);
            await location.remove(name, orphan.key, signal);
            outcome.removed.push(orphan);
            this.log.info({ location: location.locationId, key: orphan.key, modified: orphan.modified }, 'prune: removed an orphaned data object');
          } catch (err) {
            signal.throwIfAborted();
            left.push(orphan);
            outcome.failed.push({ orphan, error: errorText(err) });
            this.log.error({ location: location.locationId, key: orphan.key, err: errorText(err) }, 'prune: could not remove an orphaned data object');
          }
        }
        await this.options.inventory.setOrphans(location.locationId, left, fence);
      }
      await this.updateCounts();
      return outcome;
    });
  }

  /**
   * Deletes every copy of each named snapshot; if any name is unknown, deletes nothing. A copy that cannot
   * be removed (its location unreachable, a peer that is not who it should be) is reported in `failed` and
   * keeps its record: the inventory never forgets a snapshot that is still stored.
   */
  delete(names: string[], signal: AbortSignal, fence?: Fence): Promise<DeleteOutcome> {
    return this.exclusive(signal, async () => {
      const records = await this.options.inventory.list();
      const unknown = names.filter((name) => !records.some((r) => r.name === name));
      if (unknown.length > 0) {
        const shown = unknown.slice(0, 5).join(', ') + (unknown.length > 5 ? ` and ${unknown.length - 5} more` : '');
        throw new NotFoundError(`no snapshot named ${shown}`, { hint: 'etcd-stewardctl ls shows every snapshot; nothing was deleted' });
      }
      const locations = new Map((await this.options.locations(signal)).map((l) => [l.locationId, l]));
      const outcome: DeleteOutcome = { deleted: [], failed: [] };
      const wanted = new Set(names);
      for (const record of records.filter((r) => wanted.has(r.name))) {
        signal.throwIfAborted();
        const location = locations.get(record.locationId);
        try {
          if (!location) throw new Error(`location ${record.locationId} is not known to this steward now (its node is not registered)`);
          // A stale leader is refused before it touches a file, and again when it drops the record.
          await this.options.inventory.checkFence(fence);
          await location.remove(record.name, record.key, signal);
          await this.options.inventory.remove(record.name, record.locationId, fence);
          outcome.deleted.push(record);
          this.log.info({ snapshot: record.name, location: record.locationId }, 'deleted snapshot');
        } catch (err) {
          signal.throwIfAborted();
          outcome.failed.push({ record, error: errorText(err) });
          this.log.error(
            { snapshot: record.name, location: record.locationId, err: errorText(err) },
            'cannot delete this copy of the snapshot; its record stays',
          );
        }
      }
      await this.updateCounts();
      return outcome;
    });
  }

  private async updateCounts(): Promise<void> {
    const counts = new Map<string, number>();
    for (const record of await this.options.inventory.list()) counts.set(record.locationId, (counts.get(record.locationId) ?? 0) + 1);
    this.options.metrics.snapshots.reset();
    for (const [location, count] of counts) this.options.metrics.snapshots.set({ location }, count);
    const orphans = new Map<string, number>();
    for (const orphan of await this.options.inventory.orphans()) orphans.set(orphan.locationId, (orphans.get(orphan.locationId) ?? 0) + 1);
    this.options.metrics.orphanedObjects.reset();
    for (const [location, count] of orphans) this.options.metrics.orphanedObjects.set({ location }, count);
  }
}

/** Name of the newest snapshot (by creation) whose last restore drill passed; undefined when none did. */
export function newestVerified(records: InventoryRecord[]): string | undefined {
  let best: InventoryRecord | undefined;
  for (const record of records) {
    if (record.verification?.result !== 'passed') continue;
    if (!best || record.created > best.created || (record.created === best.created && record.name > best.name)) best = record;
  }
  return best?.name;
}
