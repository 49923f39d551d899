import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { DeadlineError, PreconditionError, StewardError, abortedError, errorText } from '../errors/index.js';
import { waitForRestoredCluster } from '../etcd/restore-checks.js';
import { validateName } from '../snapshot/names.js';
import { ensureStateDir } from '../state/atomic.js';
import { freeBytes } from './disk.js';
import { DrillEtcd } from './drill-etcd.js';
import { findSnapshot, type SnapshotStores } from './find.js';
import { stageSnapshot } from './staging.js';
import type { RestoreTool } from './tool.js';

/**
 * A restore drill: proves that a snapshot restores, by doing what a restore does with it, off to the side.
 * It reads the copy a restore would read first (findSnapshot: own dir, S3, peers), stages and checks it
 * (SHA-256, etcd's trailer), restores it with the node's restore tool into a scratch dir, starts a
 * throwaway single-member etcd on it and checks that it serves the snapshot's revision and keys. The
 * scratch dir `<state-dir>/drill/drill-<id>` is the only thing it creates, and it is removed at the end
 * whatever happened; the supervised etcd and its data dir are never touched.
 */

/** Why a drill failed, as the failure metric's `reason` label: a small fixed set. */
export type DrillFailureReason = 'integrity' | 'restore' | 'keys' | 'serve' | 'revision';

export interface DrillResult {
  name: string;
  passed: boolean;
  /** Set when the drill failed. */
  failure?: DrillFailureReason;
  /** Why it failed, in words; empty when it passed. */
  reason: string;
  /** Where the bytes were read from (a URL as ls shows locations). */
  source: string;
  /** The restored etcd's revision and live key count, and its HashKV at that revision (0 when not reached). */
  revision: number;
  keys: number;
  hashKV: number;
  /** The snapshot file's key count as the restore tool counts it (snapshot status), which the restored db matched. */
  snapshotKeys: number;
  /** ISO 8601, when the drill ended. */
  verifiedAt: string;
  durationSeconds: number;
}

export interface DrillOptions {
  stores: SnapshotStores;
  tool: RestoreTool;
  /** The etcd binary to run the throwaway member with: the steward's own (--etcd-binary). */
  etcdBinary: string;
  stateDir: string;
  logger: Logger;
  /** The whole drill's bound; past it the drill stops, cleans up and throws DeadlineError (nothing is concluded). */
  timeoutMs?: number;
  /** How long the throwaway etcd may take to serve; one that does not fails the drill ('serve'). */
  serveTimeoutMs?: number;
  /** Bytes to leave free on the state dir's filesystem beyond what the drill needs. */
  reserveBytes?: number;
  /**
   * The steward's etcd user: a snapshot of a cluster with auth on restores with auth on, and its checks need a
   * user. Only user and password: the throwaway etcd serves plaintext on loopback, so no TLS file applies.
   */
  etcdAuth?: { etcdUser: string; etcdPassword: string };
}

export const DRILL_TIMEOUT_MS = 10 * 60_000;
const SERVE_TIMEOUT_MS = 60_000;
/** etcd preallocates a 64 MiB WAL segment; room for it and a margin. */
const WAL_BYTES = 128 * 1024 * 1024;
/** gzip of an etcd db shrinks it about 3-5×: room for the decompressed copy without reading it first. */
const GZIP_RATIO = 8;

export const DRILL_DIR = 'drill';
const SCRATCH = /^drill-[0-9a-f]{16}$/;

/** One drill per process at a time: two would double the disk and CPU a drill takes from the node. */
let running = false;

/**
 * Runs one drill of the snapshot `name`. Resolves with the result, passed or failed, when the drill
 * concluded; throws (and concludes nothing) when it could not run: NotFoundError for an unknown snapshot,
 * DRILL_NO_SPACE before anything is read, DRILL_BUSY, the restore tool missing, cancellation, its time limit.
 */
