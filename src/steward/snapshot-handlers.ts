import type { LeaderTerm } from '../election/election.js';
import { NotFoundError, PreconditionError, UnavailableError, abortedError, errorText } from '../errors/index.js';
import { wireRecord, type InventoryRecord, type OrphanRecord } from '../inventory/inventory.js';
import type { DeleteOutcome, OrphanOutcome } from '../inventory/keeper.js';
import { deleteFromStore, findInStore, scanStore } from '../inventory/scan.js';
import { deadlineAfter, listStores, settleBy, withDeadline } from '../restore/find.js';
import type { Peer } from '../rpc/peer-pool.js';
import type {
  CallContext,
  DeleteFailure,
  DeleteResponse,
  ListRequest,
  ListResponse,
  PruneResponse,
  SaveEventInput,
  SaveRequest,
  SnapshotInfo,
  StewardPeerHandlers,
} from '../rpc/types.js';
import { validateName } from '../snapshot/names.js';
import type { SnapshotService } from './snapshots.js';

/** The peer handlers of the snapshot side; the restore's member side (src/restore) supplies the rest. */
export type SnapshotPeerHandlers = Pick<
  StewardPeerHandlers,
  'listLocalSnapshots' | 'deleteLocalSnapshot' | 'forwardDelete' | 'forwardPrune' | 'readLocalSnapshot'
>;

const PEER_LOCAL_TIMEOUT_MS = 60_000;
/** How long ls waits for the inventory in etcd before it lists the stores instead. */
const INVENTORY_TIMEOUT_MS = 5_000;
/** Each store's bound in that fallback: with the wait above, within the ctl's 15 s call deadline. */
const FALLBACK_STORE_TIMEOUT_MS = 8_000;

/**
 * The snapshot verbs of the ctl and peer APIs. Delete and prune change what is stored, so they run on the
 * leader only, fenced by its term (the keeper runs one pass at a time): a follower forwards the call to
 * the leader over the peer API rather than refusing it, so an operator can address any steward, as `ls`
 * and `save` allow; a forwarded call that reaches a non-leader is refused with NOT_LEADER, never passed on.
 */
export class SnapshotHandlers {
  constructor(private readonly snapshots: SnapshotService) {}

  /** ctl Save: an on-demand snapshot taken here, by whichever steward was addressed. */
  async save(request: SaveRequest, emit: (event: SaveEventInput) => void, ctx: CallContext): Promise<SnapshotInfo> {
    const result = await this.snapshots.save({
      kind: 'on-demand',
      ...(request.name ? { base: request.name } : {}),
      force: request.force,
      term: this.snapshots.options.currentTerm(),
      signal: ctx.signal,
      onProgress: (progress) => emit({ progress }),
    });
    return {
      name: result.metadata.name,
      size: result.metadata.size,
      sha256: result.metadata.sha256,
      locations: result.copies.map((c) => c.url),
      failures: result.failures.map((f) => `${f.locationId}: ${f.error}`),
      revision: result.metadata.revision,
    };
  }

  /**
   * ctl List: the inventory in etcd. When etcd cannot answer within INVENTORY_TIMEOUT_MS (no quorum, no
   * member reachable), the stores themselves are listed instead and `fallback` says so: why the inventory
   * could not be read, and which stores could not be listed either.
   */
  async list(request: ListRequest, ctx: CallContext): Promise<ListResponse> {
    ctx.signal.throwIfAborted();
    const bound = deadlineAfter(ctx.signal, INVENTORY_TIMEOUT_MS);
    const read = Promise.all([this.snapshots.inventory.list(), request.all ? this.snapshots.inventory.orphans() : []]);
    let snapshots, orphans;
    try {
      [snapshots, orphans] = await settleBy(read, bound.signal);
    } catch (err) {
      if (ctx.signal.aborted) throw abortedError(ctx.signal, err);
      const why = bound.signal.aborted ? `etcd did not answer within ${INVENTORY_TIMEOUT_MS / 1000} s` : errorText(err);
      this.snapshots.log.warn({ err: why }, 'cannot read the snapshot inventory in etcd; listing the snapshot stores themselves');
      return this.listFromStores(request, why, ctx.signal);
    } finally {
      bound.clear();
    }
    return { snapshots: snapshots.map(wireRecord), orphans, fallback: '' };
  }

