import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StewardError } from '../../src/errors/index.js';
import { readRestorePhase, restoreInProgress, restorePhasePath, writeRestorePhase, type RestorePhaseRecord } from '../../src/state/restore-phase.js';

const record: RestorePhaseRecord = {
  restoreId: 'r-7',
  phase: 'Shutdown',
  snapshot: 'etcd-snapshot-node-1-1700000000',
  startedAt: '2026-01-01T00:00:00Z',
  oldDataDir: '/var/lib/etcd-old-1700000000',
};

describe('the persisted restore phase', () => {
  let stateDir: string;
  beforeEach(async () => {
    stateDir = join(await mkdtemp(join(tmpdir(), 'phase-test-')), 'state');
  });
  afterEach(async () => {
    await rm(join(stateDir, '..'), { recursive: true, force: true });
  });

  it('is written to <state-dir>/restore/phase.json, 0600 in 0700 dirs, and read back', async () => {
    expect(await readRestorePhase(stateDir)).toBeUndefined();
    await writeRestorePhase(stateDir, record);
    expect(restorePhasePath(stateDir)).toBe(join(stateDir, 'restore', 'phase.json'));
    expect(await readRestorePhase(stateDir)).toEqual(record);
    expect((await stat(restorePhasePath(stateDir))).mode & 0o777).toBe(0o600);
    expect((await stat(join(stateDir, 'restore'))).mode & 0o777).toBe(0o700);
    expect((await stat(stateDir)).mode & 0o777).toBe(0o700);
    await writeRestorePhase(stateDir, { ...record, phase: 'Finished' });
    expect((await readRestorePhase(stateDir))?.phase).toBe('Finished');
    expect(await readdir(join(stateDir, 'restore'))).toEqual(['phase.json']);
  });

  it('a damaged record throws RESTORE_PHASE_UNREADABLE instead of passing for "no restore"', async () => {
    await mkdir(join(stateDir, 'restore'), { recursive: true });
    await writeFile(restorePhasePath(stateDir), '{"restoreId": "r-7", "phase": "Restor');
    await expect(readRestorePhase(stateDir)).rejects.toMatchObject({ code: 'RESTORE_PHASE_UNREADABLE' });
    await writeFile(restorePhasePath(stateDir), JSON.stringify({ ...record, phase: 'Sideways' }));
    const err = await readRestorePhase(stateDir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StewardError);
    expect((err as StewardError).message).toMatch(/phase/);
  });

  it('an invalid record is never written', async () => {
    await expect(writeRestorePhase(stateDir, { ...record, restoreId: '' })).rejects.toThrow();
    expect(await readRestorePhase(stateDir)).toBeUndefined();
  });

  it('is in progress from Started until Finished or Failed', () => {
    expect(restoreInProgress(undefined)).toBe(false);
    for (const phase of ['Started', 'Distribute', 'Verify', 'Shutdown', 'Restore', 'RestartCluster'] as const)
      expect(restoreInProgress({ ...record, phase })).toBe(true);
    expect(restoreInProgress({ ...record, phase: 'Finished' })).toBe(false);
    expect(restoreInProgress({ ...record, phase: 'Failed' })).toBe(false);
  });
});
