import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import type { LeaderTerm } from '../election/election.js';
import { etcdIdHex, type ClusterHealth } from '../etcd/health.js';
import { askPeers } from '../etcd/peers.js';
import { InvalidArgumentError, NotFoundError, PreconditionError, errorText } from '../errors/index.js';
import type { StewardMetrics } from '../observability/metrics.js';
import { ensureStateDir, writeFileAtomic } from '../state/atomic.js';
import type { BackupStore } from '../store/store.js';
import { BootstrapGate, countSnapshots, hasMemberData, hasMemberDataOr, specDrift } from './bootstrap.js';
import { render, type ControlStore, type SpecDraft } from './control-store.js';
import { isPeerGrpcAddress, memberHasRun, parseSpec, type ClusterSpec } from './spec.js';

const FORMING_RECHECK_MS = 5000;

export interface SpecState {
  healthy: boolean;
  generation: number;
  /** What is wrong and how to fix it; empty when healthy. */
  problem: string;
}

export interface SpecServiceOptions {
  config: Config;
  control: ControlStore;
  /** The control store is shared by every node (S3); without S3 each node keeps its own copy of etcd's record. */
  shared: boolean;
  /** Where snapshots live (own dir, S3): their existence forbids initialising a new cluster. */
  backupStores: BackupStore[];
  clusterHealth: () => Promise<ClusterHealth>;
  metrics: StewardMetrics;
  logger: Logger;
  currentTerm: () => LeaderTerm | undefined;
  /**
   * The stewards' advertised gRPC addresses (today the etcd registry): the leader copies them into the spec's
   * members so peers can be reached from the spec with etcd down. Without it the spec keeps what it has.
   */
  stewardAddresses?: () => Promise<Array<{ node: string; grpc: string }>>;
}

/**
 * The cluster spec on one steward: re-read every --control-spec-ttl (never cached for the life of the
 * process), loud when it is missing, and in front of every start of etcd (see BootstrapGate). The leader
 * also finishes interrupted writes and records the cluster ID once every member has run.
 */
export class SpecService {
  private readonly log: Logger;
  private current: SpecState = { healthy: false, generation: 0, problem: 'not read yet' };
  private lastGeneration = 0;
  private lastErrorLoggedAt = 0;
  private lastSpec: ClusterSpec | undefined;
  readonly gate: BootstrapGate;

  constructor(private readonly options: SpecServiceOptions) {
    this.log = options.logger.child({ component: 'spec' });
    this.gate = new BootstrapGate({ ...options, logger: options.logger });
  }

  /** The last spec a check read and found valid (undefined before the first): the in-memory current spec. */
  get latest(): ClusterSpec | undefined {
    return this.lastSpec;
  }