  private async listFromStores(request: ListRequest, why: string, signal: AbortSignal): Promise<ListResponse> {
    const started = Date.now();
    const found = await listStores(this.snapshots.stores({ timeoutMs: FALLBACK_STORE_TIMEOUT_MS }), signal);
    this.snapshots.log.info({ ms: Date.now() - started, snapshots: found.records.length, problems: found.problems }, 'listed the snapshot stores themselves');
    const missing = found.problems.length > 0 ? `; these stores could not be listed, so it may be incomplete: ${found.problems.join('; ')}` : '';
    return {
      snapshots: found.records.map(wireRecord),
      orphans: request.all ? found.orphans : [],
      fallback: `the snapshot inventory in etcd could not be read (${why}); this listing comes from the snapshot stores themselves${missing}`,
    };
  }

  delete(names: string[], ctx: CallContext): Promise<DeleteResponse> {
    return this.onLeader(
      ctx,
      (term, signal) => this.deleteHere(names, term, signal),
      (leader, signal) => leader.forwardDelete(names, signal),
    );
  }

  prune(retention: number, ctx: CallContext): Promise<PruneResponse> {
    return this.onLeader(
      ctx,
      (term, signal) => this.pruneHere(retention, term, signal),
      (leader, signal) => leader.forwardPrune(retention, signal),
    );
  }

  readonly peer: SnapshotPeerHandlers = {
    listLocalSnapshots: async (ctx) => {
      const found = await withDeadline(ctx.signal, PEER_LOCAL_TIMEOUT_MS, (signal) => scanStore(this.snapshots.local, signal, this.snapshots.log));
      return { snapshots: found.records.map(wireRecord), orphans: found.orphans };
    },
    deleteLocalSnapshot: (name, key, ctx) =>
      withDeadline(ctx.signal, PEER_LOCAL_TIMEOUT_MS, (signal) => deleteFromStore(this.snapshots.local.store, name, key, signal)),
    forwardDelete: (names, ctx) => this.asLeader(ctx, (term, signal) => this.deleteHere(names, term, signal)),
    forwardPrune: (retention, ctx) => this.asLeader(ctx, (term, signal) => this.pruneHere(retention, term, signal)),
    readLocalSnapshot: (name, ctx) => this.readLocal(name, ctx.signal),
  };

  /**
   * The stored bytes of the complete snapshot `name` in this steward's dir (as listLocalSnapshots lists
   * it: metadata that names it, an object of the recorded size), streamed; NotFoundError if there is none.
   * Only the lookup is bounded: the stream runs as long as the caller reads it.
   */
  private async readLocal(name: string, signal: AbortSignal): Promise<AsyncIterable<Buffer>> {
    validateName(name);
    const { store } = this.snapshots.local;
    const node = this.snapshots.options.config.name;
    const found = await withDeadline(signal, PEER_LOCAL_TIMEOUT_MS, (bounded) => findInStore(store, name, bounded));
    if (found.state !== 'complete') {
      throw new NotFoundError(
        `steward ${node} has no complete snapshot named ${name} in its dir ${store.location}${found.state === 'broken' ? `: ${found.problem}` : ''}`,
        { hint: 'etcd-stewardctl ls lists where each snapshot is' },
      );
    }
    return store.read(found.metadata.key, signal);
  }

  private async deleteHere(names: string[], term: LeaderTerm, signal: AbortSignal): Promise<DeleteResponse> {
    return deleteResponse(await this.snapshots.keeper.delete(names, signal, term));
  }

