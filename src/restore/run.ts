import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import type { RestoredClusterDraft } from '../control/control-store.js';
import { PreconditionError, StewardError, asStewardError, errorText } from '../errors/index.js';
import { deleteKeysWithPrefix, waitForRestoredCluster } from '../etcd/restore-checks.js';
import type { StewardMetrics } from '../observability/metrics.js';
import type { RestoreEvent, RestoreMemberState, RestorePlan, RestoreSummary } from '../rpc/types.js';
import type { SnapshotMetadata } from '../snapshot/metadata.js';
import type { RestorePhaseName } from '../state/restore-phase.js';
import { broadcast } from './broadcast.js';
import { failpoint } from './failpoints.js';
import { withDeadline, type SnapshotSource } from './find.js';
import type { RestoreLockRecord } from './lock.js';
import type { Participant, Verified } from './participants.js';
import { unreachableState } from './status.js';

/** The steward's own keys inside the restored keyspace: stale (the old election, schedule claims, inventory); reconcile rebuilds the inventory. */
export const STALE_STEWARD_PREFIXES = ['etcd-steward/election/', 'etcd-steward/schedule/', 'etcd-steward/inventory/', 'etcd-steward/orphans/'];

/** What the spec must say after the restore (src/control writes it). */
export type RestoredSpec = RestoredClusterDraft;

export interface RestoreRun {
  config: Config;
  logger: Logger;
  metrics: StewardMetrics;
  lock: RestoreLockRecord;
  /** Stops the lock's heartbeat and removes the lock. */
  releaseLock: (signal: AbortSignal) => Promise<void>;
  metadata: SnapshotMetadata;
  sources: SnapshotSource[];
  participants: Participant[];
  initialCluster: { name: string; peerUrl: string }[];
  plan: RestorePlan;
  emit: (event: RestoreEvent) => void;
  /** The ctl's call: cancelling it stops a restore only before any data dir is touched. */
  callSignal: AbortSignal;
  /** `restore abort`: stops the restore at any phase, which then rolls back. */
  abortSignal: AbortSignal;
  shutdown: AbortSignal;
  recordSpec: (spec: RestoredSpec, quarantineEndpoint: string, signal: AbortSignal) => Promise<void>;
  /** Members left out with --skip-member. */
  skipped: string[];
  /** What `--with-spec` puts back; empty without it. */
  withSpec: Pick<RestoredSpec, 'etcdFlags' | 'etcdVersion'>;
}

const PROGRESS_EVERY_BYTES = 4 * 1024 * 1024;
/**
 * A local file reads in 64 KiB chunks; each becomes one gRPC message per member, and per-message costs made
 * distribution CPU-bound (the bench: 33 s for 1 GB to 3 members). Blocks of 512 KiB cut that, for a few MiB
 * more held (two blocks per member in the broadcast, plus the HTTP/2 windows).
 */
const DISTRIBUTION_BLOCK_BYTES = 512 * 1024;

/**
 * One restore from the lock on: every member verifies the same digest before any data dir is touched; a
 * failure before the swap changes nothing but staging files, one after it rolls every member back.
 */
