import { execFile } from 'node:child_process';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import { InvalidArgumentError, PreconditionError, errorText } from '../errors/index.js';
import { etcdArgs } from '../etcd/args.js';
import type { EtcdSupervisor } from '../etcd/supervisor.js';
import type { RestoreMemberState, RestorePrepareResponse, RestoreSwapRequest, RestoreSwapResponse, SnapshotAnnounce } from '../rpc/types.js';
import { readLastRevision } from '../state/last-revision.js';
import { readRestorePhase, restoreInProgress, writeRestorePhase, type RestorePhaseRecord } from '../state/restore-phase.js';
import { freeBytes } from './disk.js';
import { failpoint } from './failpoints.js';
import { memberState } from './member-state.js';
import { accepts, escapeRegExp, exists, oldDataDirFor, portFree, quarantineEndpoint, unusedAside } from './paths.js';
import { parseStaticPods, pauseStaticPods, resumeStaticPods, type PausedManifest } from './static-pods.js';
import { removeStaging, stageSnapshot, type LocalCopy, type StagedSnapshot } from './staging.js';
import type { RestoreTool } from './tool.js';

const run = promisify(execFile);

export interface RestoreMemberOptions {
  config: Config;
  supervisor: Pick<EtcdSupervisor, 'pause' | 'resume'>;
  tool: () => Promise<RestoreTool>;
  logger: Logger;
  /** Told of every persisted phase (metrics, status). */
  onPhase?: (record: RestorePhaseRecord | undefined) => void;
  /** Whether this member's etcd was the raft leader at the last probe. */
  isRaftLeader?: () => boolean;
  /** How long finish waits for etcd to listen on its client URL again (default 30 s). */
  clientReadyTimeoutMs?: number;
}

/** A restore ID names files and dirs: nothing but what a path segment can hold safely. */
export function checkRestoreId(restoreId: string): string {
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(restoreId)) {
    throw new InvalidArgumentError(`restore ID ${JSON.stringify(restoreId.slice(0, 80))} is malformed`, {
      hint: 'the coordinator names restores r-<time>-<random>; is the caller a steward of this version?',
    });
  }
  return restoreId;
}

/**
 * One member's side of a restore. Every step is persisted (src/state/restore-phase.ts) before it acts, so a
 * steward killed anywhere resumes or rolls back on restart (`recover`). The data dir is never deleted: the
 * old one is renamed to `<data-dir>-old-<unix-ts>`, and the restored one, should it be rolled back, to
 * `<data-dir>-restored-<unix-ts>`; only `--etcd-old-data-retention` trims them, after a restore finished.
 */
export class RestoreMember {
  private current: RestorePhaseRecord | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private receiving: AbortController | undefined;
  private etcdVersionText: string | undefined;
  private readonly log: Logger;
  private readonly staticPods: PausedManifest[];

  constructor(private readonly options: RestoreMemberOptions) {
    this.log = options.logger.child({ component: 'restore', member: options.config.name });
    this.staticPods = parseStaticPods(options.config.restorePauseStaticPods);
  }

  get record(): RestorePhaseRecord | undefined {
    return this.current;
  }

  get inProgress(): boolean {
    return restoreInProgress(this.current);
  }

  state(): RestoreMemberState {
    return memberState(this.options.config.name, this.current, this.options.config.dataDir);
  }

  /** The args etcd runs with outside a restore, and quarantined on a loopback client endpoint. */
  normalArgs(): string[] {
    return etcdArgs(this.options.config);
  }

  quarantineArgs(endpoint: string): string[] {
    return etcdArgs(this.options.config, { listenClientUrls: [endpoint], advertiseClientUrls: [endpoint] });
  }

