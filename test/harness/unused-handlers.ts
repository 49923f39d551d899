import type { StatusResponse, StewardPeerHandlers } from '../../src/rpc/types.js';

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

/** A status answer with every field set: scripted servers change only what their test is about. */
export function statusOf(overrides: Partial<StatusResponse> = {}): StatusResponse {
  return {
    node: 'n1',
    isLeader: false,
    leader: '',
    version: 'v',
    uptimeSeconds: 1,
    members: [],
    clusterId: 'c1',
    fencingToken: '',
    etcdRunning: true,
    etcdRestarts: 0,
    specHealthy: true,
    specGeneration: 1,
    specProblem: '',
    leaderProblem: '',
    leaderGrpc: '',
    restore: null,
    etcdFlagsPending: '',
    lastVerified: '',
    lastVerifiedAt: '',
    ...overrides,
  };
}
