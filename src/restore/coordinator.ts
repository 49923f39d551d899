import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import { CancelledError, PreconditionError, StewardError, asStewardError, errorText } from '../errors/index.js';
import type { Verification } from '../inventory/inventory.js';
import type { StewardMetrics } from '../observability/metrics.js';
import type { PeerPool } from '../rpc/peer-pool.js';
import type { RestoreEvent, RestoreMemberState, RestorePlan, RestoreRequest, RestoreSummary } from '../rpc/types.js';
import type { SnapshotMetadata } from '../snapshot/metadata.js';
import { findSnapshot, withDeadline, type SnapshotStores } from './find.js';
import { LOCK_HEARTBEAT_MS, lockIsStale, lockedError, type RestoreLock, type RestoreLockRecord } from './lock.js';
import type { RestoreMember } from './member.js';
import { LocalParticipant, RemoteParticipant, type Participant } from './participants.js';
import { buildPlan, type PlanMemberInput } from './plan.js';
import { runRestore, type RestoreRun } from './run.js';
import { restoreStatus, unreachableState } from './status.js';

export interface ClusterMember {
  name: string;
  peerUrl: string;
}

/** What the steward lends the coordinator. */
export interface CoordinatorOptions {
  config: Config;
  logger: Logger;
  metrics: StewardMetrics;
  member: RestoreMember;
  peers: PeerPool;
  lock: RestoreLock;
  stores: () => SnapshotStores;
  /** Every member of the cluster: the spec's, else --initial-cluster. */
  clusterMembers: (signal: AbortSignal) => Promise<ClusterMember[]>;
  /** Whether etcd answers with quorum now. */
  quorum: (signal: AbortSignal) => Promise<boolean>;
  /** This steward leads, or who does (name, gRPC address) when it knows. */
  leadership: () => Promise<{ isLeader: boolean; leader: string; leaderGrpc: string }>;
  /** Records the restored cluster in the spec, through the quarantined endpoint (RestartCluster). */
  recordSpec: RestoreRun['recordSpec'];
  /** Fires when the steward shuts down: a restore stops (and resumes later), it is not rolled back. */
  shutdown: AbortSignal;
  /** The snapshot's last restore drill from the inventory; undefined when none ran or etcd cannot say (no quorum). */
  lastDrill?: (name: string, signal: AbortSignal) => Promise<Verification | undefined>;
}

const PREPARE_TIMEOUT_MS = 15_000;

/**
 * Takes `restore NAME` from the ctl: plans, takes the restore lock, and drives every member through
 * Distribute → Verify → Shutdown → Restore → RestartCluster → Finished (src/restore/run.ts). With quorum the
 * leader coordinates; without it, the steward the operator addressed.
 */
export class RestoreCoordinator {
  private running: { restoreId: string; controller: AbortController; done: Promise<unknown> } | undefined;
  private readonly log: Logger;

  constructor(private readonly options: CoordinatorOptions) {
    this.log = options.logger.child({ component: 'restore' });
  }