  /**
   * Before etcd is first started: finishes what a killed steward left. Before the swap, the staging file is
   * dropped and the old etcd starts; with the data dir moved aside, the swap is completed from the restored
   * dir when the tool had finished it, else the old data dir is moved back. A swapped member starts quarantined.
   */
  async recover(): Promise<void> {
    this.current = await readRestorePhase(this.options.config.stateDir);
    const record = this.current;
    if (!record || !restoreInProgress(record)) {
      // A steward killed between recording Finished and tidying up: the manifests and staging file still wait.
      if (record?.phase === 'Finished') await this.tidyAfterFinish(record);
      this.options.onPhase?.(record);
      return;
    }
    const { dataDir } = this.options.config;
    this.log.warn({ restore: record.restoreId, phase: record.phase }, 'this steward stopped in the middle of a restore; resuming or rolling back');
    const oldMoved = record.oldDataDir !== undefined && (await exists(record.oldDataDir));
    const dataThere = await exists(dataDir);
    if (record.abandonedDataDir !== undefined) {
      // An abort was rolling the swap back (it records the name first): finish its two renames, whichever were left.
      if (dataThere && !(await exists(record.abandonedDataDir))) await rename(dataDir, record.abandonedDataDir);
      if (oldMoved && !(await exists(dataDir))) await rename(record.oldDataDir as string, dataDir);
      this.log.warn({ restore: record.restoreId, dataDir }, 'completed the rollback an abort had begun before a restart');
      await this.dropStaging(record);
      await this.persist({
        ...record,
        phase: 'Failed',
        rolledBack: true,
        error: record.error ?? `the steward restarted while rolling restore ${record.restoreId} back; the rollback was completed`,
      });
      this.options.supervisor.resume(this.normalArgs());
      return;
    }
    // swap() records oldDataDir with restoredReady whenever there was a data dir to move aside.
    const hadNoData = record.restoredReady === true && record.oldDataDir === undefined;
    const newThere = record.newDataDir !== undefined && (await exists(record.newDataDir));
    if (record.swapped || (dataThere && record.restoredReady && (oldMoved || (hadNoData && !newThere)))) {
      await this.persist({ ...record, swapped: true, phase: 'RestartCluster' });
      await this.startQuarantined();
      return;
    }
    if (oldMoved && !dataThere) {
      if (record.restoredReady && record.newDataDir && (await exists(record.newDataDir))) {
        await rename(record.newDataDir, dataDir);
        this.log.warn({ restore: record.restoreId, dataDir }, 'completed the swap from the restored dir after a restart');
        await this.persist({ ...record, swapped: true, phase: 'RestartCluster' });
        await this.startQuarantined();
        return;
      }
      await rename(record.oldDataDir as string, dataDir);
      this.log.warn({ restore: record.restoreId, dataDir }, 'moved the old data dir back after a restart mid-swap');
      await this.dropStaging(record);
      await resumeStaticPods(record.pausedManifests ?? []);
      await this.persist({
        ...record,
        phase: 'Failed',
        rolledBack: true,
        error: `the steward restarted during ${record.phase} before the swap completed; rolled back`,
      });
      return;
    }
    // The tool's output dir of an interrupted restore is ours, not data: the snapshot it came from is kept.
    if (record.newDataDir && !record.swapped) await removeRestoreOutput(record.newDataDir);
    await this.dropStaging(record);
    await resumeStaticPods(record.pausedManifests ?? []);
    await this.persist({ ...record, phase: 'Failed', error: `the steward restarted during ${record.phase}, before any data dir was touched` });
    this.options.supervisor.resume(this.normalArgs());
  }