  private async pruneHere(retention: number, term: LeaderTerm, signal: AbortSignal): Promise<PruneResponse> {
    const keep = retention > 0 ? retention : this.snapshots.options.config.etcdSnapshotRetention;
    // Like k3s's `etcd-snapshot prune`, an operator's prune trims on-demand snapshots as well (each kind counted apart).
    const retained = await this.snapshots.keeper.applyRetention(keep, signal, term, ['scheduled', 'on-demand']);
    const orphans = await this.snapshots.keeper.pruneOrphans(this.snapshots.orphanGraceMs, signal, term);
    return {
      deleted: retained.deleted.map(wireRecord),
      orphansRemoved: orphans.removed,
      failed: [...deleteResponse(retained).failed, ...orphanFailures(orphans)],
    };
  }

  /** Runs `here` under this steward's term if it leads, else forwards the call to the leader. */
  private async onLeader<T>(
    ctx: CallContext,
    here: (term: LeaderTerm, signal: AbortSignal) => Promise<T>,
    forward: (leader: Peer, signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    const term = this.snapshots.options.currentTerm();
    if (term) return here(term, AbortSignal.any([ctx.signal, term.signal]));
    const leader = await this.snapshots.options.leader();
    const self = this.snapshots.options.config.name;
    if (!leader || leader === self) throw notLeader(self, undefined);
    const peer = await this.snapshots.options.peers.byNode(leader, ctx.signal);
    if (!peer) {
      throw new UnavailableError('LEADER_UNREACHABLE', `the leader ${leader} has no registered gRPC address, so this call cannot be forwarded to it`, {
        hint: `address the leader directly: etcd-stewardctl --endpoint <${leader}'s gRPC address>`,
      });
    }
    this.snapshots.log.info({ leader, peer: peer.address.grpc }, 'forwarding a destructive call to the leader');
    return forward(peer, ctx.signal);
  }

  /** A forwarded call: run it if this steward leads, else refuse (never forward twice). */
  private async asLeader<T>(ctx: CallContext, here: (term: LeaderTerm, signal: AbortSignal) => Promise<T>): Promise<T> {
    const term = this.snapshots.options.currentTerm();
    if (!term) throw notLeader(this.snapshots.options.config.name, await this.snapshots.options.leader().catch(() => undefined));
    return here(term, AbortSignal.any([ctx.signal, term.signal]));
  }
}

function notLeader(self: string, leader: string | undefined): PreconditionError {
  return new PreconditionError(
    'NOT_LEADER',
    `steward ${self} is not the leader${leader ? `; the leader is ${leader}` : ' and no leader is elected now'}: deletes and prunes run on the leader only`,
    {
      hint: leader
        ? `run it again (it is forwarded to ${leader}) or address ${leader} directly`
        : 'wait for a leader (etcd-stewardctl status) and run it again',
      retryable: true,
    },
  );
}

export function deleteResponse(outcome: DeleteOutcome): DeleteResponse {
  return { deleted: outcome.deleted.map(wireRecord), failed: outcome.failed.map((f): DeleteFailure => ({ record: wireRecord(f.record), error: f.error })) };
}

function orphanFailures(outcome: OrphanOutcome): DeleteFailure[] {
  return outcome.failed.map((f) => ({ record: wireRecord(orphanAsRecord(f.orphan)), error: f.error }));
}

/** An orphan in the shape of a snapshot record, for the failure list: its key is all the name it has. */
function orphanAsRecord(orphan: OrphanRecord): InventoryRecord & { kind: InventoryRecord['kind'] } {
  return {
    name: orphan.key,
    node: '',
    locationId: orphan.locationId,
    location: orphan.location,
    key: orphan.key,
    size: orphan.size,
    sha256: '',
    created: orphan.modified,
    kind: 'on-demand',
    compressed: false,
  };
}