export async function runDrill(name: string, options: DrillOptions, signal: AbortSignal): Promise<DrillResult> {
  validateName(name, 'name');
  if (running) {
    throw new PreconditionError('DRILL_BUSY', 'a restore drill is already running on this steward', {
      hint: 'wait for it to finish and run verify again',
      retryable: true,
    });
  }
  running = true;
  const timeoutMs = options.timeoutMs ?? DRILL_TIMEOUT_MS;
  const bounded = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]);
  try {
    return await drill(name, options, bounded);
  } catch (err) {
    if (signal.aborted) throw abortedError(signal, err);
    if (bounded.aborted) {
      throw new DeadlineError(`the restore drill of ${name} did not finish within ${Math.round(timeoutMs / 1000)} s`, {
        code: 'DRILL_TIMEOUT',
        hint: 'nothing was concluded about the snapshot; check the node load and the steward log (component drill), then run verify again',
        cause: err,
      });
    }
    throw err;
  } finally {
    running = false;
  }
}

async function drill(name: string, options: DrillOptions, signal: AbortSignal): Promise<DrillResult> {
  const started = Date.now();
  const log = options.logger.child({ component: 'drill' });
  const found = await findSnapshot(name, options.stores, signal);
  const source = found.sources[0];
  if (!source) throw new PreconditionError('DRILL_NO_SOURCE', `no readable copy of ${name}`, { hint: 'etcd-stewardctl ls lists where each copy is' });
  const { metadata } = found;

  const drillDir = join(options.stateDir, DRILL_DIR);
  const rawBytes = metadata.compressed ? metadata.size * GZIP_RATIO : metadata.size;
  // The staged file and the restored db (a copy of it), plus etcd's WAL.
  const needed = 2 * rawBytes + WAL_BYTES;
  const free = await freeBytes(drillDir);
  const reserve = options.reserveBytes ?? 0;
  if (free - reserve < needed) {
    throw new PreconditionError(
      'DRILL_NO_SPACE',
      `a restore drill of ${name} needs about ${mib(needed)} MiB under ${drillDir}, but ${mib(Math.max(0, free - reserve))} MiB are free${reserve > 0 ? ` beyond the ${mib(reserve)} MiB kept free` : ''}`,
      { hint: 'free space on the state dir volume (or drill on another steward with --endpoint) and run verify again' },
    );
  }

  await ensureStateDir(drillDir);
  await removeLeftovers(drillDir, log);
  const scratch = join(drillDir, `drill-${randomBytes(8).toString('hex')}`);
  const result = (failure: DrillFailureReason | undefined, reason: string, facts: Partial<DrillResult> = {}): DrillResult => ({
    name,
    passed: failure === undefined,
    ...(failure ? { failure } : {}),
    reason,
    source: source.url,
    revision: 0,
    keys: 0,
    hashKV: 0,
    snapshotKeys: 0,
    ...facts,
    verifiedAt: new Date().toISOString(),
    durationSeconds: (Date.now() - started) / 1000,
  });
  let etcd: DrillEtcd | undefined;
  log.info({ snapshot: name, source: source.url, scratch }, 'restore drill started');
  try {
    let staged;
    try {
      const data = source.file && !metadata.compressed ? { file: source.file } : source.open(signal);
      const announce = { snapshot: name, size: metadata.size, sha256: metadata.sha256, compressed: metadata.compressed };
      staged = await stageSnapshot(data, announce, join(scratch, 'snapshot.db'), options.tool, signal);
    } catch (err) {
      if (signal.aborted || !concludes(err)) throw err;
      return result('integrity', `the copy at ${source.url} did not check out: ${errorText(err)}`);
    }
    const facts = { snapshotKeys: staged.totalKeys };
    const dataDir = join(scratch, 'data');
    const member = 'drill';
    const clusterToken = `drill-${randomBytes(8).toString('hex')}`;
    const urls = await DrillEtcd.ports();
    try {
      await options.tool.restoreInto({
        snapshot: staged.path,
        dataDir,
        name: member,
        initialCluster: [{ name: member, peerUrl: urls.peerUrl }],
        initialAdvertisePeerUrls: [urls.peerUrl],
        clusterToken,
        signal,
      });
    } catch (err) {
      if (signal.aborted || !concludes(err)) throw err;
      return result('restore', `${options.tool.info.kind} snapshot restore failed: ${errorText(err)}`, facts);
    }
    const restored = await options.tool.status(join(dataDir, 'member', 'snap', 'db'), signal);
    if (restored.totalKeys !== staged.totalKeys) {
      return result('keys', `the restored db holds ${restored.totalKeys} keys, the snapshot ${staged.totalKeys}`, facts);
    }

    etcd = DrillEtcd.start({ binary: options.etcdBinary, dataDir, name: member, ...urls, clusterToken, logger: options.logger });
    const died = new AbortController();
    void etcd.exited().then(() => died.abort(new Error('the drill etcd exited')));
    let report;
    try {
      report = await waitForRestoredCluster(
        { [member]: etcd.clientUrl },
        { members: [member], minRevision: 0 },
        {
          timeoutMs: options.serveTimeoutMs ?? SERVE_TIMEOUT_MS,
          intervalMs: 500,
          signal: AbortSignal.any([signal, died.signal]),
          ...(options.etcdAuth?.etcdUser ? { security: { etcdCacert: '', etcdCert: '', etcdKey: '', ...options.etcdAuth } } : {}),
        },
      );
    } catch (err) {
      if (signal.aborted) throw err;
      const why = died.signal.aborted ? 'the throwaway etcd exited before it served (its log lines carry component drill)' : errorText(err);
      return result('serve', `the restored data dir did not serve: ${why}`, facts);
    }
    const served = report.members[0];
    const live = { ...facts, revision: report.revision, keys: served?.keys ?? 0, hashKV: served?.hashKV ?? 0 };
    // The revision the snapshot was taken at: from the staged file itself, and the metadata when it has one.
    const expected = Math.max(staged.revision, metadata.revision);
    if (report.revision < expected) {
      return result('revision', `the restored etcd is at revision ${report.revision}, below the snapshot's ${expected}`, live);
    }
    return result(undefined, '', live);
  } finally {
    await etcd?.stop().catch((err: unknown) => log.error({ err: errorText(err), pid: etcd?.pid }, 'cannot stop the drill etcd'));
    await rm(scratch, { recursive: true, force: true }).catch((err: unknown) =>
      log.error({ err: errorText(err), scratch }, 'cannot remove the drill scratch dir'),
    );
    log.info({ snapshot: name, ms: Date.now() - started }, 'restore drill ended');
  }
}

/**
 * Whether an error says something about the snapshot (a verdict) rather than about this node: a missing
 * tool, a full disk or an unwritable dir concludes nothing and is thrown to the caller instead.
 */
function concludes(err: unknown): boolean {
  if (!(err instanceof StewardError)) return true;
  return !['RESTORE_TOOL_MISSING', 'RESTORE_STAGING_FAILED', 'RESTORE_TARGET_FAILED', 'RESTORE_STAGING_BUSY'].includes(err.code);
}

/** Scratch dirs a crashed drill left behind: ours by name, under our own drill dir, and no drill runs now. */
async function removeLeftovers(drillDir: string, log: Logger): Promise<void> {
  for (const entry of await readdir(drillDir, { withFileTypes: true })) {
    if (!entry.isDirectory() || !SCRATCH.test(entry.name)) continue;
    log.warn({ scratch: join(drillDir, entry.name) }, 'removing the scratch dir of an earlier drill that did not finish');
    await rm(join(drillDir, entry.name), { recursive: true, force: true });
  }
}

function mib(bytes: number): number {
  return Math.ceil(bytes / (1024 * 1024));
}
