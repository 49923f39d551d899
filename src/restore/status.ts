import { errorText } from '../errors/index.js';
import type { RestoreMemberState, RestoreStatusResponse } from '../rpc/types.js';
import { lockIsStale, type RestoreLock } from './lock.js';
import { memberState } from './member-state.js';
import { withDeadline } from './find.js';
import type { Participant } from './participants.js';

/** A member whose steward could not be asked, for status and summaries. */
export function unreachableState(node: string, err: unknown): RestoreMemberState {
  return { ...memberState(node, undefined, ''), unreachable: errorText(err) || 'unreachable' };
}

/** The current or last restore as the lock and every reachable member record it, and what to do next. */
export async function restoreStatus(
  participants: (Participant | (Error & { node: string }))[],
  _members: { name: string }[],
  lock: RestoreLock,
  runningHere: string | undefined,
  signal: AbortSignal,
): Promise<RestoreStatusResponse> {
  const [held, members] = await Promise.all([
    lock.read(signal).catch(() => undefined),
    Promise.all(
      participants.map((p) =>
        p instanceof Error
          ? Promise.resolve(unreachableState(p.node, p))
          : withDeadline(signal, 10_000, (bounded) => p.status('', bounded)).catch((err: unknown) => unreachableState(p.node, err)),
      ),
    ),
  ]);
  const latest = [...members].filter((m) => m.restoreId).sort((a, b) => (b.updatedAt > a.updatedAt ? 1 : -1))[0];
  const restoreId = held?.restoreId ?? latest?.restoreId ?? '';
  const snapshot = held?.snapshot ?? latest?.snapshot ?? '';
  const open = members.filter((m) => m.restoreId === restoreId && m.phase !== 'Finished' && m.phase !== 'Failed');
  let nextStep = '';
  if (runningHere) nextStep = `restore ${runningHere} runs now, coordinated by this steward; 'etcd-stewardctl restore abort' stops it and rolls back`;
  else if (held && !lockIsStale(held))
    nextStep = `restore ${held.restoreId} runs now, coordinated by ${held.coordinator}; wait for it, or 'etcd-stewardctl restore abort'`;
  else if (held)
    nextStep = `the coordinator ${held.coordinator} of restore ${held.restoreId} stopped (no heartbeat since ${held.heartbeatAt}): 'etcd-stewardctl restore ${held.snapshot} --yes' resumes it, 'etcd-stewardctl restore abort' undoes it`;
  else if (open.length > 0)
    nextStep = `members ${open.map((m) => m.node).join(', ')} are still in restore ${restoreId} without a lock: 'etcd-stewardctl restore abort' ends it`;
  else if (restoreId) nextStep = members.some((m) => m.phase === 'Failed') ? 'the last restore failed; fix the cause and run it again' : '';
  else nextStep = 'no restore has run on this cluster';
  return { restoreId, snapshot, lockHolder: held?.coordinator ?? '', lockTakenAt: held?.takenAt ?? '', members, nextStep };
}
