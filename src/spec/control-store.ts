import type { Etcd3 } from 'etcd3';
import type { LeaderTerm } from '../election/election.js';
import { NotFoundError, PreconditionError } from '../errors/index.js';
import type { BackupStore } from '../store/store.js';
import { parseSpec, type ClusterSpec } from './spec.js';

export const SPEC_KEY = 'cluster-spec.json';
const GENERATION_KEY = 'etcd-steward/control/generation';

/**
 * The cluster spec in its own store (an S3 prefix apart from the backups, or a local dir without S3).
 * Every write is ordered by a generation kept in etcd and fenced by the leader's campaign key; init,
 * which may run before etcd exists, only writes where no spec exists at all.
 */
export class ControlStore {
  constructor(
    readonly store: BackupStore,
    private readonly client: Etcd3,
  ) {}

  get location(): string {
    return this.store.urlFor(SPEC_KEY);
  }

  /** The spec, or undefined if it is missing; throws if it exists but cannot be read or parsed. */
  async read(signal: AbortSignal): Promise<ClusterSpec | undefined> {
    let text: string;
    try {
      text = (await this.store.readSmall(SPEC_KEY, signal)).toString('utf8');
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
    return parseSpec(text, this.location);
  }

  /**
   * Replaces the spec as the leader with the next generation after every one seen: the stored spec's, the
   * one recorded in etcd, and `basedOn` (the generation of the spec the operator edited, which may be the
   * only trace left when the stored spec vanished).
   */
  async write(next: Omit<ClusterSpec, 'generation' | 'updatedAt' | 'fencingToken'>, basedOn: number, term: LeaderTerm, signal: AbortSignal): Promise<ClusterSpec> {
    const stored = await this.read(signal).catch(() => undefined);
    const recorded = await this.client.get(GENERATION_KEY).string();
    const current = Math.max(stored?.generation ?? 0, recorded === null ? 0 : Number(recorded));
    if (basedOn < current) {
      throw new PreconditionError('STALE_GENERATION', `the spec you sent has generation ${basedOn}, older than the current ${current}`, {
        hint: 'someone changed the spec since you read it: run etcd-stewardctl spec get again, edit that, and set it',
      });
    }
    const generation = Math.max(current, basedOn) + 1;
    const txn = this.client.if(term.campaignKey, 'Create', '==', term.fencingToken);
    const guarded = recorded === null ? txn.and(GENERATION_KEY, 'Create', '==', 0) : txn.and(GENERATION_KEY, 'Value', '==', recorded);
    const result = await guarded.then(this.client.put(GENERATION_KEY).value(String(generation))).commit();
    if (!result.succeeded) {
      throw new PreconditionError('STALE_LEADER', 'the spec write was refused: this steward lost leadership or another write came first', {
        hint: 'run etcd-stewardctl spec get and try again against the current leader',
      });
    }
    const spec: ClusterSpec = { ...next, formatVersion: 1, generation, updatedAt: new Date().toISOString(), fencingToken: term.fencingToken, etcdFlags: next.etcdFlags ?? {} };
    await this.store.putSmall(SPEC_KEY, `${JSON.stringify(spec, null, 2)}\n`, signal);
    return spec;
  }

  /** Writes the first spec of a brand-new cluster; the caller has checked there is no data to lose. */
  async initialise(spec: Omit<ClusterSpec, 'generation' | 'updatedAt' | 'fencingToken' | 'formatVersion'>, signal: AbortSignal): Promise<ClusterSpec> {
    if (await this.read(signal)) {
      throw new PreconditionError('SPEC_EXISTS', `a cluster spec already exists at ${this.location}`, { hint: 'nothing to initialise: the cluster exists; etcd-stewardctl spec get shows it' });
    }
    const first: ClusterSpec = { ...spec, formatVersion: 1, generation: 1, updatedAt: new Date().toISOString(), fencingToken: '' };
    await this.store.putSmall(SPEC_KEY, `${JSON.stringify(first, null, 2)}\n`, signal);
    return first;
  }
}