  get state(): SpecState {
    const held = this.gate.problem;
    if (!held) return this.current;
    return { healthy: false, generation: this.current.generation, problem: this.current.healthy ? held : `${held}; ${this.current.problem}` };
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      // One probe of the members per round, shared by the check and the leader's upkeep.
      let probed: Promise<ClusterHealth> | undefined;
      const health = (): Promise<ClusterHealth> => (probed ??= this.options.clusterHealth());
      const spec = await this.check(signal, health);
      const term = this.options.currentTerm();
      if (term && !signal.aborted)
        await this.leaderDuties(spec, term, AbortSignal.any([signal, term.signal]), health).catch((err: unknown) => {
          if (!signal.aborted && !term.signal.aborted) this.log.warn({ err: errorText(err) }, 'leader spec upkeep failed; trying again next TTL');
        });
      // Until the formed cluster is recorded, look more often: that record is what protects an empty data dir.
      const forming = spec
        ? spec.members.some((m) => !memberHasRun(spec, m.name))
        : !this.options.shared || !hasMemberDataOr(this.options.config.dataDir, true);
      await sleep(forming ? Math.min(FORMING_RECHECK_MS, this.options.config.controlSpecTtl) : this.options.config.controlSpecTtl, undefined, { signal }).catch(
        () => undefined,
      );
    }
  }

  /** One read of the spec: updates the metric and the state, logs changes, and says loudly what to do when it is gone. */
  async check(signal: AbortSignal, clusterHealth = this.options.clusterHealth): Promise<ClusterSpec | undefined> {
    const { control, config } = this.options;
    let spec: ClusterSpec | undefined;
    try {
      spec = this.options.shared ? await control.read(signal) : await this.readMirrored(signal);
    } catch (err) {
      const fix =
        err instanceof InvalidArgumentError
          ? `the spec is damaged: put a valid one back with 'etcd-stewardctl spec set ${join(config.stateDir, 'last-cluster-spec.json')}'`
          : this.options.shared
            ? 'check the control store settings (--control-s3-*) and credentials'
            : `check the state dir ${config.stateDir} and that etcd answers`;
      this.unhealthy(`the cluster spec at ${control.location} cannot be read: ${errorText(err)}`, fix);
      return undefined;
    }
    if (!spec && !this.options.shared) {
      // Without S3 nothing is lost yet: the leader records the running cluster once all members are up.
      const problem = `no cluster spec recorded yet at ${control.location}: the leader records the running cluster once all members are up`;
      if (this.current.problem !== problem) this.log.warn({ location: control.location }, problem);
      this.options.metrics.controlSpecHealthy.set(0);
      this.current = { healthy: false, generation: 0, problem };
      return undefined;
    }
    if (!spec && !hasMemberDataOr(config.dataDir, true)) {
      this.unhealthy(
        `no cluster spec yet at ${control.location}, and this node's data dir is empty`,
        "etcd starts once one exists: 'etcd-stewardctl init --yes' creates a new cluster (refused if any data or snapshot exists)",
      );
      return undefined;
    }
    if (!spec) {
      this.unhealthy(
        `the cluster spec is missing at ${control.location} (a bucket lifecycle rule or a manual delete?)`,
        `etcd keeps running from its data dir and snapshots go on; put it back with 'etcd-stewardctl spec set ${join(config.stateDir, 'last-cluster-spec.json')}' (the last spec this steward saw)`,
      );
      return undefined;
    }
    const mismatch = await this.clusterMismatch(spec, clusterHealth);
    if (mismatch) {
      this.unhealthy(
        mismatch,
        "this etcd is not the cluster the spec describes: check --control-s3-* point at this cluster's spec, or fix the spec with etcd-stewardctl spec set",
      );
      return spec;
    }
    this.options.metrics.controlSpecHealthy.set(1);
    this.options.metrics.controlSpecGeneration.set(spec.generation);
    if (spec.generation !== this.lastGeneration) {
      if (this.lastGeneration !== 0) this.log.info({ from: this.lastGeneration, to: spec.generation }, 'cluster spec changed');
      this.lastGeneration = spec.generation;
      await this.keepCopy(spec);
      const drift = specDrift(config, spec);
      if (drift) this.log.warn({ drift, generation: spec.generation }, "the cluster spec and this node's flags disagree; the running cluster is unchanged");
    }
    if (!this.current.healthy) this.log.info({ generation: spec.generation, location: control.location }, 'cluster spec readable');
    this.current = { healthy: true, generation: spec.generation, problem: '' };
    this.lastSpec = spec;
    return spec;
  }

  /** Before every start of etcd: false only if aborted while held back. */
  async waitUntilEtcdMayStart(signal: AbortSignal): Promise<boolean> {
    return this.gate.wait(signal);
  }

  /** `init --yes`: the first spec of a brand-new cluster, refused wherever data could be lost. */
  async init(confirmed: boolean, signal: AbortSignal): Promise<ClusterSpec> {
    const { config, control } = this.options;
    if (!confirmed) {
      throw new PreconditionError('UNCONFIRMED', 'init creates a brand-new, empty cluster and was not confirmed', {
        hint: 'pass --yes if that is what you want',
      });
    }
    if (await control.read(signal))
      throw new PreconditionError('SPEC_EXISTS', `a cluster spec already exists at ${control.location}`, {
        hint: 'the cluster exists: etcd-stewardctl spec get shows it',
      });
    if (hasMemberData(config.dataDir)) {
      throw new PreconditionError('HAS_DATA', `this node's data dir ${config.dataDir} holds an etcd member`, {
        hint: 'init is only for a brand-new cluster; to recreate a lost spec use etcd-stewardctl spec set FILE',
      });
    }
    // Client endpoints often name only this node (the default); the other members' peer URLs are always known.
    const [health, peers] = await Promise.all([this.options.clusterHealth(), askPeers(config, 2000, signal)]);
    const answering = [...health.members.filter((m) => m.reachable).map((m) => m.endpoint), ...peers.answered];
    if (answering.length > 0) {
      throw new PreconditionError('CLUSTER_RUNNING', `etcd answers at ${answering.join(', ')}: this cluster exists and holds data`, {
        hint: "init is only for a brand-new cluster; put the spec back with 'etcd-stewardctl spec set FILE' against the leader",
      });
    }
    const snapshots = await countSnapshots(this.options.backupStores, signal).catch((err: unknown) => {
      throw new PreconditionError('CANNOT_CHECK_SNAPSHOTS', `cannot tell whether snapshots exist: ${errorText(err)}`, {
        hint: 'fix access to the snapshot stores first; init never runs blind',
      });
    });
    if (snapshots > 0) {
      throw new PreconditionError('SNAPSHOTS_EXIST', `${snapshots} snapshot(s) exist for this cluster`, {
        hint: 'a cluster with backups is not new: restore its spec (spec set) or a snapshot instead of init',
      });
    }
    const spec = await control.initialise(
      { members: config.initialCluster, etcdVersion: '', clusterToken: config.initialClusterToken, clusterId: '', etcdFlags: {} },
      signal,
    );
    this.log.warn({ location: control.location }, 'initialised a new cluster spec (etcd-stewardctl init --yes)');
    await this.check(signal);
    return spec;
  }

  async get(signal: AbortSignal): Promise<ClusterSpec> {
    const spec = this.options.shared ? await this.options.control.read(signal) : await this.readMirrored(signal);
    if (!spec) throw new NotFoundError(`no cluster spec at ${this.options.control.location}`, { hint: 'see the steward log for how to restore it' });
    return spec;
  }

  /**
   * `spec set FILE`, on the leader only: validated as strictly as the flags, generation-checked (it moves by
   * exactly one), fenced, and cut short if the term ends. A member that runs now cannot vanish from the spec
   * unless `force` (the ctl's `spec set --force`, the request's `force` field) says the operator means it.
   */
  async set(text: string, signal: AbortSignal, options: { force?: boolean } = {}): Promise<ClusterSpec> {
    const term = this.options.currentTerm();
    if (!term)
      throw new PreconditionError('NOT_LEADER', 'only the leader writes the cluster spec', {
        hint: 'run etcd-stewardctl status to find the leader and address it with --endpoint',
      });
    const { generation, ...rest } = parseSpec(text, 'the spec file');
    const dropped = await this.runningMembersDropped(rest.members.map((m) => m.name));
    if (dropped.length > 0 && !options.force) {
      throw new PreconditionError('RUNNING_MEMBER_DROPPED', `the spec you sent drops member(s) ${dropped.join(', ')}, which run in the cluster now`, {
        hint: `remove the member from etcd first (etcdctl member remove <id>) so the spec follows the cluster; or, if the spec must stop listing it while it runs, send it again with --force (the running cluster is not changed by the spec)`,
      });
    }
    const spec = await this.options.control.write(rest, generation, term, AbortSignal.any([signal, term.signal]));
    if (dropped.length > 0)
      this.log.warn({ generation: spec.generation, dropped, force: true }, 'cluster spec replaced with --force although it drops running member(s)');
    this.log.warn({ generation: spec.generation }, 'cluster spec replaced (etcd-stewardctl spec set)');
    await this.check(signal);
    return spec;
  }

  /**
   * Leader upkeep each TTL: finish a write that reached etcd but not the control store (never re-create a
   * spec that vanished: that stays loud until an operator acts), adopt the running cluster as the spec
   * without S3, and record the cluster ID and every member that has run, from the first formation on.
   */
  private async leaderDuties(spec: ClusterSpec | undefined, term: LeaderTerm, signal: AbortSignal, clusterHealth: () => Promise<ClusterHealth>): Promise<void> {
    const { control, config } = this.options;
    const record = await control.readRecord();
    if (this.options.shared && spec && record && record.spec.generation > spec.generation) {
      this.log.warn({ stored: spec.generation, recorded: record.spec.generation }, 'finishing a spec write that reached etcd but not the control store');
      await control.copyRecord(signal);
      return;
    }
    const health = await clusterHealth();
    const clusterId = etcdIdHex(health.clusterId);
    // Healthy means it answered with a raft leader: it has joined the formed cluster.
    const running = health.members.filter((m) => m.healthy && m.name).map((m) => m.name);
    if (!clusterId || running.length === 0) return;
    const addresses = await this.advertisedAddresses();
    if (!this.options.shared && !record && !spec) {
      const draft: SpecDraft = {
        members: withGrpc(config.initialCluster, addresses),
        etcdVersion: health.members[0]?.version ?? '',
        clusterToken: config.initialClusterToken,
        clusterId,
        startedMembers: running.sort(),
        etcdFlags: {},
      };
      const adopted = await control.write(draft, 0, term, signal);
      this.log.info({ generation: adopted.generation, clusterId }, 'recorded the running cluster as the cluster spec (no S3: every steward keeps a copy)');
      return;
    }
    // A spec for another cluster is reported by check(); it is never "corrected" from here.
    if (!spec || (spec.clusterId && spec.clusterId !== clusterId)) return;
    const newlyRun = running.filter((name) => spec.members.some((m) => m.name === name) && !memberHasRun(spec, name));
    const members = withGrpc(spec.members, addresses);
    const addressesChanged = members.some((m, i) => m.grpc !== spec.members[i]?.grpc);
    if (spec.clusterId && newlyRun.length === 0 && !addressesChanged) return;
    const { generation, updatedAt: _updatedAt, fencingToken: _fencingToken, formatVersion: _formatVersion, ...draft } = spec;
    const startedMembers = [...new Set([...spec.members.map((m) => m.name).filter((name) => memberHasRun(spec, name)), ...newlyRun])].sort();
    const etcdVersion = draft.etcdVersion || (health.members[0]?.version ?? '');
    const recorded = await control.write({ ...draft, members, etcdVersion, clusterId, startedMembers }, generation, term, signal);
    const grpc = Object.fromEntries(members.filter((m) => m.grpc).map((m) => [m.name, m.grpc]));
    this.log.info(
      { generation: recorded.generation, clusterId, startedMembers, newlyRun, grpc },
      !spec.clusterId
        ? "the cluster has formed: recorded its ID and the members that have run, so an empty data dir of theirs is never bootstrapped again (and the stewards' gRPC addresses)"
        : newlyRun.length > 0
          ? 'recorded members that have now run: an empty data dir of theirs is never bootstrapped again'
          : "recorded the stewards' gRPC addresses in the spec, so peers reach each other with etcd down",
    );
  }

  /** The stewards' advertised addresses by node, valid ones only; none if they cannot be read this round. */
  private async advertisedAddresses(): Promise<Map<string, string>> {
    if (!this.options.stewardAddresses) return new Map();
    try {
      const entries = await this.options.stewardAddresses();
      return new Map(entries.filter((e) => isPeerGrpcAddress(e.grpc)).map((e) => [e.node, e.grpc]));
    } catch (err) {
      this.log.debug({ err: errorText(err) }, "cannot read the stewards' addresses this round");
      return new Map();
    }
  }

  /** Names of members that answer in the cluster now (by the probe) and are not in `keep`. */
  private async runningMembersDropped(keep: string[]): Promise<string[]> {
    const health = await this.options.clusterHealth();
    return health.members
      .filter((m) => m.reachable && m.name && !keep.includes(m.name))
      .map((m) => m.name)
      .sort();
  }

  /** Without S3: etcd's record, mirrored into this node's dir; the dir's copy when etcd cannot be asked. */
  private async readMirrored(signal: AbortSignal): Promise<ClusterSpec | undefined> {
    const stored = await this.options.control.read(signal);
    const record = await this.options.control.readRecord().catch(() => undefined);
    if (!record) return stored;
    await this.options.control.mirror(record.spec, stored, signal);
    return record.spec;
  }

  private async clusterMismatch(spec: ClusterSpec, clusterHealth: () => Promise<ClusterHealth>): Promise<string | undefined> {
    if (!spec.clusterId || !hasMemberDataOr(this.options.config.dataDir, false)) return undefined;
    const running = etcdIdHex((await clusterHealth().catch(() => undefined))?.clusterId ?? '');
    if (!running || running === spec.clusterId) return undefined;
    return `the cluster spec at ${this.options.control.location} is for cluster ${spec.clusterId}, but the etcd here is cluster ${running}`;
  }

  /** Logged at once when the problem is new, then once per TTL however often it is checked. */
  private unhealthy(problem: string, fix: string): void {
    this.options.metrics.controlSpecHealthy.set(0);
    const text = `${problem} — ${fix}`;
    if (text !== this.current.problem || Date.now() - this.lastErrorLoggedAt >= this.options.config.controlSpecTtl) {
      this.log.error({ location: this.options.control.location, fix }, problem);
      this.lastErrorLoggedAt = Date.now();
    }
    this.current = { healthy: false, generation: 0, problem: text };
  }

  /** A copy of the last good spec in the state dir, so an operator has something to `spec set` if it vanishes. */
  private async keepCopy(spec: ClusterSpec): Promise<void> {
    const path = join(this.options.config.stateDir, 'last-cluster-spec.json');
    try {
      // The recovery copy is what an operator feeds back in an emergency: only a spec that passes the same
      // validation as `spec set` ever replaces it.
      parseSpec(render(spec), 'the spec to keep');
      await ensureStateDir(this.options.config.stateDir);
      await writeFileAtomic(path, render(spec));
    } catch (err) {
      this.log.warn({ err: errorText(err) }, 'cannot keep a copy of the cluster spec in the state dir');
    }
  }
}

/** Members with each one's advertised gRPC address where one is known; a member without one keeps what it had. */
function withGrpc<M extends { name: string; grpc?: string }>(members: M[], addresses: Map<string, string>): M[] {
  return members.map((m) => {
    const grpc = addresses.get(m.name);
    return grpc === undefined || grpc === m.grpc ? m : { ...m, grpc };
  });
}
