import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { FanOut, type Destination } from '../../src/snapshot/fan-out.js';
import type { ObjectWriter } from '../../src/store/store.js';

const log = pino({ level: 'silent' });

/** A writer that records what it got; it can fail at a given chunk or hold each write until released. */
class RecordingWriter implements ObjectWriter {
  readonly chunks: Buffer[] = [];
  aborted: unknown = undefined;
  pending: Array<() => void> = [];
  constructor(private readonly options: { failAt?: number; hold?: boolean } = {}) {}
  async write(chunk: Buffer): Promise<void> {
    if (this.options.failAt === this.chunks.length) throw new Error(`disk full at chunk ${this.chunks.length}`);
    if (this.options.hold) await new Promise<void>((resolve) => this.pending.push(resolve));
    this.chunks.push(chunk);
  }
  async commit(): Promise<{ size: number }> {
    return { size: this.chunks.reduce((n, c) => n + c.length, 0) };
  }
  async abort(reason?: unknown): Promise<void> {
    this.aborted = reason ?? new Error('aborted');
  }
}

const chunks = (n: number): Buffer[] => Array.from({ length: n }, (_, i) => Buffer.alloc(1024, i));

describe('FanOut', () => {
  it('writes every chunk to every destination, in order', async () => {
    const a = new RecordingWriter();
    const b = new RecordingWriter();
    const destinations: Destination[] = [
      { locationId: 'local:n1', writer: a },
      { locationId: 's3', writer: b },
    ];
    await pipeline(Readable.from(chunks(10)), new FanOut(destinations, log));
    expect(Buffer.concat(a.chunks).equals(Buffer.concat(chunks(10)))).toBe(true);
    expect(Buffer.concat(b.chunks).equals(Buffer.concat(chunks(10)))).toBe(true);
  });

  it('drops and aborts a destination that fails while the others go on', async () => {
    const good = new RecordingWriter();
    const bad = new RecordingWriter({ failAt: 3 });
    const destinations: Destination[] = [
      { locationId: 'local:n1', writer: good },
      { locationId: 's3', writer: bad },
    ];
    const fanOut = new FanOut(destinations, log);
    await pipeline(Readable.from(chunks(10)), fanOut);
    expect(good.chunks).toHaveLength(10);
    expect(bad.chunks).toHaveLength(3);
    expect(String(bad.aborted)).toContain('disk full at chunk 3');
    expect(fanOut.live.map((d) => d.locationId)).toEqual(['local:n1']);
    expect(String(destinations[1]?.failure)).toContain('disk full');
  });

  it('fails the stream when the last destination fails, with that failure', async () => {
    const a = new RecordingWriter({ failAt: 2 });
    const b = new RecordingWriter({ failAt: 5 });
    const destinations: Destination[] = [
      { locationId: 'local:n1', writer: a },
      { locationId: 's3', writer: b },
    ];
    await expect(pipeline(Readable.from(chunks(10)), new FanOut(destinations, log))).rejects.toThrow(/disk full at chunk 2/);
    expect(b.aborted).toBeDefined();
  });

  it('takes the next chunk only when every destination took the last one (the slowest paces the stream)', async () => {
    const fast = new RecordingWriter();
    const slow = new RecordingWriter({ hold: true });
    const fanOut = new FanOut(
      [
        { locationId: 'local:n1', writer: fast },
        { locationId: 's3', writer: slow },
      ],
      log,
    );
    const done = pipeline(Readable.from(chunks(5)), fanOut);
    for (let i = 1; i <= 5; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      // The fast one never runs more than the one chunk the slow one is still holding ahead.
      expect(fast.chunks.length).toBe(i);
      expect(slow.chunks.length).toBe(i - 1);
      slow.pending.shift()?.();
    }
    await done;
    expect(slow.chunks).toHaveLength(5);
  });

  it('drops a best-effort destination that accepts nothing for its idle timeout; the others finish without it', async () => {
    const local = new RecordingWriter();
    const hung = new RecordingWriter({ hold: true });
    const destinations: Destination[] = [
      { locationId: 'local:n1', writer: local },
      { locationId: 's3', writer: hung, idleTimeoutMs: 100 },
    ];
    const started = Date.now();
    await pipeline(Readable.from(chunks(20)), new FanOut(destinations, log));
    expect(Date.now() - started).toBeLessThan(1000);
    expect(local.chunks).toHaveLength(20);
    expect(String(destinations[1]?.failure)).toContain('accepted no snapshot data for 100 ms');
    expect(hung.aborted).toBeDefined();
  });
});
