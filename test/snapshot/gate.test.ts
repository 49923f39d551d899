import { describe, expect, it } from 'vitest';
import { PreconditionError } from '../../src/errors/index.js';
import type { ClusterHealth, MemberHealth } from '../../src/etcd/health.js';
import { gateSnapshot } from '../../src/snapshot/gate.js';

function member(name: string, over: Partial<MemberHealth> = {}): MemberHealth {
  return {
    id: name,
    name,
    endpoint: `http://${name}:2379`,
    healthy: true,
    isRaftLeader: false,
    dbSizeBytes: 1,
    revision: 10,
    alarms: [],
    version: '3.4.23',
    problem: '',
    reachable: true,
    sawLeader: true,
    ...over,
  };
}
const down = (name: string): MemberHealth => member(name, { healthy: false, reachable: false, sawLeader: false, problem: 'unreachable: connect ECONNREFUSED' });
const cluster = (...members: MemberHealth[]): ClusterHealth => ({ clusterId: '1', members, checkedAt: new Date() });
const refusal = (fn: () => unknown): PreconditionError => {
  try {
    fn();
  } catch (err) {
    if (err instanceof PreconditionError) return err;
    throw err;
  }
  throw new Error('expected a refusal');
};

describe('snapshot gate verdicts', () => {
  it('a healthy cluster: the local member is the source, nothing degraded', () => {
    const decision = gateSnapshot(cluster(member('a', { isRaftLeader: true }), member('b'), member('c')), 'a', false);
    expect(decision.source.name).toBe('a');
    expect(decision.degraded).toEqual([]);
    expect(decision.overridden).toEqual([]);
  });

  it('prefers a healthy follower when the local member is not in the cluster', () => {
    const decision = gateSnapshot(cluster(member('a', { isRaftLeader: true }), member('b'), member('c')), 'x', false);
    expect(decision.source.name).toBe('b');
  });

  it('one of three members down: snapshot from a healthy member, the down member recorded as degraded', () => {
    const decision = gateSnapshot(cluster(member('a', { isRaftLeader: true }), member('b'), down('c')), 'c', false);
    expect(decision.source.name).toBe('b');
    expect(decision.degraded).toEqual([{ member: 'c', problem: 'unreachable: connect ECONNREFUSED' }]);
  });

  it('two of five down still has quorum', () => {
    const decision = gateSnapshot(cluster(member('a', { isRaftLeader: true }), member('b'), member('c'), down('d'), down('e')), 'a', false);
    expect(decision.degraded.map((d) => d.member)).toEqual(['d', 'e']);
  });

  it('refuses without quorum (two of three down), naming quorum and the down members', () => {
    const err = refusal(() => gateSnapshot(cluster(member('a', { isRaftLeader: true }), down('b'), down('c')), 'a', false));
    expect(err.code).toBe('CLUSTER_UNHEALTHY');
    expect(err.message).toMatch(/refusing to snapshot an unhealthy cluster: only 1 of 3 members are healthy \(quorum needs 2/);
    expect(err.message).toContain('b: unreachable');
  });

  it('refuses with an alarm even when every member answers', () => {
    const alarmed = member('b', { healthy: false, alarms: ['NOSPACE'], problem: 'alarm NOSPACE' });
    const err = refusal(() => gateSnapshot(cluster(member('a', { isRaftLeader: true }), alarmed, member('c')), 'a', false));
    expect(err.code).toBe('CLUSTER_UNHEALTHY');
    expect(err.message).toContain('alarm NOSPACE');
  });

  it('refuses when no member is the raft leader', () => {
    const err = refusal(() => gateSnapshot(cluster(member('a'), member('b'), member('c')), 'a', false));
    expect(err.message).toContain('no member is the raft leader');
  });

  it('a learner counts neither for nor against quorum', () => {
    const learnerDown = { ...down('l'), learner: true };
    const decision = gateSnapshot(cluster(member('a', { isRaftLeader: true }), member('b'), down('c'), learnerDown), 'a', false);
    expect(decision.degraded.map((d) => d.member)).toEqual(['c', 'l']);
    const err = refusal(() => gateSnapshot(cluster(member('a', { isRaftLeader: true }), down('b'), member('l', { learner: true })), 'a', false));
    expect(err.message).toMatch(/only 1 of 2 members are healthy/);
  });

  it('--force overrides the cluster checks but still needs a member that sees a leader', () => {
    const alarmed = member('a', { healthy: false, alarms: ['NOSPACE'], problem: 'alarm NOSPACE', isRaftLeader: true });
    const decision = gateSnapshot(cluster(alarmed, down('b'), down('c')), 'a', true);
    expect(decision.source.name).toBe('a');
    expect(decision.overridden.some((p) => p.includes('NOSPACE'))).toBe(true);
    const err = refusal(() => gateSnapshot(cluster(down('a'), down('b'), down('c')), 'a', true));
    expect(err.code).toBe('NO_HEALTHY_MEMBER');
  });
});
