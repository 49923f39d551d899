import { errorText } from '../errors/index.js';
import type { PlanMember, RestorePlan, RestorePrepareResponse } from '../rpc/types.js';
import type { SnapshotMetadata } from '../snapshot/metadata.js';
import { metadataKey } from '../snapshot/names.js';

/** Bump used when no steward has recorded a revision: what OpenShift's restore uses. */
export const FALLBACK_BUMP = 1_000_000_000;
/** A gzip snapshot's decompressed size is not recorded; budget this many times its stored size. */
const GZIP_BUDGET_FACTOR = 6;

export type PrepareFacts = Omit<RestorePrepareResponse, 'header'>;

export interface PlanMemberInput {
  node: string;
  /** The member's answer to RestorePrepare, or why it gave none. */
  facts: PrepareFacts | Error;
  skipped: boolean;
}

export interface PlanInput {
  restoreId: string;
  metadata: SnapshotMetadata;
  sourceUrl: string;
  coordinator: string;
  quorum: boolean;
  resume: boolean;
  members: PlanMemberInput[];
  /** A resumed restore keeps the bump it started with. */
  bumpRevision?: number;
  problems: string[];
  now?: Date;
}

/** Bytes a member needs: the staging file plus the restored data dir, both about the snapshot's raw size. */
export function neededBytes(metadata: SnapshotMetadata): number {
  const raw = metadata.compressed ? metadata.size * GZIP_BUDGET_FACTOR : metadata.size;
  return (metadata.compressed ? metadata.size : 0) + raw * 2;
}

/** One N for every member: above the highest revision any steward saw, so no watcher's revision is reused. */
export function revisionBump(members: PrepareFacts[], snapshotRevision: number): number {
  const highest = Math.max(snapshotRevision, ...members.map((m) => m.lastRevision));
  return highest > 0 ? Math.ceil(highest * 1.2) : FALLBACK_BUMP;
}

/** "3.4.23" → [3, 4]; undefined for anything else. */
function minor(version: string): [number, number] | undefined {
  const match = /^v?(\d+)\.(\d+)/.exec(version);
  return match ? [Number(match[1]), Number(match[2])] : undefined;
}

function newerThan(a: string, b: string): boolean {
  const [x, y] = [minor(a), minor(b)];
  if (!x || !y) return false;
  return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
}

/** What a restore will do and what stops it, decided from facts alone (unit-testable). */
export function buildPlan(input: PlanInput): RestorePlan {
  const { metadata } = input;
  const needed = neededBytes(metadata);
  const blockers: string[] = [];
  const warnings: string[] = [...input.problems];
  const members: PlanMember[] = [];
  const answered: PrepareFacts[] = [];
  const restoredFacts: PrepareFacts[] = [];
  for (const member of input.members) {
    const base: PlanMember = {
      node: member.node,
      dataDir: '',
      oldDataDir: '',
      freeBytes: 0,
      neededBytes: needed,
      etcdVersion: '',
      restoreTool: '',
      skipped: member.skipped,
      problem: '',
      phase: '',
    };
    if (member.facts instanceof Error) {
      const problem = `its steward does not answer: ${errorText(member.facts)}`;
      base.problem = problem;
      if (member.skipped)
        warnings.push(
          `member ${member.node} is skipped (--skip-member): left out of the restored cluster (its old data cannot rejoin: the cluster ID changed); move its data dir aside and re-add it with etcdctl member add`,
        );
      else blockers.push(`member ${member.node}: ${problem} — bring it back, or pass --skip-member ${member.node} to restore without it`);
      members.push(base);
      continue;
    }
    const facts = member.facts;
    answered.push(facts);
    if (!member.skipped) restoredFacts.push(facts);
    const free = Math.min(facts.stateFreeBytes, facts.dataFreeBytes);
    Object.assign(base, {
      dataDir: facts.dataDir,
      oldDataDir: facts.dataDirExists ? facts.oldDataDir : '(no data dir to keep)',
      freeBytes: free,
      etcdVersion: facts.etcdVersion,
      restoreTool: facts.restoreTool,
      phase: facts.state?.phase ?? '',
    });
    if (member.skipped) {
      warnings.push(
        `member ${member.node} answers but is skipped (--skip-member): left out of the restored cluster (its old data cannot rejoin: the cluster ID changed); move its data dir aside and re-add it with etcdctl member add`,
      );
    } else {
      if (free < needed) {
        base.problem = `not enough disk: ${free} bytes free on the state dir or the data dir's volume, ${needed} needed (staging file and restored data dir)`;
        blockers.push(`member ${member.node}: ${base.problem}`);
      }
      if (metadata.etcdVersion && facts.etcdVersion && newerThan(metadata.etcdVersion, facts.etcdVersion)) {
        const problem = `the snapshot is from etcd ${metadata.etcdVersion}, newer than the etcd ${facts.etcdVersion} this member runs (etcd refuses a data dir of a newer version)`;
        base.problem = base.problem ? `${base.problem}; ${problem}` : problem;
        blockers.push(`member ${member.node}: ${problem}`);
      }
    }
    members.push(base);
  }
  const restored = input.members.filter((m) => !m.skipped);
  if (restored.length === 0) blockers.push('every member is skipped: nothing to restore');
  const canBump = restoredFacts.length > 0 && restoredFacts.every((f) => f.toolBumpsRevision);
  const bump = input.bumpRevision ?? (canBump ? revisionBump(answered, metadata.revision) : 0);
  const bumpNote =
    bump > 0
      ? `the revision is bumped by ${bump} (--bump-revision ${bump} --mark-compacted): Kubernetes watchers see a compaction and re-list instead of going silently stale`
      : `the restore tool here cannot bump the revision (${[...new Set(restoredFacts.map((f) => f.restoreTool))].join(', ') || 'unknown tool'}: needs etcdutl ≥ 3.5.10 or etcdctl ≥ 3.4.27): the revision goes back to ${metadata.revision}, and Kubernetes informers and watch caches keep state the cluster no longer has — restart every kube-apiserver, controller manager and scheduler after the restore`;
  if (bump === 0) warnings.push('revision not bumped: restart every kube-apiserver, controller manager and scheduler after the restore');
  const now = input.now ?? new Date();
  return {
    restoreId: input.restoreId,
    snapshot: {
      name: metadata.name,
      node: metadata.node,
      location: input.sourceUrl,
      size: metadata.size,
      sha256: metadata.sha256,
      created: metadata.created,
      kind: metadata.kind,
      compressed: metadata.compressed,
      locationId: '',
      key: metadata.key || metadataKey(metadata.name),
      verification: null,
    },
    revision: metadata.revision,
    etcdVersion: metadata.etcdVersion,
    source: input.sourceUrl,
    members,
    bumpRevision: bump,
    bumpNote,
    blockers,
    warnings,
    coordinator: input.coordinator,
    quorum: input.quorum,
    resume: input.resume,
    ageSeconds: Math.max(0, (now.getTime() - Date.parse(metadata.created)) / 1000),
  };
}
