import { setTimeout as sleep } from 'node:timers/promises';
import { ExponentialBackoff, type IBackoff } from 'cockatiel';
import { leaseSecondsLeft, type Etcd3 } from '../etcd/client.js';
import type { Logger } from 'pino';
import { errorText } from '../errors/index.js';
import { Candidacy } from './candidacy.js';

/** One leadership term. Leader-only work runs under `signal`, which aborts the moment the term ends. */
export interface LeaderTerm {
  /** The campaign key's create revision: strictly increasing across terms, so a stale leader's writes can be refused. */
  fencingToken: string;
  /** The etcd key whose create revision is the token: a fenced write compares against it in a transaction. */
  campaignKey: string;
  signal: AbortSignal;
  startedAt: Date;
}

export type Fence = Pick<LeaderTerm, 'fencingToken' | 'campaignKey'>;

/** Who leads as etcd's keys say now, told apart from a key whose holder died and whose lease is running out. */
export interface LeaderView {
  /** The node that holds the oldest campaign key and keeps its lease alive; undefined while nobody does. */
  leader: string | undefined;
  /** The oldest key's holder stopped renewing its lease (killed, frozen, partitioned): it leads nothing. */
  stale?: { node: string; expiresInSeconds: number };
}

/**
 * The watchdog's rule: a term ends once no keepalive has succeeded for 3/4 of the TTL, before the lease can
 * expire and another steward win (etcd3 reports a lost lease ~2×TTL late).
 */
export function keepaliveStaleAfterMs(ttlSeconds: number): number {
  return (ttlSeconds * 1000 * 3) / 4;
}

/**
 * A live holder renews its lease every TTL/3, so its remaining TTL stays above 2/3 of the TTL; below half,
 * two renewals were missed, and by 1/4 its own watchdog has ended its term. Reporting it as the leader would
 * send an operator to a steward that is not there.
 */
export function leaseLooksAbandoned(remainingSeconds: number, ttlSeconds: number): boolean {
  return remainingSeconds < ttlSeconds / 2;
}

export interface LeaderElectionOptions {
  client: Etcd3;
  node: string;
  ttlSeconds: number;
  logger: Logger;
  onTermStarted?: (term: LeaderTerm) => void;
  onTermEnded?: (term: LeaderTerm, reason: string) => void;
}

const WATCHDOG_PERIOD_MS = 250;
const PREFIX = 'etcd-steward/';
const ELECTION = 'leader';
const CAMPAIGN_PREFIX = `${PREFIX}election/${ELECTION}/`;

/**
 * Leader election on an etcd lease, hardened against the faults of etcd3's own campaign:
 * - every bid is a fresh Candidacy; a finished one is resigned and its events detached, never trusted;
 * - a lost lease is reported ~2×TTL late, so a watchdog ends the term when no keepalive has succeeded
 *   for 3/4 of the TTL: before the lease can expire and another steward win;
 * - after any failure the steward resigns, backs off with jitter and campaigns anew.
 * The keys are those of etcd3's `Election` (`etcd-steward/election/leader/<lease>`); the oldest one leads.
 */
export class LeaderElection {
  private readonly log: Logger;
  private term: LeaderTerm | undefined;

  constructor(private readonly options: LeaderElectionOptions) {
    this.log = options.logger.child({ component: 'election' });
  }

  get currentTerm(): LeaderTerm | undefined {
    return this.term;
  }

  /** The leader's node name as etcd sees it now (a fresh read, never a cached observer). */
  async leader(): Promise<string | undefined> {
    return (await this.leaderView()).leader;
  }