  async prepare(restoreId: string, stagingBytes: number): Promise<Omit<RestorePrepareResponse, 'header'>> {
    this.checkRestore(checkRestoreId(restoreId), 'any');
    const { config } = this.options;
    const tool = await this.options.tool();
    const [stateFree, dataFree, version, lastRevision, dataDirExists] = await Promise.all([
      freeBytes(config.stateDir),
      freeBytes(dirname(config.dataDir)),
      this.etcdVersion(),
      readLastRevision(config.stateDir),
      exists(config.dataDir),
    ]);
    void stagingBytes;
    return {
      dataDir: config.dataDir,
      dataDirExists,
      oldDataDir: oldDataDirFor(config.dataDir),
      stateFreeBytes: stateFree,
      dataFreeBytes: dataFree,
      etcdVersion: version,
      lastRevision,
      restoreTool: `${tool.info.kind} ${tool.info.version}`,
      toolBumpsRevision: tool.info.bumpsRevision,
      peerUrls: config.initialAdvertisePeerUrls,
      state: this.current && this.current.restoreId === restoreId ? this.state() : null,
      stateDir: config.stateDir,
    };
  }

  /** Stages and verifies the snapshot a coordinator streams here; a new restore starts here on this member. */
  async receive(
    restoreId: string,
    coordinator: string,
    announce: SnapshotAnnounce | null,
    data: AsyncIterable<Buffer> | LocalCopy,
    signal: AbortSignal,
  ): Promise<StagedSnapshot> {
    checkRestoreId(restoreId);
    if (!announce) throw new InvalidArgumentError('a snapshot stream without an announce', { hint: 'the coordinator is not a steward of this version' });
    return this.exclusive(async () => {
      this.checkRestore(restoreId, 'new-or-same');
      if (this.current?.restoreId === restoreId && this.current.swapped) {
        throw new PreconditionError('RESTORE_ALREADY_SWAPPED', `member ${this.options.config.name} already swapped in the snapshot of restore ${restoreId}`, {
          hint: 'resume the restore with the same snapshot, or abort it',
        });
      }
      const stagingFile = join(this.options.config.stateDir, 'restore', `${restoreId}.db`);
      const now = new Date().toISOString();
      await this.persist({ restoreId, phase: 'Distribute', snapshot: announce.snapshot, startedAt: now, coordinator, stagingFile });
      const controller = new AbortController();
      this.receiving = controller;
      try {
        const staged = await stageSnapshot(data, announce, stagingFile, await this.options.tool(), AbortSignal.any([signal, controller.signal]));
        await this.persist({ ...(this.current as RestorePhaseRecord), phase: 'Verify', sha256: staged.sha256 });
        this.log.info(
          { restore: restoreId, snapshot: announce.snapshot, phase: 'Verify', bytes: staged.bytes, revision: staged.revision },
          'snapshot staged and verified',
        );
        return staged;
      } catch (err) {
        await removeStaging(stagingFile).catch(() => undefined);
        await this.persist({ ...(this.current as RestorePhaseRecord), phase: 'Failed', error: errorText(err) });
        throw err;
      } finally {
        this.receiving = undefined;
      }
    });
  }

