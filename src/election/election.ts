import { setTimeout as sleep } from 'node:timers/promises';
import { ExponentialBackoff, type IBackoff } from 'cockatiel';
import type { Election, Etcd3 } from 'etcd3';
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

/**
 * Leader election on an etcd lease, hardened against the faults of etcd3's own campaign:
 * - every bid is a fresh Candidacy; a finished one is resigned and its events detached, never trusted;
 * - a lost lease is reported ~2×TTL late, so a watchdog ends the term when no keepalive has succeeded
 *   for 3/4 of the TTL: before the lease can expire and another steward win;
 * - after any failure the steward resigns, backs off with jitter and campaigns anew.
 * The keys are those of etcd3's `Election`, whose `leader()` read is used to report the leader.
 */
export class LeaderElection {
  private readonly log: Logger;
  private readonly election: Election;
  private term: LeaderTerm | undefined;

  constructor(private readonly options: LeaderElectionOptions) {
    this.log = options.logger.child({ component: 'election' });
    this.election = options.client.namespace(PREFIX).election(ELECTION, options.ttlSeconds);
  }

  get currentTerm(): LeaderTerm | undefined {
    return this.term;
  }

  /** The leader's node name as etcd sees it now (a fresh read, never a cached observer). */
  async leader(): Promise<string | undefined> {
    return this.election.leader();
  }

  /** Campaigns until `signal` aborts, then resigns so another steward takes over without waiting for the TTL. */
  async run(signal: AbortSignal): Promise<void> {
    const backoffFactory = new ExponentialBackoff({ initialDelay: 200, maxDelay: Math.min(3000, this.options.ttlSeconds * 1000) });
    let backoff: IBackoff<unknown> | undefined;
    let generation = 0;
    while (!signal.aborted) {
      generation += 1;
      const candidacy = new Candidacy(this.options.client, `${PREFIX}election/${ELECTION}/`, this.options.node, this.options.ttlSeconds);
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
    const staleAfterMs = (this.options.ttlSeconds * 1000 * 3) / 4;
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
