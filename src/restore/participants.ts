import type { Peer } from '../rpc/peer-pool.js';
import type { RestoreMemberState, RestorePrepareResponse, RestoreSwapResponse, SnapshotAnnounce } from '../rpc/types.js';
import type { RestoreMember } from './member.js';

export interface SwapRequest {
  snapshot: string;
  initialCluster: { name: string; peerUrl: string }[];
  clusterToken: string;
  bumpRevision: number;
  sha256: string;
}

/** What a member reports once it has staged and verified the snapshot. */
export interface Verified {
  bytes: number;
  sha256: string;
  rawSha256: string;
  revision: number;
  totalKeys: number;
}

/**
 * One member as the coordinator drives it: its own member in-process (never over its own gRPC address:
 * a steward calling itself as a peer is a defect this code base already fixed once), every other one over
 * the peer API with the restore ID in every header.
 */
export interface Participant {
  readonly node: string;
  prepare(restoreId: string, stagingBytes: number, signal: AbortSignal): Promise<Omit<RestorePrepareResponse, 'header'>>;
  receive(restoreId: string, announce: SnapshotAnnounce, data: AsyncIterable<Buffer>, signal: AbortSignal): Promise<Verified>;
  /** Only the coordinator's own member: stage from the coordinator's stored file, without the stream. */
  receiveLocalCopy?(restoreId: string, announce: SnapshotAnnounce, file: string, signal: AbortSignal): Promise<Verified>;
  swap(restoreId: string, request: SwapRequest, signal: AbortSignal): Promise<Omit<RestoreSwapResponse, 'header'>>;
  finish(restoreId: string, signal: AbortSignal): Promise<RestoreMemberState>;
  abort(restoreId: string, signal: AbortSignal): Promise<RestoreMemberState>;
  status(restoreId: string, signal: AbortSignal): Promise<RestoreMemberState>;
}

export class LocalParticipant implements Participant {
  constructor(
    private readonly member: RestoreMember,
    readonly node: string,
  ) {}

  prepare(restoreId: string, stagingBytes: number): Promise<Omit<RestorePrepareResponse, 'header'>> {
    return this.member.prepare(restoreId, stagingBytes);
  }

  receive(restoreId: string, announce: SnapshotAnnounce, data: AsyncIterable<Buffer>, signal: AbortSignal): Promise<Verified> {
    return this.member.receive(restoreId, this.node, announce, data, signal);
  }

  receiveLocalCopy(restoreId: string, announce: SnapshotAnnounce, file: string, signal: AbortSignal): Promise<Verified> {
    return this.member.receive(restoreId, this.node, announce, { file }, signal);
  }

  swap(restoreId: string, request: SwapRequest, signal: AbortSignal): Promise<Omit<RestoreSwapResponse, 'header'>> {
    return this.member.swap(restoreId, { header: null, ...request }, signal);
  }

  finish(restoreId: string, signal: AbortSignal): Promise<RestoreMemberState> {
    return this.member.finish(restoreId, signal);
  }

  abort(restoreId: string, signal: AbortSignal): Promise<RestoreMemberState> {
    return this.member.abort(restoreId, signal);
  }

  async status(): Promise<RestoreMemberState> {
    return this.member.state();
  }
}

export class RemoteParticipant implements Participant {
  constructor(private readonly peer: Peer) {}

  get node(): string {
    return this.peer.node;
  }

  prepare(restoreId: string, stagingBytes: number, signal: AbortSignal): Promise<Omit<RestorePrepareResponse, 'header'>> {
    // The snapshot name is carried by the announce later; prepare only needs the restore ID.
    return this.peer.restorePrepare(restoreId, 'plan', stagingBytes, signal);
  }

  receive(restoreId: string, announce: SnapshotAnnounce, data: AsyncIterable<Buffer>, signal: AbortSignal): Promise<Verified> {
    return this.peer.sendSnapshot(restoreId, announce, data, signal);
  }

  swap(restoreId: string, request: SwapRequest, signal: AbortSignal): Promise<Omit<RestoreSwapResponse, 'header'>> {
    return this.peer.restoreSwap(restoreId, request, signal);
  }

  finish(restoreId: string, signal: AbortSignal): Promise<RestoreMemberState> {
    return this.peer.restoreMember('restoreFinish', restoreId, signal);
  }

  abort(restoreId: string, signal: AbortSignal): Promise<RestoreMemberState> {
    return this.peer.restoreMember('restoreAbort', restoreId, signal);
  }

  status(restoreId: string, signal: AbortSignal): Promise<RestoreMemberState> {
    return this.peer.restoreMember('restoreMemberStatus', restoreId, signal);
  }
}
