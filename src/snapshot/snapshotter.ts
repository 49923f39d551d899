import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import type { Etcd3 } from '../etcd/client.js';
import type { Logger } from 'pino';
import { PreconditionError, StewardError, UnavailableError, errorText } from '../errors/index.js';
import type { ClusterHealth } from '../etcd/health.js';
import { linearizableRevision, openSnapshotStream, snapshotBytes, type SnapshotProgress } from '../etcd/snapshot-stream.js';
import type { StewardMetrics } from '../observability/metrics.js';
import type { NamedStore } from '../store/store.js';
import { Coalesce } from './coalesce.js';
import { FanOut, type Destination } from './fan-out.js';
import { gateSnapshot } from './gate.js';
import { EtcdIntegrityCheck, StoredDigest } from './integrity.js';
import type { SnapshotMetadata } from './metadata.js';
import { ON_DEMAND_BASE, SCHEDULED_BASE, metadataKey, objectKey, snapshotName, validateName, type SnapshotKind } from './names.js';

// NamedStore lives with the stores; re-exported so callers that import it from here still compile.
export type { NamedStore } from '../store/store.js';

export interface SnapshotRequest {
  kind: SnapshotKind;
  base?: string;
  force?: boolean;
  fencingToken: string;
  signal: AbortSignal;
  /** Every PROGRESS_EVERY_BYTES streamed, and once at the end. */
  onProgress?: (progress: SnapshotProgress) => void;
}

export interface StoredCopy {
  locationId: string;
  url: string;
}

export interface SnapshotResult {
  metadata: SnapshotMetadata;
  copies: StoredCopy[];
  failures: Array<{ locationId: string; error: string }>;
}

export interface SnapshotterOptions {
  node: string;
  stores: NamedStore[];
  compress: boolean;
  timeoutMs: number;
  /** Probes every member; the signal cancels the probe (a save that is cancelled stops probing). */
  checkHealth: (signal?: AbortSignal) => Promise<ClusterHealth>;
  memberClient: (endpoint: string) => Etcd3;
  metrics: StewardMetrics;
  logger: Logger;
  /** A best-effort (S3) copy that accepts no data for this long is dropped; the local copy goes on. Default 15 s. */
  remoteIdleTimeoutMs?: number;
  /** Bound on a best-effort copy's commit (complete, read-back, metadata). Default 30 s plus 30 s per GiB. */
  remoteCommitTimeoutMs?: number;
  /** The cluster spec as this steward knows it now: recorded with the snapshot for `restore --with-spec`. */
  clusterSpec?: () => ({ generation: number } & Record<string, unknown>) | undefined;
}

/**
 * A healthy S3 takes an 8 MiB part within seconds: 15 s without taking any data is a hang, not a slow link
 * (a slow but moving upload still paces the stream). The commit (one PUT of at most a part, or Complete, a
 * read-back and the metadata) gets 30 s, plus 30 s per GiB since S3 takes longer to complete big uploads.
 */
const DEFAULT_REMOTE_IDLE_MS = 15_000;
const DEFAULT_REMOTE_COMMIT_MS = 30_000;
const COMMIT_MS_PER_GIB = 30_000;
const GIB = 1024 * 1024 * 1024;
/** A ctl's bar moves in 1 MiB steps: at 32 KiB per etcd message, one event in 32. */
const PROGRESS_EVERY_BYTES = 1024 * 1024;

/**
 * Takes one snapshot: health gate → one `Maintenance.Snapshot` stream → integrity check → (gzip) → every
 * location at once. Nothing is visible until complete; the metadata, which makes a snapshot exist, is
 * written last. One snapshot at a time per steward: a second request waits for the first.
 */
