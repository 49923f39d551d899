import { InterceptingCall, status as grpcStatus, type CallOptions, type Interceptor } from '@grpc/grpc-js';
import { setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Etcd3, IAlarmResponse, IHashKVResponse, IMember, IMemberListResponse, IStatusResponse } from 'etcd3';
import { DeadlineError, InvalidArgumentError, errorText } from '../errors/index.js';
import { createMemberClient, type EtcdClientSecurity } from './client.js';
import { etcdIdHex } from './health.js';

/**
 * The checks a restore runs on its freshly restored members while their client URLs are quarantined (each
 * etcd listens on a loopback endpoint of its own, so nothing but the restore can write to it), before they
 * serve clients again. Every member restored the same file, so anything that differs between them — cluster
 * ID, revision, HashKV, key count — means the restore went wrong somewhere, and no Kubernetes client may see it.
 */

export interface RestoredClusterExpectation {
  /** etcd member names that must all be voters */
  members: string[];
  minRevision: number;
}

export interface RestoredMemberReport {
  name: string;
  endpoint: string;
  ok: boolean;
  /** What is wrong with this member, in words; empty when ok. */
  problem: string;
  revision: number;
  /** HashKV at the report's common revision; 0 when the member did not answer it. */
  hashKV: number;
  /** Hex, as etcdctl prints it. */
  clusterId: string;
  isLeader: boolean;
  /** Live keys at the report's common revision. */
  keys: number;
}

export interface RestoredClusterReport {
  ok: boolean;
  /** Every problem, cluster-wide and per member (each naming its member). */
  problems: string[];
  clusterId: string;
  /** The revision HashKV and the key counts were compared at: the lowest any member reported. */
  revision: number;
  /** Name of the raft leader; empty when there is none. */
  leader: string;
  members: RestoredMemberReport[];
}

export interface RestoreCheckOptions {
  /** Deadline of every call but HashKV: a member that does not answer within it is a problem, not a hang. */
  callTimeoutMs?: number;
  /** HashKV reads every key revision in the db: seconds on a multi-GiB db, so it gets a deadline of its own. */
  hashTimeoutMs?: number;
  /** The steward's etcd TLS files and user, read for every round's clients. */
  security?: EtcdClientSecurity;
}

const DEFAULT_CALL_TIMEOUT_MS = 2_000;
const DEFAULT_HASH_TIMEOUT_MS = 15_000;

/** Range end `\0` with key `\0`: every key in the keyspace. */
const WHOLE_KEYSPACE = { key: Buffer.from([0]), range_end: Buffer.from([0]) };

interface Probe {
  name: string;
  endpoint: string;
  client: Etcd3;
  status?: IStatusResponse;
  /** Undefined until the member answered: one that did not is already a problem, not a disagreement too. */
  hashKV?: number;
  keys?: number;
  problems: string[];
}

/**
 * One round of every check. Never throws for what it finds (that goes into the report); rejects with the
 * signal's reason when aborted, after cancelling the calls in flight. Clients live for this round only.
 */
export async function checkRestoredCluster(
  endpoints: Record<string, string>,
  expect: RestoredClusterExpectation,
  signal: AbortSignal,
  options: RestoreCheckOptions = {},
): Promise<RestoredClusterReport> {
  signal.throwIfAborted();
  const callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
  const hashTimeoutMs = options.hashTimeoutMs ?? DEFAULT_HASH_TIMEOUT_MS;
  // A child per round: its listeners die with it, so a long-lived caller's signal never collects them.
  const local = new AbortController();
  // Each call of the round listens on it (about five per member); they die with the round.
  setMaxListeners(10 + 8 * Object.keys(endpoints).length, local.signal);
  const onAbort = (): void => local.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  const probes: Probe[] = Object.keys(endpoints)
    .sort()
    .map((name) => {
      const endpoint = endpoints[name] ?? '';
      return {
        name,
        endpoint,
        client: createMemberClient(endpoint, { callTimeoutMs, ...(options.security ? { security: options.security } : {}) }),
        problems: [],
      };
    });
  try {
    return await runChecks(probes, expect, { callTimeoutMs, hashTimeoutMs }, local.signal);
  } finally {
    signal.removeEventListener('abort', onAbort);
    // Cancels the calls still running (the slower answers firstAnswer did not wait for).
    local.abort(new Error('restore check round ended'));
    // Only unary calls were made, so close() ends every channel: no watch or lease loop is left behind.
    for (const probe of probes) probe.client.close();
  }
}

