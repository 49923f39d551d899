import { existsSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import type { LeaderTerm } from '../election/election.js';
import { NotFoundError, PreconditionError, errorText } from '../errors/index.js';
import type { StewardMetrics } from '../observability/metrics.js';
import { METADATA_SUFFIX } from '../snapshot/names.js';
import type { BackupStore } from '../store/store.js';
import type { ControlStore } from './control-store.js';
import { parseSpec, type ClusterSpec } from './spec.js';

export interface SpecState {
  healthy: boolean;
  generation: number;
  /** What is wrong and how to fix it; empty when healthy. */
  problem: string;
}

export interface SpecServiceOptions {
  config: Config;
  control: ControlStore;
  /** Where snapshots live (own dir, S3): their existence forbids initialising a new cluster. */
  backupStores: BackupStore[];
  client: Etcd3;
  metrics: StewardMetrics;
  logger: Logger;
  currentTerm: () => LeaderTerm | undefined;
}

/**
 * The cluster spec on one steward: re-read every --control-spec-ttl (never cached for the life of the
 * process), loud when it is missing, and the one gate in front of bootstrapping etcd on an empty data dir.
 */
export class SpecService {
  private readonly log: Logger;
  private current: SpecState = { healthy: false, generation: 0, problem: 'not read yet' };
  private lastGeneration = 0;

  constructor(private readonly options: SpecServiceOptions) {
    this.log = options.logger.child({ component: 'spec' });
  }

  get state(): SpecState {
    return this.current;
  }

  private get hasLocalData(): boolean {
    return existsSync(join(this.options.config.dataDir, 'member'));
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await this.check(signal);
      await sleep(this.options.config.controlSpecTtl, undefined, { signal }).catch(() => undefined);
    }
  }

  /** One read of the spec: updates the metric and the state, logs changes, and says loudly what to do when it is gone. */
  async check(signal: AbortSignal): Promise<SpecState> {
    const { control, metrics } = this.options;
    let spec: ClusterSpec | undefined;
    try {
      spec = await control.read(signal);
    } catch (err) {
      return this.unhealthy(`the cluster spec at ${control.location} cannot be read: ${errorText(err)}`, 'check the control store settings (--control-s3-*) and credentials');
    }
    if (!spec && !this.hasLocalData) {
      return this.unhealthy(`no cluster spec yet at ${control.location}, and this node's data dir is empty`, "etcd starts once one exists: 'etcd-stewardctl init --yes' creates a new cluster (refused if any data or snapshot exists)");
    }
    if (!spec) {
      return this.unhealthy(
        `the cluster spec is missing at ${control.location} (a bucket lifecycle rule or a manual delete?)`,
        `etcd keeps running from its data dir and snapshots go on; put it back with 'etcd-stewardctl spec set ${join(this.options.config.stateDir, 'last-cluster-spec.json')}' (the last spec this steward saw)`,
      );
    }
    metrics.controlSpecHealthy.set(1);
    metrics.controlSpecGeneration.set(spec.generation);
    if (spec.generation !== this.lastGeneration) {
      if (this.lastGeneration !== 0) this.log.info({ from: this.lastGeneration, to: spec.generation }, 'cluster spec changed');
      this.lastGeneration = spec.generation;
      await this.keepCopy(spec);
      this.warnOnDrift(spec);
    }
    if (!this.current.healthy) this.log.info({ generation: spec.generation, location: control.location }, 'cluster spec readable');
    this.current = { healthy: true, generation: spec.generation, problem: '' };
    return this.current;
  }

  /**
   * Before etcd starts on an empty data dir: bootstrap only from an existing spec that matches this node's
   * config. Without a spec it waits for `etcd-stewardctl init --yes`, and if snapshots exist it refuses
   * loudly: that is a cluster whose control files vanished, not a new one.
   */
  async waitUntilBootstrapAllowed(signal: AbortSignal): Promise<boolean> {
    if (this.hasLocalData) return true;
    while (!signal.aborted) {
      const spec = await this.options.control.read(signal).catch((err: unknown) => {
        this.log.error({ err: errorText(err) }, 'cannot read the cluster spec; not bootstrapping etcd until it can be read');
        return null;
      });
      if (spec) {
        const drift = this.drift(spec);
        if (!drift) return true;
        this.log.error({ drift }, 'refusing to bootstrap etcd: this node\'s --initial-cluster does not match the cluster spec; fix the flags or the spec');
      } else if (spec === undefined) {
        const snapshots = await this.snapshotCount(signal).catch((err: unknown) => {
          this.log.error({ err: errorText(err) }, 'cannot list the snapshots; not bootstrapping etcd until it can be checked');
          return -1;
        });
        if (snapshots < 0) {
          // Logged above; wait and look again.
        } else if (snapshots > 0) {
          this.log.error(
            { location: this.options.control.location, snapshots },
            "refusing to initialise a new etcd cluster: there is no cluster spec, but snapshots exist, so this cluster's control files were lost; restore the spec with 'etcd-stewardctl spec set FILE' (or restore a snapshot), never init",
          );
        } else {
          this.log.warn({ location: this.options.control.location }, "no cluster spec yet and this data dir is empty: waiting for 'etcd-stewardctl init --yes' to create a new cluster");
        }
      }
      await sleep(Math.min(2000, this.options.config.controlSpecTtl), undefined, { signal }).catch(() => undefined);
    }
    return false;
  }

  /** `init --yes`: the first spec of a brand-new cluster, refused wherever data could be lost. */
  async init(confirmed: boolean, signal: AbortSignal): Promise<ClusterSpec> {
    const { config, control } = this.options;
    if (!confirmed) {
      throw new PreconditionError('UNCONFIRMED', 'init creates a brand-new, empty cluster and was not confirmed', { hint: 'pass --yes if that is what you want' });
    }
    if (await control.read(signal)) throw new PreconditionError('SPEC_EXISTS', `a cluster spec already exists at ${control.location}`, { hint: 'the cluster exists: etcd-stewardctl spec get shows it' });
    if (this.hasLocalData) {
      throw new PreconditionError('HAS_DATA', `this node's data dir ${config.dataDir} holds an etcd member`, {
        hint: 'init is only for a brand-new cluster; to recreate a lost spec use etcd-stewardctl spec set FILE',
      });
    }
    const snapshots = await this.snapshotCount(signal).catch((err: unknown) => {
      throw new PreconditionError('CANNOT_CHECK_SNAPSHOTS', `cannot tell whether snapshots exist: ${errorText(err)}`, { hint: 'fix access to the snapshot stores first; init never runs blind' });
    });
    if (snapshots > 0) {
      throw new PreconditionError('SNAPSHOTS_EXIST', `${snapshots} snapshot(s) exist for this cluster`, {
        hint: 'a cluster with backups is not new: restore its spec (spec set) or a snapshot instead of init',
      });
    }
    const spec = await control.initialise(
      { members: config.initialCluster, etcdVersion: '', clusterToken: config.initialClusterToken, etcdFlags: {} },
      signal,
    );
    this.log.warn({ location: control.location }, 'initialised a new cluster spec (etcd-stewardctl init --yes)');
    await this.check(signal);
    return spec;
  }

  async get(signal: AbortSignal): Promise<ClusterSpec> {
    const spec = await this.options.control.read(signal);
    if (!spec) throw new NotFoundError(`no cluster spec at ${this.options.control.location}`, { hint: 'see the steward log for how to restore it' });
    return spec;
  }

  /** `spec set FILE`, on the leader only: validated, generation-checked, fenced. */
  async set(text: string, signal: AbortSignal): Promise<ClusterSpec> {
    const term = this.options.currentTerm();
    if (!term) throw new PreconditionError('NOT_LEADER', 'only the leader writes the cluster spec', { hint: 'run etcd-stewardctl status to find the leader and address it with --endpoint' });
    const { generation, ...rest } = parseSpec(text, 'the spec file');
    const spec = await this.options.control.write(rest, generation, term, signal);
    this.log.warn({ generation: spec.generation }, 'cluster spec replaced (etcd-stewardctl spec set)');
    await this.check(signal);
    return spec;
  }

  private unhealthy(problem: string, fix: string): SpecState {
    this.options.metrics.controlSpecHealthy.set(0);
    this.log.error({ location: this.options.control.location, fix }, problem);
    this.current = { healthy: false, generation: 0, problem: `${problem} — ${fix}` };
    return this.current;
  }

  private drift(spec: ClusterSpec): string | undefined {
    const mine = this.options.config.initialCluster.map((m) => `${m.name}=${m.peerUrl}`).sort().join(',');
    const theirs = spec.members.map((m) => `${m.name}=${m.peerUrl}`).sort().join(',');
    return mine === theirs ? undefined : `--initial-cluster ${mine} vs spec ${theirs}`;
  }

  private warnOnDrift(spec: ClusterSpec): void {
    const drift = this.drift(spec);
    if (drift) this.log.warn({ drift, generation: spec.generation }, 'the cluster spec and this node\'s flags disagree on the members; the running cluster is unchanged');
  }

  /** A copy of the last good spec in the state dir, so an operator has something to `spec set` if it vanishes. */
  private async keepCopy(spec: ClusterSpec): Promise<void> {
    const path = join(this.options.config.stateDir, 'last-cluster-spec.json');
    try {
      await mkdir(this.options.config.stateDir, { recursive: true });
      await writeFile(`${path}.tmp`, `${JSON.stringify(spec, null, 2)}\n`);
      await rename(`${path}.tmp`, path);
    } catch (err) {
      this.log.warn({ err: errorText(err) }, 'cannot keep a copy of the cluster spec in the state dir');
    }
  }

  private async snapshotCount(signal: AbortSignal): Promise<number> {
    let count = 0;
    for (const store of this.options.backupStores) {
      // A listing that fails throws: "could not look" must never pass for "there are none".
      const objects = await store.list('', signal);
      count += objects.filter((o) => o.key.endsWith(METADATA_SUFFIX)).length;
    }
    return count;
  }
}