  /** Pauses etcd, restores the verified staging file into a fresh dir, swaps it in and starts etcd quarantined. */
  async swap(restoreId: string, request: RestoreSwapRequest, signal: AbortSignal): Promise<Omit<RestoreSwapResponse, 'header'>> {
    checkRestoreId(restoreId);
    return this.exclusive(async () => {
      const record = this.checkRestore(restoreId, 'same');
      // A coordinator that resumes asks again: an answer, not a second swap.
      if (record.swapped && record.phase === 'RestartCluster') return { state: this.state(), restoredTotalKeys: 0 };
      if (record.phase !== 'Verify' || !record.stagingFile) {
        throw new PreconditionError(
          'RESTORE_NOT_VERIFIED',
          `member ${this.options.config.name} is in phase ${record.phase} of restore ${restoreId}, not Verify`,
          {
            hint: 'run the restore again: the snapshot is distributed and verified first',
          },
        );
      }
      if (request.sha256 !== record.sha256) {
        throw new PreconditionError('RESTORE_DIGEST_MISMATCH', `member ${this.options.config.name} verified ${record.sha256 ?? '?'}, not ${request.sha256}`, {
          hint: 'run the restore again',
        });
      }
      const { dataDir } = this.options.config;
      const tool = await this.options.tool();
      await this.persist({ ...record, phase: 'Shutdown', pausedManifests: this.staticPods });
      await this.stopLastIfLeader(request.initialCluster, signal);
      const moved = await pauseStaticPods(this.staticPods);
      if (moved.length > 0)
        this.log.warn({ restore: restoreId, moved: moved.map((m) => m.from) }, 'static pods paused for the restore: manifests moved out of the kubelet dir');
      await this.options.supervisor.pause(signal);
      const newDataDir = `${dataDir}.restore-${restoreId}`;
      await this.persist({ ...(this.current as RestorePhaseRecord), phase: 'Restore', newDataDir });
      // Ours from an earlier attempt of this very restore (the record named it before the tool ran).
      await rm(newDataDir, { recursive: true, force: true });
      await tool.restoreInto({
        snapshot: record.stagingFile,
        dataDir: newDataDir,
        name: this.options.config.name,
        initialCluster: request.initialCluster.map((m) => ({ name: m.name, peerUrl: m.peerUrl })),
        initialAdvertisePeerUrls: this.options.config.initialAdvertisePeerUrls,
        clusterToken: request.clusterToken,
        ...(request.bumpRevision > 0 ? { bumpRevision: request.bumpRevision } : {}),
        signal,
      });
      const restored = await tool.status(join(newDataDir, 'member', 'snap', 'db'), signal);
      const hadData = await exists(dataDir);
      const oldDataDir = hadData ? await unusedAside(dataDir, 'old') : undefined;
      // Recorded before the renames: a crash between them is finished or undone by recover().
      await this.persist({ ...(this.current as RestorePhaseRecord), restoredReady: true, ...(oldDataDir ? { oldDataDir } : {}) });
      if (oldDataDir) await rename(dataDir, oldDataDir);
      failpoint('restore-member-after-old-moved');
      await mkdir(dirname(dataDir), { recursive: true });
      await rename(newDataDir, dataDir);
      this.log.warn({ restore: restoreId, phase: 'Restore', dataDir, oldDataDir: oldDataDir ?? '(there was none)' }, 'restored data dir swapped in');
      await this.persist({ ...(this.current as RestorePhaseRecord), swapped: true, phase: 'RestartCluster' });
      await this.startQuarantined();
      return { state: this.state(), restoredTotalKeys: restored.totalKeys };
    });
  }

  /** Restarts etcd on its real client URLs, ends this member's restore and trims old data dirs. */
  async finish(restoreId: string, signal: AbortSignal): Promise<RestoreMemberState> {
    checkRestoreId(restoreId);
    return this.exclusive(async () => {
      const record = this.checkRestore(restoreId, 'same-or-final');
      if (record.phase === 'Finished') return this.state();
      if (!record.swapped || record.phase !== 'RestartCluster') {
        throw new PreconditionError(
          'RESTORE_NOT_SWAPPED',
          `member ${this.options.config.name} is in phase ${record.phase} of restore ${restoreId}: nothing to finish`,
          {
            hint: 'etcd-stewardctl restore status shows every member',
          },
        );
      }
      // Finished is recorded first: the checks passed, and RestartCluster must mean "quarantined". A steward
      // killed right after starts etcd on its client URLs, and recover() completes the rest.
      await this.persist({ ...record, phase: 'Finished', error: undefined });
      await this.options.supervisor.pause(signal);
      this.options.supervisor.resume(this.normalArgs());
      // Answered once etcd listens on its client URL again: the coordinator restarts the next member then.
      const clientUrl = this.options.config.listenClientUrls[0];
      const readyBy = Date.now() + (this.options.clientReadyTimeoutMs ?? 30_000);
      while (clientUrl && Date.now() < readyBy && !(await accepts(clientUrl))) await new Promise((r) => setTimeout(r, 200));
      await this.tidyAfterFinish(record);
      this.log.info({ restore: restoreId, phase: 'Finished' }, 'restore finished on this member: etcd is back on its client URLs');
      await this.trimOldDataDirs().catch((err: unknown) => this.log.warn({ err: errorText(err) }, 'cannot trim old data dirs; they stay'));
      return this.state();
    });
  }

