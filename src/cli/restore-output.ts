/**
 * What `etcd-stewardctl restore` prints: the plan, the summary and the restore status, as text for an
 * operator and as stable camelCase JSON (one object per event line with `-o json`). Pure functions: the
 * command in ctl.ts decides where each goes.
 */
import type { PlanMember, RestoreEvent, RestoreMemberState, RestorePlan, RestoreProgress, RestoreStatusResponse, RestoreSummary } from '../rpc/types.js';
import { humanBytes, humanDuration, recordJson, table } from './format.js';

/** The flags a restore was asked with, to print the exact command that runs (or re-runs) it. */
export interface RestoreAsked {
  name: string;
  yes: boolean;
  skipMembers: string[];
  withSpec: boolean;
  force?: boolean;
  /** Named in the printed command when it is not the default one. */
  endpoint?: string;
}

export const CONTROL_PLANE_RESTART_NOTE =
  'restart EVERY kube-apiserver, kube-controller-manager and kube-scheduler (and any other controller that watches etcd) after the restore: ' +
  'their watch caches hold revisions newer than the restored data and will not notice that it went back in time';

export function restoreCommand(asked: RestoreAsked): string {
  return [
    'etcd-stewardctl',
    ...(asked.endpoint ? ['--endpoint', asked.endpoint] : []),
    'restore',
    asked.name,
    '--yes',
    ...asked.skipMembers.flatMap((m) => ['--skip-member', m]),
    ...(asked.withSpec ? ['--with-spec'] : []),
    ...(asked.force ? ['--force'] : []),
  ].join(' ');
}

// ---------------------------------------------------------------------------------------------- JSON

function planMemberJson(m: PlanMember): object {
  return {
    node: m.node,
    dataDir: m.dataDir,
    oldDataDir: m.oldDataDir,
    freeBytes: m.freeBytes,
    neededBytes: m.neededBytes,
    etcdVersion: m.etcdVersion,
    restoreTool: m.restoreTool,
    skipped: m.skipped,
    phase: m.phase,
    problem: m.problem,
  };
}

export function planJson(plan: RestorePlan): object {
  return {
    restoreId: plan.restoreId,
    resume: plan.resume,
    snapshot: plan.snapshot ? recordJson(plan.snapshot) : null,
    revision: plan.revision,
    etcdVersion: plan.etcdVersion,
    source: plan.source,
    ageSeconds: plan.ageSeconds,
    coordinator: plan.coordinator,
    quorum: plan.quorum,
    members: plan.members.map(planMemberJson),
    bumpRevision: plan.bumpRevision,
    bumpNote: plan.bumpNote,
    blockers: plan.blockers,
    warnings: plan.warnings,
  };
}

export function progressJson(p: RestoreProgress): object {
  return { member: p.member, phase: p.phase, bytes: p.bytes, total: p.total, message: p.message, at: p.at };
}

export function memberStateJson(m: RestoreMemberState): object {
  return {
    node: m.node,
    restoreId: m.restoreId,
    snapshot: m.snapshot,
    phase: m.phase,
    startedAt: m.startedAt,
    updatedAt: m.updatedAt,
    oldDataDir: m.oldDataDir,
    swapped: m.swapped,
    rolledBack: m.rolledBack,
    error: m.error,
    nextStep: m.nextStep,
    quarantineEndpoint: m.quarantineEndpoint,
    unreachable: m.unreachable,
  };
}

export function summaryJson(s: RestoreSummary): object {
  return {
    restoreId: s.restoreId,
    snapshot: s.snapshot,
    phase: s.phase,
    clusterId: s.clusterId,
    revision: s.revision,
    durationSeconds: s.durationSeconds,
    bytesDistributed: s.bytesDistributed,
    error: s.error,
    warnings: s.warnings,
    members: s.members.map(memberStateJson),
  };
}

/** One NDJSON line of `restore -o json`: `{"event": "plan" | "progress" | "result", ...}`. */
export function restoreEventJson(event: RestoreEvent): object | undefined {
  if (event.plan) return { event: 'plan', ...planJson(event.plan) };
  if (event.progress) return { event: 'progress', ...progressJson(event.progress) };
  if (event.result) return { event: 'result', ...summaryJson(event.result) };
  return undefined;
}

