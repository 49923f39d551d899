import { PreconditionError } from '../errors/index.js';
import type { ClusterHealth, MemberHealth } from '../etcd/health.js';

/** A member that was down or unhealthy when a snapshot was taken anyway: recorded in its metadata and log. */
export interface DegradedMember {
  member: string;
  problem: string;
}

export interface GateDecision {
  source: MemberHealth;
  /** Members that were down or unhealthy while the cluster still had quorum: the snapshot is of a degraded cluster. */
  degraded: DegradedMember[];
  /** Why the cluster-level checks failed, when `force` let the snapshot go ahead anyway. */
  overridden: string[];
}

/**
 * Decides whether a snapshot may be taken and from which member. A snapshot is taken whenever the cluster
 * can serve a consistent one: a quorum of voters answers and sees a raft leader, and no alarm is raised.
 * A member that is down while the others keep quorum does not stop it (that is when a backup matters
 * most): it is reported in `degraded`. `force` skips the cluster-level checks but still needs one member
 * that answers and sees a leader, since a snapshot from a member cut off from its cluster may be stale.
 * Without `force` the snapshot comes from a healthy member only.
 */
export function gateSnapshot(health: ClusterHealth, localMember: string, force: boolean): GateDecision {
  const problems: string[] = [];
  const voters = health.members.filter((m) => !m.learner);
  const inQuorum = voters.filter((m) => m.reachable && m.sawLeader);
  const quorum = Math.floor(voters.length / 2) + 1;
  if (inQuorum.length < quorum) {
    problems.push(`only ${inQuorum.length} of ${voters.length} members are healthy (quorum needs ${quorum} voting members that answer and see a raft leader)`);
  }
  for (const member of health.members) {
    if (member.alarms.length > 0) problems.push(`member ${label(member)} has alarm ${member.alarms.join(',')}`);
  }
  if (!health.members.some((m) => m.isRaftLeader)) problems.push('no member is the raft leader');
  const degraded = health.members.filter((m) => !m.healthy).map((m) => ({ member: label(m), problem: m.problem || 'unhealthy' }));

  if (problems.length > 0 && !force) {
    const down = degraded.map((d) => `${d.member}: ${d.problem}`);
    throw new PreconditionError('CLUSTER_UNHEALTHY', `refusing to snapshot an unhealthy cluster: ${[...problems, ...down].join('; ')}`, {
      hint: 'a snapshot needs quorum, a raft leader and no alarm (etcd-stewardctl status shows the members); or pass --force to snapshot from a member that still answers',
    });
  }
  const withLeader = health.members.filter((m) => m.reachable && m.sawLeader);
  const source =
    withLeader.find((m) => m.healthy && m.name === localMember) ??
    withLeader.find((m) => m.healthy && !m.isRaftLeader) ??
    withLeader.find((m) => m.healthy) ??
    (force ? withLeader[0] : undefined);
  if (!source) {
    throw new PreconditionError('NO_HEALTHY_MEMBER', `no etcd member can serve a snapshot: ${problems.join('; ') || 'no member answers'}`, {
      hint: 'bring a quorum of members back (etcd-stewardctl status shows which are down); --force cannot help when no member sees a raft leader',
    });
  }
  return { source, degraded, overridden: force ? problems : [] };
}

function label(member: MemberHealth): string {
  return member.name || member.endpoint || member.id;
}
