/**
 * The message types of proto/, under the names the rest of the code uses. Every shape comes from
 * src/rpc/generated/ (`make proto-types`); nothing here is written by hand but the handler contracts.
 * `X` is what a steward receives or a ctl reads (every field present, proto-loader `defaults`);
 * `XInput` what a sender may pass (fields optional).
 */
import type { Metadata } from '@grpc/grpc-js';
import type { DeleteFailure__Output } from './generated/etcdsteward/v1/DeleteFailure.js';
import type { DeleteResponse__Output } from './generated/etcdsteward/v1/DeleteResponse.js';
import type { ListRequest__Output } from './generated/etcdsteward/v1/ListRequest.js';
import type { ListResponse__Output } from './generated/etcdsteward/v1/ListResponse.js';
import type { OrphanObject__Output } from './generated/etcdsteward/v1/OrphanObject.js';
import type { PeerHeader__Output } from './generated/etcdsteward/v1/PeerHeader.js';
import type { PruneResponse__Output } from './generated/etcdsteward/v1/PruneResponse.js';
import type { SaveEvent as SaveEventIn } from './generated/etcdsteward/v1/SaveEvent.js';
import type { SaveRequest__Output } from './generated/etcdsteward/v1/SaveRequest.js';
import type { SnapshotInfo__Output } from './generated/etcdsteward/v1/SnapshotInfo.js';
import type { SnapshotRecord__Output } from './generated/etcdsteward/v1/SnapshotRecord.js';
import type { SpecResponse__Output } from './generated/etcdsteward/v1/SpecResponse.js';
import type { StatusResponse__Output } from './generated/etcdsteward/v1/StatusResponse.js';
import type { SnapshotAnnounce__Output } from './generated/etcdsteward/v1/SnapshotAnnounce.js';
import type { ReceiveSnapshotResponse__Output } from './generated/etcdsteward/v1/ReceiveSnapshotResponse.js';
import type { RestoreRequest__Output } from './generated/etcdsteward/v1/RestoreRequest.js';
import type { RestoreEvent } from './generated/etcdsteward/v1/RestoreEvent.js';
import type { RestoreSummary__Output } from './generated/etcdsteward/v1/RestoreSummary.js';
import type { RestoreStatusResponse__Output } from './generated/etcdsteward/v1/RestoreStatusResponse.js';
import type { RestoreMemberState__Output } from './generated/etcdsteward/v1/RestoreMemberState.js';
import type { RestorePrepareRequest__Output } from './generated/etcdsteward/v1/RestorePrepareRequest.js';
import type { RestorePrepareResponse__Output } from './generated/etcdsteward/v1/RestorePrepareResponse.js';
import type { RestoreSwapRequest__Output } from './generated/etcdsteward/v1/RestoreSwapRequest.js';
import type { RestoreSwapResponse__Output } from './generated/etcdsteward/v1/RestoreSwapResponse.js';
import type { VerifyResponse__Output } from './generated/etcdsteward/v1/VerifyResponse.js';

export type { Member__Output as MemberStatus } from './generated/etcdsteward/v1/Member.js';
export type { StatusResponse__Output as StatusResponse, StatusResponse as StatusResponseInput } from './generated/etcdsteward/v1/StatusResponse.js';
export type { SpecResponse__Output as SpecResponse, SpecResponse as SpecResponseInput } from './generated/etcdsteward/v1/SpecResponse.js';
export type { SaveRequest__Output as SaveRequest } from './generated/etcdsteward/v1/SaveRequest.js';
export type { SnapshotInfo__Output as SnapshotInfo, SnapshotInfo as SnapshotInfoInput } from './generated/etcdsteward/v1/SnapshotInfo.js';
export type { SaveEvent__Output as SaveEvent, SaveEvent as SaveEventInput } from './generated/etcdsteward/v1/SaveEvent.js';
export type { SnapshotRecord__Output as SnapshotRecord } from './generated/etcdsteward/v1/SnapshotRecord.js';
export type { OrphanObject__Output as OrphanObject } from './generated/etcdsteward/v1/OrphanObject.js';
export type { ListResponse__Output as ListResponse } from './generated/etcdsteward/v1/ListResponse.js';
export type { ListRequest__Output as ListRequest } from './generated/etcdsteward/v1/ListRequest.js';
export type { DeleteResponse__Output as DeleteResponse } from './generated/etcdsteward/v1/DeleteResponse.js';
export type { DeleteFailure__Output as DeleteFailure } from './generated/etcdsteward/v1/DeleteFailure.js';
export type { PruneResponse__Output as PruneResponse } from './generated/etcdsteward/v1/PruneResponse.js';
export type { PeerHeader__Output as PeerHeader } from './generated/etcdsteward/v1/PeerHeader.js';
export type { PeerReplyHeader__Output as PeerReplyHeader } from './generated/etcdsteward/v1/PeerReplyHeader.js';
export type { ReceiveSnapshotResponse__Output as ReceiveSnapshotResponse } from './generated/etcdsteward/v1/ReceiveSnapshotResponse.js';
export type { ReceiveSnapshotChunk as ReceiveSnapshotChunkInput } from './generated/etcdsteward/v1/ReceiveSnapshotChunk.js';
export type { SnapshotAnnounce__Output as SnapshotAnnounce } from './generated/etcdsteward/v1/SnapshotAnnounce.js';
export type { RestoreRequest__Output as RestoreRequest } from './generated/etcdsteward/v1/RestoreRequest.js';
export type { RestoreEvent__Output as RestoreEvent, RestoreEvent as RestoreEventInput } from './generated/etcdsteward/v1/RestoreEvent.js';
export type { RestorePlan__Output as RestorePlan, RestorePlan as RestorePlanInput } from './generated/etcdsteward/v1/RestorePlan.js';
export type { PlanMember__Output as PlanMember } from './generated/etcdsteward/v1/PlanMember.js';
export type { RestoreProgress__Output as RestoreProgress } from './generated/etcdsteward/v1/RestoreProgress.js';
export type { RestoreSummary__Output as RestoreSummary, RestoreSummary as RestoreSummaryInput } from './generated/etcdsteward/v1/RestoreSummary.js';
export type { RestoreMemberState__Output as RestoreMemberState } from './generated/etcdsteward/v1/RestoreMemberState.js';
export type { VerifyResponse__Output as VerifyResponse } from './generated/etcdsteward/v1/VerifyResponse.js';
export type { SnapshotVerification__Output as SnapshotVerification } from './generated/etcdsteward/v1/SnapshotVerification.js';
export type { RestoreStatusResponse__Output as RestoreStatusResponse } from './generated/etcdsteward/v1/RestoreStatusResponse.js';
export type { RestorePrepareRequest__Output as RestorePrepareRequest } from './generated/etcdsteward/v1/RestorePrepareRequest.js';
export type { RestorePrepareResponse__Output as RestorePrepareResponse } from './generated/etcdsteward/v1/RestorePrepareResponse.js';
export type { RestoreSwapRequest__Output as RestoreSwapRequest } from './generated/etcdsteward/v1/RestoreSwapRequest.js';
export type { RestoreSwapResponse__Output as RestoreSwapResponse } from './generated/etcdsteward/v1/RestoreSwapResponse.js';
export type { InitialMember__Output as InitialMember } from './generated/etcdsteward/v1/InitialMember.js';