async function runChecks(
  probes: Probe[],
  expect: RestoredClusterExpectation,
  timeouts: Required<Omit<RestoreCheckOptions, 'security'>>,
  signal: AbortSignal,
): Promise<RestoredClusterReport> {
  const calls = cancelledBy(signal);
  const clusterProblems: string[] = [];
  const byName = new Map(probes.map((p) => [p.name, p]));

  for (const name of expect.members) {
    if (!byName.has(name)) clusterProblems.push(`member ${name} is expected but no quarantine endpoint was given for it`);
  }
  for (const probe of probes) {
    if (!expect.members.includes(probe.name)) probe.problems.push('has an endpoint but is not an expected member');
  }

  await Promise.all(
    probes.map(async (probe) => {
      try {
        probe.status = await probe.client.maintenance.status(calls);
      } catch (err) {
        probe.problems.push(`did not answer Status: ${errorText(err)}`);
      }
    }),
  );
  signal.throwIfAborted();
  const answering = probes.filter((p): p is Probe & { status: IStatusResponse } => p.status !== undefined);

  const list = await firstAnswer(answering, (p) => p.client.cluster.memberList({}, calls), signal);
  const alarms = await firstAnswer(answering, (p) => p.client.maintenance.alarm({ action: 'Get', alarm: 'None', memberID: 0 }, calls), signal);
  const listed = list?.members ?? [];
  const nameOfId = new Map(listed.map((m) => [m.ID, m.name || `unstarted member ${etcdIdHex(m.ID)}`]));
  const describeId = (id: string): string => nameOfId.get(id) ?? `unknown member ${etcdIdHex(id)}`;

  if (answering.length === 0) clusterProblems.push('no member answered');
  else if (!list) clusterProblems.push('no member answered MemberList');
  else checkMemberList(listed, expect, byName, clusterProblems);

  if (answering.length > 0 && !alarms) clusterProblems.push('no member answered the alarm list');
  for (const alarm of alarms?.alarms ?? []) {
    const probe = byName.get(nameOfId.get(alarm.memberID) ?? '');
    if (probe) probe.problems.push(`has alarm ${alarm.alarm}`);
    else clusterProblems.push(`alarm ${alarm.alarm} is raised on ${describeId(alarm.memberID)}`);
  }

  for (const probe of answering) {
    const { status } = probe;
    const memberId = status.header.member_id;
    // A quarantine endpoint that reaches the wrong member would make every other check compare the wrong data.
    const entry = listed.find((m) => m.name === probe.name);
    if (entry && entry.ID !== memberId) probe.problems.push(`answers at ${probe.endpoint} as ${describeId(memberId)} (${etcdIdHex(memberId)}), not as itself`);
    if (!status.leader || status.leader === '0') probe.problems.push('sees no raft leader');
    // Status.errors is not checked: etcd (3.4 to 3.6) fills it with "no leader" and the text of every alarm,
    // on every member, so it would blame each member for another's alarm; both are checked above and below.
    if (Number(status.header.revision) < expect.minRevision) {
      probe.problems.push(`is at revision ${status.header.revision}, below the expected minimum ${expect.minRevision}`);
    }
  }

  const leaders = new Set(answering.map((p) => p.status.leader).filter((id) => id && id !== '0'));
  const leaderId = leaders.size === 1 ? [...leaders][0] : undefined;
  if (answering.length > 0 && leaders.size === 0) clusterProblems.push('the cluster has no raft leader');
  if (leaders.size > 1) {
    clusterProblems.push(`members disagree on the raft leader: ${answering.map((p) => `${p.name} sees ${describeId(p.status.leader)}`).join(', ')}`);
  }
  if (leaderId && !nameOfId.has(leaderId) && list) clusterProblems.push(`the raft leader ${etcdIdHex(leaderId)} is not in the member list`);

  compare('cluster ID', answering, (p) => etcdIdHex(p.status.header.cluster_id));
  compare('revision', answering, (p) => Number(p.status.header.revision));

  // Compared at one revision, so the answers stay comparable even if something wrote in between.
  const revision = answering.length > 0 ? Math.min(...answering.map((p) => Number(p.status.header.revision))) : 0;
  if (revision > 0) {
    await Promise.all(
      answering.map(async (probe) => {
        try {
          const hashed = await hashKV(probe.client, revision, { ...calls, deadline: Date.now() + timeouts.hashTimeoutMs });
          probe.hashKV = Number(hashed.hash);
        } catch (err) {
          probe.problems.push(`did not answer HashKV at revision ${revision}: ${errorText(err)}`);
        }
        try {
          // Serializable: this member's own keyspace, not what a linearizable read via the leader would show.
          const counted = await probe.client.kv.range({ ...WHOLE_KEYSPACE, count_only: true, serializable: true, revision }, calls);
          probe.keys = Number(counted.count);
        } catch (err) {
          probe.problems.push(`did not answer a key count at revision ${revision}: ${errorText(err)}`);
        }
      }),
    );
    signal.throwIfAborted();
    compare(
      `HashKV at revision ${revision}`,
      answering.filter((p) => p.hashKV !== undefined),
      (p) => p.hashKV ?? 0,
    );
    compare(
      `live key count at revision ${revision}`,
      answering.filter((p) => p.keys !== undefined),
      (p) => p.keys ?? 0,
    );
  }

  const members: RestoredMemberReport[] = probes.map((p) => ({
    name: p.name,
    endpoint: p.endpoint,
    ok: p.problems.length === 0,
    problem: p.problems.join('; '),
    revision: p.status ? Number(p.status.header.revision) : 0,
    hashKV: p.hashKV ?? 0,
    clusterId: p.status ? etcdIdHex(p.status.header.cluster_id) : '',
    isLeader: p.status !== undefined && p.status.leader === p.status.header.member_id,
    keys: p.keys ?? 0,
  }));
  const problems = [...clusterProblems, ...probes.flatMap((p) => p.problems.map((problem) => `member ${p.name} (${p.endpoint}) ${problem}`))];
  return {
    ok: problems.length === 0,
    problems,
    clusterId: list ? etcdIdHex(list.header.cluster_id) : (members.find((m) => m.clusterId)?.clusterId ?? ''),
    revision,
    leader: leaderId ? (nameOfId.get(leaderId) ?? etcdIdHex(leaderId)) : '',
    members,
  };
}

