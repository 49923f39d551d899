import { setTimeout as sleep } from 'node:timers/promises';
import { Cron } from 'croner';
import type { Etcd3 } from '../etcd/client.js';
import type { Logger } from 'pino';
import type { LeaderTerm } from '../election/election.js';
import { errorText } from '../errors/index.js';
import type { StewardMetrics } from '../observability/metrics.js';
import { DEFAULT_RETRY, catchUpSlot, claimVerdict, encodeClaim, encodeSlot, parseClaim, retryDecision, type RetryPolicy } from './schedule-claims.js';

const CLAIMED_KEY = 'etcd-steward/schedule/last-slot';
const DONE_KEY = 'etcd-steward/schedule/last-done';
/** How often a new leader re-reads the done marker while an earlier term may still be finishing its slot. */
const DONE_POLL_MS = 500;

export interface SnapshotSchedulerOptions {
  client: Etcd3;
  cron: string;
  logger: Logger;
  run: (term: LeaderTerm, slot: Date) => Promise<void>;
  /** Counts retries and missed slots; without it they are only logged. */
  metrics?: Pick<StewardMetrics, 'scheduledSnapshotRetries' | 'scheduledSlotsMissed'>;
  /** Backoff between attempts of a failed slot; retries stop when the next slot starts. */
  retry?: RetryPolicy;
  /** How long a new leader waits for an earlier term to finish the slot it claimed before taking it over. Default 60 s. */
  takeOverAfterMs?: number;
}

/**
 * Runs scheduled snapshots on the leader only, under its term's signal. Each cron slot is claimed in etcd
 * before it runs (a compare-and-set fenced by the leader's campaign key, recording the term's token), so a
 * leader change never runs a slot twice. A slot whose snapshot failed is retried with backoff until the next
 * slot starts. It is marked done once its snapshot is stored, by the term that claimed it, even if that
 * term ended meanwhile: a new leader re-runs the newest due slot that no leader finished, after giving the
 * term that claimed it time to finish. croner's `protect` keeps cron runs from overlapping.
 */
export class SnapshotScheduler {
  private readonly log: Logger;
  private readonly running = new Set<Promise<void>>();

  constructor(private readonly options: SnapshotSchedulerOptions) {
    this.log = options.logger.child({ component: 'scheduler' });
  }