export class Snapshotter {
  private readonly log: Logger;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: SnapshotterOptions) {
    this.log = options.logger.child({ component: 'snapshot' });
  }

  take(request: SnapshotRequest): Promise<SnapshotResult> {
    const run = this.queue.then(() => this.takeNow(request));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async takeNow(request: SnapshotRequest): Promise<SnapshotResult> {
    const started = Date.now();
    const { metrics } = this.options;
    try {
      const result = await this.stream(request, started);
      metrics.snapshotDuration.observe((Date.now() - started) / 1000);
      metrics.snapshotSize.set(result.metadata.size);
      for (const copy of result.copies) metrics.lastSuccessfulSnapshot.set({ location: copy.locationId }, Date.now() / 1000);
      for (const failure of result.failures) metrics.snapshotFailures.inc({ reason: `location_${failure.locationId.split(':')[0]}` });
      return result;
    } catch (err) {
      const reason = err instanceof StewardError ? err.code.toLowerCase() : 'error';
      if (err instanceof StewardError && err.family === 'invalid') {
        // The operator's input was refused before anything started: not a failure of the backups.
        metrics.snapshotRejectedRequests.inc({ reason });
        this.log.warn({ err: errorText(err).slice(0, 300), reason, kind: request.kind }, 'snapshot request rejected');
      } else {
        metrics.snapshotFailures.inc({ reason });
        this.log.error({ err: errorText(err), reason, kind: request.kind }, 'snapshot failed');
      }
      throw err;
    }
  }

  /**
   * Names carry whole seconds: a second save within the same second must not overwrite the first. Only the
   * local stores are asked here, before the stream: the local copy never waits on S3. A best-effort store is
   * asked beside the stream (see `open`) and only its own copy is refused.
   */
  private async refuseExisting(name: string, signal: AbortSignal): Promise<void> {
    for (const { store } of this.options.stores.filter((s) => s.store.kind === 'local')) {
      const existing = await store.head(metadataKey(name), signal).catch(() => undefined);
      if (existing) throw exists(name, store.location);
    }
  }

  private async stream(request: SnapshotRequest, started: number): Promise<SnapshotResult> {
    const { node, compress } = this.options;
    const base = request.base === undefined ? (request.kind === 'scheduled' ? SCHEDULED_BASE : ON_DEMAND_BASE) : validateName(request.base);
    const health = await this.options.checkHealth(request.signal);
    const decision = gateSnapshot(health, node, request.force ?? false);
    if (decision.overridden.length > 0) this.log.warn({ problems: decision.overridden }, 'snapshot forced despite an unhealthy cluster');
    if (decision.degraded.length > 0)
      this.log.warn({ degraded: decision.degraded }, 'cluster is degraded (quorum holds): snapshotting anyway, the members down are recorded');
    const created = new Date();
    const name = snapshotName(base, node, created);
    const key = objectKey(name, compress);
    const signal = AbortSignal.any([request.signal, AbortSignal.timeout(this.options.timeoutMs)]);
    const log = this.log.child({ snapshot: name });
    await this.refuseExisting(name, signal);
    log.info(
      { source: decision.source.name, kind: request.kind, compress, ...(decision.degraded.length > 0 ? { degraded: decision.degraded } : {}) },
      'snapshot started',
    );

    const copies = await this.open(name, key, signal, log);
    const destinations = copies.map((c) => c.destination);
    const integrity = new EtcdIntegrityCheck();
    let etcd: Awaited<ReturnType<typeof openSnapshotStream>> | undefined;
    let revision = decision.source.revision;
    const stored = compress ? new StoredDigest() : undefined;
    try {
      const fanOut = new FanOut(destinations, log);
      if (fanOut.live.length === 0) throw destinations[0]?.failure ?? new Error('no location to write to');
      const member = this.options.memberClient(decision.source.endpoint);
      // The snapshot's own revision (at least), read right before the stream on the same member; see linearizableRevision.
      revision = await linearizableRevision(member, signal);
      etcd = await openSnapshotStream(member, Date.now() + this.options.timeoutMs);
      // Destroying a grpc-js stream does not end the call: without cancel() the member would keep its read
      // transaction (and this steward its HTTP/2 stream) open until the deadline.
      const call = etcd;
      signal.addEventListener('abort', () => call.cancel(), { once: true });
      const source = Readable.from(withProgress(etcd, request.onProgress), { objectMode: false });
      if (stored) await pipeline(source, new Coalesce(), integrity, createGzip(), new Coalesce(), stored, fanOut, { signal });
      else await pipeline(source, new Coalesce(), integrity, fanOut, { signal });
    } catch (err) {
      etcd?.cancel();
      await Promise.all(copies.map((c) => c.drop(err)));
      throw err;
    }

    const metadata: SnapshotMetadata = {
      formatVersion: 1,
      name,
      key,
      node,
      kind: request.kind,
      created: created.toISOString(),
      size: stored ? stored.size : integrity.size,
      sha256: stored ? stored.sha256 : integrity.fileSha256,
      compressed: compress,
      etcdVersion: decision.source.version,
      clusterId: /^\d+$/.test(health.clusterId) ? BigInt(health.clusterId).toString(16) : health.clusterId,
      revision,
      fencingToken: request.fencingToken,
      ...(decision.degraded.length > 0 ? { degraded: decision.degraded } : {}),
      ...specCopy(this.options.clusterSpec?.()),
    };
    // Every copy commits at once; a best-effort copy within its own bound, so it never delays the others.
    const outcomes = await Promise.all(copies.map((copy) => this.commit(copy, metadata, log)));
    const result: SnapshotResult = { metadata, copies: [], failures: [] };
    for (const outcome of outcomes) {
      if ('url' in outcome) result.copies.push(outcome);
      else result.failures.push(outcome);
    }
    if (result.copies.length === 0) {
      throw new StewardError(
        'internal',
        'SNAPSHOT_FAILED',
        `snapshot ${name} could not be stored anywhere: ${result.failures.map((f) => `${f.locationId}: ${f.error}`).join('; ')}`,
        {
          hint: 'check the snapshot dir and S3 settings; the cluster itself is unaffected',
        },
      );
    }
    log.info(
      { size: metadata.size, sha256: metadata.sha256, revision, ms: Date.now() - started, locations: result.copies.map((c) => c.url), failed: result.failures },
      'snapshot stored',
    );
    return result;
  }

  /**
   * One writer per store. A best-effort (S3) copy gets its own signal, which a stall or its commit bound
   * aborts, and its name check runs beside the stream instead of before it.
   */
  private async open(name: string, key: string, signal: AbortSignal, log: Logger): Promise<Copy[]> {
    const copies: Copy[] = [];
    for (const named of this.options.stores) {
      const bestEffort = named.store.kind !== 'local';
      const own = new AbortController();
      const copySignal = AbortSignal.any([signal, own.signal]);
      const destination: Destination = { locationId: named.locationId, writer: noopWriter, ...(bestEffort ? { idleTimeoutMs: this.remoteIdleMs() } : {}) };
      // A result, never a rejection: a failed check is an unknown answer, and then the upload goes ahead.
      const existing = bestEffort
        ? named.store.head(metadataKey(name), copySignal).then(
            (info) => info !== undefined,
            () => false,
          )
        : Promise.resolve(false);
      const drop = async (reason: unknown): Promise<void> => {
        own.abort(reason);
        const aborting = destination.writer.abort(reason).catch(() => undefined);
        // A local temp file is removed before the save reports; a hung S3 cleans up on its own time.
        if (!bestEffort) await aborting;
      };
      copies.push({ named, destination, signal: copySignal, bestEffort, existing, drop });
      try {
        destination.writer = await withBound(named.store.createWriter(key, copySignal), bestEffort ? this.remoteCommitMs() : undefined, named.locationId);
      } catch (err) {
        destination.failure = err;
        own.abort(err);
        log.error({ location: named.locationId, err: errorText(err) }, 'cannot open this location for the snapshot');
      }
    }
    return copies;
  }

  /** Commits one copy and writes its metadata; a best-effort copy within `remoteCommitMs`. Never throws. */
  private async commit(copy: Copy, metadata: SnapshotMetadata, log: Logger): Promise<StoredCopy | { locationId: string; error: string }> {
    const { named, destination } = copy;
    const { locationId, store } = named;
    if (destination.failure !== undefined) {
      await copy.drop(destination.failure);
      return { locationId, error: errorText(destination.failure) };
    }
    const work = (async () => {
      if (await copy.existing) throw exists(metadata.name, store.location);
      const { size } = await destination.writer.commit();
      if (size !== metadata.size) throw new Error(`stored ${size} bytes, expected ${metadata.size}`);
      await store.putSmall(metadataKey(metadata.name), `${JSON.stringify(metadata, null, 2)}\n`, copy.signal);
      return { locationId, url: store.urlFor(metadata.key) };
    })();
    try {
      return await withBound(work, copy.bestEffort ? this.remoteCommitMs(metadata.size) : undefined, locationId);
    } catch (err) {
      await copy.drop(err);
      // Never delete on an unknown result: an unverified or unfinished upload may be good, and an existing
      // object belongs to another snapshot (reconcile reports leftovers).
      const unknown = err instanceof StewardError && ['S3_COMMIT_UNVERIFIED', 'SNAPSHOT_COPY_TIMEOUT', 'SNAPSHOT_EXISTS'].includes(err.code);
      if (!unknown) await store.delete(metadata.key, AbortSignal.timeout(copy.bestEffort ? this.remoteCommitMs() : 30_000)).catch(() => undefined);
      log.error({ location: locationId, err: errorText(err) }, 'committing the snapshot to this location failed');
      return { locationId, error: errorText(err) };
    }
  }

  private remoteIdleMs(): number {
    return this.options.remoteIdleTimeoutMs ?? DEFAULT_REMOTE_IDLE_MS;
  }

  private remoteCommitMs(size = 0): number {
    return this.options.remoteCommitTimeoutMs ?? DEFAULT_REMOTE_COMMIT_MS + Math.ceil(size / GIB) * COMMIT_MS_PER_GIB;
  }
}

