import type { Logger } from 'pino';
import { errorText } from '../errors/index.js';
import type { PeerAddress, PeerDirectory } from './peer-pool.js';

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
    const [primary, cached] = await Promise.allSettled([this.authoritative.list(signal), this.cache.list(signal)]);
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
