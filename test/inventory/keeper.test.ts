import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { Fence } from '../../src/election/election.js';
import { PreconditionError } from '../../src/errors/index.js';
import type { InventoryRecord, InventoryStore, OrphanRecord } from '../../src/inventory/inventory.js';
import { InventoryKeeper, type SnapshotLocation } from '../../src/inventory/keeper.js';
import { StewardMetrics } from '../../src/observability/metrics.js';

/** The inventory in memory, with the same fence rule as etcd's: a fence holds while its token is current. */
class MemoryInventory implements InventoryStore {
  records = new Map<string, InventoryRecord>();
  orphanSets = new Map<string, OrphanRecord[]>();
  currentToken = 'term-1';

  async list(): Promise<InventoryRecord[]> {
    return [...this.records.values()];
  }
  async put(record: InventoryRecord, fence?: Fence): Promise<void> {
    await this.checkFence(fence);
    this.records.set(`${record.name}/${record.locationId}`, record);
  }
  async remove(name: string, locationId: string, fence?: Fence): Promise<void> {
    await this.checkFence(fence);
    this.records.delete(`${name}/${locationId}`);
  }
  async checkFence(fence?: Fence): Promise<void> {
    if (fence && fence.fencingToken !== this.currentToken) throw new PreconditionError('STALE_LEADER', 'stale');
  }
  async orphans(): Promise<OrphanRecord[]> {
    return [...this.orphanSets.values()].flat();
  }
  async setOrphans(locationId: string, orphans: OrphanRecord[], fence?: Fence): Promise<void> {
    await this.checkFence(fence);
    this.orphanSets.set(locationId, orphans);
  }
}

function record(name: string, locationId: string, created: string, kind: InventoryRecord['kind'] = 'scheduled'): InventoryRecord {
  return { name, node: 'node-1', locationId, location: `file:///x/${name}`, key: name, size: 1, sha256: 'a', created, kind, compressed: false };
}

/** A location whose files are a set; `slow` makes every removal take time so passes could overlap. */
class FakeLocation implements SnapshotLocation {
  files = new Set<string>();
  orphanObjects: OrphanRecord[] = [];
  failRemoval = new Set<string>();
  active = 0;
  maxActive = 0;
  constructor(
    readonly locationId: string,
    private readonly slowMs = 0,
  ) {}
  async scan(): Promise<{ records: InventoryRecord[]; orphans: OrphanRecord[] }> {
    // A peer that answers with its own idea of the location id: the keeper must not trust it.
    return { records: [...this.files].map((name) => record(name, 'local:someone-else', '2024-01-01T00:00:00Z')), orphans: this.orphanObjects };
  }
  async remove(name: string, key: string): Promise<void> {
    this.active += 1;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      await sleep(this.slowMs);
      if (this.failRemoval.has(name)) throw new Error(`cannot reach steward node-3: its address answered as node-2`);
      this.files.delete(name);
      this.files.delete(key);
      this.orphanObjects = this.orphanObjects.filter((o) => o.key !== key);
    } finally {
      this.active -= 1;
    }
  }
}

const fence: Fence = { fencingToken: 'term-1', campaignKey: 'k' };

function keeper(inventory: InventoryStore, locations: SnapshotLocation[]): InventoryKeeper {
  return new InventoryKeeper({ inventory, locations: async () => locations, metrics: new StewardMetrics(), logger: pino({ level: 'silent' }) });
}