export function restoreStatusJson(s: RestoreStatusResponse): object {
  return {
    restoreId: s.restoreId,
    snapshot: s.snapshot,
    lockHolder: s.lockHolder,
    lockTakenAt: s.lockTakenAt,
    nextStep: s.nextStep,
    members: s.members.map(memberStateJson),
  };
}

// ---------------------------------------------------------------------------------------------- text

function bytesBoth(bytes: number): string {
  return bytes < 1024 ? `${bytes} B` : `${humanBytes(bytes)} (${bytes} bytes)`;
}

function bullets(title: string, items: string[]): string[] {
  return items.length === 0 ? [] : ['', `${title}:`, ...items.map((i) => `  - ${i}`)];
}

function revisionLines(plan: RestorePlan): string[] {
  if (plan.bumpRevision > 0) {
    return [
      '',
      `revision:     bumped by ${plan.bumpRevision} past the snapshot's (clients see the restored data as newer than anything they watched)`,
      ...(plan.bumpNote ? [`              ${plan.bumpNote}`] : []),
    ];
  }
  return [
    '',
    '!!! REVISION NOT BUMPED: ' + (plan.bumpNote || 'the restore tool of this etcd version cannot bump the revision'),
    `!!! ${CONTROL_PLANE_RESTART_NOTE}`,
  ];
}

function planMemberRow(m: PlanMember): string[] {
  return [
    m.node + (m.skipped ? ' (skipped)' : ''),
    m.skipped ? `${m.dataDir || '?'} (not touched: restored by hand later)` : `${m.dataDir} → ${m.oldDataDir}`,
    m.skipped ? '' : humanBytes(m.freeBytes),
    m.skipped ? '' : humanBytes(m.neededBytes),
    m.etcdVersion,
    m.restoreTool,
    m.phase,
    m.problem ? `PROBLEM: ${m.problem}` : '',
  ];
}

/** The plan as `restore NAME` prints it; its last line says how to run it (or that it runs now). */
export function planText(plan: RestorePlan, asked: RestoreAsked): string {
  const s = plan.snapshot;
  const age = plan.ageSeconds > 0 ? `${humanDuration(plan.ageSeconds)} ago` : 'just now';
  const lines = [
    `restore plan ${plan.restoreId || '(no ID yet)'}${plan.resume ? ' — RESUMES an unfinished restore' : ''}`,
    '',
    `snapshot:     ${s?.name ?? asked.name}`,
    `  size:       ${s ? bytesBoth(s.size) + (s.compressed ? ', gzip-compressed' : '') : '?'}`,
    `  sha256:     ${s?.sha256 || '?'}`,
    `  revision:   ${plan.revision}`,
    `  taken:      ${age}${s?.created ? ` (${s.created}${s.node ? ` on ${s.node}` : ''})` : ''}`,
    `  etcd:       ${plan.etcdVersion || '?'}`,
    `  source:     ${plan.source || s?.location || '?'}`,
    `coordinator:  ${plan.coordinator || '?'}`,
    `quorum:       ${plan.quorum ? 'yes' : 'NO (etcd has no quorum now)'}`,
    '',
    'members:',
    table(['NODE', 'DATA DIR → KEPT AT', 'FREE', 'NEEDED', 'ETCD', 'RESTORE TOOL', 'PHASE', 'PROBLEM'], plan.members.map(planMemberRow)),
    ...revisionLines(plan),
    ...bullets('BLOCKERS (the restore cannot run while any is here)', plan.blockers),
    ...bullets('warnings', plan.warnings),
    '',
  ];
  if (plan.blockers.length > 0) lines.push(`blocked: resolve the blockers above, then run: ${restoreCommand(asked)}`);
  else if (asked.yes) lines.push('confirmed with --yes: restoring now');
  else lines.push(`nothing has changed; to restore, run: ${restoreCommand(asked)}`);
  return lines.join('\n');
}

function dataState(m: RestoreMemberState): string {
  if (m.rolledBack) return 'rolled back';
  if (m.swapped) return 'swapped';
  return 'not swapped';
}

