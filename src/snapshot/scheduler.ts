import { Cron } from 'croner';
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import type { LeaderTerm } from '../election/election.js';
import { errorText } from '../errors/index.js';

const LAST_SLOT_KEY = 'etcd-steward/schedule/last-slot';

/**
 * Runs scheduled snapshots on the leader only, under its term's signal. Each cron slot is claimed in
 * etcd before it runs (a fenced compare-and-set on the slot time), so a leader change never doubles a
 * slot; a new leader runs the most recent slot once if the old leader never claimed it, so a change
 * never skips one either. croner's `protect` keeps runs from overlapping.
 */
export class SnapshotScheduler {
  private readonly log: Logger;

  constructor(
    private readonly options: { client: Etcd3; cron: string; logger: Logger; run: (term: LeaderTerm, slot: Date) => Promise<void> },
  ) {
    this.log = options.logger.child({ component: 'scheduler' });
  }

  /** Runs until the term ends. */
  async runTerm(term: LeaderTerm): Promise<void> {
    const cron = new Cron(this.options.cron, { paused: true, protect: true });
    const lastSlot = await this.lastSlot();
    const newest = cron.previousRuns(1, new Date())[0];
    const missed = lastSlot !== undefined && newest !== undefined && newest > lastSlot ? newest : undefined;
    if (lastSlot === undefined) await this.claim(term, new Date(), undefined);
    else if (missed) {
      this.log.warn({ slot: missed.toISOString() }, 'a scheduled snapshot was due during the leadership change; taking it now');
      await this.runSlot(term, missed);
    }
    const job = new Cron(this.options.cron, { protect: true }, async (self: Cron) => {
      // The trigger time is a few ms past the slot; the slot itself is what leaders agree on.
      const triggered = self.currentRun() ?? new Date();
      await this.runSlot(term, new Date(Math.floor(triggered.getTime() / 1000) * 1000));
    });
    this.log.info({ cron: this.options.cron, next: job.nextRun()?.toISOString() }, 'snapshot schedule active on this leader');
    await new Promise<void>((resolve) => {
      if (term.signal.aborted) resolve();
      else term.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    job.stop();
    cron.stop();
  }

  private async runSlot(term: LeaderTerm, slot: Date): Promise<void> {
    if (term.signal.aborted) return;
    try {
      const claimed = await this.claim(term, slot, await this.lastSlotRaw());
      if (!claimed) {
        this.log.info({ slot: slot.toISOString() }, 'slot already taken by another leader; skipping it');
        return;
      }
      await this.options.run(term, slot);
    } catch (err) {
      this.log.error({ slot: slot.toISOString(), err: errorText(err) }, 'scheduled snapshot failed; the next slot will try again');
    }
  }

  private async lastSlotRaw(): Promise<string | null> {
    return this.options.client.get(LAST_SLOT_KEY).string();
  }

  private async lastSlot(): Promise<Date | undefined> {
    const raw = await this.lastSlotRaw();
    return raw === null ? undefined : new Date(Number(raw));
  }

  /** Compare-and-set of the last slot, fenced by the leader's campaign key. */
  private async claim(term: LeaderTerm, slot: Date, previous: string | null | undefined): Promise<boolean> {
    const value = String(slot.getTime()).padStart(15, '0');
    if (previous !== undefined && previous !== null && previous >= value) return false;
    const { client } = this.options;
    const txn = client.if(term.campaignKey, 'Create', '==', term.fencingToken);
    const guarded = previous === undefined || previous === null ? txn.and(LAST_SLOT_KEY, 'Create', '==', 0) : txn.and(LAST_SLOT_KEY, 'Value', '==', previous);
    const result = await guarded.then(client.put(LAST_SLOT_KEY).value(value)).commit();
    return result.succeeded;
  }
}
