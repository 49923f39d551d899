import type { Logger } from 'pino';
import { NotFoundError, abortedError, errorText } from '../errors/index.js';
import { inventoryRecordSchema, orphanRecordSchema, type InventoryRecord, type OrphanRecord } from '../inventory/inventory.js';
import { findInStore, scanStore } from '../inventory/scan.js';
import type { LocalListing } from '../rpc/types.js';
import type { SnapshotMetadata } from '../snapshot/metadata.js';
import { LocalStore } from '../store/local.js';
import type { NamedStore } from '../store/store.js';

/**
 * Finding snapshots without etcd. When etcd has no quorum the inventory in it cannot be read, yet a restore
 * must find its snapshot by name and `ls` must still answer: both ask the stores themselves — this
 * steward's dir, S3, and every other steward's dir over the peer API — each within one deadline, so a
 * store that does not answer is reported as a problem instead of holding everything up.
 */

/** One place a snapshot's stored bytes can be read from. */
export interface SnapshotSource {
  kind: 'local' | 's3' | 'peer';
  /** Whose store: this steward's node name for its own dir and S3, the peer's for a peer's dir. */
  node: string;
  /** The object's URL, as `ls` shows locations. */
  url: string;
  /** The stored bytes (gzipped when the snapshot is compressed), streamed; the signal stops the read. */
  open(signal: AbortSignal): AsyncIterable<Buffer>;
  /** This steward's own dir only: the stored file, which its own member can stage without a stream. */
  file?: string;
}

export interface FoundSnapshot {
  /**
   * The snapshot's metadata, read from the best store that has it (see metadataFrom). A peer's listing
   * carries only name, node, key, size, sha256, created, kind and compressed: when only peers hold the
   * snapshot, etcdVersion, clusterId and fencingToken are '' and revision is 0 (unknown) — take the
   * revision from the staged file (ReceiveSnapshotResponse.revision).
   */
  metadata: SnapshotMetadata;
  /** Where `metadata` came from: 'local' or 's3' is the metadata object itself, 'peer' a peer's listing. */
  metadataFrom: SnapshotSource['kind'];
  /** Best first: this steward's own dir, then S3, then the other stewards' dirs (by node name). */
  sources: SnapshotSource[];
  /**
   * In words: stores that could not be listed (and why), and copies left out because they are broken or
   * hold other bytes under the same name. A restore may go on without them; an operator should know.
   */
  problems: string[];
}

/** What findSnapshot needs of a peer; a `Peer` of src/rpc/peer-pool.ts is one. */
export interface PeerSnapshots {
  readonly node: string;
  readonly address?: { grpc: string };
  listLocal(signal: AbortSignal): Promise<LocalListing>;
  readLocal(name: string, signal: AbortSignal, restoreId?: string): AsyncIterable<Buffer>;
}

/** Every store a snapshot may be in; SnapshotService.stores() builds it from this steward's parts. */
export interface SnapshotStores {
  /** This steward's node name. */
  node: string;
  /** This steward's own dir (`local:<node>`). */
  local: NamedStore;
  /** S3 (`s3`), when configured. */
  s3?: NamedStore | undefined;
  /** The other stewards (a PeerPool): their dirs are read over the peer API. */
  peers: { others(signal: AbortSignal): Promise<PeerSnapshots[]> };
  log: Logger;
  /** Put in the header of every peer read (Peer.readLocal), binding it to that restore. */
  restoreId?: string;
  /**
   * One deadline for every store, counted from the start (the peer directory included): a store that has
   * not answered by then is a problem, not a hang. Default 10 s.
   */
  timeoutMs?: number;
}

export const STORE_TIMEOUT_MS = 10_000;

/**
 * Where the snapshot `name` is, from every store at once. NotFoundError (exit 3) when no store has a
 * complete copy, naming every store looked in and every store that could not be listed.
 */
export async function findSnapshot(name: string, where: SnapshotStores, signal: AbortSignal): Promise<FoundSnapshot> {
  const timeoutMs = where.timeoutMs ?? STORE_TIMEOUT_MS;
  const bound = deadlineAfter(signal, timeoutMs);
  try {
    return await find(name, where, timeoutMs, signal, bound.signal);
  } finally {
    bound.clear();
  }
}

