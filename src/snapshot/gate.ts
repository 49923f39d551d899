import { PreconditionError } from '../errors/index.js';
import type { ClusterHealth, MemberHealth } from '../etcd/health.js';

export interface GateDecision {
  source: MemberHealth;
  /** Why the cluster-level checks failed, when `force` let the snapshot go ahead anyway. */
  overridden: string[];
}

/**
 * Decides whether a snapshot may be taken and from which member. The cluster must have quorum, a raft
 * leader and no alarms; `force` skips those cluster-level checks but still needs one member that answers
 * and sees a leader, since a snapshot from a member cut off from its cluster may be stale.
 */
export function gateSnapshot(health: ClusterHealth, localMember: string, force: boolean): GateDecision {
  const problems: string[] = [];
  const healthy = health.members.filter((m) => m.healthy);
  const quorum = Math.floor(health.members.length / 2) + 1;
  if (healthy.length < quorum) problems.push(`only ${healthy.length} of ${health.members.length} members are healthy (quorum needs ${quorum})`);
  for (const member of health.members) {
    if (member.alarms.length > 0) problems.push(`member ${member.name} has alarm ${member.alarms.join(',')}`);
  }
  if (!health.members.some((m) => m.isRaftLeader)) problems.push('no member is the raft leader');
  for (const member of health.members.filter((m) => !m.healthy)) problems.push(`${member.name || member.endpoint}: ${member.problem}`);

  if (problems.length > 0 && !force) {
    throw new PreconditionError('CLUSTER_UNHEALTHY', `refusing to snapshot an unhealthy cluster: ${problems.join('; ')}`, {
      hint: 'fix the members above (etcd-stewardctl status shows them), or pass --force to snapshot from a member that still answers',
    });
  }
  const withLeader = health.members.filter((m) => m.reachable && m.sawLeader);
  const source =
    withLeader.find((m) => m.healthy && m.name === localMember) ??
    withLeader.find((m) => m.healthy && !m.isRaftLeader) ??
    withLeader.find((m) => m.healthy) ??
    withLeader[0];
  if (!source) {
    throw new PreconditionError('NO_HEALTHY_MEMBER', `no etcd member can serve a snapshot: ${problems.join('; ') || 'no member answers'}`, {
      hint: 'bring a quorum of members back (etcd-stewardctl status shows which are down); --force cannot help when no member sees a raft leader',
    });
  }
  return { source, overridden: force ? problems : [] };
}
