import { describe, expect, it } from 'vitest';
import { catchUpSlot, claimVerdict, encodeClaim, encodeSlot, parseClaim, retryDecision } from '../../src/snapshot/schedule-claims.js';

const S = Date.UTC(2026, 0, 1, 12);
const HOUR = 3_600_000;

describe('schedule claims (pure)', () => {
  it('claims order like their slots and round-trip with their token; the older bare format still parses', () => {
    expect(encodeClaim({ slot: S, token: '42' }) < encodeClaim({ slot: S + 1000, token: '7' })).toBe(true);
    expect(parseClaim(encodeClaim({ slot: S, token: '42' }))).toEqual({ slot: S, token: '42' });
    expect(parseClaim(encodeSlot(S))).toEqual({ slot: S, token: '' });
    expect(parseClaim(null)).toBeUndefined();
    expect(parseClaim('garbage')).toBeUndefined();
  });

  it('a cron slot is claimed once: never over a claim of the same or a later slot', () => {
    expect(claimVerdict(undefined, S, '10', false)).toEqual({ action: 'claim' });
    expect(claimVerdict({ slot: S - HOUR, token: '9' }, S, '10', false)).toEqual({ action: 'claim' });
    expect(claimVerdict({ slot: S, token: '9' }, S, '10', false)).toEqual({ action: 'skip', why: 'slot-taken' });
    expect(claimVerdict({ slot: S + HOUR, token: '9' }, S, '10', false)).toEqual({ action: 'skip', why: 'newer-slot-claimed' });
  });

  it('a catch-up of a slot another term claimed waits for that term instead of running the slot again at once', () => {
    expect(claimVerdict({ slot: S, token: '9' }, S, '10', true)).toEqual({ action: 'wait-for-previous' });
    expect(claimVerdict({ slot: S, token: '' }, S, '10', true)).toEqual({ action: 'wait-for-previous' });
    // Its own claim (same term) is never taken twice.
    expect(claimVerdict({ slot: S, token: '10' }, S, '10', true)).toEqual({ action: 'skip', why: 'slot-taken' });
    expect(claimVerdict({ slot: S + HOUR, token: '9' }, S, '10', true)).toEqual({ action: 'skip', why: 'newer-slot-claimed' });
  });

  it('a failed slot is retried with growing, jittered, capped backoff while the retry starts before the next slot', () => {
    const policy = { firstDelayMs: 5000, maxDelayMs: 60_000 };
    const next = S + 12 * HOUR;
    expect(retryDecision(1, S, next, policy, 0.999)).toEqual({ retry: true, delayMs: 4998 });
    expect(retryDecision(1, S, next, policy, 0)).toEqual({ retry: true, delayMs: 2500 });
    expect(retryDecision(3, S, next, policy, 0.999)).toEqual({ retry: true, delayMs: 19_990 });
    expect(retryDecision(20, S, next, policy, 0.999)).toEqual({ retry: true, delayMs: 59_970 });
    // The next slot starts before the retry would: give up, the next slot takes over.
    expect(retryDecision(1, next - 3000, next, policy, 0.999)).toEqual({ retry: false, why: 'next-slot-starts' });
    expect(retryDecision(1, next - 6000, next, policy, 0.999)).toEqual({ retry: true, delayMs: 4998 });
  });

  it('catch-up runs the newest due slot only if no leader finished it', () => {
    const newest = new Date(S);
    expect(catchUpSlot(newest, undefined)).toBe(newest);
    expect(catchUpSlot(newest, { slot: S - HOUR, token: '' })).toBe(newest);
    expect(catchUpSlot(newest, { slot: S, token: '' })).toBeUndefined();
    expect(catchUpSlot(undefined, { slot: S, token: '' })).toBeUndefined();
  });
});
