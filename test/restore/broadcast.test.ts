import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { broadcast } from '../../src/restore/broadcast.js';

/** A source of `count` distinct chunks that counts how many the broadcast has pulled from it. */
function countingSource(count: number, size = 1024): { source: AsyncIterable<Buffer>; chunks: Buffer[]; pulled: () => number } {
  const chunks = Array.from({ length: count }, () => randomBytes(size));
  let pulled = 0;
  const source = (async function* (): AsyncGenerator<Buffer> {
    for (const chunk of chunks) {
      pulled++;
      yield chunk;
    }
  })();
  return { source, chunks, pulled: () => pulled };
}

async function collect(iterable: AsyncIterable<Buffer>, delayMs = 0): Promise<Buffer> {
  const got: Buffer[] = [];
  for await (const chunk of iterable) {
    got.push(chunk);
    if (delayMs) await sleep(delayMs);
  }
  return Buffer.concat(got);
}

/** Settles with the error a consumer ends with (or fails the test if it ends cleanly). */
async function failureOf(iterable: AsyncIterable<Buffer>): Promise<{ error: unknown; bytes: number }> {
  let bytes = 0;
  try {
    for await (const chunk of iterable) bytes += chunk.length;
  } catch (error) {
    return { error, bytes };
  }
  throw new Error(`the consumer ended cleanly after ${bytes} bytes`);
}

/** True if `promise` has not settled within `ms`. */
async function stillPending(promise: Promise<unknown>, ms = 50): Promise<boolean> {
  const marker = Symbol('pending');
  const result = await Promise.race([promise.then(() => 'settled'), sleep(ms, marker)]);
  return result === marker;
}

describe('broadcast: one read of the snapshot to N members', () => {
  it('every consumer gets every byte, in order, from one read of the source', async () => {
    const { source, chunks, pulled } = countingSource(200, 4096);
    const outputs = broadcast(source, 3, AbortSignal.timeout(20_000));
    // Different paces: the network to each member differs.
    const results = await Promise.all([collect(outputs[0]!), collect(outputs[1]!, 1), collect(outputs[2]!)]);
    const expected = Buffer.concat(chunks);
    for (const result of results) expect(result.equals(expected)).toBe(true);
    expect(pulled()).toBe(200);
  });

  it('the slowest consumer paces the read: the source is never more than a few chunks ahead of it', async () => {
    const { source, chunks, pulled } = countingSource(100);
    const [fast, slow] = broadcast(source, 2, AbortSignal.timeout(20_000));
    const fastDone = collect(fast!);
    const slowReader = slow![Symbol.asyncIterator]();
    let consumed = 0;
    let maxAhead = 0;
    for (let i = 0; i < 10; i++) {
      const next = await slowReader.next();
      expect(next.done).toBe(false);
      expect((next.value as Buffer).equals(chunks[consumed]!)).toBe(true);
      consumed++;
      // Give the reader every chance to run ahead while the slow member sits on its chunk.
      await sleep(20);
      maxAhead = Math.max(maxAhead, pulled() - consumed);
    }
    // MAX_QUEUED (2) queued per consumer plus the one being handed over.
    expect(maxAhead).toBeLessThanOrEqual(3);
    expect(pulled()).toBeLessThan(20);
    // The fast consumer is held back with it: nothing is buffered without bound on its behalf either.
    expect(await stillPending(fastDone)).toBe(true);
    for (;;) {
      const next = await slowReader.next();
      if (next.done) break;
      consumed++;
    }
    expect(consumed).toBe(100);
    expect((await fastDone).equals(Buffer.concat(chunks))).toBe(true);
  });

  it('a consumer that stops early (its member failed) is dropped and does not stall the others', async () => {
    const { source, chunks } = countingSource(60);
    const outputs = broadcast(source, 3, AbortSignal.timeout(20_000));
    const quitter = (async (): Promise<number> => {
      let n = 0;
      for await (const _chunk of outputs[0]!) if (++n === 2) break;
      return n;
    })();
    const thrower = (async (): Promise<void> => {
      let n = 0;
      for await (const _chunk of outputs[1]!) if (++n === 5) throw new Error('member refused the stream');
    })();
    const [quit, threw, full] = await Promise.allSettled([quitter, thrower, collect(outputs[2]!, 1)]);
    expect(quit).toEqual({ status: 'fulfilled', value: 2 });
    expect(threw.status).toBe('rejected');
    expect(full.status === 'fulfilled' && full.value.equals(Buffer.concat(chunks))).toBe(true);
  });

  it('stops reading the source once every consumer stopped', async () => {
    const { source, pulled } = countingSource(1000);
    const outputs = broadcast(source, 2, AbortSignal.timeout(20_000));
    await Promise.all(
      outputs.map(async (output) => {
        let n = 0;
        for await (const _chunk of output) if (++n === 3) break;
      }),
    );
    await sleep(20);
    expect(pulled()).toBeLessThan(10);
  });

  it('a failing source fails every consumer with its error, after the bytes that came before it', async () => {
    const boom = new Error('S3 connection reset');
    const source = (async function* (): AsyncGenerator<Buffer> {
      yield Buffer.from('one');
      yield Buffer.from('two');
      throw boom;
    })();
    const outputs = broadcast(source, 3, AbortSignal.timeout(20_000));
    const results = await Promise.all(outputs.map(failureOf));
    for (const result of results) expect(result).toEqual({ error: boom, bytes: 6 });
  });

  it('an abort ends every consumer with its reason, even when the source ignores the signal and hangs', async () => {
    const controller = new AbortController();
    const source = (async function* (): AsyncGenerator<Buffer> {
      yield Buffer.from('first');
      // A source stuck on the network that never looks at the signal.
      await sleep(3_600_000, undefined, { ref: false });
      yield Buffer.from('never');
    })();
    const outputs = broadcast(source, 2, controller.signal);
    const ends = outputs.map(failureOf);
    await sleep(30);
    const reason = new Error('restore aborted by the operator');
    controller.abort(reason);
    const results = await Promise.all(ends);
    for (const result of results) expect(result).toEqual({ error: reason, bytes: 5 });
  });

  it('a consumer that never starts reading holds the others at the bound until the caller aborts (as run.ts does when a member fails)', async () => {
    const { source, pulled } = countingSource(100);
    const controller = new AbortController();
    const [reader] = broadcast(source, 2, controller.signal);
    const reading = failureOf(reader!);
    await sleep(50);
    expect(pulled()).toBeLessThanOrEqual(3);
    expect(await stillPending(reading)).toBe(true);
    controller.abort(new Error('the other member failed'));
    expect((await reading).error).toEqual(new Error('the other member failed'));
  });
});
