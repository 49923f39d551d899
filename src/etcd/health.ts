import { InterceptingCall, status as grpcStatus, type CallOptions, type Interceptor } from '@grpc/grpc-js';
import type { Etcd3, IMember } from 'etcd3';
import { errorText } from '../errors/index.js';
import { createMemberClient, type EtcdClientSecurity } from './client.js';

export interface MemberHealth {
  id: string;
  name: string;
  endpoint: string;
  healthy: boolean;
  isRaftLeader: boolean;
  dbSizeBytes: number;
  revision: number;
  alarms: string[];
  version: string;
  /** Why the member is unhealthy, in words an operator can act on; empty when healthy. */
  problem: string;
  /** It answered Status. */
  reachable: boolean;
  /** It answered and knows a raft leader: it can serve a consistent snapshot even if alarms make it unhealthy. */
  sawLeader: boolean;
  /** A learner is not a voter: it neither counts toward quorum nor makes one up. */
  learner?: boolean;
}

export interface ClusterHealth {
  clusterId: string;
  members: MemberHealth[];
  checkedAt: Date;
}

/** etcd reports cluster and member IDs as decimal uint64 strings; operators see them in hex, as etcdctl prints them. */
export function etcdIdHex(decimal: string): string {
  return /^\d+$/.test(decimal) ? BigInt(decimal).toString(16) : decimal;
}

/** Probes every member directly: Status, alarms, whether it sees a raft leader. */
export class ClusterProbe {
  private readonly clients = new Map<string, Etcd3>();

  constructor(
    private readonly seedEndpoints: string[],
    private readonly timeoutMs: number,
    private readonly security?: EtcdClientSecurity,
  ) {}

  /**
   * Probes the cluster once. An abort stops it at once: no further call starts and the calls in flight are
   * cancelled (a gRPC interceptor cancels them; etcd3 takes no signal), and the probe rejects with the reason.
   */
  async probe(signal?: AbortSignal): Promise<ClusterHealth> {
    signal?.throwIfAborted();
    // A child per probe: its listeners die with it, so a long-lived caller's signal never collects them.
    const local = new AbortController();
    const onAbort = (): void => local.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const options = cancelledBy(local.signal);
      const { members, clusterId } = await this.memberList(options, local.signal);
      const alarms = await this.alarms(members, options, local.signal);
      const results = await Promise.all(members.map((member) => this.probeMember(member, alarms.get(member.ID) ?? [], options)));
      local.signal.throwIfAborted();
      return { clusterId: clusterId ?? results.find((r) => r.clusterId)?.clusterId ?? '', members: results.map((r) => r.health), checkedAt: new Date() };
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }

  private client(endpoint: string): Etcd3 {
    let client = this.clients.get(endpoint);
    if (!client) {
      client = createMemberClient(endpoint, { callTimeoutMs: this.timeoutMs, ...(this.security ? { security: this.security } : {}) });
      this.clients.set(endpoint, client);
    }
    return client;
  }

  /** The member list from the first seed that answers: any single member knows the whole list. */
  private async memberList(options: CallOptions, signal: AbortSignal): Promise<{ members: IMember[]; clusterId: string | undefined }> {
    for (const endpoint of this.seedEndpoints) {
      signal.throwIfAborted();
      try {
        const response = await this.client(endpoint).cluster.memberList({}, options);
        return { members: response.members, clusterId: response.header.cluster_id };
      } catch {
        // Try the next seed.
      }
    }
    // No member answers: report each configured endpoint as unreachable rather than an empty cluster.
    const members = this.seedEndpoints.map((endpoint) => ({ ID: '', name: '', peerURLs: [], clientURLs: [endpoint], isLearner: false }));
    return { members, clusterId: undefined };
  }

  private async alarms(members: IMember[], options: CallOptions, signal: AbortSignal): Promise<Map<string, string[]>> {
    const byMember = new Map<string, string[]>();
    for (const member of members) {
      const endpoint = member.clientURLs[0];
      if (!endpoint) continue;
      signal.throwIfAborted();
      try {
        const response = await this.client(endpoint).maintenance.alarm({ action: 'Get', alarm: 'None', memberID: 0 }, options);
        for (const alarm of response.alarms) {
          const list = byMember.get(alarm.memberID) ?? [];
          list.push(String(alarm.alarm));
          byMember.set(alarm.memberID, list);
        }
        return byMember;
      } catch {
        // Try the next member: alarms are cluster-wide state that any member can report.
      }
    }
    return byMember;
  }

  private async probeMember(member: IMember, alarms: string[], options: CallOptions): Promise<{ health: MemberHealth; clusterId?: string }> {
    const endpoint = member.clientURLs[0] ?? '';
    const base: MemberHealth = {
      id: member.ID,
      name: member.name,
      endpoint,
      healthy: false,
      isRaftLeader: false,
      dbSizeBytes: 0,
      revision: 0,
      alarms,
      version: '',
      problem: '',
      reachable: false,
      sawLeader: false,
      learner: member.isLearner,
    };
    if (!endpoint) return { health: { ...base, problem: 'member has not started yet (no client URL published)' } };
    try {
      const status = await this.client(endpoint).maintenance.status(options);
      const memberId = status.header.member_id;
      const health: MemberHealth = {
        ...base,
        id: memberId,
        name: member.name,
        isRaftLeader: status.leader === memberId,
        dbSizeBytes: Number(status.dbSize),
        revision: Number(status.header.revision),
        version: status.version,
        reachable: true,
        sawLeader: Boolean(status.leader) && status.leader !== '0',
      };
      const problems: string[] = [];
      if (alarms.length > 0) problems.push(`alarm ${alarms.join(',')}`);
      if (!health.sawLeader) problems.push('no raft leader');
      if (status.errors?.length) problems.push(status.errors.join('; '));
      health.problem = problems.join('; ');
      health.healthy = problems.length === 0;
      return { health, clusterId: status.header.cluster_id };
    } catch (err) {
      return { health: { ...base, problem: `unreachable: ${errorText(err)}` } };
    }
  }
}

/** Call options whose interceptor cancels the call when `signal` aborts; the deadline still comes from the client's defaults. */
function cancelledBy(signal: AbortSignal): CallOptions {
  const interceptor: Interceptor = (options, nextCall) => {
    const call = new InterceptingCall(nextCall(options));
    if (signal.aborted) call.cancelWithStatus(grpcStatus.CANCELLED, 'health probe aborted');
    else signal.addEventListener('abort', () => call.cancelWithStatus(grpcStatus.CANCELLED, 'health probe aborted'), { once: true });
    return call;
  };
  return { interceptors: [interceptor] };
}
