import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { UnavailableError, errorText } from '../errors/index.js';
import { ensureStateDir, writeFileAtomic } from './atomic.js';

/** The restore's phases (DESIGN: restore); `Finished` and `Failed` end it. */
export const RESTORE_PHASES = ['Started', 'Distribute', 'Verify', 'Shutdown', 'Restore', 'RestartCluster', 'Finished', 'Failed'] as const;
export type RestorePhaseName = (typeof RESTORE_PHASES)[number];

const restorePhaseSchema = z.object({
  restoreId: z.string().min(1).max(255),
  phase: z.enum(RESTORE_PHASES),
  /** The snapshot being restored, by name. */
  snapshot: z.string().max(255),
  startedAt: z.string(),
  /** Where the restore moves (or moved) the old data dir (`<data-dir>-old-<unix-ts>`): recorded before the rename. */
  oldDataDir: z.string().optional(),
  updatedAt: z.string().optional(),
  /** The steward that coordinates the restore. */
  coordinator: z.string().max(255).optional(),
  /** The verified snapshot staged for the swap (removed once Finished or Failed). */
  stagingFile: z.string().optional(),
  /** SHA-256 of the stored bytes this member verified. */
  sha256: z.string().optional(),
  /** The fresh dir beside the data dir that the restore tool writes; recorded before the tool runs. */
  newDataDir: z.string().optional(),
  /** The restore tool finished writing newDataDir: it may be swapped in. */
  restoredReady: z.boolean().optional(),
  /** The restored dir is in place at the data dir. */
  swapped: z.boolean().optional(),
  /** The old data dir was moved back into place. */
  rolledBack: z.boolean().optional(),
  /** Where the restored dir was kept when a rollback moved it aside. */
  abandonedDataDir: z.string().optional(),
  /** The quarantined client endpoint the restored etcd listens on until Finished. */
  quarantineEndpoint: z.string().optional(),
  /** Static-pod manifests moved out of the kubelet's dir for the restore (--restore-pause-static-pods). */
  pausedManifests: z
    .array(z.object({ from: z.string(), to: z.string() }))
    .max(20)
    .optional(),
  /** Why it failed, in words. */
  error: z.string().max(4096).optional(),
});

/** What one steward persists about a restore it takes part in, so a crash mid-restore resumes or rolls back. */
export type RestorePhaseRecord = z.infer<typeof restorePhaseSchema>;

export function restorePhasePath(stateDir: string): string {
  return join(stateDir, 'restore', 'phase.json');
}

/** A restore holds the data dir from its first phase until it finished or failed. */
export function restoreInProgress(record: RestorePhaseRecord | undefined): boolean {
  return record !== undefined && record.phase !== 'Finished' && record.phase !== 'Failed';
}

/**
 * The persisted restore phase, or undefined if no restore ever ran here. A file that exists but cannot be
 * read or parsed throws: "could not tell" must never pass for "no restore".
 */
export async function readRestorePhase(stateDir: string): Promise<RestorePhaseRecord | undefined> {
  const path = restorePhasePath(stateDir);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new UnavailableError('RESTORE_PHASE_UNREADABLE', `cannot read ${path}: ${errorText(err)}`, {
      hint: `fix the permissions or the volume of the state dir ${stateDir}`,
      cause: err,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new UnavailableError('RESTORE_PHASE_UNREADABLE', `${path} is not valid JSON: ${errorText(err)}`, {
      hint: `inspect ${path}: it records a restore that may be half done`,
      retryable: false,
    });
  }
  const parsed = restorePhaseSchema.safeParse(json);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`).join('; ');
    throw new UnavailableError('RESTORE_PHASE_UNREADABLE', `${path} is not a valid restore phase record: ${problems}`, {
      hint: `inspect ${path}: it records a restore that may be half done`,
      retryable: false,
    });
  }
  return parsed.data;
}

/** Persists the phase with the one atomic state-file write (0600, in a 0700 dir). */
export async function writeRestorePhase(stateDir: string, record: RestorePhaseRecord, signal?: AbortSignal): Promise<void> {
  const checked = restorePhaseSchema.parse(record);
  await ensureStateDir(stateDir);
  await ensureStateDir(join(stateDir, 'restore'));
  await writeFileAtomic(restorePhasePath(stateDir), `${JSON.stringify(checked, null, 2)}\n`, signal);
}