describe('InventoryKeeper', () => {
  it('runs one pass at a time: a scheduled retention, a prune and a delete never overlap', async () => {
    const inventory = new MemoryInventory();
    const location = new FakeLocation('local:node-1', 20);
    for (let i = 0; i < 8; i++) {
      const name = `etcd-snapshot-node-1-${1_700_000_000 + i}`;
      location.files.add(name);
      await inventory.put(record(name, 'local:node-1', `2024-01-0${i + 1}T00:00:00Z`));
    }
    const k = keeper(inventory, [location]);
    const signal = AbortSignal.timeout(10_000);
    await Promise.all([
      k.applyRetention(6, signal, fence),
      k.applyRetention(4, signal, fence),
      k.delete(['etcd-snapshot-node-1-1700000007'], signal, fence),
      k.applyRetention(2, signal, fence, ['scheduled', 'on-demand']),
    ]);
    expect(location.maxActive).toBe(1);
    expect((await inventory.list()).map((r) => r.name).sort()).toEqual(['etcd-snapshot-node-1-1700000005', 'etcd-snapshot-node-1-1700000006']);
  });

  it('retention keeps the newest snapshot that passed a restore drill, however old, but not an older one or a failed one', async () => {
    const inventory = new MemoryInventory();
    const location = new FakeLocation('local:node-1');
    const drill = (result: 'passed' | 'failed') => ({ result, at: '2024-02-01T00:00:00Z', hashKv: 1, reason: '', node: 'node-1', source: 'file:///x' });
    const names = [0, 1, 2, 3, 4, 5].map((i) => `etcd-snapshot-node-1-${1_700_000_000 + i}`);
    for (const [i, name] of names.entries()) {
      location.files.add(name);
      const verification = i === 0 || i === 1 ? drill('passed') : i === 2 ? drill('failed') : undefined;
      await inventory.put({ ...record(name, 'local:node-1', `2024-01-0${i + 1}T00:00:00Z`), ...(verification ? { verification } : {}) });
    }
    const outcome = await keeper(inventory, [location]).applyRetention(2, AbortSignal.timeout(5000), fence);
    // Kept: the 2 newest, and #1 (the newest that passed); #0 passed too but is older, #2 failed.
    expect(outcome.deleted.map((r) => r.name).sort()).toEqual([names[0], names[2], names[3]]);
    expect([...location.files].sort()).toEqual([names[1], names[4], names[5]]);
  });

  it('a partial delete reports what was removed and what was not, and keeps the records of what is still there', async () => {
    const inventory = new MemoryInventory();
    const own = new FakeLocation('local:node-1');
    const peer = new FakeLocation('local:node-3');
    const name = 'on-demand-node-3-1700000000';
    for (const location of [own, peer]) {
      location.files.add(name);
      await inventory.put(record(name, location.locationId, '2024-01-01T00:00:00Z', 'on-demand'));
    }
    peer.failRemoval.add(name);
    const outcome = await keeper(inventory, [own, peer]).delete([name], AbortSignal.timeout(5000), fence);
    expect(outcome.deleted.map((r) => r.locationId)).toEqual(['local:node-1']);
    expect(outcome.failed.map((f) => f.record.locationId)).toEqual(['local:node-3']);
    expect(outcome.failed[0]?.error).toContain('node-3');
    expect((await inventory.list()).map((r) => r.locationId)).toEqual(['local:node-3']);
    expect(peer.files.has(name)).toBe(true);
  });

  it('a stale leader deletes nothing: the fence is checked before any file is touched', async () => {
    const inventory = new MemoryInventory();
    const location = new FakeLocation('local:node-1');
    const name = 'on-demand-node-1-1700000000';
    location.files.add(name);
    await inventory.put(record(name, 'local:node-1', '2024-01-01T00:00:00Z', 'on-demand'));
    inventory.currentToken = 'term-2';
    const outcome = await keeper(inventory, [location]).delete([name], AbortSignal.timeout(5000), fence);
    expect(outcome.deleted).toEqual([]);
    expect(outcome.failed[0]?.error).toBe('stale');
    expect(location.files.has(name)).toBe(true);
  });

  it('reconcile stamps the location id itself, whatever a peer claims', async () => {
    const inventory = new MemoryInventory();
    const location = new FakeLocation('local:node-2');
    location.files.add('on-demand-node-2-1700000000');
    await keeper(inventory, [location]).reconcile(AbortSignal.timeout(5000), fence);
    expect((await inventory.list()).map((r) => r.locationId)).toEqual(['local:node-2']);
  });

  it('records orphans at reconcile and prunes only those older than the grace', async () => {
    const inventory = new MemoryInventory();
    const location = new FakeLocation('s3');
    const now = Date.parse('2024-06-01T12:00:00Z');
    const old = {
      locationId: 's3',
      location: 's3://b/on-demand-node-1-1700000000',
      key: 'on-demand-node-1-1700000000',
      size: 5,
      modified: '2024-06-01T09:00:00.000Z',
    };
    const young = { ...old, location: 's3://b/on-demand-node-1-1700000001.gz', key: 'on-demand-node-1-1700000001.gz', modified: '2024-06-01T11:59:00.000Z' };
    location.orphanObjects = [old, young];
    const k = keeper(inventory, [location]);
    const reconciled = await k.reconcile(AbortSignal.timeout(5000), fence);
    expect(reconciled.orphans).toBe(2);
    expect(await inventory.orphans()).toHaveLength(2);
    const pruned = await k.pruneOrphans(60 * 60_000, AbortSignal.timeout(5000), fence, now);
    expect(pruned.removed.map((o) => o.key)).toEqual([old.key]);
    expect(location.orphanObjects.map((o) => o.key)).toEqual([young.key]);
    expect((await inventory.orphans()).map((o) => o.key)).toEqual([young.key]);
  });
});
