import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { UnavailableError, errorText } from '../errors/index.js';
import type { ControlStore } from './control-store.js';
import { MAX_SPEC_BYTES, parseSpec, type ClusterSpec } from './spec.js';

export interface PeerAddress {
  node: string;
  grpc: string;
}

export interface SpecPeerDirectoryOptions {
  control: Pick<ControlStore, 'read' | 'location'>;
  /** Holds `last-cluster-spec.json`, the copy every steward keeps of the last valid spec it read. */
  stateDir: string;
  /** The spec this steward last read and found valid, if any (SpecService.latest). */
  latest?: () => ClusterSpec | undefined;
  logger: Logger;
}

/**
 * Where every member's steward listens, from the cluster spec rather than etcd, so a steward reaches its
 * peers with etcd down (a restore after quorum loss). Of the specs it can read (the one in memory, the control
 * store — S3, or this node's mirror without S3 — and the kept copy) it answers from the newest generation.
 * Every member that has an address is listed, this node included; members of older specs without a `grpc`
 * field are left out. Fits the `PeerDirectory` interface: `list(signal)`.
 */
export class SpecPeerDirectory {
  private readonly log: Logger;

  constructor(private readonly options: SpecPeerDirectoryOptions) {
    this.log = options.logger.child({ component: 'peer-directory' });
  }

  async list(signal: AbortSignal): Promise<PeerAddress[]> {
    signal.throwIfAborted();
    const candidates: ClusterSpec[] = [];
    const latest = this.options.latest?.();
    if (latest) candidates.push(latest);
    const problems: string[] = [];
    const stored = await this.options.control.read(signal).catch((err: unknown) => {
      if (signal.aborted) throw signal.reason;
      problems.push(`${this.options.control.location}: ${errorText(err)}`);
      return undefined;
    });
    if (stored) candidates.push(stored);
    const copyPath = join(this.options.stateDir, 'last-cluster-spec.json');
    const copy = await readCopy(copyPath).catch((err: unknown) => {
      problems.push(`${copyPath}: ${errorText(err)}`);
      return undefined;
    });
    if (copy) candidates.push(copy);
    const newest = candidates.reduce<ClusterSpec | undefined>((best, spec) => (!best || spec.generation > best.generation ? spec : best), undefined);
    if (!newest) {
      throw new UnavailableError(
        'PEERS_UNKNOWN',
        `no cluster spec can be read to find the other stewards${problems.length > 0 ? ` (${problems.join('; ')})` : ''}`,
        {
          hint: `put a valid spec back at ${this.options.control.location}, or a kept last-cluster-spec.json from another node into ${this.options.stateDir}`,
        },
      );
    }
    if (problems.length > 0) this.log.debug({ problems, generation: newest.generation }, 'peer addresses read from the spec that could be read');
    return peersFromSpec(newest);
  }
}

/** Every member of `spec` with a recorded steward address, as `{ node, grpc }`. */
export function peersFromSpec(spec: ClusterSpec): PeerAddress[] {
  return spec.members.flatMap((m) => (m.grpc ? [{ node: m.name, grpc: m.grpc }] : []));
}

async function readCopy(path: string): Promise<ClusterSpec | undefined> {
  let text: string;
  try {
    const { size } = await stat(path);
    if (size > MAX_SPEC_BYTES) throw new UnavailableError('SPEC_TOO_LARGE', `${path} is ${size} bytes, more than a cluster spec may be`);
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return parseSpec(text, path);
}
