import { PassThrough } from 'node:stream';
import { pino, type Logger } from 'pino';
import { describe, expect, it } from 'vitest';
import { BoundedLineSplitter, MAX_LINE_BYTES, forwardEtcdOutput } from '../../src/etcd/output.js';

function capture(): { logger: Logger; events: Array<Record<string, unknown>> } {
  const events: Array<Record<string, unknown>> = [];
  return { logger: pino({ level: 'debug' }, { write: (line: string) => void events.push(JSON.parse(line) as Record<string, unknown>) }), events };
}

describe('etcd output lines are bounded', () => {
  it('a long line keeps a fixed-size prefix with a marker naming what was cut; the next line is whole', async () => {
    const { logger, events } = capture();
    const stream = new PassThrough();
    forwardEtcdOutput(stream, logger);
    const long = `{"level":"warn","msg":"${'x'.repeat(3 * 1024 * 1024)}"}`;
    // Written in pieces, as a pipe delivers it.
    for (let i = 0; i < long.length; i += 65_536) stream.write(long.slice(i, i + 65_536));
    stream.write('\n{"level":"error","ts":"t","msg":"etcd said this","caller":"x.go:1"}\n');
    stream.end();
    await new Promise((resolve) => setImmediate(resolve));
    expect(events).toHaveLength(2);
    const [cut, next] = events;
    expect(cut?.level).toBe(40);
    expect(cut?.cutBytes).toBe(long.length - MAX_LINE_BYTES);
    expect(String(cut?.msg)).toBe(`${long.slice(0, MAX_LINE_BYTES)}… [${long.length - MAX_LINE_BYTES} bytes cut]`);
    expect(next).toMatchObject({ level: 50, msg: 'etcd said this', etcd: { caller: 'x.go:1' } });
  });

  it('a line without any newline does not grow memory: 256 MiB through the forwarder keeps the heap flat', async () => {
    const { logger, events } = capture();
    const stream = new PassThrough();
    forwardEtcdOutput(stream, logger);
    const chunk = Buffer.alloc(1024 * 1024, 0x61);
    const before = process.memoryUsage().heapUsed;
    for (let i = 0; i < 256; i++) {
      if (!stream.write(chunk)) await new Promise((resolve) => stream.once('drain', resolve));
    }
    await new Promise((resolve) => setImmediate(resolve));
    const grown = process.memoryUsage().heapUsed - before;
    console.log(`heap growth while a 256 MiB line without a newline streamed through: ${(grown / 1024 / 1024).toFixed(1)} MiB`);
    expect(grown).toBeLessThan(64 * 1024 * 1024);
    stream.end();
    await new Promise((resolve) => setImmediate(resolve));
    expect(events).toHaveLength(1);
    expect(events[0]?.cutBytes).toBe(256 * 1024 * 1024 - MAX_LINE_BYTES);
  });

  it('the splitter joins a line split across chunks, drops a CR, and flushes a last line without a newline', () => {
    const lines: Array<[string, number]> = [];
    const splitter = new BoundedLineSplitter(10, (line, cut) => lines.push([line, cut]));
    splitter.push(Buffer.from('ab'));
    splitter.push(Buffer.from('cd\r\n0123456789ABC'));
    splitter.push(Buffer.from('DEF\n\nlast'));
    splitter.end();
    expect(lines).toEqual([
      ['abcd', 0],
      ['0123456789', 6],
      ['', 0],
      ['last', 0],
    ]);
  });
});
