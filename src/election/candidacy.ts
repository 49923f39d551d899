import { EventEmitter } from 'node:events';
import type { Etcd3, Lease, Namespace } from '../etcd/client.js';

/**
 * One bid for leadership, the algorithm of etcd's Go `concurrency.Election`: put `<prefix><leaseId>` under
 * our own lease, then wait until every key created before ours is gone. Written here rather than using
 * etcd3's `Campaign` because that one keeps its lease private (its keepalives are our only timely sign
 * of trouble) and leaves its delete-watch open after `resign()`, which keeps reconnecting after the
 * client closes and so kept a stopped steward's process alive.
 *
 * Events: `keepalive` on every successful lease keepalive; `lost` once if the lease is lost.
 */
export class Candidacy extends EventEmitter {
  private readonly namespace: Namespace;
  private lease: Lease | undefined;
  private closed = false;
  private lost: unknown;

  constructor(
    client: Etcd3,
    readonly prefix: string,
    private readonly value: string,
    private readonly ttlSeconds: number,
  ) {
    super();
    this.namespace = client.namespace(prefix);
  }

  /** Resolves with the campaign key's create revision (the fencing token) once elected; rejects on abort or loss. */
  async campaign(signal: AbortSignal): Promise<{ key: string; createRevision: string }> {
    const lease = this.namespace.lease(this.ttlSeconds);
    this.lease = lease;
    lease.on('keepaliveSucceeded', (res) => {
      if (res.TTL !== '0') this.emit('keepalive');
    });
    lease.on('lost', (err) => {
      this.lost = err ?? new Error('lease lost');
      this.emit('lost', err);
    });
    const leaseId = await lease.grant();
    const result = await this.namespace
      .if(leaseId, 'Create', '==', 0)
      .then(this.namespace.put(leaseId).value(this.value).lease(leaseId))
      .else(this.namespace.get(leaseId))
      .commit();
    const createRevision = result.succeeded ? result.header.revision : (result.responses[0]?.response_range.kvs[0]?.create_revision ?? '');
    if (!createRevision) throw new Error(`campaign key ${this.prefix}${leaseId} vanished while campaigning`);
    for (;;) {
      signal.throwIfAborted();
      // A lease lost between waits must not let this bid win later with a dead lease.
      if (this.lost !== undefined) throw this.lost;
      const ahead = await this.namespace
        .getAll()
        .maxCreateRevision((BigInt(createRevision) - 1n).toString())
        .sort('Create', 'Descend')
        .limit(1)
        .exec();
      const blocker = ahead.kvs[0];
      if (!blocker) {
        if (this.lost !== undefined) throw this.lost;
        return { key: `${this.prefix}${leaseId}`, createRevision };
      }
      // The namespace already strips its prefix from returned keys. Slicing it off again once turned every
      // follower's wait into a busy loop (a Range, a Watch and a new HTTP/2 channel per turn, ~35 TCP
      // connections a second) because the mangled key never existed and so always looked deleted.
      await this.waitForDelete(blocker.key.toString(), ahead.header.revision, signal);
    }
  }

  /** Revokes the lease (deleting our key, so the next candidate wins at once); bounded, never throws. */
  async resign(timeoutMs = 3000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.removeAllListeners();
    const lease = this.lease;
    if (!lease) return;
    lease.removeAllListeners();
    lease.on('lost', () => undefined);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      lease.revoke({ deadline: Date.now() + timeoutMs }).catch(() => undefined),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    // revoke() already stops keepalives; release() makes sure of it when revoke timed out.
    lease.release();
  }

  private async waitForDelete(key: string, revision: string, signal: AbortSignal): Promise<void> {
    const watcher = await this.namespace
      .watch()
      .key(key)
      .startRevision((BigInt(revision) + 1n).toString())
      .only('delete')
      .create();
    let onAbort: (() => void) | undefined;
    let onLost: ((err: unknown) => void) | undefined;
    // Every listener is attached before anything else is awaited: an error or a lost lease in between is never missed.
    const deleted = new Promise<void>((resolve, reject) => {
      onAbort = () => reject(signal.reason);
      onLost = (err) => reject(err);
      signal.addEventListener('abort', onAbort, { once: true });
      this.once('lost', onLost);
      watcher.once('delete', () => resolve());
      watcher.once('error', reject);
      if (signal.aborted) onAbort();
      if (this.lost !== undefined) reject(this.lost);
    });
    // Whichever way it ends, a rejection nobody awaits must not surface as unhandled.
    deleted.catch(() => undefined);
    try {
      const gone = await this.namespace.get(key).exec();
      if (gone.kvs.length === 0) return;
      await deleted;
    } finally {
      // The root signal outlives many bids: a listener left on it would pin every finished Candidacy.
      if (onAbort) signal.removeEventListener('abort', onAbort);
      if (onLost) this.off('lost', onLost);
      await watcher.cancel().catch(() => undefined);
    }
  }

  /** Why the lease was lost, if it was: a term must not start (or go on) on a dead lease. */
  get lostReason(): unknown {
    return this.lost;
  }
}
