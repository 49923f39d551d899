import type { Logger } from 'pino';
import { errorText } from '../errors/index.js';
import type { PeerAddress, PeerDirectory } from './peer-pool.js';

/** How long the etcd registry may still take once the spec answered. */
const CACHE_GRACE_MS = 1000;

/**
 * Where the other stewards are: the cluster spec's addresses first (they are readable with etcd down, which
 * is when a restore needs them), the etcd registry only as a cache for members an older spec has no
 * address for. Either source failing alone is logged and the other answers; both failing is the spec's error.
 */
export class LayeredPeerDirectory implements PeerDirectory {
  private readonly log: Logger;

  constructor(
    private readonly authoritative: PeerDirectory,
    private readonly cache: PeerDirectory,
    logger: Logger,
  ) {
    this.log = logger.child({ component: 'peer-directory' });
  }

  async list(signal: AbortSignal): Promise<PeerAddress[]> {
    // Settled from the start: a registry that fails while the spec is read must not be an unhandled rejection.
    const fromCache = settled(this.cache.list(signal));
    const primary = await settled(this.authoritative.list(signal));
    // With etcd down the registry answers only at its call's deadline (10 s): once the spec answered, it
    // may fill gaps only if it answers soon, or every caller (ls without etcd, a restore) waits for it.
    const cached = primary.status === 'fulfilled' ? await within(fromCache, CACHE_GRACE_MS) : await fromCache;
    signal.throwIfAborted();
    if (primary.status === 'rejected' && cached.status === 'rejected') throw primary.reason;
    if (primary.status === 'rejected') {
      this.log.warn({ err: errorText(primary.reason) }, 'cannot read peer addresses from the cluster spec; using the etcd registry');
    }
    const addresses = primary.status === 'fulfilled' ? [...primary.value] : [];
    const known = new Set(addresses.map((a) => a.node));
    for (const entry of cached.status === 'fulfilled' ? cached.value : []) {
      if (!known.has(entry.node)) addresses.push(entry);
      known.add(entry.node);
    }
    return addresses;
  }
}

function settled<T>(promise: Promise<T>): Promise<PromiseSettledResult<T>> {
  return promise.then(
    (value) => ({ status: 'fulfilled', value }),
    (reason: unknown) => ({ status: 'rejected', reason }),
  );
}

function within<T>(result: Promise<PromiseSettledResult<T>>, ms: number): Promise<PromiseSettledResult<T>> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<PromiseSettledResult<T>>((resolve) => {
    timer = setTimeout(() => resolve({ status: 'rejected', reason: new Error(`no answer within ${ms} ms`) }), ms);
  });
  return Promise.race([result, late]).finally(() => clearTimeout(timer));
}