async function find(name: string, where: SnapshotStores, timeoutMs: number, signal: AbortSignal, deadline: AbortSignal): Promise<FoundSnapshot> {
  const problems: string[] = [];
  const looked: string[] = [];
  const own = [where.local, ...(where.s3 ? [where.s3] : [])];
  const [ownLookups, peerLookups] = await Promise.all([
    Promise.all(
      own.map((named) => {
        looked.push(named.store.location);
        return settle(() => findInStore(named.store, name, deadline), describeOwn(named), timeoutMs, signal, deadline);
      }),
    ),
    peerCalls(where, timeoutMs, signal, deadline, problems, (peer, s) => peer.listLocal(s)),
  ]);

  const candidates: Array<{ source: SnapshotSource; metadata: SnapshotMetadata; from: SnapshotSource['kind'] }> = [];
  own.forEach((named, i) => {
    const lookup = ownLookups[i];
    if (!lookup || !lookup.ok) {
      if (lookup) problems.push(lookup.problem);
      return;
    }
    if (lookup.value.state === 'broken') problems.push(`${describeOwn(named)}: ${lookup.value.problem}; not using it`);
    if (lookup.value.state !== 'complete') return;
    const { metadata } = lookup.value;
    const kind = named.store.kind;
    candidates.push({ source: storeSource(kind, where.node, named, metadata.key), metadata, from: kind });
  });
  for (const { peer, result } of peerLookups.sort((a, b) => a.peer.node.localeCompare(b.peer.node))) {
    looked.push(describePeer(peer));
    if (!result.ok) {
      problems.push(result.problem);
      continue;
    }
    const record = result.value.snapshots.find((r) => r.name === name);
    if (!record) continue;
    const parsed = inventoryRecordSchema.safeParse(record);
    if (!parsed.success) {
      problems.push(`${describePeer(peer)}: its record of ${name} is malformed; not using it`);
      continue;
    }
    candidates.push({ source: peerSource(peer, parsed.data, where.restoreId), metadata: metadataFromRecord(parsed.data), from: 'peer' });
  }
  signal.throwIfAborted();

  const best = candidates[0];
  if (!best) {
    const why = problems.length > 0 ? `; these could not be looked in, and one of them may hold it: ${problems.join('; ')}` : '';
    throw new NotFoundError(`no snapshot named ${name} in any store: looked in ${looked.join(', ')}${why}`, {
      hint:
        problems.length > 0
          ? 'bring the stores named above back and try again, or pick another snapshot (etcd-stewardctl ls)'
          : 'etcd-stewardctl ls lists the snapshots every store holds',
    });
  }
  const sources: SnapshotSource[] = [];
  for (const candidate of candidates) {
    const { metadata } = candidate;
    if (metadata.sha256 !== best.metadata.sha256 || metadata.size !== best.metadata.size || metadata.compressed !== best.metadata.compressed) {
      problems.push(
        `${candidate.source.url} holds other bytes under the name ${name} (${metadata.size} bytes, sha256 ${metadata.sha256}) than ${best.source.url} (${best.metadata.size} bytes, sha256 ${best.metadata.sha256}); not using it`,
      );
      continue;
    }
    sources.push(candidate.source);
  }
  return { metadata: best.metadata, metadataFrom: best.from, sources, problems };
}

/**
 * Every snapshot in every store that answers, one record per (name, location ID) — the inventory's own key:
 * a peer the directory lists twice is asked once. Sorted as the inventory in etcd lists them. `orphans` as
 * each store's scan finds them (ls --all).
 */
export async function listStores(
  where: SnapshotStores,
  signal: AbortSignal,
): Promise<{ records: InventoryRecord[]; orphans: OrphanRecord[]; problems: string[] }> {
  const timeoutMs = where.timeoutMs ?? STORE_TIMEOUT_MS;
  const bound = deadlineAfter(signal, timeoutMs);
  const deadline = bound.signal;
  const problems: string[] = [];
  const own = [where.local, ...(where.s3 ? [where.s3] : [])];
  const [ownScans, peerScans] = await Promise.all([
    Promise.all(own.map((named) => settle(() => scanStore(named, deadline, where.log), describeOwn(named), timeoutMs, signal, deadline))),
    peerCalls(where, timeoutMs, signal, deadline, problems, (peer, s) => peer.listLocal(s)),
  ]).finally(() => bound.clear());
  signal.throwIfAborted();
  const records = new Map<string, InventoryRecord>();
  const orphans = new Map<string, OrphanRecord>();
  const add = (record: InventoryRecord): void => {
    const key = `${record.name}\u0000${record.locationId}`;
    if (!records.has(key)) records.set(key, record);
  };
  const addOrphan = (orphan: OrphanRecord): void => {
    orphans.set(`${orphan.locationId}\u0000${orphan.key}`, orphan);
  };
  for (const scan of ownScans) {
    if (!scan.ok) {
      problems.push(scan.problem);
      continue;
    }
    scan.value.records.forEach(add);
    scan.value.orphans.forEach(addOrphan);
  }
  for (const { peer, result } of peerScans.sort((a, b) => a.peer.node.localeCompare(b.peer.node))) {
    if (!result.ok) {
      problems.push(result.problem);
      continue;
    }
    // Records cross the wire from another process: validated like any input, stamped with the dir they are in.
    const locationId = `local:${peer.node}`;
    let malformed = 0;
    for (const record of result.value.snapshots) {
      const parsed = inventoryRecordSchema.safeParse(record);
      if (parsed.success) add({ ...parsed.data, locationId });
      else malformed += 1;
    }
    for (const orphan of result.value.orphans) {
      const parsed = orphanRecordSchema.safeParse(orphan);
      if (parsed.success) addOrphan({ ...parsed.data, locationId });
    }
    if (malformed > 0) problems.push(`${describePeer(peer)}: ${malformed} malformed record(s) left out`);
  }
  const sorted = [...records.values()].sort(
    (a, b) => a.created.localeCompare(b.created) || a.name.localeCompare(b.name) || a.locationId.localeCompare(b.locationId),
  );
  return { records: sorted, orphans: [...orphans.values()], problems };
}