  async restore(request: RestoreRequest, emit: (event: RestoreEvent) => void, signal: AbortSignal): Promise<RestoreSummary> {
    const { config, lock } = this.options;
    if (this.running)
      throw new PreconditionError('RESTORE_RUNNING', `restore ${this.running.restoreId} runs on this steward now`, { hint: 'etcd-stewardctl restore status' });
    const quorum = await this.options.quorum(signal);
    if (quorum) {
      const leadership = await this.options.leadership();
      if (!leadership.isLeader) {
        throw new PreconditionError('NOT_LEADER', `etcd has quorum, so the leader coordinates the restore, and this steward (${config.name}) does not lead`, {
          hint: leadership.leader
            ? `run it against the leader ${leadership.leader}${leadership.leaderGrpc ? ` (--endpoint ${leadership.leaderGrpc})` : ''}`
            : 'no leader is elected yet; try again in a few seconds',
        });
      }
    }
    const found = await findSnapshot(request.name, this.options.stores(), signal);
    const members = await this.options.clusterMembers(signal);
    let held = await lock.read(signal);
    const abandoned = held !== undefined && (lockIsStale(held) || held.coordinator === config.name);
    const asked = members.filter((m) => !request.skipMembers.includes(m.name));
    let staleLockNote = '';
    if (held && abandoned && (await this.endedEverywhere(held.restoreId, asked, signal))) {
      // Its coordinator is gone and every member ended that restore (e.g. one came back after the coordinator
      // gave up on it, and rolled itself back): nothing holds the lock any more. Only --yes removes it.
      if (request.yes) {
        this.log.warn({ restore: held.restoreId }, 'releasing the lock of a restore that has ended on every member');
        await lock.release(held.restoreId, signal);
      } else {
        staleLockNote = `the lock of restore ${held.restoreId} is left by a restore that ended on every member: --yes releases it`;
      }
      held = undefined;
    }
    const resume = held !== undefined && held.snapshot === request.name && abandoned;
    if (held && !resume) throw lockedError(held, lock.location);
    const restoreId = held?.restoreId ?? `r-${Math.floor(Date.now() / 1000)}-${randomBytes(3).toString('hex')}`;
    const unknown = request.skipMembers.filter((name) => !members.some((m) => m.name === name));
    if (unknown.length > 0) {
      throw new PreconditionError(
        'UNKNOWN_MEMBER',
        `--skip-member ${unknown.join(', ')}: not a member of the cluster (${members.map((m) => m.name).join(', ')})`,
        {
          hint: 'name members as etcd-stewardctl status lists them',
        },
      );
    }
    const participants = await this.participants(members, signal);
    const planMembers = await this.prepareAll(restoreId, participants, request.skipMembers, found.metadata, signal);
    const plan = buildPlan({
      restoreId,
      metadata: found.metadata,
      sourceUrl: found.sources[0]?.url ?? '',
      coordinator: config.name,
      quorum,
      resume,
      members: planMembers,
      ...(held ? { bumpRevision: held.bumpRevision } : {}),
      problems: found.problems,
    });
    if (staleLockNote) plan.warnings.push(staleLockNote);
    const drill = await this.options.lastDrill?.(request.name, signal);
    if (drill?.result === 'failed') {
      const what = `${request.name} FAILED its last restore drill (${drill.at} on ${drill.node}: ${drill.reason})`;
      if (request.force) plan.warnings.push(`${what}; restoring it anyway (--force)`);
      else plan.blockers.push(`${what}: restore another snapshot, or pass --force to restore this one anyway`);
    }
    const withSpec = request.withSpec ? specOfSnapshot(found.metadata) : {};
    if (request.withSpec) {
      if (withSpec.etcdFlags === undefined) {
        plan.blockers.push(`--with-spec: ${request.name} carries no cluster spec (taken by an older steward); restore it without --with-spec`);
      } else {
        plan.warnings.push(
          `--with-spec: the etcd flags (${Object.keys(withSpec.etcdFlags).join(', ') || 'none'}) and etcd version ${withSpec.etcdVersion || '(unset)'} of spec generation ${found.metadata.specGeneration ?? '?'} come back with the snapshot`,
        );
      }
    }
    emit({ plan });
    if (!request.yes) {
      throw new PreconditionError('RESTORE_NOT_CONFIRMED', `nothing was changed: this was the plan of restoring ${request.name}`, {
        hint: `read it, then run etcd-stewardctl restore ${request.name} --yes`,
      });
    }
    if (plan.blockers.length > 0) {
      throw new PreconditionError('RESTORE_BLOCKED', `the restore of ${request.name} is blocked: ${plan.blockers.join('; ')}`, {
        hint: 'fix what the plan lists and run it again; nothing was changed',
      });
    }
    const restored = members.filter((m) => !request.skipMembers.includes(m.name));
    const record: RestoreLockRecord = held
      ? { ...held, coordinator: config.name, heartbeatAt: new Date().toISOString() }
      : {
          restoreId,
          snapshot: request.name,
          sha256: found.metadata.sha256,
          coordinator: config.name,
          members: restored.map((m) => m.name),
          clusterToken: `etcd-steward-restore-${randomBytes(8).toString('hex')}`,
          bumpRevision: plan.bumpRevision,
          takenAt: new Date().toISOString(),
          heartbeatAt: new Date().toISOString(),
        };
    if (held) await lock.refresh(record, signal);
    else await lock.take(record, signal);
    this.log.warn({ restore: restoreId, snapshot: request.name, phase: 'Started', resume, members: record.members }, 'restore started');
    const controller = new AbortController();
    const heartbeat = lockHeartbeat(lock, record, this.options.shutdown, this.log);
    const run = runRestore({
      config,
      logger: this.options.logger,
      metrics: this.options.metrics,
      lock: record,
      // A refresh in flight must not write the lock back after the release: the heartbeat stops first.
      releaseLock: async (signal) => {
        await heartbeat.stop();
        await lock.release(restoreId, signal);
      },
      metadata: found.metadata,
      sources: found.sources,
      participants: participants.filter((p): p is Participant => !(p instanceof Error) && record.members.includes(p.node)),
      initialCluster: restored,
      plan,
      emit,
      callSignal: signal,
      abortSignal: controller.signal,
      shutdown: this.options.shutdown,
      recordSpec: this.options.recordSpec,
      withSpec,
      skipped: members.map((m) => m.name).filter((name) => !record.members.includes(name)),
    });
    this.running = { restoreId, controller, done: run.catch(() => undefined) };
    try {
      return await run;
    } finally {
      await heartbeat.stop();
      this.running = undefined;
    }
  }

  async status(signal: AbortSignal) {
    const members = await this.options.clusterMembers(signal);
    const participants = await this.participants(members, signal);
    return restoreStatus(participants, members, this.options.lock, this.running?.restoreId, signal);
  }

