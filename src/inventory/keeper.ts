import type { Logger } from 'pino';
import type { Fence } from '../election/election.js';
import { NotFoundError, errorText } from '../errors/index.js';
import type { StewardMetrics } from '../observability/metrics.js';
import type { Inventory, InventoryRecord } from './inventory.js';

/** A place snapshots live: this node's dir, another node's dir (over the peer API), or S3. */
export interface SnapshotLocation {
  locationId: string;
  scan(signal: AbortSignal): Promise<InventoryRecord[]>;
  remove(name: string, key: string, signal: AbortSignal): Promise<void>;
}

export interface KeeperOptions {
  inventory: Inventory;
  /** Every location reachable now; one that cannot be reached is left out (and its records kept). */
  locations: (signal: AbortSignal) => Promise<SnapshotLocation[]>;
  metrics: StewardMetrics;
  logger: Logger;
}

/**
 * Keeps the inventory true to what is stored: reconcile (add what is found, drop records of what is
 * gone), retention (newest N scheduled snapshots per location; on-demand ones only by delete), delete.
 */
export class InventoryKeeper {
  private readonly log: Logger;

  constructor(private readonly options: KeeperOptions) {
    this.log = options.logger.child({ component: 'inventory' });
  }

  async reconcile(signal: AbortSignal, fence?: Fence): Promise<{ added: number; removed: number }> {
    const { inventory } = this.options;
    const records = await inventory.list();
    let added = 0;
    let removed = 0;
    for (const location of await this.options.locations(signal)) {
      let found: InventoryRecord[];
      try {
        found = await location.scan(signal);
      } catch (err) {
        this.log.warn({ location: location.locationId, err: errorText(err) }, 'cannot list this location; keeping its records until it answers');
        continue;
      }
      const known = new Map(records.filter((r) => r.locationId === location.locationId).map((r) => [r.name, r]));
      for (const record of found) {
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
    }
    await this.updateCounts();
    return { added, removed };
  }

  async record(records: InventoryRecord[], fence?: Fence): Promise<void> {
    for (const record of records) await this.options.inventory.put(record, fence);
    await this.updateCounts();
  }

  /**
   * Removes the oldest snapshots beyond `keep` of each kind at each location; returns what it removed.
   * Automatic retention passes only 'scheduled'; an operator's prune also trims on-demand snapshots.
   */
  async applyRetention(keep: number, signal: AbortSignal, fence?: Fence, kinds: ReadonlyArray<InventoryRecord['kind']> = ['scheduled']): Promise<InventoryRecord[]> {
    const records = await this.options.inventory.list();
    const removed: InventoryRecord[] = [];
    const locations = await this.options.locations(signal);
    const groups = locations.flatMap((location) => kinds.map((kind) => ({ location, kind })));
    for (const { location, kind } of groups) {
      const newestFirst = records
        .filter((r) => r.locationId === location.locationId && r.kind === kind)
        .sort((a, b) => b.created.localeCompare(a.created) || b.name.localeCompare(a.name));
      for (const record of newestFirst.slice(keep)) {
        try {
          // Fenced record removal first: a stale leader is refused before it touches any stored file.
          await this.options.inventory.remove(record.name, record.locationId, fence);
          await location.remove(record.name, record.key, signal);
          removed.push(record);
          this.log.info({ snapshot: record.name, location: record.locationId, kind, keep }, `retention: removed an old ${kind} snapshot`);
        } catch (err) {
          this.log.error({ snapshot: record.name, location: record.locationId, err: errorText(err) }, 'retention: could not remove a snapshot');
        }
      }
    }
    await this.updateCounts();
    return removed;
  }

  /** Deletes every copy of each named snapshot; if any name is unknown, deletes nothing. */
  async delete(names: string[], signal: AbortSignal): Promise<InventoryRecord[]> {
    const records = await this.options.inventory.list();
    const unknown = names.filter((name) => !records.some((r) => r.name === name));
    if (unknown.length > 0) {
      throw new NotFoundError(`no snapshot named ${unknown.join(', ')}`, { hint: 'etcd-stewardctl ls shows every snapshot; nothing was deleted' });
    }
    const locations = new Map((await this.options.locations(signal)).map((l) => [l.locationId, l]));
    const deleted: InventoryRecord[] = [];
    for (const record of records.filter((r) => names.includes(r.name))) {
      const location = locations.get(record.locationId);
      if (!location) {
        this.log.error({ snapshot: record.name, location: record.locationId }, 'cannot reach this location to delete the snapshot; its record stays');
        continue;
      }
      await location.remove(record.name, record.key, signal);
      await this.options.inventory.remove(record.name, record.locationId);
      deleted.push(record);
      this.log.info({ snapshot: record.name, location: record.locationId }, 'deleted snapshot');
    }
    await this.updateCounts();
    return deleted;
  }

  private async updateCounts(): Promise<void> {
    const counts = new Map<string, number>();
    for (const record of await this.options.inventory.list()) counts.set(record.locationId, (counts.get(record.locationId) ?? 0) + 1);
    this.options.metrics.snapshots.reset();
    for (const [location, count] of counts) this.options.metrics.snapshots.set({ location }, count);
  }
}
