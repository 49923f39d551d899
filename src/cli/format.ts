import type { DeleteFailure, OrphanObject, SnapshotInfo, SnapshotRecord, StatusResponse, VerifyResponse } from '../rpc/types.js';

/** Left-aligned columns with two spaces between; no library needed for a table this plain. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

export function humanBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** The `-o json` shape of status: camelCase, stable, documented in the README. */
export function statusJson(status: StatusResponse): object {
  return {
    node: status.node,
    isLeader: status.isLeader,
    leader: status.leader,
    leaderProblem: status.leaderProblem,
    version: status.version,
    uptimeSeconds: Math.round(status.uptimeSeconds),
    clusterId: status.clusterId,
    fencingToken: status.fencingToken,
    etcdRunning: status.etcdRunning,
    etcdRestarts: status.etcdRestarts,
    specHealthy: status.specHealthy,
    specGeneration: status.specGeneration,
    specProblem: status.specProblem,
    etcdFlagsPending: status.etcdFlagsPending,
    lastVerified: status.lastVerified,
    lastVerifiedAt: status.lastVerifiedAt,
    members: status.members.map((m) => ({
      name: m.name,
      id: m.id,
      endpoint: m.endpoint,
      healthy: m.healthy,
      isRaftLeader: m.isRaftLeader,
      dbSizeBytes: m.dbSizeBytes,
      revision: m.revision,
      alarms: m.alarms,
      version: m.version,
      problem: m.problem,
    })),
  };
}

export function statusText(status: StatusResponse): string {
  const head = [
    `node:      ${status.node}${status.isLeader ? ' (leader)' : ''}`,
    `leader:    ${status.leader || status.leaderProblem || 'none elected'}`,
    `cluster:   ${status.clusterId || 'unknown'}`,
    `steward:   v${status.version}, up ${Math.round(status.uptimeSeconds)}s, etcd ${status.etcdRunning ? 'running' : 'NOT running'}, ${status.etcdRestarts} etcd restarts`,
    `spec:      ${status.specHealthy ? `generation ${status.specGeneration}` : `PROBLEM: ${status.specProblem}`}`,
    ...(status.etcdFlagsPending ? [`etcd:      ${status.etcdFlagsPending}`] : []),
    lastVerifiedLine(status),
    '',
  ];
  const rows = status.members.map((m) => [
    m.name || '?',
    m.endpoint,
    m.healthy ? 'healthy' : 'UNHEALTHY',
    m.isRaftLeader ? 'yes' : '',
    m.healthy || m.dbSizeBytes ? humanBytes(m.dbSizeBytes) : '',
    m.revision ? String(m.revision) : '',
    m.alarms.join(','),
    m.version,
    m.problem,
  ]);
  return head.join('\n') + table(['MEMBER', 'ENDPOINT', 'HEALTH', 'RAFT LEADER', 'DB SIZE', 'REVISION', 'ALARMS', 'VERSION', 'PROBLEM'], rows);
}

export function saveJson(info: SnapshotInfo): object {
  return { name: info.name, size: info.size, sha256: info.sha256, locations: info.locations, failures: info.failures, revision: info.revision };
}

export function saveText(info: SnapshotInfo): string {
  const lines = [
    `snapshot ${info.name}: ${humanBytes(info.size)}, sha256 ${info.sha256}, revision ${info.revision}`,
    ...info.locations.map((l) => `  stored at ${l}`),
  ];
  for (const failure of info.failures) lines.push(`  FAILED at ${failure}`);
  return lines.join('\n');
}

/** `ls -o json`: exactly these fields, in this order. */
export function recordJson(record: SnapshotRecord): object {
  return {
    name: record.name,
    node: record.node,
    location: record.location,
    size: record.size,
    sha256: record.sha256,
    created: record.created,
    kind: record.kind,
    compressed: record.compressed,
    // The last restore drill (etcd-stewardctl verify); null when none ran.
    verified: record.verification
      ? {
          result: record.verification.result,
          at: record.verification.at,
          hashKV: record.verification.hashKv,
          reason: record.verification.reason,
          node: record.verification.node,
        }
      : null,
  };
}

