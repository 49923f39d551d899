import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { UnavailableError, errorText } from '../errors/index.js';
import type { StewardMetrics } from '../observability/metrics.js';
import type { BackupStore } from './store.js';

/** What the canary needs of a store: small writes, reads and deletes, and (S3) when its credentials expire. */
export type CanaryStore = Pick<BackupStore, 'location' | 'putSmall' | 'readSmall' | 'delete'> & {
  credentialsExpiry?: () => Promise<Date | undefined>;
};

export interface S3CanaryOptions {
  store: CanaryStore;
  /** This steward's node name: each steward writes its own canary key, so canaries never collide. */
  node: string;
  /** Time between canaries (the reconcile interval). */
  intervalMs: number;
  /**
   * Bound on one whole canary (write, read back, delete). Short on purpose: a hung S3 must read as
   * unhealthy within one canary, not after --etcd-s3-timeout and its retries. Default: 10 s, or half the
   * interval if that is shorter.
   */
  timeoutMs?: number;
  metrics: Pick<StewardMetrics, 's3Healthy' | 's3CredentialsExpiry'>;
  logger: Logger;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Every interval, on every steward: write, read back and delete a small object under the backups' prefix,
 * so broken credentials, a vanished bucket or a hung endpoint raise `etcd_steward_s3_healthy=0` and an error
 * log long before the next snapshot would have failed. Runs until `signal` aborts; never throws.
 */
export async function runS3Canary(options: S3CanaryOptions, signal: AbortSignal): Promise<void> {
  const { store, metrics } = options;
  const log = options.logger.child({ component: 's3-canary' });
  const key = canaryKey(options.node);
  const timeoutMs = options.timeoutMs ?? Math.max(1, Math.min(DEFAULT_TIMEOUT_MS, Math.floor(options.intervalMs / 2)));
  let healthy: boolean | undefined;
  while (!signal.aborted) {
    try {
      await canaryOnce(store, key, AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]), timeoutMs);
      const expiry = await store.credentialsExpiry?.().catch(() => undefined);
      if (expiry) metrics.s3CredentialsExpiry.set(expiry.getTime() / 1000);
      if (healthy !== true) log.info({ location: store.location }, 'S3 canary succeeded: write, read and delete work');
      healthy = true;
    } catch (err) {
      if (signal.aborted) break;
      healthy = false;
      log.error(
        { location: store.location, err: errorText(err), timeoutMs },
        'S3 canary failed: snapshots will not reach S3 until this is fixed (local snapshots go on)',
      );
    }
    metrics.s3Healthy.set(healthy ? 1 : 0);
    await sleep(options.intervalMs, undefined, { signal }).catch(() => undefined);
  }
}

/** Every canary key starts so; scans of the backups' prefix skip it (it is neither a snapshot nor an orphan). */
export const CANARY_KEY_PREFIX = 'etcd-steward-canary-';

/** `etcd-steward-canary-<node>`, the node name made a valid key. */
export function canaryKey(node: string): string {
  return `${CANARY_KEY_PREFIX}${node.toLowerCase().replace(/[^a-z0-9.-]/g, '-')}`;
}

async function canaryOnce(store: CanaryStore, key: string, signal: AbortSignal, timeoutMs: number): Promise<void> {
  const body = `canary ${new Date().toISOString()}`;
  try {
    await store.putSmall(key, body, signal);
    const read = (await store.readSmall(key, signal)).toString('utf8');
    if (read !== body) throw new Error(`read back ${read.length} bytes that differ from the ${body.length} written`);
    await store.delete(key, signal);
  } catch (err) {
    // Our own bound fired (the caller's signal is checked by the loop): say so, rather than "aborted".
    if (signal.aborted && signal.reason instanceof DOMException && signal.reason.name === 'TimeoutError') {
      throw new UnavailableError('S3_CANARY_TIMEOUT', `the S3 canary (write, read, delete) did not finish within ${timeoutMs} ms`, {
        cause: err instanceof Error ? err : undefined,
        hint: 'S3 hangs or is very slow: check the endpoint and the network',
      });
    }
    throw err;
  }
}
