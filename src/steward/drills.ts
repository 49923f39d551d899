import { setTimeout as sleep } from 'node:timers/promises';
import { Cron } from 'croner';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import { errorText } from '../errors/index.js';
import type { InventoryRecord, Verification } from '../inventory/inventory.js';
import type { StewardMetrics } from '../observability/metrics.js';
import { settleBy, deadlineAfter } from '../restore/find.js';
import { runDrill, type DrillResult } from '../restore/drill.js';
import type { RestoreTool } from '../restore/tool.js';
import type { VerifyResponse } from '../rpc/types.js';
import type { SnapshotService } from './snapshots.js';

export interface DrillServiceOptions {
  config: Config;
  snapshots: SnapshotService;
  tool: () => Promise<RestoreTool>;
  metrics: StewardMetrics;
  logger: Logger;
}

/** How long status waits for the inventory to name the last verified snapshot: status must answer without etcd. */
const STATUS_INVENTORY_TIMEOUT_MS = 2_000;

/**
 * `etcd-stewardctl verify`: runs a restore drill (src/restore/drill.ts) here, on the addressed steward,
 * records its result with the snapshot in the inventory and in the metrics. The addressed steward rather
 * than the leader: a drill is local work (disk, CPU, a throwaway etcd on this host) that proves this node
 * can restore with its own tools and its own reach to S3 and the peers, and an operator picks the node to
 * load with --endpoint; the inventory write needs no leadership (it is conditional on the record existing).
 */
export class DrillService {
  private readonly log: Logger;
  /** The newest passing drill of this process, for status when the inventory cannot be read. */
  private lastPassed: { name: string; at: string } | undefined;
  private background: Promise<void> | undefined;
  /** Creation time (unix s) of the newest snapshot that passed a drill here: the gauge's value. */
  private newestVerifiedCreated = 0;

  constructor(private readonly options: DrillServiceOptions) {
    this.log = options.logger.child({ component: 'drill' });
  }

  async verify(name: string, signal: AbortSignal): Promise<VerifyResponse> {
    const { config, snapshots, metrics } = this.options;
    const result: DrillResult = await runDrill(
      name,
      {
        stores: snapshots.stores(),
        tool: await this.options.tool(),
        etcdBinary: config.etcdBinary,
        stateDir: config.stateDir,
        logger: this.options.logger,
        etcdAuth: { etcdUser: config.etcdUser, etcdPassword: config.etcdPassword },
      },
      signal,
    );
    // Only drills that concluded: an unknown name or a refusal for disk space is no drill.
    metrics.snapshotVerifyDuration.observe(result.durationSeconds);
    const verification: Verification = {
      result: result.passed ? 'passed' : 'failed',
      at: result.verifiedAt,
      hashKv: result.hashKV,
      reason: result.reason,
      node: config.name,
      source: result.source,
    };
    let recordProblem = '';
    try {
      const written = await snapshots.inventory.setVerification(name, verification);
      if (written === 0) recordProblem = `the inventory holds no record of ${name} (deleted meanwhile, or not yet reconciled)`;
    } catch (err) {
      recordProblem = `cannot record the result in the inventory in etcd: ${errorText(err)}`;
    }
    if (result.passed) {
      this.lastPassed = { name, at: result.verifiedAt };
      const created = Date.parse((await this.recordOf(name))?.created ?? '');
      // Only forward: re-verifying an older snapshot must not make the newest restorable one look older.
      this.newestVerifiedCreated = Math.max(this.newestVerifiedCreated, Number.isFinite(created) ? created / 1000 : 0);
      metrics.lastVerifiedSnapshot.set(this.newestVerifiedCreated);
      this.log.info({ snapshot: name, revision: result.revision, keys: result.keys, hashKV: result.hashKV, source: result.source }, 'restore drill passed');
    } else {
      metrics.snapshotVerifyFailures.inc({ reason: result.failure ?? 'unknown' });
      this.log.error({ snapshot: name, failure: result.failure, reason: result.reason, source: result.source }, 'restore drill FAILED');
    }
    if (recordProblem) this.log.warn({ snapshot: name, problem: recordProblem }, 'restore drill result not recorded');
    return {
      name,
      passed: result.passed,
      reason: result.reason,
      failure: result.failure ?? '',
      source: result.source,
      revision: result.revision,
      keys: result.keys,
      hashKv: result.hashKV,
      snapshotKeys: result.snapshotKeys,
      verifiedAt: result.verifiedAt,
      durationSeconds: result.durationSeconds,
      node: config.name,
      recordProblem,
    };
  }