  /** The oldest campaign key and whether its holder still renews its lease (a fresh read). */
  async leaderView(): Promise<LeaderView> {
    const { client, ttlSeconds } = this.options;
    if (this.term) return { leader: this.options.node };
    const oldest = await client.namespace(CAMPAIGN_PREFIX).getAll().sort('Create', 'Ascend').limit(1).exec();
    const kv = oldest.kvs[0];
    if (!kv) return { leader: undefined };
    const node = kv.value.toString();
    // A key without a lease cannot expire; none of ours is like that, but never call it stale.
    if (!kv.lease || kv.lease === '0') return { leader: node };
    const remaining = await leaseSecondsLeft(client, kv.lease);
    // Our own name on the oldest key while we hold no term: a key from before this process restarted.
    const ownOldKey = node === this.options.node;
    if (remaining > 0 && !ownOldKey && !leaseLooksAbandoned(remaining, ttlSeconds)) return { leader: node };
    return { leader: undefined, stale: { node, expiresInSeconds: Math.max(0, remaining) } };
  }

  /** Campaigns until `signal` aborts, then resigns so another steward takes over without waiting for the TTL. */
  async run(signal: AbortSignal): Promise<void> {
    const backoffFactory = new ExponentialBackoff({ initialDelay: 200, maxDelay: Math.min(3000, this.options.ttlSeconds * 1000) });
    let backoff: IBackoff<unknown> | undefined;
    let generation = 0;
    while (!signal.aborted) {
      generation += 1;
      const candidacy = new Candidacy(this.options.client, CAMPAIGN_PREFIX, this.options.node, this.options.ttlSeconds);
      let lastKeepalive = Date.now();
      candidacy.on('keepalive', () => {
        lastKeepalive = Date.now();
      });
      let ended = 'shutdown';
      try {
        const { key, createRevision } = await candidacy.campaign(signal);
        backoff = undefined;
        ended = await this.holdTerm(candidacy, { fencingToken: createRevision, campaignKey: key }, () => lastKeepalive, signal);
      } catch (err) {
        if (!signal.aborted) {
          ended = `campaign failed: ${errorText(err)}`;
          this.log.warn({ err: errorText(err), generation }, 'campaign failed; will campaign again');
        }
      } finally {
        const resignStarted = Date.now();
        await candidacy.resign();
        this.log.debug({ generation, ms: Date.now() - resignStarted }, 'candidacy resigned');
      }
      if (signal.aborted) break;
      backoff = backoff === undefined ? backoffFactory.next() : backoff.next(undefined);
      this.log.info({ reason: ended, retryInMs: Math.round(backoff.duration), generation }, 'campaigning again after backoff');
      await sleep(backoff.duration, undefined, { signal }).catch(() => undefined);
    }
  }

  private async holdTerm(candidacy: Candidacy, fence: Fence, lastKeepalive: () => number, signal: AbortSignal): Promise<string> {
    // A lease lost between winning and here: no term may start on it, not even briefly.
    if (candidacy.lostReason !== undefined) return `lease lost: ${errorText(candidacy.lostReason)}`;
    const controller = new AbortController();
    const { fencingToken } = fence;
    const term: LeaderTerm = { ...fence, signal: controller.signal, startedAt: new Date() };
    this.term = term;
    this.log.info({ fencingToken }, 'elected leader: leadership term started');
    this.options.onTermStarted?.(term);
    const staleAfterMs = keepaliveStaleAfterMs(this.options.ttlSeconds);
    const reason = await new Promise<string>((resolve) => {
      const onAbort = (): void => finish('shutdown');
      const onLost = (err: unknown): void => finish(`lease lost: ${errorText(err)}`);
      const watchdog = setInterval(() => {
        const age = Date.now() - lastKeepalive();
        if (age > staleAfterMs) finish(`no lease keepalive for ${age}ms (limit ${staleAfterMs}ms)`);
      }, WATCHDOG_PERIOD_MS);
      const finish = (why: string): void => {
        clearInterval(watchdog);
        signal.removeEventListener('abort', onAbort);
        candidacy.off('lost', onLost);
        resolve(why);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      candidacy.on('lost', onLost);
      if (signal.aborted) finish('shutdown');
      else if (candidacy.lostReason !== undefined) onLost(candidacy.lostReason);
    });
    this.term = undefined;
    controller.abort(new Error(`leadership term ended: ${reason}`));
    this.log[reason === 'shutdown' ? 'info' : 'warn']({ fencingToken, reason }, 'leadership term ended; leader-only work stopped');
    this.options.onTermEnded?.(term, reason);
    return reason;
  }
}
