import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import { askPeers, type PeerView } from '../etcd/peers.js';
import { InvalidArgumentError, UnavailableError, errorText } from '../errors/index.js';
import { METADATA_SUFFIX } from '../snapshot/names.js';
import { readRestorePhase, restoreInProgress, type RestorePhaseRecord } from '../state/restore-phase.js';
import type { BackupStore } from '../store/store.js';
import type { ControlStore } from './control-store.js';
import { memberHasRun, type ClusterSpec } from './spec.js';

/**
 * etcd's own test: a data dir holds a member when its WAL dir has a .wal file; a bare or half-wiped
 * `member/` does not. Only "not there" means empty: a dir that cannot be read (permissions, I/O) throws,
 * so a healthy member is never taken for one that lost its data.
 */
export function hasMemberData(dataDir: string): boolean {
  const walDir = join(dataDir, 'member', 'wal');
  try {
    return readdirSync(walDir).some((file) => file.endsWith('.wal'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw new UnavailableError('DATA_DIR_UNREADABLE', `cannot read ${walDir}: ${errorText(err)}`, {
      hint: 'fix the permissions or the volume of --data-dir; nothing is started or changed until it can be read',
    });
  }
}

/** hasMemberData where a message or a timer only needs a best guess. */
export function hasMemberDataOr(dataDir: string, fallback: boolean): boolean {
  try {
    return hasMemberData(dataDir);
  } catch {
    return fallback;
  }
}

/** How many snapshots the stores hold; a listing that fails throws, so "could not look" never passes for "none". */
export async function countSnapshots(stores: BackupStore[], signal: AbortSignal): Promise<number> {
  let count = 0;
  for (const store of stores) {
    const objects = await store.list('', signal);
    count += objects.filter((o) => o.key.endsWith(METADATA_SUFFIX)).length;
  }
  return count;
}

/** Where this node's flags and the spec disagree on what the cluster is; undefined if they agree. */
export function specDrift(config: Pick<Config, 'initialCluster' | 'initialClusterToken'>, spec: ClusterSpec): string | undefined {
  const mine = config.initialCluster
    .map((m) => `${m.name}=${m.peerUrl}`)
    .sort()
    .join(',');
  const theirs = spec.members
    .map((m) => `${m.name}=${m.peerUrl}`)
    .sort()
    .join(',');
  const problems: string[] = [];
  if (mine !== theirs) problems.push(`--initial-cluster ${mine} vs spec ${theirs}`);
  // After a restore the cluster runs on the restore's new token: a node's flag still names the old one.
  if (!spec.lastRestore && config.initialClusterToken !== spec.clusterToken)
    problems.push(`--initial-cluster-token ${config.initialClusterToken} vs spec ${spec.clusterToken}`);
  return problems.length > 0 ? problems.join('; ') : undefined;
}

/** What the gate answers, by a stable kind: `allowed` verdicts start etcd, the others hold it back with a fix. */
export type Verdict =
  | { allowed: true; kind: 'resume' | 'join-existing' | 'join-formed' | 'join-forming' | 'bootstrap'; why: string }
  | {
      allowed: false;
      kind:
        | 'restore-in-progress'
        | 'restore-phase-unreadable'
        | 'skipped-by-restore'
        | 'data-dir-unreadable'
        | 'lost-member'
        | 'spec-unreadable'
        | 'spec-drift'
        | 'no-member-answers'
        | 'snapshots-unlisted'
        | 'snapshots-exist'
        | 'waiting-for-init';
      level: 'warn' | 'error';
      reason: string;
      fix: string;
    };

/**
 * Everything the gate decides on; each is read only when the decision needs it (undefined: not read yet).
 * A value that could not be read is an Error, never taken for "absent".
 */
export interface BootstrapFacts {
  restore?: RestorePhaseRecord | null | Error;
  hasData?: boolean | Error;
  peers?: PeerView;
  spec?: ClusterSpec | null | Error;
  snapshots?: number | Error;
}

export type Need = { need: keyof BootstrapFacts };

export interface GateContext {
  config: Pick<Config, 'name' | 'dataDir' | 'stateDir' | 'initialCluster' | 'initialClusterToken' | 'initialClusterState' | 'initialAdvertisePeerUrls'> &
    // The peers are asked over their peer URLs: with peer TLS, with the steward's etcd certificate.
    Partial<Pick<Config, 'etcdCacert' | 'etcdCert' | 'etcdKey'>>;
  /** The control store is shared by every node (S3); without S3 it is this node's own dir. */
  shared: boolean;
  controlLocation: string;
}

/**
 * The gate's rules as one pure function: it answers a verdict, or names the fact it needs next (so the caller
 * reads the restore phase first, asks the peers only for an empty data dir, and counts snapshots only where
 * they matter). Unit-testable without a process.
 */
export function decideBootstrap(facts: BootstrapFacts, context: GateContext): Verdict | Need {
  const { config, shared, controlLocation } = context;
  if (facts.restore === undefined) return { need: 'restore' };
  if (facts.hasData === undefined) return { need: 'hasData' };
  if (facts.restore instanceof Error) {
    return {
      allowed: false,
      kind: 'restore-phase-unreadable',
      level: 'error',
      reason: `not starting etcd: the restore phase record cannot be read, so a restore may be half done: ${errorText(facts.restore)}`,
      fix: hintOf(facts.restore, `inspect ${join(config.stateDir, 'restore')}`),
    };
  }
  if (facts.hasData instanceof Error) {
    return {
      allowed: false,
      kind: 'data-dir-unreadable',
      level: 'error',
      reason: `not starting etcd: ${errorText(facts.hasData)}`,
      fix: hintOf(facts.hasData, 'fix --data-dir'),
    };
  }
  const restore = facts.restore ?? undefined;
  if (facts.hasData) {
    // The one thing that holds back a member with data: a restore left it out, so its data is the old
    // cluster's. The spec is read for it, and a spec that cannot be read never holds a member back.
    if (facts.spec === undefined) return { need: 'spec' };
    const spec = facts.spec instanceof Error ? undefined : (facts.spec ?? undefined);
    const skippedBy = spec?.lastRestore?.skipped?.includes(config.name) && !(spec.startedMembers ?? []).includes(config.name) ? spec.lastRestore : undefined;
    if (!skippedBy) return { allowed: true, kind: 'resume', why: '' };
    const peerUrl = config.initialCluster.find((m) => m.name === config.name)?.peerUrl ?? '<its peer URL>';
    return {
      allowed: false,
      kind: 'skipped-by-restore',
      level: 'error',
      reason: `not starting etcd: restore ${skippedBy.restoreId} of ${skippedBy.snapshot} (${skippedBy.at}) left this member out (--skip-member), so its data dir ${config.dataDir} holds the old cluster, which the restored one refuses`,
      fix: `move ${config.dataDir} aside (never delete it), add this member to the restored cluster (etcdctl member add ${config.name} --peer-urls=${peerUrl}), and restart this steward with --initial-cluster-state=existing`,
    };
  }
  // A restore moved the data dir aside and has not put the restored one in place: not a member that lost its data.
  if (restore && restoreInProgress(restore)) {
    const moved = restore.oldDataDir ? `; the old data dir is at ${restore.oldDataDir}` : '';
    return {
      allowed: false,
      kind: 'restore-in-progress',
      level: 'warn',
      reason: `not starting etcd: restore ${restore.restoreId} of ${restore.snapshot} (started ${restore.startedAt}) is in phase ${restore.phase} and the data dir ${config.dataDir} is empty${moved}`,
      fix: 'the restore resumes or rolls back and then starts etcd; if it was abandoned, move the old data dir back into place — never start this member on an empty data dir',
    };
  }
  if (config.initialClusterState === 'existing')
    return { allowed: true, kind: 'join-existing', why: '--initial-cluster-state=existing: joining the members that hold the data' };
  if (facts.peers === undefined) return { need: 'peers' };
  const peers = facts.peers;
  const peerUrl = config.initialCluster.find((m) => m.name === config.name)?.peerUrl ?? config.initialAdvertisePeerUrls[0] ?? '<its peer URL>';
  const replace = (id: string | undefined): string =>
    `replace this member from a running one: etcdctl member remove ${id ?? '<its id, see etcdctl member list>'}, etcdctl member add ${config.name} --peer-urls=${peerUrl}, then restart this steward with --initial-cluster-state=existing`;
  const lost = `refusing to start etcd: the data dir ${config.dataDir} is empty, but this member has run before; it lost its data and must not start a new cluster`;
  // The running members know best, and answer even when every local record is gone with the disk.
  if (peers.thisMemberRan) {
    return {
      allowed: false,
      kind: 'lost-member',
      level: 'error',
      reason: `${lost} (the members at ${peers.answered.join(', ')} list it as started)`,
      fix: replace(peers.thisMemberId),
    };
  }
  if (facts.spec === undefined) return { need: 'spec' };
  if (facts.spec instanceof Error) {
    const err = facts.spec;
    const fix =
      err instanceof InvalidArgumentError
        ? `the spec file is damaged: replace ${controlLocation} with a valid copy (e.g. ${join(config.stateDir, 'last-cluster-spec.json')} from any node)`
        : `fix access to ${shared ? 'the control store (--control-s3-*, credentials)' : `the state dir ${config.stateDir}`}; this is checked again every few seconds`;
    return {
      allowed: false,
      kind: 'spec-unreadable',
      level: 'error',
      reason: `cannot read the cluster spec at ${controlLocation}, so etcd is not bootstrapped on the empty data dir: ${errorText(err)}`,
      fix,
    };
  }
  const spec = facts.spec ?? undefined;
  // With no leader running, `spec set` cannot be used: the spec object itself is what an operator can fix.
  const editSpec = `fix ${controlLocation} directly (no leader runs to accept 'etcd-stewardctl spec set')`;
  if (spec) {
    const drift = specDrift(config, spec);
    if (drift)
      return {
        allowed: false,
        kind: 'spec-drift',
        level: 'error',
        reason: `refusing to bootstrap etcd: this node's flags do not match the cluster spec (${drift})`,
        fix: `fix the flags, or ${editSpec}`,
      };
  }
  if (spec?.clusterId) {
    if (memberHasRun(spec, config.name)) {
      const fix =
        peers.answered.length > 0
          ? replace(peers.thisMemberId)
          : 'start the members that hold the data first, then replace this one from them; if every member lost its data, restore the cluster from a snapshot on every member (etcdutl/etcdctl snapshot restore)';
      return {
        allowed: false,
        kind: 'lost-member',
        level: 'error',
        reason: `${lost} (the cluster spec records it as started in cluster ${spec.clusterId})`,
        fix,
      };
    }
    // Formed without this member: it may join the members that run, never start a cluster of its own.
    if (peers.answered.length > 0)
      return {
        allowed: true,
        kind: 'join-formed',
        why: `cluster ${spec.clusterId} formed while this member never started; the members at ${peers.answered.join(', ')} run: joining them`,
      };
    return {
      allowed: false,
      kind: 'no-member-answers',
      level: 'error',
      reason: `not starting etcd: cluster ${spec.clusterId} formed while this member never started, and none of its members answers`,
      fix: 'start the members that hold the data first; this member then joins them',
    };
  }
  // A member that starts late joins a cluster still forming: the others run and list it as never started.
  if (spec && peers.answered.length > 0)
    return { allowed: true, kind: 'join-forming', why: `the members at ${peers.answered.join(', ')} run and list this member as never started: joining them` };
  if (facts.snapshots === undefined) return { need: 'snapshots' };
  if (facts.snapshots instanceof Error) {
    return {
      allowed: false,
      kind: 'snapshots-unlisted',
      level: 'error',
      reason: `cannot list the snapshots, so etcd is not bootstrapped on the empty data dir: ${errorText(facts.snapshots)}`,
      fix: 'fix access to the snapshot stores; this is checked again every few seconds',
    };
  }
  if (facts.snapshots > 0) {
    return {
      allowed: false,
      kind: 'snapshots-exist',
      level: 'error',
      reason: `refusing to initialise a new etcd cluster: the data dir is empty but ${facts.snapshots} snapshot(s) exist${spec ? '' : ' and there is no cluster spec'}, so this cluster's data or control files were lost`,
      fix: `restore the cluster from a snapshot, or put the spec back: copy a kept ${join(config.stateDir, 'last-cluster-spec.json')} to ${controlLocation} (no leader runs to accept 'etcd-stewardctl spec set'); never init over backups`,
    };
  }
  // Without S3 the spec lives in each node's own dir, so there is nothing shared for init to create first.
  if (!spec && shared) {
    return {
      allowed: false,
      kind: 'waiting-for-init',
      level: 'warn',
      reason: `no cluster spec yet at ${controlLocation} and this data dir is empty: waiting for 'etcd-stewardctl init --yes' to create a new cluster`,
      fix: "run 'etcd-stewardctl init --yes' once for a brand-new cluster",
    };
  }
  return {
    allowed: true,
    kind: 'bootstrap',
    why: spec
      ? `cluster spec generation ${spec.generation} matches this node and no snapshot exists: a cluster that has not formed yet`
      : 'no snapshot exists and no member lists this one as started',
  };
}

function hintOf(err: Error, fallback: string): string {
  const hint = (err as { hint?: unknown }).hint;
  return typeof hint === 'string' && hint !== '' ? hint : fallback;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

export interface BootstrapGateOptions {
  config: Config;
  control: ControlStore;
  /** The control store is shared by every node (S3); without S3 it is this node's own dir. */
  shared: boolean;
  backupStores: BackupStore[];
  logger: Logger;
}

/**
 * Asked before every start of etcd, restarts included (rules: decideBootstrap). A persisted restore phase is
 * read first. A data dir holding a member passes (etcd resumes it) unless a restore left that member out. An
 * empty one is held back while a
 * restore is in progress, when a running member lists this one as started, or the spec records it among the
 * members that ran (it lost its data); a member that never ran may join running members, never start a
 * cluster of its own; before formation it bootstraps only from a matching spec with no snapshot anywhere.
 * Joining with --initial-cluster-state=existing always passes: etcd then never creates a cluster, it syncs
 * from the members that have the data.
 */
export class BootstrapGate {
  private readonly log: Logger;
  private refusal = '';

  constructor(private readonly options: BootstrapGateOptions) {
    this.log = options.logger.child({ component: 'bootstrap' });
  }

  /** Why etcd is being held back, with the fix; empty when it is not. */
  get problem(): string {
    return this.refusal;
  }

  /** Resolves true once etcd may start; false if aborted first. Logs each new reason at once and again every TTL. */
  async wait(signal: AbortSignal): Promise<boolean> {
    let lastLogged = '';
    let lastLoggedAt = 0;
    while (!signal.aborted) {
      const verdict = await this.verdict(signal);
      if (signal.aborted) break;
      if (verdict.allowed) {
        if (verdict.why) this.log.info({ why: verdict.why, verdict: verdict.kind }, 'starting etcd on an empty data dir');
        this.refusal = '';
        return true;
      }
      this.refusal = `${verdict.reason} — ${verdict.fix}`;
      if (verdict.reason !== lastLogged || Date.now() - lastLoggedAt >= this.options.config.controlSpecTtl) {
        this.log[verdict.level](
          { location: this.options.control.location, dataDir: this.options.config.dataDir, verdict: verdict.kind, fix: verdict.fix },
          verdict.reason,
        );
        lastLogged = verdict.reason;
        lastLoggedAt = Date.now();
      }
      await sleep(Math.min(2000, this.options.config.controlSpecTtl), undefined, { signal }).catch(() => undefined);
    }
    return false;
  }

  /** Reads the facts decideBootstrap asks for, one at a time, until it answers. */
  async verdict(signal: AbortSignal): Promise<Verdict> {
    const { config, control, shared } = this.options;
    const context: GateContext = { config, shared, controlLocation: control.location };
    const facts: BootstrapFacts = {};
    for (;;) {
      const answer = decideBootstrap(facts, context);
      if (!('need' in answer)) return answer;
      switch (answer.need) {
        case 'restore':
          facts.restore = await readRestorePhase(config.stateDir).then((r) => r ?? null, asError);
          break;
        case 'hasData':
          try {
            facts.hasData = hasMemberData(config.dataDir);
          } catch (err) {
            facts.hasData = asError(err);
          }
          break;
        case 'peers':
          facts.peers = await askPeers(config, PEER_TIMEOUT_MS, signal);
          break;
        case 'spec':
          facts.spec = await control.read(signal).then((s) => s ?? null, asError);
          break;
        case 'snapshots':
          facts.snapshots = await countSnapshots(this.options.backupStores, signal).catch(asError);
          break;
      }
    }
  }
}

const PEER_TIMEOUT_MS = 2000;
