// TEMPORARY while the restore is being built in this session: replaced by src/restore/member.ts and coordinator.ts.
import { PreconditionError } from '../errors/index.js';
import type { StewardCtlHandlers, StewardPeerHandlers } from '../rpc/types.js';

const notYet = (): Promise<never> => Promise.reject(new PreconditionError('NOT_YET', 'restore is not built yet'));

export const restorePeerPlaceholder: Omit<
  StewardPeerHandlers,
  'listLocalSnapshots' | 'deleteLocalSnapshot' | 'forwardDelete' | 'forwardPrune' | 'readLocalSnapshot'
> = {
  receiveSnapshot: notYet,
  restorePrepare: notYet,
  restoreSwap: notYet,
  restoreFinish: notYet,
  restoreAbort: notYet,
  restoreMemberStatus: notYet,
};
export const restoreCtlPlaceholder: Pick<StewardCtlHandlers, 'restore' | 'restoreStatus' | 'restoreAbort'> = {
  restore: notYet,
  restoreStatus: notYet,
  restoreAbort: notYet,
};