  /** Runs until the term ends, then waits for a slot in progress to unwind. */
  async runTerm(term: LeaderTerm): Promise<void> {
    const pattern = new Cron(this.options.cron, { paused: true });
    const catchUp = await this.untilRead(term, async () => {
      const done = await this.options.client.get(DONE_KEY).string();
      if (done === null) {
        // A brand-new schedule starts from now rather than snapshotting at once.
        const now = new Date();
        const previous = await this.options.client.get(CLAIMED_KEY).string();
        await this.claim(term, previous, now);
        await this.markDone(encodeClaim({ slot: now.getTime(), token: term.fencingToken }), now);
        return undefined;
      }
      return catchUpSlot(pattern.previousRuns(1, new Date())[0], parseClaim(done));
    });
    if (term.signal.aborted) {
      pattern.stop();
      return;
    }
    // The cron starts before the catch-up runs: a catch-up that lasts into the next slot must not make it skip.
    const job = new Cron(this.options.cron, { protect: true }, async (self: Cron) => {
      // The trigger time is a few ms past the slot; the slot itself is what leaders agree on.
      const triggered = self.currentRun() ?? new Date();
      await this.track(this.runSlot(term, new Date(Math.floor(triggered.getTime() / 1000) * 1000), false, pattern));
    });
    this.log.info({ cron: this.options.cron, next: job.nextRun()?.toISOString() }, 'snapshot schedule active on this leader');
    if (catchUp) {
      this.log.warn({ slot: catchUp.toISOString() }, 'the newest scheduled snapshot was never completed (leader change or failure); taking it now');
      void this.track(this.runSlot(term, catchUp, true, pattern));
    }
    await new Promise<void>((resolve) => {
      if (term.signal.aborted) resolve();
      else term.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    job.stop();
    pattern.stop();
    while (this.running.size > 0) await Promise.allSettled([...this.running]);
  }

  private track(run: Promise<void>): Promise<void> {
    this.running.add(run);
    void run.finally(() => this.running.delete(run));
    return run;
  }

  /** Claims the slot, then runs it, retrying a failure with backoff until the next slot starts. Never throws. */
  private async runSlot(term: LeaderTerm, slot: Date, catchUp: boolean, pattern: Cron): Promise<void> {
    const at = slot.toISOString();
    const nextSlot = pattern.nextRun(slot)?.getTime() ?? Number.POSITIVE_INFINITY;
    let claim: string | undefined;
    try {
      claim = await this.claimSlot(term, slot, catchUp, nextSlot);
    } catch (err) {
      if (!term.signal.aborted) this.log.error({ slot: at, err: errorText(err) }, 'cannot claim the scheduled slot; the next slot will try again');
      return;
    }
    if (claim === undefined) return;
    const policy = this.options.retry ?? DEFAULT_RETRY;
    for (let failures = 0; !term.signal.aborted;) {
      try {
        await this.options.run(term, slot);
      } catch (err) {
        if (term.signal.aborted) return;
        failures += 1;
        const decision = retryDecision(failures, Date.now(), nextSlot, policy, Math.random());
        if (!decision.retry) {
          this.options.metrics?.scheduledSlotsMissed.inc();
          this.log.error(
            { slot: at, attempts: failures, err: errorText(err) },
            'scheduled snapshot failed and the next slot starts before another try: this slot has no snapshot',
          );
          return;
        }
        this.options.metrics?.scheduledSnapshotRetries.inc();
        this.log.warn(
          { slot: at, attempt: failures, retryInMs: decision.delayMs, err: errorText(err) },
          'scheduled snapshot failed; retrying within this slot',
        );
        await sleep(decision.delayMs, undefined, { signal: term.signal }).catch(() => undefined);
        continue;
      }
      // Stored: mark it done even if the term ended meanwhile, or the next leader would take the slot again.
      await this.markDone(claim, slot).catch((err: unknown) =>
        this.log.warn({ slot: at, err: errorText(err) }, 'cannot mark the scheduled slot done; the next leader may take it again'),
      );
      return;
    }
  }

  /** The claim written for this slot, or undefined when this term must not run it. */
  private async claimSlot(term: LeaderTerm, slot: Date, catchUp: boolean, nextSlot: number): Promise<string | undefined> {
    const { client } = this.options;
    const at = slot.toISOString();
    for (;;) {
      const previous = await client.get(CLAIMED_KEY).string();
      const verdict = claimVerdict(parseClaim(previous), slot.getTime(), term.fencingToken, catchUp);
      if (verdict.action === 'skip') {
        this.log.info({ slot: at, why: verdict.why }, 'slot already taken by another leader; skipping it');
        return undefined;
      }
      if (verdict.action === 'wait-for-previous') {
        if (await this.waitForDone(term, slot, Math.min(Date.now() + (this.options.takeOverAfterMs ?? 60_000), nextSlot))) {
          this.log.info({ slot: at }, 'the term that claimed this slot finished it; not taking it again');
          return undefined;
        }
        if (term.signal.aborted || Date.now() >= nextSlot) return undefined;
        this.log.warn({ slot: at, previous }, 'the term that claimed this slot did not finish it; taking it over');
      }
      if (await this.claim(term, previous, slot)) return encodeClaim({ slot: slot.getTime(), token: term.fencingToken });
      // The claim moved under us (another term claimed meanwhile): decide again on what it is now.
      if (term.signal.aborted) return undefined;
    }
  }

  /** True once the done marker reaches `slot`; false at `until` or when the term ends. */
  private async waitForDone(term: LeaderTerm, slot: Date, until: number): Promise<boolean> {
    while (!term.signal.aborted) {
      const done = parseClaim(await this.options.client.get(DONE_KEY).string());
      if (done && done.slot >= slot.getTime()) return true;
      const left = until - Date.now();
      if (left <= 0) return false;
      await sleep(Math.min(DONE_POLL_MS, left), undefined, { signal: term.signal }).catch(() => undefined);
    }
    return false;
  }

  /** Reads needed at term start, retried until they work or the term ends: a failed read must not silence the schedule. */
  private async untilRead<T>(term: LeaderTerm, read: () => Promise<T>): Promise<T | undefined> {
    for (let delay = 500; !term.signal.aborted; delay = Math.min(delay * 2, 10_000)) {
      try {
        return await read();
      } catch (err) {
        this.log.warn({ err: errorText(err), retryInMs: delay }, 'cannot read the schedule state from etcd; retrying');
        await sleep(delay, undefined, { signal: term.signal }).catch(() => undefined);
      }
    }
    return undefined;
  }

  /** Compare-and-set of the claimed slot from `previous`, fenced by the leader's campaign key. */
  private async claim(term: LeaderTerm, previous: string | null, slot: Date): Promise<boolean> {
    const { client } = this.options;
    const txn = client.if(term.campaignKey, 'Create', '==', term.fencingToken);
    const guarded = previous === null ? txn.and(CLAIMED_KEY, 'Create', '==', 0) : txn.and(CLAIMED_KEY, 'Value', '==', previous);
    return (await guarded.then(client.put(CLAIMED_KEY).value(encodeClaim({ slot: slot.getTime(), token: term.fencingToken }))).commit()).succeeded;
  }

  /**
   * Marks the slot done, fenced by the claim rather than the term: only the term that claimed the slot may,
   * and it may after its term ended (its snapshot is stored), as long as no one claimed a slot since.
   */
  private async markDone(claim: string, slot: Date): Promise<void> {
    const { client } = this.options;
    await client
      .if(CLAIMED_KEY, 'Value', '==', claim)
      .then(client.put(DONE_KEY).value(encodeSlot(slot)))
      .commit();
  }
}
