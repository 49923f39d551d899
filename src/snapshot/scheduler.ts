import { setTimeout as sleep } from 'node:timers/promises';
import { Cron } from 'croner';
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import type { LeaderTerm } from '../election/election.js';
import { errorText } from '../errors/index.js';

const CLAIMED_KEY = 'etcd-steward/schedule/last-slot';
const DONE_KEY = 'etcd-steward/schedule/last-done';

/**
 * Runs scheduled snapshots on the leader only, under its term's signal. Each cron slot is claimed in etcd
 * before it runs (a compare-and-set fenced by the leader's campaign key), so a leader change never runs a
 * slot twice; a slot is marked done only once its snapshot is stored, so a new leader re-runs the newest
 * due slot that no leader finished and a change never skips one. croner's `protect` keeps runs from overlapping.
 */
export class SnapshotScheduler {
  private readonly log: Logger;
  private running: Promise<void> = Promise.resolve();

  constructor(
    private readonly options: { client: Etcd3; cron: string; logger: Logger; run: (term: LeaderTerm, slot: Date) => Promise<void> },
  ) {
    this.log = options.logger.child({ component: 'scheduler' });
  }

  /** Runs until the term ends, then waits for a slot in progress to unwind. */
  async runTerm(term: LeaderTerm): Promise<void> {
    const pattern = new Cron(this.options.cron, { paused: true });
    const catchUp = await this.untilRead(term, async () => {
      const done = await this.options.client.get(DONE_KEY).string();
      const newest = pattern.previousRuns(1, new Date())[0];
      if (done === null) {
        // A brand-new schedule starts from now rather than snapshotting at once.
        await this.claim(term, new Date(), { previous: await this.options.client.get(CLAIMED_KEY).string(), reclaim: false, force: true });
        await this.markDone(term, new Date());
        return undefined;
      }
      return newest && encode(newest) > done ? newest : undefined;
    });
    pattern.stop();
    if (term.signal.aborted) return;
    if (catchUp) {
      this.log.warn({ slot: catchUp.toISOString() }, 'the newest scheduled snapshot was never completed (leader change or failure); taking it now');
      await this.track(this.runSlot(term, catchUp, true));
    }
    const job = new Cron(this.options.cron, { protect: true }, async (self: Cron) => {
      // The trigger time is a few ms past the slot; the slot itself is what leaders agree on.
      const triggered = self.currentRun() ?? new Date();
      await this.track(this.runSlot(term, new Date(Math.floor(triggered.getTime() / 1000) * 1000), false));
    });
    this.log.info({ cron: this.options.cron, next: job.nextRun()?.toISOString() }, 'snapshot schedule active on this leader');
    await new Promise<void>((resolve) => {
      if (term.signal.aborted) resolve();
      else term.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    job.stop();
    await this.running;
  }

  private track(run: Promise<void>): Promise<void> {
    this.running = run;
    return run;
  }

  private async runSlot(term: LeaderTerm, slot: Date, reclaim: boolean): Promise<void> {
    if (term.signal.aborted) return;
    try {
      const previous = await this.options.client.get(CLAIMED_KEY).string();
      if (!(await this.claim(term, slot, { previous, reclaim, force: false }))) {
        this.log.info({ slot: slot.toISOString() }, 'slot already taken by another leader; skipping it');
        return;
      }
      await this.options.run(term, slot);
      await this.markDone(term, slot);
    } catch (err) {
      if (!term.signal.aborted) this.log.error({ slot: slot.toISOString(), err: errorText(err) }, 'scheduled snapshot failed; the next slot will try again');
    }
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

  /** Compare-and-set of the claimed slot, fenced by the leader's campaign key. */
  private async claim(term: LeaderTerm, slot: Date, how: { previous: string | null; reclaim: boolean; force: boolean }): Promise<boolean> {
    const value = encode(slot);
    const { previous } = how;
    if (!how.force && previous !== null && (how.reclaim ? previous > value : previous >= value)) return false;
    const { client } = this.options;
    const txn = client.if(term.campaignKey, 'Create', '==', term.fencingToken);
    const guarded = previous === null ? txn.and(CLAIMED_KEY, 'Create', '==', 0) : txn.and(CLAIMED_KEY, 'Value', '==', previous);
    return (await guarded.then(client.put(CLAIMED_KEY).value(value)).commit()).succeeded;
  }

  private async markDone(term: LeaderTerm, slot: Date): Promise<void> {
    const { client } = this.options;
    await client.if(term.campaignKey, 'Create', '==', term.fencingToken).then(client.put(DONE_KEY).value(encode(slot))).commit();
  }
}

/** Zero-padded epoch milliseconds: etcd compares values as bytes, so these order like times. */
function encode(slot: Date): string {
  return String(slot.getTime()).padStart(15, '0');
}