function checkMemberList(listed: IMember[], expect: RestoredClusterExpectation, byName: Map<string, Probe>, clusterProblems: string[]): void {
  const problemOf = (name: string, problem: string): void => {
    const probe = byName.get(name);
    if (probe) probe.problems.push(problem);
    else clusterProblems.push(`member ${name} ${problem}`);
  };
  for (const name of expect.members) {
    if (!listed.some((m) => m.name === name)) problemOf(name, 'is expected but not in the member list');
  }
  for (const member of listed) {
    if (!member.name) clusterProblems.push(`the member list has member ${etcdIdHex(member.ID)} that never started (no name yet)`);
    else if (!expect.members.includes(member.name))
      clusterProblems.push(`the member list has member ${member.name} (${etcdIdHex(member.ID)}), which is not expected`);
    // Every member of --initial-cluster comes back as a voter; a learner here means something added it since.
    if (member.isLearner) problemOf(member.name || etcdIdHex(member.ID), 'is a learner, not a voter');
  }
}

/**
 * Adds a problem to every member whose value differs from the strict majority's (or to every member when no
 * majority exists), naming what the others have.
 */
function compare<P extends Probe>(label: string, probes: P[], value: (p: P) => string | number): void {
  if (probes.length < 2) return;
  const counts = new Map<string | number, number>();
  for (const probe of probes) counts.set(value(probe), (counts.get(value(probe)) ?? 0) + 1);
  if (counts.size === 1) return;
  const [top, topCount] = [...counts].sort((a, b) => b[1] - a[1])[0] ?? ['', 0];
  const majority = topCount * 2 > probes.length ? top : undefined;
  for (const probe of probes) {
    const mine = value(probe);
    if (majority !== undefined && mine === majority) continue;
    const others = probes.filter((p) => p !== probe).map((p) => `${p.name} has ${value(p)}`);
    probe.problems.push(`${label} is ${mine}, while ${others.join(', ')}`);
  }
}

/**
 * The first answer any member gives, asked of all at once: cluster-wide state (member list, alarms) that any
 * member knows. In parallel because the alarm list goes through raft: while a leader is being elected every
 * member holds the call until its deadline, and asking one after another would add those up.
 */
async function firstAnswer<T extends IMemberListResponse | IAlarmResponse>(
  probes: Probe[],
  call: (p: Probe) => Promise<T>,
  signal: AbortSignal,
): Promise<T | undefined> {
  if (probes.length === 0) return undefined;
  const answer = await Promise.any(probes.map(call)).catch(() => undefined);
  signal.throwIfAborted();
  return answer;
}

/**
 * Rounds of checkRestoredCluster until one passes; throws DeadlineError RESTORE_CHECKS_TIMEOUT with the last
 * round's problems when `timeoutMs` passes first. The round in flight at the deadline is cancelled.
 */
