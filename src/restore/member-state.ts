import type { RestoreMemberState } from '../rpc/types.js';
import type { RestorePhaseRecord } from '../state/restore-phase.js';

/** A member's record as the peer API and the ctl show it, with what the operator does next where it stopped. */
export function memberState(node: string, record: RestorePhaseRecord | undefined, dataDir: string): RestoreMemberState {
  if (!record) {
    return {
      node,
      restoreId: '',
      snapshot: '',
      phase: '',
      startedAt: '',
      updatedAt: '',
      oldDataDir: '',
      error: '',
      nextStep: '',
      quarantineEndpoint: '',
      swapped: false,
      rolledBack: false,
      unreachable: '',
    };
  }
  return {
    node,
    restoreId: record.restoreId,
    snapshot: record.snapshot,
    phase: record.phase,
    startedAt: record.startedAt,
    updatedAt: record.updatedAt ?? record.startedAt,
    oldDataDir: record.swapped || record.rolledBack ? (record.oldDataDir ?? '') : '',
    error: record.error ?? '',
    nextStep: nextStep(record, dataDir),
    quarantineEndpoint: record.phase === 'RestartCluster' ? (record.quarantineEndpoint ?? '') : '',
    swapped: record.swapped === true && record.rolledBack !== true,
    rolledBack: record.rolledBack === true,
    unreachable: '',
  };
}

function nextStep(record: RestorePhaseRecord, dataDir: string): string {
  switch (record.phase) {
    case 'Finished':
      return '';
    case 'Failed':
      return record.rolledBack
        ? `rolled back: ${dataDir} holds the data it had before the restore again; fix the cause and run the restore again`
        : `nothing was swapped here: ${dataDir} is untouched; fix the cause and run the restore again`;
    case 'RestartCluster':
      return `the restored data dir is in place and etcd runs quarantined on ${record.quarantineEndpoint ?? 'a loopback port'}: run 'etcd-stewardctl restore ${record.snapshot} --yes' to finish, or 'etcd-stewardctl restore abort' to roll back`;
    default:
      return `in progress (${record.phase}); if no coordinator drives it any more, run 'etcd-stewardctl restore ${record.snapshot} --yes' to resume or 'etcd-stewardctl restore abort' to undo`;
  }
}
