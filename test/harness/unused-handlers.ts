import type { StewardPeerHandlers } from '../../src/rpc/types.js';

const unused = async (): Promise<never> => {
  throw new Error('not used by this test');
};

/** A peer service whose every method fails: for tests of the ctl API that need a server but no peer calls. */
export function unusedPeerHandlers(): StewardPeerHandlers {
  return {
    listLocalSnapshots: unused,
    deleteLocalSnapshot: unused,
    forwardDelete: unused,
    forwardPrune: unused,
    receiveSnapshot: unused,
    readLocalSnapshot: unused,
    restorePrepare: unused,
    restoreSwap: unused,
    restoreFinish: unused,
    restoreAbort: unused,
    restoreMemberStatus: unused,
  };
}