  /** The newest snapshot that passed a drill (by when the drill ended), from the inventory, else this process's own. */
  async lastVerified(signal: AbortSignal): Promise<{ name: string; at: string } | undefined> {
    const bound = deadlineAfter(signal, STATUS_INVENTORY_TIMEOUT_MS);
    try {
      const records = await settleBy(this.options.snapshots.inventory.list(), bound.signal);
      return newestPassed(records) ?? this.lastPassed;
    } catch {
      return this.lastPassed;
    } finally {
      bound.clear();
    }
  }

  /**
   * The last drill of `name` the inventory records (the latest of its records'), for the restore's plan;
   * undefined when none ran or the inventory cannot be read within a moment (no quorum: the restore goes on).
   */
  async lastDrill(name: string, signal: AbortSignal): Promise<Verification | undefined> {
    const bound = deadlineAfter(signal, STATUS_INVENTORY_TIMEOUT_MS);
    try {
      const records = await settleBy(this.options.snapshots.inventory.byName(name), bound.signal);
      let last: Verification | undefined;
      for (const record of records) if (record.verification && (!last || record.verification.at > last.at)) last = record.verification;
      return last;
    } catch (err) {
      if (signal.aborted) throw err;
      this.log.warn(
        { snapshot: name, err: errorText(err) },
        'cannot read the restore drill result of the snapshot from the inventory; the restore goes on without it',
      );
      return undefined;
    } finally {
      bound.clear();
    }
  }

  /**
   * Leader-scheduled drills: one at a time, in the background, under the term's signal. One asked while
   * another runs is skipped (the next snapshot's drill covers it), so drills never pile up behind a slow one.
   */
  drillInBackground(name: string, signal: AbortSignal): void {
    if (this.background) {
      this.log.info({ snapshot: name }, 'a restore drill is still running; not drilling this snapshot now');
      return;
    }
    this.background = this.verify(name, signal)
      .then(
        () => undefined,
        (err: unknown) => {
          if (!signal.aborted) this.log.warn({ snapshot: name, err: errorText(err) }, 'scheduled restore drill could not run');
        },
      )
      .finally(() => {
        this.background = undefined;
      });
  }

  /** Settles once no background drill runs. */
  async idle(): Promise<void> {
    await this.background;
  }

  /** `--etcd-snapshot-verify-cron <expr>`: at each slot, a drill of the newest snapshot in the inventory; ends with `signal`. */
  async runCron(cron: string, signal: AbortSignal): Promise<void> {
    const pattern = new Cron(cron, { paused: true });
    this.log.info({ cron, next: pattern.nextRun()?.toISOString() }, 'restore drill schedule active on this leader');
    while (!signal.aborted) {
      const next = pattern.nextRun();
      if (!next) return;
      await sleep(Math.max(0, next.getTime() - Date.now()), undefined, { signal }).catch(() => undefined);
      if (signal.aborted) return;
      const records = await this.options.snapshots.inventory.list().catch((err: unknown) => {
        this.log.warn({ err: errorText(err) }, 'cannot read the inventory for the scheduled restore drill; the next slot tries again');
        return [];
      });
      const newest = records.reduce<InventoryRecord | undefined>((best, r) => (!best || r.created > best.created ? r : best), undefined);
      if (newest) this.drillInBackground(newest.name, signal);
      await this.idle();
    }
  }

  private async recordOf(name: string): Promise<InventoryRecord | undefined> {
    return (await this.options.snapshots.inventory.byName(name).catch(() => []))[0];
  }
}

export function newestPassed(records: InventoryRecord[]): { name: string; at: string } | undefined {
  let best: { name: string; at: string } | undefined;
  for (const record of records) {
    const v = record.verification;
    if (v?.result === 'passed' && (!best || v.at > best.at)) best = { name: record.name, at: v.at };
  }
  return best;
}