  /** Stops the restore running here (it rolls itself back), or ends one a coordinator left behind. */
  async abort(signal: AbortSignal) {
    const running = this.running;
    if (running) {
      running.controller.abort(new CancelledError(`restore ${running.restoreId} aborted by the operator`, { code: 'RESTORE_ABORTED' }));
      await running.done;
      return this.status(signal);
    }
    const members = await this.options.clusterMembers(signal);
    const participants = await this.participants(members, signal);
    const held = await this.options.lock.read(signal);
    let restoreId = held?.restoreId;
    if (!restoreId) {
      for (const p of participants) {
        if (p instanceof Error) continue;
        const state = await p.status('', signal).catch(() => undefined);
        if (state && state.restoreId && state.phase !== 'Finished' && state.phase !== 'Failed') restoreId = state.restoreId;
      }
    }
    if (!restoreId) return this.status(signal);
    this.log.warn({ restore: restoreId, phase: 'Failed' }, 'aborting a restore no coordinator drives');
    const results = await Promise.allSettled(participants.map((p) => (p instanceof Error ? Promise.reject(p) : p.abort(restoreId, signal))));
    if (results.every((r) => r.status === 'fulfilled')) await this.options.lock.release(restoreId, signal);
    return this.status(signal);
  }

  /** Every member asked answers and none is still in restore `restoreId` (a skipped member is not asked). */
  private async endedEverywhere(restoreId: string, members: ClusterMember[], signal: AbortSignal): Promise<boolean> {
    const participants = await this.participants(members, signal);
    const states = await Promise.all(
      participants.map((p) =>
        p instanceof NamedError ? Promise.resolve(undefined) : withDeadline(signal, 10_000, (bounded) => p.status(restoreId, bounded)).catch(() => undefined),
      ),
    );
    return states.every((s) => s !== undefined && !(s.restoreId === restoreId && s.phase !== 'Finished' && s.phase !== 'Failed'));
  }

  /** This steward's own member in-process, every other one over the peer API; an Error for one without an address. */
  private async participants(members: ClusterMember[], signal: AbortSignal): Promise<(Participant | NamedError)[]> {
    const { config, peers, member } = this.options;
    return Promise.all(
      members.map(async (m) => {
        if (m.name === config.name) return new LocalParticipant(member, m.name);
        const peer = await peers.byNode(m.name, signal).catch(() => undefined);
        return peer ? new RemoteParticipant(peer) : new NamedError(m.name, `no gRPC address is known for the steward of ${m.name}`);
      }),
    );
  }

  private async prepareAll(
    restoreId: string,
    participants: (Participant | NamedError)[],
    skip: string[],
    metadata: SnapshotMetadata,
    signal: AbortSignal,
  ): Promise<PlanMemberInput[]> {
    return Promise.all(
      participants.map(async (p) => {
        const node = p instanceof NamedError ? p.node : p.node;
        const skipped = skip.includes(node);
        if (p instanceof NamedError) return { node, facts: p, skipped };
        try {
          const facts = await withDeadline(signal, PREPARE_TIMEOUT_MS, (bounded) => p.prepare(restoreId, metadata.size, bounded));
          return { node, facts, skipped };
        } catch (err) {
          return { node, facts: err instanceof Error ? err : new Error(errorText(err)), skipped };
        }
      }),
    );
  }
}

/** Refreshes the lock every LOCK_HEARTBEAT_MS; `stop()` resolves once no refresh is in flight. */
function lockHeartbeat(lock: RestoreLock, record: RestoreLockRecord, shutdown: AbortSignal, log: Logger): { stop(): Promise<void> } {
  let inflight: Promise<unknown> = Promise.resolve();
  const timer = setInterval(() => {
    inflight = lock
      .refresh(record, shutdown)
      .catch((err: unknown) => log.warn({ err: errorText(err), restore: record.restoreId }, 'cannot refresh the restore lock'));
  }, LOCK_HEARTBEAT_MS);
  return {
    stop: async () => {
      clearInterval(timer);
      await inflight;
    },
  };
}

/** The etcd flags and version of the spec a snapshot carries, when it carries a well-formed one. */
function specOfSnapshot(metadata: SnapshotMetadata): { etcdFlags?: Record<string, string>; etcdVersion?: string } {
  const spec = metadata.clusterSpec;
  const flags = spec?.etcdFlags;
  if (!spec || typeof flags !== 'object' || flags === null || Object.values(flags).some((v) => typeof v !== 'string')) return {};
  return { etcdFlags: flags as Record<string, string>, etcdVersion: typeof spec.etcdVersion === 'string' ? spec.etcdVersion : '' };
}

/** A member the coordinator cannot drive, with why. */
export class NamedError extends Error {
  constructor(
    readonly node: string,
    message: string,
  ) {
    super(message);
  }
}

export { unreachableState };
export type { RestorePlan, RestoreMemberState };
export function typed(err: unknown): StewardError {
  return asStewardError(err);
}
