import type { Etcd3 } from '../etcd/client.js';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import type { LeaderTerm } from '../election/election.js';
import { errorText } from '../errors/index.js';
import type { ClusterHealth } from '../etcd/health.js';
import { Inventory, type InventoryRecord } from '../inventory/inventory.js';
import { InventoryKeeper } from '../inventory/keeper.js';
import type { StewardMetrics } from '../observability/metrics.js';
import type { PeerPool } from '../rpc/peer-pool.js';
import { Snapshotter, type SnapshotRequest, type SnapshotResult } from '../snapshot/snapshotter.js';
import type { NamedStore } from '../store/store.js';
import { runS3Canary } from '../store/canary.js';
import { LocalStore } from '../store/local.js';
import type { S3Store } from '../store/s3.js';
import type { SnapshotStores } from '../restore/find.js';
import { snapshotLocations } from './locations.js';

export interface SnapshotServiceOptions {
  config: Config;
  client: Etcd3;
  /** The one pool of peer clients; its directory says where the other stewards are. */
  peers: PeerPool;
  checkHealth: (signal?: AbortSignal) => Promise<ClusterHealth>;
  memberClient: (endpoint: string) => Etcd3;
  metrics: StewardMetrics;
  logger: Logger;
  /** The current leadership term, if this steward leads; scheduled and destructive work is fenced with it. */
  currentTerm: () => LeaderTerm | undefined;
  /** The node name of the leader steward now, if any. */
  leader: () => Promise<string | undefined>;
  /** The cluster spec as last read, recorded with each snapshot. */
  clusterSpec?: () => ({ generation: number } & Record<string, unknown>) | undefined;
}

export interface SaveRequest {
  kind: 'scheduled' | 'on-demand';
  base?: string;
  force?: boolean;
  term: LeaderTerm | undefined;
  signal: AbortSignal;
  onProgress?: SnapshotRequest['onProgress'];
}

/**
 * The snapshot parts of one steward: its stores (own dir, S3), the snapshotter, the inventory and its
 * keeper. The ctl and peer handlers (snapshot-handlers.ts) and the leader loop (leader-loop.ts) use them.
 */
export class SnapshotService {
  readonly log: Logger;
  readonly local: NamedStore;
  private readonly s3: NamedStore | undefined;
  private readonly snapshotter: Snapshotter;
  readonly keeper: InventoryKeeper;
  readonly inventory: Inventory;

  constructor(
    readonly options: SnapshotServiceOptions,
    s3Store: S3Store | undefined,
  ) {
    const { config } = options;
    this.log = options.logger.child({ component: 'snapshots' });
    this.local = { locationId: `local:${config.name}`, store: new LocalStore(config.etcdSnapshotDir) };
    this.s3 = s3Store ? { locationId: 's3', store: s3Store } : undefined;
    this.snapshotter = new Snapshotter({
      node: config.name,
      stores: this.ownStores(),
      compress: config.etcdSnapshotCompress,
      timeoutMs: config.etcdSnapshotTimeout,
      checkHealth: options.checkHealth,
      memberClient: options.memberClient,
      metrics: options.metrics,
      logger: options.logger,
      ...(options.clusterSpec ? { clusterSpec: options.clusterSpec } : {}),
    });
    this.inventory = new Inventory(options.client);
    this.keeper = new InventoryKeeper({
      inventory: this.inventory,
      locations: (signal) => snapshotLocations({ own: this.ownStores(), peers: options.peers, log: this.log }, signal),
      metrics: options.metrics,
      logger: options.logger,
    });
  }

  /**
   * How old an orphaned data object must be before prune removes it: long enough that a snapshot whose
   * object is committed but whose metadata is still being written (S3 retries included) is never taken
   * for an orphan.
   */
  get orphanGraceMs(): number {
    const { config } = this.options;
    return Math.max(60 * 60_000, 2 * config.etcdS3Timeout, 2 * config.etcdSnapshotTimeout);
  }

  /** A steward killed mid-snapshot leaves a temp file: nothing else can be writing at start-up, so remove them all. */
  async removeLeftoverTempFiles(): Promise<void> {
    const store = this.local.store;
    if (!(store instanceof LocalStore)) return;
    const removed = await store.cleanupTempFiles(0).catch((err: unknown) => {
      this.log.warn({ err: errorText(err) }, 'cannot clean up unfinished snapshot files');
      return [];
    });
    if (removed.length > 0) this.log.warn({ files: removed }, 'removed unfinished snapshot files left by an interrupted snapshot');
  }

  /** The S3 canary (src/store/canary.ts) on this steward's S3 store; returns at once without S3. */
  async runS3Canary(signal: AbortSignal): Promise<void> {
    const store = this.s3?.store as S3Store | undefined;
    if (!store) return;
    const { config, metrics, logger } = this.options;
    await runS3Canary({ store, node: config.name, intervalMs: config.etcdSnapshotReconcileInterval, metrics, logger }, signal);
  }

  close(): void {
    (this.s3?.store as S3Store | undefined)?.close();
  }

  /**
   * Every store a snapshot may be in, readable without etcd (findSnapshot / listStores in src/restore/find.ts):
   * this steward's dir, S3, and the other stewards' dirs through the peer pool, whose directory falls back on
   * the cluster spec's addresses. `restoreId` goes into the header of every peer read; `timeoutMs` bounds
   * every store (default 10 s).
   */
  stores(options: { restoreId?: string; timeoutMs?: number } = {}): SnapshotStores {
    return {
      node: this.options.config.name,
      local: this.local,
      s3: this.s3,
      peers: this.options.peers,
      log: this.log,
      ...(options.restoreId ? { restoreId: options.restoreId } : {}),
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    };
  }

  ownStores(): NamedStore[] {
    return this.s3 ? [this.local, this.s3] : [this.local];
  }

  /** Takes a snapshot and records every stored copy; scheduled ones are recorded under the leader's fence. */
  async save(request: SaveRequest): Promise<SnapshotResult> {
    const result = await this.snapshotter.take({
      kind: request.kind,
      ...(request.base === undefined ? {} : { base: request.base }),
      force: request.force ?? false,
      fencingToken: request.term?.fencingToken ?? '',
      signal: request.signal,
      ...(request.onProgress ? { onProgress: request.onProgress } : {}),
    });
    const records: InventoryRecord[] = result.copies.map((copy) => ({
      name: result.metadata.name,
      node: result.metadata.node,
      locationId: copy.locationId,
      location: copy.url,
      key: result.metadata.key,
      size: result.metadata.size,
      sha256: result.metadata.sha256,
      created: result.metadata.created,
      kind: result.metadata.kind,
      compressed: result.metadata.compressed,
    }));
    // A stale leader's record of a scheduled snapshot is refused.
    await this.keeper.record(records, request.kind === 'scheduled' ? request.term : undefined);
    return result;
  }
}