  /** Drops the staging file, or rolls the swap back (the restored dir is kept aside), and starts the old etcd. */
  async abort(restoreId: string, signal: AbortSignal, why = 'aborted by the operator'): Promise<RestoreMemberState> {
    checkRestoreId(restoreId);
    // Only the transfer of this restore: a stale abort for another ID must not cut the one in progress.
    if (this.current?.restoreId === restoreId) this.receiving?.abort(new PreconditionError('RESTORE_ABORTED', why));
    return this.exclusive(async () => {
      const record = this.current;
      if (!record || record.restoreId !== restoreId || !restoreInProgress(record)) return this.state();
      const { dataDir } = this.options.config;
      const touched = record.phase === 'Shutdown' || record.phase === 'Restore' || record.phase === 'RestartCluster';
      if (touched) await this.options.supervisor.pause(signal);
      let rolledBack = false;
      let abandonedDataDir: string | undefined;
      const oldMoved = record.oldDataDir !== undefined && (await exists(record.oldDataDir));
      if (oldMoved || record.swapped) {
        if (await exists(dataDir)) {
          abandonedDataDir = await unusedAside(dataDir, 'restored');
          await this.persist({ ...record, abandonedDataDir });
          await rename(dataDir, abandonedDataDir);
        }
        if (oldMoved) await rename(record.oldDataDir as string, dataDir);
        rolledBack = true;
      } else if (record.newDataDir) {
        await rm(record.newDataDir, { recursive: true, force: true });
      }
      await this.dropStaging(record);
      await this.persist({ ...(this.current as RestorePhaseRecord), phase: 'Failed', rolledBack, error: record.error ?? why });
      if (touched) this.options.supervisor.resume(this.normalArgs());
      await resumeStaticPods(record.pausedManifests ?? []);
      this.log.warn(
        { restore: restoreId, phase: 'Failed', rolledBack, abandonedDataDir },
        rolledBack ? 'restore rolled back on this member' : 'restore ended on this member',
      );
      return this.state();
    });
  }

  /** Marks a member's restore failed for a reason of the coordinator's (kept in the record, shown by status). */
  async noteFailure(restoreId: string, error: string): Promise<void> {
    await this.exclusive(async () => {
      if (this.current?.restoreId === restoreId && restoreInProgress(this.current)) await this.persist({ ...this.current, error });
    });
  }

  /**
   * Every member stops at once for the swap; a raft leader stopped while its peers still run first tries to
   * hand leadership to one of them, which is stopping too, and waits out etcd's 7 s request timeout (seen in
   * the bench, once per restore). With no peer left to hand it to, it stops at once: so the leader goes last.
   */
  private async stopLastIfLeader(cluster: { name: string; peerUrl: string }[], signal: AbortSignal): Promise<void> {
    if (!this.options.isRaftLeader?.()) return;
    const peers = cluster.filter((m) => m.name !== this.options.config.name).map((m) => m.peerUrl);
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline && !signal.aborted) {
      const up = await Promise.all(peers.map((url) => accepts(url)));
      if (!up.some(Boolean)) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    this.log.info({ phase: 'Shutdown' }, 'peers still run after 15 s; stopping this raft leader anyway');
  }

  /** Puts paused static pods back and drops the staging file; each step is a no-op once done. */
  private async tidyAfterFinish(record: RestorePhaseRecord): Promise<void> {
    await resumeStaticPods(record.pausedManifests ?? []);
    await this.dropStaging(record);
  }