interface Copy {
  named: NamedStore;
  destination: Destination;
  /** The snapshot's signal, and for a best-effort copy its own abort as well. */
  signal: AbortSignal;
  bestEffort: boolean;
  /** A best-effort store's answer to "does this name exist there already?". */
  existing: Promise<boolean>;
  /** Aborts this copy (its writer and its requests); awaits the cleanup only for a local copy. */
  drop: (reason: unknown) => Promise<void>;
}

function exists(name: string, location: string): PreconditionError {
  return new PreconditionError('SNAPSHOT_EXISTS', `a snapshot named ${name} already exists at ${location}`, {
    hint: 'names end in the second they were taken: wait a second, or pass another --name',
  });
}

/** `work`, or a SNAPSHOT_COPY_TIMEOUT after `ms` (no bound when undefined). */
async function withBound<T>(work: Promise<T>, ms: number | undefined, locationId: string): Promise<T> {
  if (ms === undefined) return work;
  work.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new UnavailableError(
                'SNAPSHOT_COPY_TIMEOUT',
                `the ${locationId} copy did not finish within ${ms} ms; dropped (the other copies are unaffected)`,
                {
                  hint: 'check the endpoint (etcd_steward_s3_healthy); the next snapshot tries again',
                },
              ),
            ),
          ms,
        );
      }),
    ]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

