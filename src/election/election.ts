import { setTimeout as sleep } from 'node:timers/promises';
import { ExponentialBackoff, type IBackoff } from 'cockatiel';
import type { Campaign, Etcd3, Election, ILeaseKeepAliveResponse, Lease } from 'etcd3';
import type { Logger } from 'pino';
import { errorText } from '../errors/index.js';

/** One leadership term. Leader-only work runs under `signal`, which aborts the moment the term ends. */
export interface LeaderTerm {
  /** The campaign key's create revision: strictly increasing across terms, so a stale leader's writes can be refused. */
  fencingToken: string;
  signal: AbortSignal;
  startedAt: Date;
}

export interface LeaderElectionOptions {
  client: Etcd3;
  node: string;
  ttlSeconds: number;
  logger: Logger;
  onTermStarted?: (term: LeaderTerm) => void;
  onTermEnded?: (term: LeaderTerm, reason: string) => void;
}

type CampaignOutcome = { kind: 'elected' } | { kind: 'failed'; error: unknown } | { kind: 'stopped' };

const WATCHDOG_PERIOD_MS = 250;

/**
 * Leader election on an etcd lease (etcd3's Election), hardened against its known faults:
 * - every campaign has a generation; events of an abandoned campaign are detached and never trusted;
 * - etcd3 reports a lost lease about 2×TTL late and never re-campaigns, so a watchdog ends the term when
 *   no keepalive has succeeded for 3/4 of the TTL: before the lease can expire and another steward win;
 * - after any failure the steward resigns, backs off with jitter and campaigns anew.
 */
export class LeaderElection {
  private readonly log: Logger;
  private readonly election: Election;
  private term: LeaderTerm | undefined;
  private generation = 0;

  constructor(private readonly options: LeaderElectionOptions) {
    this.log = options.logger.child({ component: 'election' });
    this.election = options.client.namespace('etcd-steward/').election('leader', options.ttlSeconds);
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
    while (!signal.aborted) {
      const generation = ++this.generation;
      const campaign = this.election.campaign(this.options.node);
      const lease = leaseOf(campaign);
      let lastKeepalive = Date.now();
      const onKeepalive = (res: ILeaseKeepAliveResponse): void => {
        if (res.TTL !== '0') lastKeepalive = Date.now();
      };
      lease.on('keepaliveSucceeded', onKeepalive);
      let ended = 'shutdown';
      try {
        const outcome = await waitForOutcome(campaign, signal);
        if (outcome.kind === 'failed') {
          ended = `campaign failed: ${errorText(outcome.error)}`;
          this.log.warn({ err: outcome.error, generation }, 'campaign failed; will campaign again');
        } else if (outcome.kind === 'elected' && generation === this.generation && !signal.aborted) {
          const fencingToken = await this.fencingToken(campaign);
          backoff = undefined;
          ended = await this.holdTerm(campaign, fencingToken, () => lastKeepalive, signal);
        }
      } catch (err) {
        ended = `election error: ${errorText(err)}`;
        this.log.warn({ err, generation }, 'election error; will campaign again');
      } finally {
        lease.off('keepaliveSucceeded', onKeepalive);
        await this.abandon(campaign);
      }
      if (signal.aborted) break;
      backoff = backoff === undefined ? backoffFactory.next() : backoff.next(undefined);
      this.log.info({ reason: ended, retryInMs: Math.round(backoff.duration) }, 'campaigning again after backoff');
      await sleep(backoff.duration, undefined, { signal }).catch(() => undefined);
    }
  }

  private async holdTerm(campaign: Campaign, fencingToken: string, lastKeepalive: () => number, signal: AbortSignal): Promise<string> {
    const controller = new AbortController();
    const term: LeaderTerm = { fencingToken, signal: controller.signal, startedAt: new Date() };
    this.term = term;
    this.log.info({ fencingToken }, 'elected leader: leadership term started');
    this.options.onTermStarted?.(term);
    const staleAfterMs = (this.options.ttlSeconds * 1000 * 3) / 4;
    const reason = await new Promise<string>((resolve) => {
      const onAbort = (): void => finish('shutdown');
      const onError = (err: unknown): void => finish(`campaign error: ${errorText(err)}`);
      const watchdog = setInterval(() => {
        const age = Date.now() - lastKeepalive();
        if (age > staleAfterMs) finish(`no lease keepalive for ${age}ms (limit ${staleAfterMs}ms)`);
      }, WATCHDOG_PERIOD_MS);
      const finish = (why: string): void => {
        clearInterval(watchdog);
        signal.removeEventListener('abort', onAbort);
        campaign.off('error', onError);
        resolve(why);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      campaign.on('error', onError);
      if (signal.aborted) finish('shutdown');
    });
    this.term = undefined;
    controller.abort(new Error(`leadership term ended: ${reason}`));
    this.log[reason === 'shutdown' ? 'info' : 'warn']({ fencingToken, reason }, 'leadership term ended; leader-only work stopped');
    this.options.onTermEnded?.(term, reason);
    return reason;
  }

  private async fencingToken(campaign: Campaign): Promise<string> {
    const key = await campaign.getCampaignKey();
    const response = await this.options.client.get(key).exec();
    const kv = response.kvs[0];
    if (!kv || kv.value.toString() !== this.options.node) {
      throw new Error(`campaign key ${key} vanished right after the election`);
    }
    return kv.create_revision;
  }

  /** Detaches every listener (a dead campaign can still emit `elected`) and revokes its lease. */
  private async abandon(campaign: Campaign): Promise<void> {
    campaign.removeAllListeners();
    campaign.on('error', () => undefined);
    await Promise.race([campaign.resign().catch(() => undefined), sleep(3000)]);
  }
}

function waitForOutcome(campaign: Campaign, signal: AbortSignal): Promise<CampaignOutcome> {
  return new Promise((resolve) => {
    const onAbort = (): void => finish({ kind: 'stopped' });
    const finish = (outcome: CampaignOutcome): void => {
      signal.removeEventListener('abort', onAbort);
      campaign.off('elected', onElected);
      campaign.off('error', onError);
      resolve(outcome);
    };
    const onElected = (): void => finish({ kind: 'elected' });
    const onError = (error: unknown): void => finish({ kind: 'failed', error });
    campaign.on('elected', onElected);
    campaign.on('error', onError);
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
  });
}

/**
 * etcd3 keeps the campaign's lease private, but its keepalive events are the only timely sign that
 * leadership is at risk. etcd3 1.1.2 is pinned and unmaintained, so the field will not move under us;
 * the check turns a surprise into a start-up failure rather than a silent loss of the watchdog.
 */
function leaseOf(campaign: Campaign): Lease {
  const lease = (campaign as unknown as { lease?: Lease }).lease;
  if (!lease || typeof lease.on !== 'function') throw new Error('etcd3 Campaign has no lease field: the pinned etcd3 version changed');
  return lease;
}