  /** Refuses calls for another restore while one is in progress here. */
  private checkRestore(restoreId: string, want: 'any' | 'new-or-same' | 'same' | 'same-or-final'): RestorePhaseRecord {
    const record = this.current;
    if (record && restoreInProgress(record) && record.restoreId !== restoreId) {
      throw new PreconditionError(
        'RESTORE_BUSY',
        `member ${this.options.config.name} takes part in restore ${record.restoreId} (phase ${record.phase}), not ${restoreId}`,
        {
          hint: `finish or abort restore ${record.restoreId} first: etcd-stewardctl restore status`,
        },
      );
    }
    if (want === 'any' || want === 'new-or-same') return record as RestorePhaseRecord;
    if (!record || record.restoreId !== restoreId || (want === 'same' && !restoreInProgress(record))) {
      throw new PreconditionError('RESTORE_UNKNOWN', `member ${this.options.config.name} has no restore ${restoreId} in progress`, {
        hint: 'etcd-stewardctl restore status shows what each member records',
      });
    }
    return record;
  }

  private async startQuarantined(): Promise<void> {
    const record = this.current as RestorePhaseRecord;
    const tls = Boolean(this.options.config.etcdCertFile);
    const endpoint =
      record.quarantineEndpoint && (await portFree(record.quarantineEndpoint)) && record.quarantineEndpoint.startsWith(tls ? 'https:' : 'http:')
        ? record.quarantineEndpoint
        : await quarantineEndpoint(tls);
    await this.persist({ ...record, quarantineEndpoint: endpoint });
    this.options.supervisor.resume(this.quarantineArgs(endpoint));
    this.log.warn(
      { restore: record.restoreId, phase: 'RestartCluster', quarantine: endpoint },
      'restored etcd starts quarantined: clients cannot reach it until the checks pass',
    );
  }

  private async persist(record: RestorePhaseRecord): Promise<void> {
    const next = { ...record, updatedAt: new Date().toISOString() };
    if (next.error === undefined) delete next.error;
    await writeRestorePhase(this.options.config.stateDir, next);
    this.current = next;
    this.options.onPhase?.(next);
  }

  private async dropStaging(record: RestorePhaseRecord): Promise<void> {
    if (record.stagingFile) await removeStaging(record.stagingFile);
  }

  private async trimOldDataDirs(): Promise<void> {
    const { dataDir, etcdOldDataRetention } = this.options.config;
    const parent = dirname(dataDir);
    const pattern = new RegExp(`^${escapeRegExp(basename(dataDir))}-(old|restored)-(\\d+)$`);
    const kept = (await readdir(parent))
      .map((entry) => ({ entry, match: pattern.exec(entry) }))
      .filter((e): e is { entry: string; match: RegExpExecArray } => e.match !== null)
      .sort((a, b) => Number(b.match[2]) - Number(a.match[2]));
    for (const { entry } of kept.slice(etcdOldDataRetention)) {
      this.log.info(
        { removed: join(parent, entry), retention: etcdOldDataRetention },
        'removing a data dir an earlier restore moved aside (--etcd-old-data-retention)',
      );
      await rm(join(parent, entry), { recursive: true, force: true });
    }
  }

  private async etcdVersion(): Promise<string> {
    if (this.etcdVersionText === undefined) {
      const { stdout } = await run(this.options.config.etcdBinary, ['--version'], { timeout: 10_000 });
      this.etcdVersionText = /etcd Version:\s*(\S+)/.exec(stdout)?.[1] ?? '';
    }
    return this.etcdVersionText;
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }
}

export { oldDataDirFor } from './paths.js';

/** The restore tool's output for one attempt, and the private temp dir it writes first (tool.ts), if a kill left it. */
async function removeRestoreOutput(newDataDir: string): Promise<void> {
  await rm(newDataDir, { recursive: true, force: true });
  const parent = dirname(newDataDir);
  const temp = `.${basename(newDataDir)}.restoring-`;
  for (const entry of await readdir(parent).catch(() => [])) {
    if (entry.startsWith(temp)) await rm(join(parent, entry), { recursive: true, force: true });
  }
}