export async function runRestore(run: RestoreRun): Promise<RestoreSummary> {
  const started = Date.now();
  const { lock, metadata, participants, emit, metrics } = run;
  const log = run.logger.child({ component: 'restore', restore: lock.restoreId, snapshot: metadata.name });
  const warnings = [...run.plan.warnings];
  const restoreId = lock.restoreId;
  let bytesDistributed = 0;
  let touched = false;
  const phase = (name: RestorePhaseName, member = '', message = '', bytes = 0, total = 0): void => {
    if (!member) {
      for (const p of ['Started', 'Distribute', 'Verify', 'Shutdown', 'Restore', 'RestartCluster', 'Finished', 'Failed'] as const)
        metrics.restorePhase.set({ phase: p }, p === name ? 1 : 0);
      log.info({ phase: name }, message || `restore phase ${name}`);
    } else {
      log.info({ phase: name, member, bytes }, message || `member ${member}: ${name}`);
    }
    emit({ progress: { member, phase: name, bytes, total, message, at: new Date().toISOString() } });
  };
  const states = async (signal: AbortSignal): Promise<RestoreMemberState[]> =>
    Promise.all(
      participants.map((p) => withDeadline(signal, 15_000, (bounded) => p.status(restoreId, bounded)).catch((err: unknown) => unreachableState(p.node, err))),
    );
  const summary = async (result: 'Finished' | 'Failed', error: string, clusterId = ''): Promise<RestoreSummary> => {
    metrics.restoreLast.set({ result }, Date.now() / 1000);
    metrics.restoreDuration.observe((Date.now() - started) / 1000);
    return {
      restoreId,
      snapshot: metadata.name,
      phase: result,
      clusterId,
      members: await states(AbortSignal.timeout(30_000)),
      durationSeconds: (Date.now() - started) / 1000,
      error,
      warnings,
      revision: metadata.revision + lock.bumpRevision,
      bytesDistributed,
    };
  };
  // Ends every member's part and says what happened; the lock is released once nothing is left half done.
  const fail = async (err: unknown): Promise<never> => {
    const failure = asStewardError(err);
    phase('Failed', '', failure.message);
    const cleanup = AbortSignal.any([run.shutdown, AbortSignal.timeout(10 * 60_000)]);
    if (!run.shutdown.aborted) {
      const ended = await Promise.allSettled(participants.map((p) => p.abort(restoreId, cleanup)));
      const stuck = ended.flatMap((r, i) => (r.status === 'rejected' ? [`${participants[i]?.node}: ${errorText(r.reason)}`] : []));
      // Before the swap a member that could not be told has nothing to undo: restarted, it drops its staging
      // file itself (recover). Only a member that may hold a swapped data dir keeps the lock held.
      if (stuck.length === 0 || !touched)
        await run.releaseLock(cleanup).catch((e: unknown) => warnings.push(`cannot release the restore lock: ${errorText(e)}`));
      if (stuck.length > 0 && touched)
        warnings.push(`could not end the restore on ${stuck.join('; ')}: the restore lock stays; run etcd-stewardctl restore abort once they are back`);
      else if (stuck.length > 0) warnings.push(`could not tell ${stuck.join('; ')}: nothing was swapped there, and it drops its staging file when it is back`);
    }
    emit({ result: await summary('Failed', touched ? `${failure.message} (rolled back)` : `${failure.message} (no data dir was touched)`) });
    throw failure;
  };

  try {
    phase('Started');
    // A resumed restore skips what its members already did.
    const before = await states(run.abortSignal);
    const swappedAlready = new Set(before.filter((s) => s.restoreId === restoreId && s.swapped && s.phase === 'RestartCluster').map((s) => s.node));
    const toDistribute = participants.filter((p) => !swappedAlready.has(p.node));
    let verified: Verified[] = [];
    const beforeSwap = AbortSignal.any([run.callSignal, run.abortSignal, run.shutdown]);
    if (toDistribute.length > 0) {
      phase('Distribute', '', `streaming ${metadata.name} from ${run.sources[0]?.url ?? '?'} to ${toDistribute.map((p) => p.node).join(', ')}`);
      verified = await distribute(run, toDistribute, beforeSwap, (bytes) => (bytesDistributed += bytes), phase);
      metrics.restoreBytes.inc(bytesDistributed);
      const raw = new Set(verified.map((v) => v.rawSha256));
      const revisions = new Set(verified.map((v) => v.revision));
      if (verified.some((v) => v.sha256 !== metadata.sha256) || raw.size !== 1 || revisions.size !== 1) {
        throw new PreconditionError(
          'RESTORE_VERIFY_FAILED',
          `the members verified different snapshots: ${verified.map((v, i) => `${toDistribute[i]?.node} ${v.sha256.slice(0, 12)}… rev ${v.revision}`).join(', ')}; expected ${metadata.sha256.slice(0, 12)}…`,
          { hint: 'no data dir was touched; check the snapshot source and run the restore again' },
        );
      }
      phase('Verify', '', `every member verified sha256 ${metadata.sha256} (revision ${[...revisions][0]})`);
      beforeSwap.throwIfAborted();
      // From here on the members' data dirs change: an operator's Ctrl-C no longer stops the restore halfway.
      touched = true;
      phase('Shutdown', '', 'every member pauses etcd and restores the snapshot into a fresh dir beside its data dir');
      const during = AbortSignal.any([run.abortSignal, run.shutdown]);
      const swaps = await Promise.allSettled(
        toDistribute.map(async (p) => {
          const result = await p.swap(
            restoreId,
            {
              snapshot: metadata.name,
              initialCluster: run.initialCluster,
              clusterToken: lock.clusterToken,
              bumpRevision: lock.bumpRevision,
              sha256: metadata.sha256,
            },
            during,
          );
          phase('Restore', p.node, `data dir swapped in (restored db holds ${result.restoredTotalKeys} keys); etcd starts quarantined`);
          return result;
        }),
      );
      const failed = swaps.flatMap((s, i) => (s.status === 'rejected' ? [`${toDistribute[i]?.node}: ${errorText(s.reason)}`] : []));
      // The same tool counted both, so the counts compare (etcd 3.5 and 3.6 count differently: never across versions).
      const expectedKeys = verified[0]?.totalKeys ?? 0;
      swaps.forEach((s, i) => {
        if (s.status === 'fulfilled' && s.value.restoredTotalKeys !== expectedKeys) {
          failed.push(`${toDistribute[i]?.node}: the restored db holds ${s.value.restoredTotalKeys} keys, the snapshot ${expectedKeys}`);
        }
      });
      failpoint('restore-coordinator-after-swap');
      if (failed.length > 0)
        throw new PreconditionError('RESTORE_SWAP_FAILED', `the swap failed on ${failed.join('; ')}`, {
          hint: 'every member is rolled back; see the steward logs',
        });
    }
    touched = true;
    const during = AbortSignal.any([run.abortSignal, run.shutdown]);
    const now = await states(during);
    const endpoints: Record<string, string> = {};
    for (const s of now) {
      if (!s.quarantineEndpoint)
        throw new PreconditionError('RESTORE_NOT_QUARANTINED', `member ${s.node} reports no quarantined etcd (${s.unreachable || s.phase})`);
      endpoints[s.node] = s.quarantineEndpoint;
    }
    const minRevision = metadata.revision + lock.bumpRevision;
    phase('RestartCluster', '', `waiting for the quarantined members to form one healthy cluster at revision ≥ ${minRevision}`);
    const report = await waitForRestoredCluster(
      endpoints,
      { members: participants.map((p) => p.node), minRevision },
      {
        timeoutMs: run.config.restoreChecksTimeout,
        security: run.config,
        signal: during,
        onProblem: (problems) => log.info({ phase: 'RestartCluster', problems }, 'restored cluster not healthy yet'),
      },
    );
    const first = Object.values(endpoints)[0] as string;
    for (const prefix of STALE_STEWARD_PREFIXES) await deleteKeysWithPrefix(first, prefix, during, run.config);
    try {
      await run.recordSpec(
        {
          restoreId,
          snapshot: metadata.name,
          clusterToken: lock.clusterToken,
          clusterId: report.clusterId,
          members: run.initialCluster,
          skipped: run.skipped,
          ...run.withSpec,
        },
        first,
        during,
      );
    } catch (err) {
      warnings.push(
        `the cluster spec could not be updated for the restored cluster: ${errorText(err)}; run etcd-stewardctl spec get and fix clusterId/clusterToken`,
      );
      log.error({ err: errorText(err) }, 'cannot record the restored cluster in the spec');
    }
    // One at a time, the raft leader last: a member stopped while the others run hands leadership over at once,
    // where all stopping together made etcd's leader wait out its 7 s transfer timeout.
    const ordered = [...participants.filter((p) => p.node !== report.leader), ...participants.filter((p) => p.node === report.leader)];
    const notFinished: string[] = [];
    for (const p of ordered) {
      await p.finish(restoreId, during).then(
        () => phase('Finished', p.node, 'back on its client URLs'),
        (err: unknown) => notFinished.push(`${p.node}: ${errorText(err)}`),
      );
    }
    if (notFinished.length > 0) warnings.push(`not yet back on its client URLs: ${notFinished.join('; ')} — run the restore with --yes again to finish`);
    else await run.releaseLock(during);
    phase('Finished', '', `restored ${metadata.name}: cluster ${report.clusterId} at revision ${report.revision}`);
    const result = await summary('Finished', '', report.clusterId);
    log.warn({ phase: 'Finished', clusterId: report.clusterId, seconds: result.durationSeconds }, 'restore finished');
    return result;
  } catch (err) {
    if (run.shutdown.aborted) throw err;
    return fail(err);
  }
}

