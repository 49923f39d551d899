/**
 * The pure decisions of the snapshot schedule: how a slot is claimed, when a failed slot is retried, and
 * which slot a new leader catches up. The scheduler does the etcd reads and writes around them.
 */

/** A claim in etcd: `<slot> <fencing token>`, so a later leader knows which term claimed the slot. */
export interface Claim {
  slot: number;
  /** The fencing token of the term that claimed it; empty for claims written before tokens were recorded. */
  token: string;
}

/** Zero-padded epoch milliseconds: etcd compares values as bytes, so these order like times. */
export function encodeSlot(slot: Date | number): string {
  return String(typeof slot === 'number' ? slot : slot.getTime()).padStart(15, '0');
}

export function encodeClaim(claim: Claim): string {
  return `${encodeSlot(claim.slot)} ${claim.token}`;
}

/** Parses a claim or done marker; a bare slot (the older format) has an empty token. Undefined if unreadable. */
export function parseClaim(value: string | null): Claim | undefined {
  if (value === null) return undefined;
  const match = /^(\d{1,15})(?: (\S*))?$/.exec(value);
  if (!match) return undefined;
  return { slot: Number(match[1]), token: match[2] ?? '' };
}

export type ClaimVerdict =
  /** Nobody claimed this slot or a later one: claim it (compare-and-set on the previous value). */
  | { action: 'claim' }
  /** A later slot is claimed: this one is superseded. */
  | { action: 'skip'; why: 'newer-slot-claimed' | 'slot-taken' }
  /**
   * Another term claimed this very slot and did not mark it done: its run may still be finishing (a
   * snapshot past its stream is committed even when the term ends). Wait for it to mark the slot done, and
   * claim the slot over only if it does not before the wait ends.
   */
  | { action: 'wait-for-previous' };

/**
 * Whether a term may claim `slot`. A slot triggered by the cron is claimed once; a slot a new leader
 * catches up (`catchUp`) may be taken over from an earlier term that did not finish it, but only after
 * waiting for that term: taking it over at once ran the slot twice, seconds apart, when the earlier term
 * ended while its snapshot was being committed.
 */
export function claimVerdict(previous: Claim | undefined, slot: number, token: string, catchUp: boolean): ClaimVerdict {
  if (previous === undefined || previous.slot < slot) return { action: 'claim' };
  if (previous.slot > slot) return { action: 'skip', why: 'newer-slot-claimed' };
  if (!catchUp || previous.token === token) return { action: 'skip', why: 'slot-taken' };
  return { action: 'wait-for-previous' };
}

export interface RetryPolicy {
  firstDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { firstDelayMs: 5_000, maxDelayMs: 5 * 60_000 };

export type RetryDecision = { retry: true; delayMs: number } | { retry: false; why: 'next-slot-starts' };

/**
 * After the `failures`-th failed attempt of a slot: retry with jittered exponential backoff while the retry
 * would still start before the next slot does (`deadline`); after that the next slot takes over.
 * `random` is in [0, 1).
 */
export function retryDecision(failures: number, now: number, deadline: number, policy: RetryPolicy, random: number): RetryDecision {
  const base = Math.min(policy.firstDelayMs * 2 ** Math.max(0, failures - 1), policy.maxDelayMs);
  const delayMs = Math.round(base * (0.5 + random / 2));
  if (now + delayMs >= deadline) return { retry: false, why: 'next-slot-starts' };
  return { retry: true, delayMs };
}

/**
 * The slot a new leader runs at once: the newest due slot, if no leader finished it (`done` is older).
 * Older missed slots are not run: one snapshot now stands for all of them.
 */
export function catchUpSlot(newestDue: Date | undefined, done: Claim | undefined): Date | undefined {
  if (!newestDue) return undefined;
  return done === undefined || done.slot < newestDue.getTime() ? newestDue : undefined;
}