type Settled<T> = { ok: true; value: T } | { ok: false; problem: string };

/**
 * Runs one store call under `deadline`, and settles by then even if the call ignores its signal. Its
 * failure becomes a problem in words; the caller's own cancellation is rethrown, never a problem.
 */
async function settle<T>(call: () => Promise<T>, what: string, timeoutMs: number, signal: AbortSignal, deadline: AbortSignal): Promise<Settled<T>> {
  try {
    return { ok: true, value: await settleBy(call(), deadline) };
  } catch (err) {
    if (signal.aborted) throw abortedError(signal, err);
    if (deadline.aborted) return { ok: false, problem: `${what}: no answer within ${formatSeconds(timeoutMs)}` };
    return { ok: false, problem: `${what}: ${errorText(err)}` };
  }
}

/**
 * `signal`, also aborted with a TimeoutError after `ms`; `clear()` stops the timer once the work is done.
 * Not `AbortSignal.any([signal, AbortSignal.timeout(ms)])`: in Node 20 a listener on the combined signal
 * does not keep the timeout signal alive, so a garbage collection before it fires loses the deadline
 * (reproduced with --expose-gc on 20.20: it never fires). A timer holding its controller cannot be lost.
 */
export function deadlineAfter(signal: AbortSignal, ms: number): { signal: AbortSignal; clear(): void } {
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(new DOMException(`no answer within ${formatSeconds(ms)}`, 'TimeoutError')), ms);
  timer.unref();
  return { signal: AbortSignal.any([signal, timeout.signal]), clear: () => clearTimeout(timer) };
}

/** Runs `work` under `signal` bounded by `ms` (see deadlineAfter). */
export async function withDeadline<T>(signal: AbortSignal, ms: number, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const bound = deadlineAfter(signal, ms);
  try {
    return await work(bound.signal);
  } finally {
    bound.clear();
  }
}

/** `promise`, or the signal's reason once it fires first (the promise's own outcome is then dropped). */
export function settleBy<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    promise.catch(() => undefined);
    return Promise.reject(signal.reason as Error);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}

/** Asks every other steward (each once, by node) the same question, under the one deadline. */
async function peerCalls<T>(
  where: SnapshotStores,
  timeoutMs: number,
  signal: AbortSignal,
  deadline: AbortSignal,
  problems: string[],
  call: (peer: PeerSnapshots, signal: AbortSignal) => Promise<T>,
): Promise<Array<{ peer: PeerSnapshots; result: Settled<T> }>> {
  const listed = await settle(() => where.peers.others(deadline), 'the other stewards (peer directory)', timeoutMs, signal, deadline);
  if (!listed.ok) {
    problems.push(`${listed.problem}; their snapshot dirs were not looked in`);
    return [];
  }
  const byNode = new Map<string, PeerSnapshots>();
  for (const peer of listed.value) if (peer.node !== where.node && !byNode.has(peer.node)) byNode.set(peer.node, peer);
  return Promise.all(
    [...byNode.values()].map(async (peer) => ({ peer, result: await settle(() => call(peer, deadline), describePeer(peer), timeoutMs, signal, deadline) })),
  );
}

function describeOwn(named: NamedStore): string {
  return named.store.kind === 's3' ? `S3 (${named.store.location})` : `this steward's dir (${named.store.location})`;
}

function describePeer(peer: PeerSnapshots): string {
  return `${peer.node}'s dir${peer.address ? ` (steward at ${peer.address.grpc})` : ''}`;
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}

function storeSource(kind: 'local' | 's3', node: string, named: NamedStore, key: string): SnapshotSource {
  return {
    kind,
    node,
    url: named.store.urlFor(key),
    open: (signal) => streamOf(named, key, signal),
    ...(kind === 'local' && named.store instanceof LocalStore ? { file: named.store.pathOf(key) } : {}),
  };
}

async function* streamOf(named: NamedStore, key: string, signal: AbortSignal): AsyncGenerator<Buffer> {
  const stream = await named.store.read(key, signal);
  for await (const chunk of stream) yield chunk as Buffer;
}

function peerSource(peer: PeerSnapshots, record: InventoryRecord, restoreId: string | undefined): SnapshotSource {
  return {
    kind: 'peer',
    node: peer.node,
    url: record.location,
    open: (signal) => peer.readLocal(record.name, signal, restoreId),
  };
}

function metadataFromRecord(record: InventoryRecord): SnapshotMetadata {
  return {
    formatVersion: 1,
    name: record.name,
    key: record.key,
    node: record.node,
    kind: record.kind,
    created: record.created,
    size: record.size,
    sha256: record.sha256,
    compressed: record.compressed,
    etcdVersion: '',
    clusterId: '',
    revision: 0,
    fencingToken: '',
  };
}