/** Reads the snapshot once and streams it to every member in parallel; resolves with what each verified. */
async function distribute(
  run: RestoreRun,
  members: Participant[],
  signal: AbortSignal,
  counted: (bytes: number) => void,
  phase: (name: RestorePhaseName, member?: string, message?: string, bytes?: number, total?: number) => void,
): Promise<Verified[]> {
  const source = run.sources[0];
  if (!source) throw new PreconditionError('RESTORE_NO_SOURCE', `no store holds ${run.metadata.name}`);
  const controller = new AbortController();
  const streamSignal = AbortSignal.any([signal, controller.signal]);
  // The coordinator's own member stages its own stored copy by a link; the stream goes to the others.
  const localFile = source.kind === 'local' ? source.file : undefined;
  const fromFile = (member: Participant): boolean => localFile !== undefined && member.receiveLocalCopy !== undefined;
  const streamed = members.filter((member) => !fromFile(member));
  const outputs = broadcast(inBlocks(source.open(streamSignal), DISTRIBUTION_BLOCK_BYTES), streamed.length, streamSignal);
  const announce = { snapshot: run.metadata.name, size: run.metadata.size, sha256: run.metadata.sha256, compressed: run.metadata.compressed };
  const total = run.metadata.size;
  const results = await Promise.allSettled(
    members.map(async (member) => {
      let sent = 0;
      let reported = 0;
      const counting = async function* (output: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
        for await (const chunk of output) {
          sent += chunk.length;
          counted(chunk.length);
          if (sent - reported >= PROGRESS_EVERY_BYTES || sent === total) {
            reported = sent;
            phase('Distribute', member.node, '', sent, total);
          }
          yield chunk;
        }
      };
      const receive = async (): Promise<Verified> => {
        if (localFile !== undefined && member.receiveLocalCopy && fromFile(member)) {
          const verified = await member.receiveLocalCopy(run.lock.restoreId, announce, localFile, streamSignal);
          sent = total;
          phase('Distribute', member.node, 'staged from its own stored copy', sent, total);
          return verified;
        }
        return member.receive(run.lock.restoreId, announce, counting(outputs[streamed.indexOf(member)] as AsyncIterable<Buffer>), streamSignal);
      };
      try {
        const verified = await receive();
        phase(
          'Verify',
          member.node,
          `verified sha256 ${verified.sha256.slice(0, 12)}…, revision ${verified.revision}, ${verified.totalKeys} keys`,
          sent,
          total,
        );
        return verified;
      } catch (err) {
        // One member failing ends the stream to all: the restore cannot go on without it.
        controller.abort(err);
        throw err;
      }
    }),
  );
  const failures = results.flatMap((r, i) => (r.status === 'rejected' ? [{ node: members[i]?.node ?? '?', err: r.reason as unknown }] : []));
  if (failures.length > 0) {
    const primary = failures.find((f) => !(asStewardError(f.err).family === 'cancelled')) ?? failures[0];
    const err = asStewardError(primary?.err);
    throw new StewardError(err.family, err.code, `distributing ${run.metadata.name} failed on ${primary?.node}: ${err.message}`, {
      hint: err.hint ?? 'no data dir was touched; fix the cause and run the restore again',
      cause: err,
    });
  }
  return results.map((r) => (r as PromiseFulfilledResult<Verified>).value);
}

/** Gathers small chunks into blocks of about `blockBytes`; holds at most one block. */
async function* inBlocks(source: AsyncIterable<Buffer>, blockBytes: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let pending = 0;
  for await (const chunk of source) {
    parts.push(chunk);
    pending += chunk.length;
    if (pending >= blockBytes) {
      yield parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, pending);
      parts = [];
      pending = 0;
    }
  }
  if (pending > 0) yield Buffer.concat(parts, pending);
}
