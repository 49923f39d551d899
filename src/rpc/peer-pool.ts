import type { ChannelCredentials } from '@grpc/grpc-js';
import { InternalError } from '../errors/index.js';
import { PeerClient } from './client.js';
import { checkReplyHeader } from './peer-header.js';
import type {
  DeleteResponse,
  InitialMember,
  LocalListing,
  PeerHeader,
  PeerReplyHeader,
  PruneResponse,
  ReceiveSnapshotResponse,
  RestoreMemberState,
  RestorePrepareResponse,
  RestoreSwapResponse,
  SnapshotAnnounce,
} from './types.js';

/** Where one steward's peer API is. */
export interface PeerAddress {
  node: string;
  grpc: string;
}

/**
 * Where every steward's peer API is. Today's implementation is the etcd registry (rpc/registry.ts); the
 * cluster spec's member addresses plug in here too, so peers can be reached with etcd down.
 */
export interface PeerDirectory {
  list(signal: AbortSignal): Promise<PeerAddress[]>;
}

/** What this steward puts in every request header. */
export interface CallerIdentity {
  node: string;
  /** etcd's cluster ID (hex) as last seen; empty while unknown. */
  clusterId(): string;
  /** The fencing token while this steward leads; empty otherwise. */
  fencingToken(): string;
}

/** One peer as seen through the pool: every call carries the header and has its reply's header checked. */
export class Peer {
  constructor(
    readonly address: PeerAddress,
    private readonly client: PeerClient,
    private readonly self: CallerIdentity,
  ) {}

  get node(): string {
    return this.address.node;
  }

  async listLocal(signal: AbortSignal): Promise<LocalListing> {
    const reply = await this.client.listLocalSnapshots(this.header(), signal);
    this.check(reply.header);
    return { snapshots: reply.snapshots, orphans: reply.orphans };
  }

  async deleteLocal(name: string, key: string, signal: AbortSignal): Promise<void> {
    this.check((await this.client.deleteLocalSnapshot(this.header(), name, key, signal)).header);
  }

  async forwardDelete(names: string[], signal: AbortSignal): Promise<DeleteResponse> {
    const reply = await this.client.forwardDelete(this.header(), names, signal);
    this.check(reply.header);
    return reply.response ?? missing('ForwardDelete');
  }

  async forwardPrune(retention: number, signal: AbortSignal): Promise<PruneResponse> {
    const reply = await this.client.forwardPrune(this.header(), retention, signal);
    this.check(reply.header);
    return reply.response ?? missing('ForwardPrune');
  }

  /** Streams a snapshot's stored bytes to the peer, which stages and verifies them for restore `restoreId`. */
  async sendSnapshot(restoreId: string, announce: SnapshotAnnounce, source: AsyncIterable<Buffer>, signal: AbortSignal): Promise<ReceiveSnapshotResponse> {
    const reply = await this.client.receiveSnapshot(this.header(restoreId), announce, source, signal);
    this.check(reply.header, restoreId);
    return reply;
  }

  /** The stored bytes of one snapshot in the peer's local dir; the reply header is checked before the first byte is passed on. */
  async *readLocal(name: string, signal: AbortSignal, restoreId = ''): AsyncGenerator<Buffer> {
    const { reply, data } = this.client.readLocalSnapshot(this.header(restoreId), name, signal);
    let checked = false;
    for await (const chunk of data) {
      if (!checked) {
        this.check(await reply, restoreId);
        checked = true;
      }
      yield chunk;
    }
    if (!checked) this.check(await reply, restoreId);
  }

  async restorePrepare(restoreId: string, snapshot: string, stagingBytes: number, signal: AbortSignal): Promise<RestorePrepareResponse> {
    const reply = await this.client.restorePrepare(this.header(restoreId), snapshot, stagingBytes, signal);
    this.check(reply.header, restoreId);
    return reply;
  }

  async restoreSwap(
    restoreId: string,
    request: { snapshot: string; initialCluster: InitialMember[]; clusterToken: string; bumpRevision: number; sha256: string },
    signal: AbortSignal,
  ): Promise<RestoreSwapResponse> {
    const reply = await this.client.restoreSwap(this.header(restoreId), request, signal);
    this.check(reply.header, restoreId);
    return reply;
  }

  async restoreMember(method: 'restoreFinish' | 'restoreAbort' | 'restoreMemberStatus', restoreId: string, signal: AbortSignal): Promise<RestoreMemberState> {
    const reply = await this.client.restoreMember(method, this.header(restoreId), signal);
    this.check(reply.header, restoreId);
    return reply.state ?? missing(method);
  }

  // A restore replaces the cluster ID under the members' feet (and runs when nobody can read it): its calls
  // are bound by the restore ID instead, which every member checks against the one it takes part in.
  private header(restoreId = ''): PeerHeader {
    const clusterId = restoreId ? '' : this.self.clusterId();
    return { node: this.address.node, clusterId, caller: this.self.node, restoreId, fencingToken: this.self.fencingToken() };
  }

  private check(reply: PeerReplyHeader | null, restoreId = ''): void {
    checkReplyHeader(reply, { ...this.address, clusterId: restoreId ? '' : this.self.clusterId() });
  }
}

function missing(method: string): never {
  throw new InternalError('PEER_REPLY_EMPTY', `the peer answered ${method} without a response`, { hint: 'the peer runs another version; upgrade it' });
}

/**
 * The one pool of peer clients: created on first use, one per address, reused for every call, closed
 * together. An address that drops out of the directory keeps its (idle) channel until close().
 */
export class PeerPool {
  private readonly clients = new Map<string, PeerClient>();

  constructor(
    private readonly directory: PeerDirectory,
    private readonly self: CallerIdentity,
    private readonly timeoutMs = 30_000,
    /** One credentials object for every peer: with mTLS it follows the files on disk (security/tls-files.ts). */
    private readonly credentials?: ChannelCredentials,
  ) {}

  /** Every other steward the directory knows (this steward, by name, left out). */
  async others(signal: AbortSignal): Promise<Peer[]> {
    return (await this.directory.list(signal)).filter((entry) => entry.node !== this.self.node).map((entry) => this.peer(entry));
  }

  /** The peer named `node`, if the directory knows it. */
  async byNode(node: string, signal: AbortSignal): Promise<Peer | undefined> {
    const entry = (await this.directory.list(signal)).find((e) => e.node === node);
    return entry ? this.peer(entry) : undefined;
  }

  peer(address: PeerAddress): Peer {
    let client = this.clients.get(address.grpc);
    if (!client) {
      client = new PeerClient(address.grpc, this.timeoutMs, this.credentials);
      this.clients.set(address.grpc, client);
    }
    return new Peer(address, client, this.self);
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}
