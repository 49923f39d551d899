import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { Coalesce } from '../../src/snapshot/coalesce.js';

async function run(chunks: Buffer[], blockBytes: number): Promise<Buffer[]> {
  const out: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      out.push(chunk);
      callback();
    },
  });
  await pipeline(Readable.from(chunks, { objectMode: false }), new Coalesce(blockBytes), sink);
  return out;
}

describe('Coalesce', () => {
  it('gathers small chunks into blocks of at least blockBytes, the last one holding the rest, bytes unchanged', async () => {
    const chunks = Array.from({ length: 100 }, (_, i) => randomBytes(1000 + i));
    const blocks = await run(chunks, 16 * 1024);
    expect(Buffer.concat(blocks).equals(Buffer.concat(chunks))).toBe(true);
    for (const block of blocks.slice(0, -1)) expect(block.length).toBeGreaterThanOrEqual(16 * 1024);
    // A block is released as soon as it reaches the size: never more than one chunk past it.
    for (const block of blocks.slice(0, -1)) expect(block.length).toBeLessThan(16 * 1024 + 1100);
  });

  it('passes a chunk larger than a block through as one block, without copying it', async () => {
    const big = randomBytes(64 * 1024);
    const blocks = await run([big], 16 * 1024);
    expect(blocks).toHaveLength(1);
    expect(blocks[0]?.buffer).toBe(big.buffer);
  });

  it('emits nothing for an empty stream', async () => {
    expect(await run([], 1024)).toEqual([]);
  });
});
