import { setTimeout as sleep } from 'node:timers/promises';
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import type { LeaderTerm } from '../election/election.js';
import { errorText } from '../errors/index.js';
import type { ClusterHealth } from '../etcd/health.js';
import { Inventory, inventoryRecordSchema, type InventoryRecord } from '../inventory/inventory.js';
import { InventoryKeeper, type SnapshotLocation } from '../inventory/keeper.js';
import { deleteFromStore, scanStore } from '../inventory/scan.js';
import type { StewardMetrics } from '../observability/metrics.js';
import { PeerClient } from '../rpc/client.js';
import type { StewardRegistry } from '../rpc/registry.js';
import type { SaveEvent, SaveRequest, SnapshotInfo, SnapshotRecord, StewardPeerHandlers } from '../rpc/types.js';
import { SnapshotScheduler } from '../snapshot/scheduler.js';
import { Snapshotter, type NamedStore, type SnapshotResult } from '../snapshot/snapshotter.js';
import { LocalStore } from '../store/local.js';
import type { S3Store } from '../store/s3.js';

export interface SnapshotServiceOptions {
  config: Config;
  client: Etcd3;
  registry: StewardRegistry;
  checkHealth: () => Promise<ClusterHealth>;
  memberClient: (endpoint: string) => Etcd3;
  metrics: StewardMetrics;
  logger: Logger;
  /** The current leadership term, if this steward leads; scheduled work is fenced with it. */
  currentTerm: () => LeaderTerm | undefined;
}

/**
 * Everything about snapshots on one steward: its stores (own dir, S3), the snapshotter, the inventory
 * keeper, the ctl and peer handlers, and the leader-only loop (schedule, reconcile, retention).
 */
export class SnapshotService {
  private readonly log: Logger;
  private readonly local: NamedStore;
  private readonly s3: NamedStore | undefined;
  private readonly snapshotter: Snapshotter;
  private readonly keeper: InventoryKeeper;
  private readonly inventory: Inventory;
  private readonly peers = new Map<string, PeerClient>();

