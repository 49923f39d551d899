import type { Etcd3 } from '../etcd/client.js';
import { z } from 'zod';
import type { Fence } from '../election/election.js';
import { PreconditionError } from '../errors/index.js';

/**
 * The last restore drill of a snapshot (src/restore/drill.ts), kept with its record. Field names as the
 * proto's SnapshotVerification, so a record goes on the wire as it is.
 */
export const verificationSchema = z.object({
  result: z.enum(['passed', 'failed']),
  at: z.string(),
  hashKv: z.number(),
  reason: z.string(),
  node: z.string(),
  source: z.string(),
});

export type Verification = z.infer<typeof verificationSchema>;

/** One snapshot at one location, as `etcd-stewardctl ls` shows it. */
export const inventoryRecordSchema = z.object({
  name: z.string(),
  node: z.string(),
  locationId: z.string(),
  location: z.string(),
  key: z.string(),
  size: z.number(),
  sha256: z.string(),
  created: z.string(),
  kind: z.enum(['scheduled', 'on-demand']),
  compressed: z.boolean(),
  // Null on the wire when unset (proto3 message field): both mean no drill ran.
  verification: verificationSchema.nullish(),
});

export type InventoryRecord = z.infer<typeof inventoryRecordSchema>;

/** A record as the wire carries it: an unset verification is null there. */
export function wireRecord<T extends Omit<InventoryRecord, 'verification'> & { verification?: Verification | null | undefined }>(
  record: T,
): T & { verification: Verification | null } {
  return { ...record, verification: record.verification ?? null };
}

/** A data object with no metadata beside it (see scan.ts): reported, and removed by prune after a grace. */
export const orphanRecordSchema = z.object({
  locationId: z.string(),
  location: z.string(),
  key: z.string(),
  size: z.number(),
  modified: z.string(),
});

export type OrphanRecord = z.infer<typeof orphanRecordSchema>;

/** What the keeper needs of the inventory; `Inventory` keeps it in etcd. */
export interface InventoryStore {
  list(): Promise<InventoryRecord[]>;
  put(record: InventoryRecord, fence?: Fence): Promise<void>;
  remove(name: string, locationId: string, fence?: Fence): Promise<void>;
  /** Throws STALE_LEADER unless `fence` still holds; a no-op without a fence. */
  checkFence(fence?: Fence): Promise<void>;
  orphans(): Promise<OrphanRecord[]>;
  /** Replaces the orphans recorded for one location (writes only when they changed). */
  setOrphans(locationId: string, orphans: OrphanRecord[], fence?: Fence): Promise<void>;
}

const PREFIX = 'etcd-steward/inventory/';
const ORPHANS_PREFIX = 'etcd-steward/orphans/';
/** Orphans kept per location: the count is what an alert needs, the list only a sample to act on. */
const MAX_ORPHANS_KEPT = 1000;

/**
 * The cluster-wide list of snapshots, kept in etcd itself: one key per (snapshot, location), so any
 * steward can answer `ls`. Leader writes are fenced: the transaction only applies while the leader's
 * campaign key still has the create revision that is its fencing token.
 */
export class Inventory implements InventoryStore {
  constructor(private readonly client: Etcd3) {}

  async checkFence(fence?: Fence): Promise<void> {
    if (!fence) return;
    const result = await this.client.if(fence.campaignKey, 'Create', '==', fence.fencingToken).then(this.client.get(fence.campaignKey)).commit();
    if (!result.succeeded) throw staleLeader(fence);
  }

  async orphans(): Promise<OrphanRecord[]> {
    const values = await this.client.getAll().prefix(ORPHANS_PREFIX).strings();
    return Object.values(values).flatMap((text) => {
      const parsed = z.array(orphanRecordSchema).safeParse(parseJson(text));
      return parsed.success ? parsed.data : [];
    });
  }

  async setOrphans(locationId: string, orphans: OrphanRecord[], fence?: Fence): Promise<void> {
    const key = `${ORPHANS_PREFIX}${locationId}`;
    const value = orphans.length === 0 ? undefined : JSON.stringify(orphans.slice(0, MAX_ORPHANS_KEPT));
    // Unchanged: no write, so an idle reconcile adds no etcd revisions.
    if ((await this.client.get(key).string()) === (value ?? null)) return;
    const op = value === undefined ? this.client.delete().key(key) : this.client.put(key).value(value);
    if (!fence) {
      await op;
      return;
    }
    const result = await this.client.if(fence.campaignKey, 'Create', '==', fence.fencingToken).then(op).commit();
    if (!result.succeeded) throw staleLeader(fence);
  }

  async list(): Promise<InventoryRecord[]> {
    const values = await this.client.getAll().prefix(PREFIX).strings();
    const records: InventoryRecord[] = [];
    for (const text of Object.values(values)) {
      // One malformed record must not break ls, reconcile and retention for every other snapshot.
      const parsed = inventoryRecordSchema.safeParse(parseJson(text));
      if (parsed.success) records.push(parsed.data);
    }
    return records.sort((a, b) => a.created.localeCompare(b.created) || a.name.localeCompare(b.name) || a.locationId.localeCompare(b.locationId));
  }

  async byName(name: string): Promise<InventoryRecord[]> {
    return (await this.list()).filter((record) => record.name === name);
  }

  async put(record: InventoryRecord, fence?: Fence): Promise<void> {
    const key = recordKey(record.name, record.locationId);
    const value = JSON.stringify(record);
    if (!fence) {
      await this.client.put(key).value(value);
      return;
    }
    const result = await this.client.if(fence.campaignKey, 'Create', '==', fence.fencingToken).then(this.client.put(key).value(value)).commit();
    if (!result.succeeded) throw staleLeader(fence);
  }

  /**
   * Records a drill's result on every record of `name` that still exists: each write applies only while
   * its key is there, so a drill that ends after a delete never brings the deleted record back. Not fenced:
   * any steward may drill (like an on-demand save, it records what it did). Returns the records written.
   */
  async setVerification(name: string, verification: Verification): Promise<number> {
    let written = 0;
    for (const record of await this.byName(name)) {
      const key = recordKey(record.name, record.locationId);
      const result = await this.client
        .if(key, 'Create', '>', 0)
        .then(this.client.put(key).value(JSON.stringify({ ...record, verification })))
        .commit();
      if (result.succeeded) written += 1;
    }
    return written;
  }

  async remove(name: string, locationId: string, fence?: Fence): Promise<void> {
    const key = recordKey(name, locationId);
    if (!fence) {
      await this.client.delete().key(key);
      return;
    }
    const result = await this.client.if(fence.campaignKey, 'Create', '==', fence.fencingToken).then(this.client.delete().key(key)).commit();
    if (!result.succeeded) throw staleLeader(fence);
  }
}

function recordKey(name: string, locationId: string): string {
  return `${PREFIX}${name}/${locationId}`;
}

function staleLeader(fence: Fence): PreconditionError {
  return new PreconditionError('STALE_LEADER', `this steward is no longer the leader (fencing token ${fence.fencingToken}); write refused`, {
    hint: 'nothing to do: the new leader carries on',
  });
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