export async function waitForRestoredCluster(
  endpoints: Record<string, string>,
  expect: RestoredClusterExpectation,
  options: { timeoutMs: number; intervalMs?: number; signal: AbortSignal; onProblem?: (problems: string[]) => void } & RestoreCheckOptions,
): Promise<RestoredClusterReport> {
  const { signal, timeoutMs } = options;
  const intervalMs = options.intervalMs ?? 1_000;
  signal.throwIfAborted();
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(new Error('deadline')), timeoutMs);
  const onAbort = (): void => deadline.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  let lastProblems: string[] = ['no check round finished'];
  let rounds = 0;
  try {
    for (;;) {
      let report: RestoredClusterReport;
      try {
        report = await checkRestoredCluster(endpoints, expect, deadline.signal, options);
      } catch (err) {
        if (signal.aborted) throw signal.reason;
        if (deadline.signal.aborted) break;
        throw err;
      }
      rounds++;
      if (report.ok) return report;
      lastProblems = report.problems;
      options.onProblem?.(report.problems);
      await sleep(intervalMs, undefined, { signal: deadline.signal }).catch(() => undefined);
      if (signal.aborted) throw signal.reason;
      if (deadline.signal.aborted) break;
    }
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
  }
  throw new DeadlineError(`the restored members did not pass their checks within ${timeoutMs} ms (${rounds} rounds): ${lastProblems.join('; ')}`, {
    code: 'RESTORE_CHECKS_TIMEOUT',
    hint: 'the restored members stay quarantined: fix what the problems name (their etcd logs say more) and retry, or abort the restore',
  });
}

/**
 * Deletes every key under `prefix` in one range delete, on one member, and returns how many went. The restore
 * drops the steward's own stale keys (its election, its schedule claims) from the restored keyspace with it,
 * their leases revoked first.
 */
export async function deleteKeysWithPrefix(endpoint: string, prefix: string, signal: AbortSignal, security?: EtcdClientSecurity): Promise<number> {
  // An empty prefix would be the whole keyspace: the cluster's data, never the steward's to drop.
  if (prefix === '')
    throw new InvalidArgumentError('refusing to delete with an empty prefix: it would delete every key', { hint: 'name the prefix to delete' });
  signal.throwIfAborted();
  const local = new AbortController();
  const onAbort = (): void => local.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  // One raft proposal, however many keys: the default unary deadline is ample.
  const client = createMemberClient(endpoint, security ? { security } : {});
  try {
    const key = Buffer.from(prefix);
    // The leases of those keys come back with the snapshot, and their old holders renew them: a steward that
    // led when the snapshot was taken would go on believing it leads. Revoked, their keepalives fail.
    const held = await client.kv.range({ key, range_end: prefixEnd(key), keys_only: true }, cancelledBy(local.signal));
    const leases = new Set(held.kvs.map((kv) => String(kv.lease)).filter((lease) => lease !== '0'));
    for (const ID of leases) {
      await client.leaseClient.leaseRevoke({ ID }, cancelledBy(local.signal)).catch((err: unknown) => {
        // Already expired is the same outcome.
        if (!/not found|expired/i.test(String((err as Error).message))) throw err;
      });
    }
    const response = await client.kv.deleteRange({ key, range_end: prefixEnd(key) }, cancelledBy(local.signal));
    return Number(response.deleted);
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort);
    client.close();
  }
}

/** The smallest key after every key that starts with `prefix` (etcd's clientv3.GetPrefixRangeEnd). */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    const byte = end[i] ?? 0xff;
    if (byte < 0xff) {
      end[i] = byte + 1;
      return end.subarray(0, i + 1);
    }
  }
  // All 0xff: no key follows them, so the range runs to the end of the keyspace.
  return Buffer.from([0]);
}

/**
 * etcd3 1.1.2's `maintenance.hashKV()` asks grpc-js for a method `hashKV`, which does not exist (grpc-js names
 * it `HashKV`, from the proto, and `hashKv`): it always fails with "client[method] is not a function". Its
 * connection pool, given the proto's name, makes the same call correctly (same deadline, cast errors).
 */
async function hashKV(client: Etcd3, revision: number, options: CallOptions): Promise<IHashKVResponse> {
  const pool = (client as unknown as { pool: { exec(service: string, method: string, payload: unknown, options: CallOptions): Promise<unknown> } }).pool;
  return (await pool.exec('Maintenance', 'HashKV', { revision }, options)) as IHashKVResponse;
}

/** Call options whose interceptor cancels the call when `signal` aborts; the deadline still comes from the client's defaults. */
function cancelledBy(signal: AbortSignal): CallOptions {
  const interceptor: Interceptor = (options, nextCall) => {
    const call = new InterceptingCall(nextCall(options));
    if (signal.aborted) call.cancelWithStatus(grpcStatus.CANCELLED, 'restore check aborted');
    else signal.addEventListener('abort', () => call.cancelWithStatus(grpcStatus.CANCELLED, 'restore check aborted'), { once: true });
    return call;
  };
  return { interceptors: [interceptor] };
}