function memberNotes(members: RestoreMemberState[]): string[] {
  const notes: string[] = [];
  for (const m of members) {
    if (m.quarantineEndpoint) notes.push(`${m.node}: the restored etcd is quarantined at ${m.quarantineEndpoint}`);
    if (m.nextStep) notes.push(`${m.node}: next step: ${m.nextStep}`);
  }
  return notes;
}

/** The end of a restore: `plan` (when seen) adds the restart note if the revision could not be bumped. */
export function summaryText(s: RestoreSummary, plan?: RestorePlan): string {
  const failed = s.phase !== 'Finished';
  const warnings = [...s.warnings];
  if (!failed && plan && plan.bumpRevision === 0 && !warnings.some((w) => /bump/i.test(w))) {
    warnings.push(`the revision was not bumped: ${CONTROL_PLANE_RESTART_NOTE}`);
  }
  const lines = [
    `restore ${failed ? 'FAILED' : 'finished'}: ${s.phase || '?'}, restore ${s.restoreId || '?'}`,
    `snapshot:     ${s.snapshot}${s.revision ? ` (revision ${s.revision})` : ''}`,
    `cluster ID:   ${s.clusterId || (failed ? 'unchanged' : '?')}${s.clusterId && !failed ? ' (new)' : ''}`,
    `duration:     ${humanDuration(s.durationSeconds)}`,
    `distributed:  ${bytesBoth(s.bytesDistributed)}`,
    ...(s.error ? [`error:        ${s.error}`] : []),
  ];
  if (s.members.length > 0) {
    lines.push(
      '',
      table(
        ['NODE', 'PHASE', 'DATA DIR', 'OLD DATA DIR KEPT AT', 'PROBLEM'],
        s.members.map((m) => [m.node, m.phase, dataState(m), m.oldDataDir, m.unreachable ? `UNREACHABLE: ${m.unreachable}` : m.error]),
      ),
    );
  }
  lines.push(...memberNotes(s.members).map((n) => `  ${n}`));
  lines.push(...bullets('warnings', warnings));
  return lines.join('\n');
}

/** `restore status` (and the end of `restore abort`): every node's record, the lock and the next step. */
export function restoreStatusText(s: RestoreStatusResponse): string {
  const lines = [
    s.restoreId ? `restore ${s.restoreId}${s.snapshot ? ` of snapshot ${s.snapshot}` : ''}` : 'no restore has run on this cluster',
    `lock:         ${s.lockHolder ? `held by ${s.lockHolder}${s.lockTakenAt ? ` since ${s.lockTakenAt}` : ''}` : 'free'}`,
  ];
  if (s.members.length > 0) {
    lines.push(
      '',
      table(
        ['NODE', 'RESTORE ID', 'SNAPSHOT', 'PHASE', 'STARTED', 'UPDATED', 'DATA DIR', 'OLD DATA DIR', 'PROBLEM'],
        s.members.map((m) =>
          m.unreachable
            ? [m.node, '', '', '', '', '', '', '', `UNREACHABLE: ${m.unreachable}`]
            : [m.node, m.restoreId, m.snapshot, m.phase, m.startedAt, m.updatedAt, m.restoreId ? dataState(m) : '', m.oldDataDir, m.error],
        ),
      ),
    );
  }
  lines.push(...memberNotes(s.members).map((n) => `  ${n}`));
  if (s.nextStep) lines.push('', `next step: ${s.nextStep}`);
  return lines.join('\n');
}

/** Members an abort could not put back on their old data dir: still on the restored data, or not asked. */
export function notRolledBack(s: RestoreStatusResponse): RestoreMemberState[] {
  return s.members.filter((m) => m.unreachable !== '' || (m.swapped && !m.rolledBack));
}

export function abortText(s: RestoreStatusResponse): string {
  const rolledBack = s.members.filter((m) => m.rolledBack).map((m) => m.node);
  const left = notRolledBack(s);
  const lines = [
    restoreStatusText(s),
    '',
    rolledBack.length > 0 ? `rolled back to their old data dir: ${rolledBack.join(', ')}` : 'no member had its data dir swapped, so none needed a rollback',
  ];
  for (const m of left) {
    lines.push(
      `NOT rolled back: ${m.node}: ${m.unreachable ? `unreachable (${m.unreachable}); its state is unknown` : m.error || 'still on the restored data dir'}`,
    );
  }
  return lines.join('\n');
}
