import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { PreconditionError, StewardError, errorText } from '../errors/index.js';
import type { ClusterHealth } from '../etcd/health.js';
import { linearizableRevision, openSnapshotStream, snapshotBytes } from '../etcd/snapshot-stream.js';
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
  onProgress?: (bytes: number) => void;
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
}

const PROGRESS_EVERY_BYTES = 8 * 1024 * 1024;

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
      metrics.snapshotFailures.inc({ reason });
      this.log.error({ err: errorText(err), reason, kind: request.kind }, 'snapshot failed');
      throw err;
    }
  }

  /** Names carry whole seconds: a second save within the same second must not overwrite the first. */
  private async refuseExisting(name: string, signal: AbortSignal): Promise<void> {
    for (const { store } of this.options.stores) {
      const existing = await store.head(metadataKey(name), signal).catch(() => undefined);
      if (existing) {
        throw new PreconditionError('SNAPSHOT_EXISTS', `a snapshot named ${name} already exists at ${store.location}`, {
          hint: 'names end in the second they were taken: wait a second, or pass another --name',
        });
      }
    }
  }

  private async stream(request: SnapshotRequest, started: number): Promise<SnapshotResult> {
    const { node, compress } = this.options;
    const base = request.base === undefined ? (request.kind === 'scheduled' ? SCHEDULED_BASE : ON_DEMAND_BASE) : validateName(request.base);
    const health = await this.options.checkHealth(request.signal);
    const decision = gateSnapshot(health, node, request.force ?? false);
    if (decision.overridden.length > 0) this.log.warn({ problems: decision.overridden }, 'snapshot forced despite an unhealthy cluster');
    if (decision.degraded.length > 0) this.log.warn({ degraded: decision.degraded }, 'cluster is degraded (quorum holds): snapshotting anyway, the members down are recorded');
    const created = new Date();
    const name = snapshotName(base, node, created);
    const key = objectKey(name, compress);
    const signal = AbortSignal.any([request.signal, AbortSignal.timeout(this.options.timeoutMs)]);
    const log = this.log.child({ snapshot: name });
    await this.refuseExisting(name, signal);
    log.info({ source: decision.source.name, kind: request.kind, compress, ...(decision.degraded.length > 0 ? { degraded: decision.degraded } : {}) }, 'snapshot started');

    const destinations: Destination[] = [];
    for (const { locationId, store } of this.options.stores) {
      try {
        destinations.push({ locationId, writer: await store.createWriter(key, signal) });
      } catch (err) {
        destinations.push({ locationId, writer: noopWriter, failure: err });
        log.error({ location: locationId, err: errorText(err) }, 'cannot open this location for the snapshot');
      }
    }
    const abortAll = (reason: unknown): Promise<unknown> => Promise.all(destinations.map((d) => d.writer.abort(reason)));
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
      const source = Readable.from(withProgress(snapshotBytes(etcd), request.onProgress), { objectMode: false });
      if (stored) await pipeline(source, new Coalesce(), integrity, createGzip(), new Coalesce(), stored, fanOut, { signal });
      else await pipeline(source, new Coalesce(), integrity, fanOut, { signal });
    } catch (err) {
      etcd?.cancel();
      await abortAll(err);
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
    };
    const copies: StoredCopy[] = [];
    const failures: SnapshotResult['failures'] = [];
    for (const destination of destinations) {
      const store = this.options.stores.find((s) => s.locationId === destination.locationId)?.store;
      if (destination.failure !== undefined || !store) {
        failures.push({ locationId: destination.locationId, error: errorText(destination.failure) });
        continue;
      }
      try {
        const { size } = await destination.writer.commit();
        if (size !== metadata.size) throw new Error(`stored ${size} bytes, expected ${metadata.size}`);
        await store.putSmall(metadataKey(name), `${JSON.stringify(metadata, null, 2)}\n`, signal);
        copies.push({ locationId: destination.locationId, url: store.urlFor(key) });
      } catch (err) {
        await destination.writer.abort(err);
        // An unverified upload is most likely good: never delete on an unknown result (reconcile reports it).
        if (!(err instanceof StewardError && err.code === 'S3_COMMIT_UNVERIFIED')) await store.delete(key, AbortSignal.timeout(30_000)).catch(() => undefined);
        failures.push({ locationId: destination.locationId, error: errorText(err) });
        log.error({ location: destination.locationId, err: errorText(err) }, 'committing the snapshot to this location failed');
      }
    }
    if (copies.length === 0) {
      throw new StewardError('internal', 'SNAPSHOT_FAILED', `snapshot ${name} could not be stored anywhere: ${failures.map((f) => `${f.locationId}: ${f.error}`).join('; ')}`, {
        hint: 'check the snapshot dir and S3 settings; the cluster itself is unaffected',
      });
    }
    log.info(
      { size: metadata.size, sha256: metadata.sha256, revision: metadata.revision, ms: Date.now() - started, locations: copies.map((c) => c.url), failed: failures },
      'snapshot stored',
    );
    return { metadata, copies, failures };
  }
}

async function* withProgress(source: AsyncIterable<Buffer>, onProgress: ((bytes: number) => void) | undefined): AsyncGenerator<Buffer> {
  let bytes = 0;
  let next = PROGRESS_EVERY_BYTES;
  for await (const chunk of source) {
    bytes += chunk.length;
    if (onProgress && bytes >= next) {
      next += PROGRESS_EVERY_BYTES;
      onProgress(bytes);
    }
    yield chunk;
  }
}

const noopWriter = {
  write: async (): Promise<void> => undefined,
  commit: async (): Promise<{ size: number }> => ({ size: 0 }),
  abort: async (): Promise<void> => undefined,
};