/** The snapshot's bytes, telling `onProgress` every PROGRESS_EVERY_BYTES and once when the stream ends. */
async function* withProgress(
  stream: Parameters<typeof snapshotBytes>[0],
  onProgress: ((progress: SnapshotProgress) => void) | undefined,
): AsyncGenerator<Buffer> {
  let latest: SnapshotProgress = { bytes: 0, total: 0 };
  let next = PROGRESS_EVERY_BYTES;
  let told = 0;
  for await (const chunk of snapshotBytes(stream, (progress) => (latest = progress))) {
    if (onProgress && latest.bytes >= next) {
      next = latest.bytes + PROGRESS_EVERY_BYTES;
      told = latest.bytes;
      onProgress(latest);
    }
    yield chunk;
  }
  if (onProgress && latest.bytes > told) onProgress(latest);
}

const noopWriter = {
  write: async (): Promise<void> => undefined,
  commit: async (): Promise<{ size: number }> => ({ size: 0 }),
  abort: async (): Promise<void> => undefined,
};

/** The spec's generation and a copy of it, without who wrote it (not needed to put its flags back). */
function specCopy(spec: ({ generation: number } & Record<string, unknown>) | undefined): Pick<SnapshotMetadata, 'specGeneration' | 'clusterSpec'> {
  if (!spec) return {};
  const { fencingToken: _fencingToken, ...copy } = spec;
  return { specGeneration: spec.generation, clusterSpec: copy };
}
