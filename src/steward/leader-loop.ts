import { setTimeout as sleep } from 'node:timers/promises';
import type { LeaderTerm } from '../election/election.js';
import { errorText } from '../errors/index.js';
import { SnapshotScheduler } from '../snapshot/scheduler.js';
import type { DrillService } from './drills.js';
import type { SnapshotService } from './snapshots.js';

/**
 * Leader-only work for one term: the schedule and the reconcile loop, both ending with the term. Every
 * inventory pass is fenced by the term and runs alone (the keeper queues them).
 */
export async function runLeaderTerm(snapshots: SnapshotService, term: LeaderTerm, drills?: DrillService): Promise<void> {
  const { config, client, logger } = snapshots.options;
  const log = snapshots.log;
  const scheduling = config.etcdDisableSnapshots
    ? Promise.resolve()
    : new SnapshotScheduler({
        client,
        cron: config.etcdSnapshotScheduleCron,
        logger,
        metrics: snapshots.options.metrics,
        run: async (scheduledTerm) => {
          const saved = await snapshots.save({ kind: 'scheduled', term: scheduledTerm, signal: scheduledTerm.signal });
          // In the background: the slot is done once its snapshot is stored, whatever its drill finds.
          if (config.etcdSnapshotVerifyCron === 'after-snapshot') drills?.drillInBackground(saved.metadata.name, scheduledTerm.signal);
          // The slot is done once its snapshot is stored: a retention failure must not make the scheduler retry
          // the slot (a second snapshot); the reconcile loop applies retention again within one interval.
          await snapshots.keeper.applyRetention(config.etcdSnapshotRetention, scheduledTerm.signal, scheduledTerm).catch((err: unknown) => {
            if (!scheduledTerm.signal.aborted)
              log.error({ err: errorText(err) }, 'retention after a scheduled snapshot failed; the reconcile loop tries again');
          });
        },
      }).runTerm(term);
  const reconciling = (async () => {
    while (!term.signal.aborted) {
      try {
        await snapshots.keeper.reconcile(term.signal, term);
        await snapshots.keeper.applyRetention(config.etcdSnapshotRetention, term.signal, term);
      } catch (err) {
        if (!term.signal.aborted) log.error({ err: errorText(err) }, 'reconcile failed; will try again next interval');
      }
      await sleep(config.etcdSnapshotReconcileInterval, undefined, { signal: term.signal }).catch(() => undefined);
    }
  })();
  const cron = config.etcdSnapshotVerifyCron;
  const drilling = drills && cron !== 'after-snapshot' && cron !== 'off' ? drills.runCron(cron, term.signal) : Promise.resolve();
  await Promise.all([scheduling.catch((err: unknown) => log.error({ err: errorText(err) }, 'scheduler stopped')), reconciling, drilling]);
  // A drill started by this term ends with it (its signal), its throwaway etcd stopped and scratch dir removed.
  await drills?.idle();
}