  constructor(
    private readonly options: SnapshotServiceOptions,
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
    });
    this.inventory = new Inventory(options.client);
    this.keeper = new InventoryKeeper({ inventory: this.inventory, locations: (signal) => this.locations(signal), metrics: options.metrics, logger: options.logger });
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

  /** Leader-only work for one term: the schedule and the reconcile loop, both ending with the term. */
  async runTerm(term: LeaderTerm): Promise<void> {
    const { config } = this.options;
    const scheduling = config.etcdDisableSnapshots
      ? Promise.resolve()
      : new SnapshotScheduler({
          client: this.options.client,
          cron: config.etcdSnapshotScheduleCron,
          logger: this.options.logger,
          run: async (scheduledTerm) => {
            await this.save({ kind: 'scheduled', term: scheduledTerm, signal: scheduledTerm.signal });
            await this.keeper.applyRetention(config.etcdSnapshotRetention, scheduledTerm.signal, scheduledTerm);
          },
        }).runTerm(term);
    const reconciling = (async () => {
      while (!term.signal.aborted) {
        try {
          await this.keeper.reconcile(term.signal, term);
          await this.keeper.applyRetention(config.etcdSnapshotRetention, term.signal, term);
        } catch (err) {
          if (!term.signal.aborted) this.log.error({ err: errorText(err) }, 'reconcile failed; will try again next interval');
        }
        await sleep(config.etcdSnapshotReconcileInterval, undefined, { signal: term.signal }).catch(() => undefined);
      }
    })();
    await Promise.all([scheduling.catch((err: unknown) => this.log.error({ err: errorText(err) }, 'scheduler stopped')), reconciling]);
  }

  /**
   * Every reconcile interval, on every steward: write, read back and delete a small object under the
   * backups' prefix, so broken credentials or a vanished bucket raise `etcd_steward_s3_healthy=0` and an
   * error log long before the next snapshot would have failed.
   */
  async runS3Canary(signal: AbortSignal): Promise<void> {
    const store = this.s3?.store as S3Store | undefined;
    if (!store) return;
    const key = `etcd-steward-canary-${this.options.config.name.toLowerCase().replace(/[^a-z0-9.-]/g, '-')}`;
    let healthy: boolean | undefined;
    while (!signal.aborted) {
      const body = `canary ${new Date().toISOString()}`;
      try {
        const callSignal = AbortSignal.any([signal, AbortSignal.timeout(this.options.config.etcdS3Timeout)]);
        await store.putSmall(key, body, callSignal);
        const read = (await store.readSmall(key, callSignal)).toString('utf8');
        if (read !== body) throw new Error(`read back ${read.length} bytes that differ from the ${body.length} written`);
        await store.delete(key, callSignal);
        const expiry = await store.credentialsExpiry().catch(() => undefined);
        if (expiry) this.options.metrics.s3CredentialsExpiry.set(expiry.getTime() / 1000);
        if (healthy !== true) this.log.info({ location: store.location }, 'S3 canary succeeded: write, read and delete work');
        healthy = true;
      } catch (err) {
        if (signal.aborted) break;
        healthy = false;
        this.log.error({ location: store.location, err: errorText(err) }, 'S3 canary failed: snapshots will not reach S3 until this is fixed (local snapshots go on)');
      }
      this.options.metrics.s3Healthy.set(healthy ? 1 : 0);
      await sleep(this.options.config.etcdSnapshotReconcileInterval, undefined, { signal }).catch(() => undefined);
    }
  }

  /** ctl Save: an on-demand snapshot taken here, by whichever steward was addressed. */
  async handleSave(request: SaveRequest, emit: (event: SaveEvent) => void, signal: AbortSignal): Promise<SnapshotInfo> {
    const result = await this.save({
      kind: 'on-demand',
      ...(request.name ? { base: request.name } : {}),
      force: request.force,
      term: this.options.currentTerm(),
      signal,
      onProgress: (bytes) => emit({ progress: { bytes } }),
    });
    return {
      name: result.metadata.name,
      size: result.metadata.size,
      sha256: result.metadata.sha256,
      locations: result.copies.map((c) => c.url),
      failures: result.failures.map((f) => `${f.locationId}: ${f.error}`),
      revision: result.metadata.revision,
    };
  }

  async handleList(): Promise<SnapshotRecord[]> {
    return this.inventory.list();
  }

  async handleDelete(names: string[]): Promise<SnapshotRecord[]> {
    return this.keeper.delete(names, AbortSignal.timeout(10 * 60_000));
  }

  async handlePrune(retention: number): Promise<SnapshotRecord[]> {
    const keep = retention > 0 ? retention : this.options.config.etcdSnapshotRetention;
    // Like k3s's `etcd-snapshot prune`, an operator's prune trims on-demand snapshots as well (each kind counted apart).
    return this.keeper.applyRetention(keep, AbortSignal.timeout(10 * 60_000), this.options.currentTerm(), ['scheduled', 'on-demand']);
  }

  readonly peerHandlers: StewardPeerHandlers = {
    listLocalSnapshots: () => scanStore(this.local, AbortSignal.timeout(60_000), this.log),
    deleteLocalSnapshot: (name, key) => deleteFromStore(this.local.store, name, key, AbortSignal.timeout(60_000)),
  };

  close(): void {
    for (const peer of this.peers.values()) peer.close();
    this.peers.clear();
    (this.s3?.store as S3Store | undefined)?.close();
  }

  private ownStores(): NamedStore[] {
    return this.s3 ? [this.local, this.s3] : [this.local];
  }

  private async save(request: {
    kind: 'scheduled' | 'on-demand';
    base?: string;
    force?: boolean;
    term: LeaderTerm | undefined;
    signal: AbortSignal;
    onProgress?: (bytes: number) => void;
  }): Promise<SnapshotResult> {
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
    // Scheduled snapshots are recorded under the leader's fence; a stale leader's record is refused.
    await this.keeper.record(records, request.kind === 'scheduled' ? request.term : undefined);
    return result;
  }

  /** This steward's own dir, S3, and every other registered steward's dir through the peer API. */
  private async locations(signal: AbortSignal): Promise<SnapshotLocation[]> {
    const own: SnapshotLocation[] = this.ownStores().map((named) => ({
      locationId: named.locationId,
      scan: (s) => scanStore(named, s, this.log),
      remove: (name, key, s) => deleteFromStore(named.store, name, key, s),
    }));
    signal.throwIfAborted();
    const others = (await this.options.registry.list()).filter((entry) => entry.node !== this.options.config.name);
    return [
      ...own,
      ...others.map((entry) => {
        const peer = this.peer(entry.grpc);
        return {
          locationId: `local:${entry.node}`,
          // Records cross the wire from another process: validate them like any input.
          scan: async () => (await peer.listLocalSnapshots()).map((record) => inventoryRecordSchema.parse(record)),
          remove: (name: string, key: string) => peer.deleteLocalSnapshot(name, key),
        };
      }),
    ];
  }

  private peer(endpoint: string): PeerClient {
    let client = this.peers.get(endpoint);
    if (!client) {
      client = new PeerClient(endpoint);
      this.peers.set(endpoint, client);
    }
    return client;
  }
}
