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

/** What every handler gets besides its request. */
export interface CallContext {
  /** Fires when the client cancels, the call's deadline passes, or the steward shuts down. */
  signal: AbortSignal;
  metadata: Metadata;
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
  /** Consumes a client stream of bytes; reading slowly slows the sender (bounded buffering). */
  receiveSnapshot(data: AsyncIterable<Buffer>, ctx: PeerCallContext): Promise<{ bytes: number; sha256: string }>;
}

/** Who this steward is, for the peer header checks. */
export interface PeerIdentity {
  node: string;
  /** etcd's cluster ID (hex) as last seen; empty while unknown. */
  clusterId(): string;
}