export function recordsText(records: SnapshotRecord[], now = Date.now()): string {
  if (records.length === 0) return 'no snapshots';
  return table(
    ['NAME', 'NODE', 'LOCATION', 'SIZE', 'CREATED', 'KIND', 'SHA256', 'VERIFIED'],
    records.map((r) => [
      r.name,
      r.node,
      r.location,
      humanBytes(r.size),
      r.created,
      r.kind + (r.compressed ? ' (gz)' : ''),
      r.sha256.slice(0, 12),
      verifiedCell(r, now),
    ]),
  );
}

/** `passed 3h ago`, `FAILED 5m ago`, or `-` when no drill ran. */
function verifiedCell(record: SnapshotRecord, now: number): string {
  const v = record.verification;
  if (!v || !v.result) return '-';
  return `${v.result === 'passed' ? 'passed' : 'FAILED'} ${ago(v.at, now)}`;
}

function ago(at: string, now: number): string {
  const when = Date.parse(at);
  return Number.isFinite(when) ? `${humanDuration(Math.max(0, (now - when) / 1000))} ago` : `at ${at}`;
}

/** `last verified restorable: NAME, 3h ago`: the newest snapshot a restore drill proved restorable. */
export function lastVerifiedLine(status: StatusResponse, now = Date.now()): string {
  return `last verified restorable: ${status.lastVerified ? `${status.lastVerified}, ${ago(status.lastVerifiedAt, now)}` : 'none (etcd-stewardctl verify NAME runs a restore drill)'}`;
}

/** `verify -o json`. */
export function verifyJson(result: VerifyResponse): object {
  return {
    name: result.name,
    passed: result.passed,
    failure: result.failure,
    reason: result.reason,
    source: result.source,
    node: result.node,
    revision: result.revision,
    keys: result.keys,
    snapshotKeys: result.snapshotKeys,
    hashKV: result.hashKv,
    verifiedAt: result.verifiedAt,
    durationSeconds: result.durationSeconds,
    recordProblem: result.recordProblem,
  };
}

export function verifyText(result: VerifyResponse): string {
  const head = result.passed
    ? `snapshot ${result.name} is restorable: restored and served at revision ${result.revision}, ${result.keys} keys, HashKV ${result.hashKv}`
    : `snapshot ${result.name} is NOT restorable (${result.failure}): ${result.reason}`;
  return [
    head,
    `  read from ${result.source}, drilled on ${result.node} in ${humanDuration(result.durationSeconds)}`,
    ...(result.recordProblem ? [`  NOT recorded: ${result.recordProblem}`] : []),
  ].join('\n');
}

/** `ls --all -o json`: orphans apart from snapshots, so the snapshot entries keep their documented shape. */
export function orphanJson(orphan: OrphanObject): object {
  return { location: orphan.location, key: orphan.key, size: orphan.size, modified: orphan.modified };
}

export function orphansText(orphans: OrphanObject[]): string {
  if (orphans.length === 0) return 'no orphaned data objects';
  return `orphaned data objects (no metadata; prune removes those older than the grace):\n${table(
    ['LOCATION', 'SIZE', 'MODIFIED'],
    orphans.map((o) => [o.location, humanBytes(o.size), o.modified]),
  )}`;
}

/** What could not be removed, one line each, for stderr. */
export function failuresText(failures: DeleteFailure[]): string {
  return failures.map((f) => `  NOT removed: ${f.record?.name ?? '?'} at ${f.record?.location ?? '?'}: ${f.error}`).join('\n');
}

/** `45s`, `3m 12s`, `2h 5m`, `3d 4h`: two units at most, for ages and durations an operator reads. */
export function humanDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  if (seconds < 10) return `${Math.round(seconds * 10) / 10}s`;
  const s = Math.round(seconds);
  const units: Array<[string, number]> = [
    ['d', 86_400],
    ['h', 3600],
    ['m', 60],
    ['s', 1],
  ];
  const parts: string[] = [];
  let rest = s;
  for (const [unit, size] of units) {
    const n = Math.floor(rest / size);
    rest -= n * size;
    if (n > 0 || parts.length > 0) parts.push(`${n}${unit}`);
    if (parts.length === 2) break;
  }
  return parts.join(' ');
}

/** `ls` when etcd's inventory could not be read and the stores themselves were listed (stderr). */
export function fallbackNote(fallback: string): string {
  return `note: the inventory in etcd could not be read, so this listing comes from the stores themselves: ${fallback}`;
}