/** What every handler gets besides its request. */
export interface CallContext {
  /** Fires when the client cancels, the call's deadline passes, or the steward shuts down. */
  signal: AbortSignal;
  metadata: Metadata;
  /** The CN of the caller's verified client certificate; undefined without mTLS. */
  caller?: string | undefined;
}

/** A peer handler's context: the request header, already checked against this steward's identity. */
export interface PeerCallContext extends CallContext {
  peer: PeerHeader__Output;
}

export type DeleteFailureOut = DeleteFailure__Output;

/** The ctl handlers a steward implements; rpc/server.ts adapts them to grpc-js. */
export interface StewardCtlHandlers {
  status(ctx: CallContext): Promise<StatusResponse__Output>;
  save(request: SaveRequest__Output, emit: (event: SaveEventIn) => void, ctx: CallContext): Promise<SnapshotInfo__Output>;
  list(request: ListRequest__Output, ctx: CallContext): Promise<ListResponse__Output>;
  delete(names: string[], ctx: CallContext): Promise<DeleteResponse__Output>;
  prune(retention: number, ctx: CallContext): Promise<PruneResponse__Output>;
  specGet(ctx: CallContext): Promise<SpecResponse__Output>;
  specSet(specJson: string, ctx: CallContext, options: { force: boolean }): Promise<SpecResponse__Output>;
  init(confirm: boolean, ctx: CallContext): Promise<SpecResponse__Output>;
  restore(request: RestoreRequest__Output, emit: (event: RestoreEvent) => void, ctx: CallContext): Promise<RestoreSummary__Output>;
  restoreStatus(ctx: CallContext): Promise<RestoreStatusResponse__Output>;
  restoreAbort(ctx: CallContext): Promise<RestoreStatusResponse__Output>;
  verify(name: string, ctx: CallContext): Promise<VerifyResponse__Output>;
}

export interface LocalListing {
  snapshots: SnapshotRecord__Output[];
  orphans: OrphanObject__Output[];
}

/** The peer handlers; the adapter checks the header before and stamps the reply header after. */
export interface StewardPeerHandlers {
  listLocalSnapshots(ctx: PeerCallContext): Promise<LocalListing>;
  deleteLocalSnapshot(name: string, key: string, ctx: PeerCallContext): Promise<void>;
  forwardDelete(names: string[], ctx: PeerCallContext): Promise<DeleteResponse__Output>;
  forwardPrune(retention: number, ctx: PeerCallContext): Promise<PruneResponse__Output>;
  /**
   * Consumes a client stream of bytes announced by its first message; reading slowly slows the sender
   * (bounded buffering). The reply header is stamped by the adapter.
   */
  receiveSnapshot(
    announce: SnapshotAnnounce__Output | null,
    data: AsyncIterable<Buffer>,
    ctx: PeerCallContext,
  ): Promise<Omit<ReceiveSnapshotResponse__Output, 'header'>>;
  /** One snapshot of the local dir as a stream of its stored bytes; NotFoundError if it has none by that name. */
  readLocalSnapshot(name: string, ctx: PeerCallContext): Promise<AsyncIterable<Buffer>>;
  restorePrepare(request: RestorePrepareRequest__Output, ctx: PeerCallContext): Promise<Omit<RestorePrepareResponse__Output, 'header'>>;
  restoreSwap(request: RestoreSwapRequest__Output, ctx: PeerCallContext): Promise<Omit<RestoreSwapResponse__Output, 'header'>>;
  restoreFinish(ctx: PeerCallContext): Promise<RestoreMemberState__Output>;
  restoreAbort(ctx: PeerCallContext): Promise<RestoreMemberState__Output>;
  restoreMemberStatus(ctx: PeerCallContext): Promise<RestoreMemberState__Output>;
}

/** Who this steward is, for the peer header checks. */
export interface PeerIdentity {
  node: string;
  /** etcd's cluster ID (hex) as last seen; empty while unknown. */
  clusterId(): string;
}
