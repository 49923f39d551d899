import type { Readable } from 'node:stream';
import type { Logger } from 'pino';

/** Longest etcd log line kept; the rest of a longer line is dropped (and counted) before it is ever buffered. */
export const MAX_LINE_BYTES = 8192;
type Level = 'debug' | 'info' | 'warn' | 'error';
const ZAP_LEVELS: Record<string, Level> = { debug: 'debug', info: 'info', warn: 'warn', error: 'error', dpanic: 'error', panic: 'error', fatal: 'error' };

/**
 * Splits a byte stream into lines holding at most `maxBytes` of each: a longer line keeps its first
 * `maxBytes` and reports how many bytes were cut. readline would buffer a whole line first, so an etcd
 * writing a huge line (or no newline at all) could grow the steward's memory without bound.
 */
export class BoundedLineSplitter {
  private parts: Buffer[] = [];
  private kept = 0;
  private cut = 0;

  constructor(
    private readonly maxBytes: number,
    private readonly onLine: (line: string, cutBytes: number) => void,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf(0x0a, start);
      this.keep(chunk.subarray(start, newline === -1 ? chunk.length : newline));
      if (newline === -1) return;
      this.emit();
      start = newline + 1;
    }
  }

  end(): void {
    if (this.kept > 0 || this.cut > 0) this.emit();
  }

  private keep(segment: Buffer): void {
    const room = Math.max(0, this.maxBytes - this.kept);
    if (segment.length > room) this.cut += segment.length - room;
    if (room === 0 || segment.length === 0) return;
    // Copied: a subarray would pin the whole chunk it came from.
    const taken = Buffer.from(segment.subarray(0, room));
    this.parts.push(taken);
    this.kept += taken.length;
  }

  private emit(): void {
    let line = Buffer.concat(this.parts).toString('utf8');
    if (line.endsWith('\r')) line = line.slice(0, -1);
    const cut = this.cut;
    this.parts = [];
    this.kept = 0;
    this.cut = 0;
    this.onLine(line, cut);
  }
}

/** Re-emits etcd's zap JSON lines (or plain text) as steward log events with component `etcd`. */
export function forwardEtcdOutput(stream: Readable, logger: Logger, maxLineBytes = MAX_LINE_BYTES): void {
  const splitter = new BoundedLineSplitter(maxLineBytes, (line, cutBytes) => {
    if (cutBytes > 0) {
      // A cut zap line is no longer JSON: keep its level if the kept part names it.
      const level = ZAP_LEVELS[/"level":"(\w+)"/.exec(line)?.[1] ?? ''] ?? 'info';
      logger[level]({ stream: 'raw', cutBytes }, `${line}… [${cutBytes} bytes cut]`);
      return;
    }
    const parsed = parseZap(line);
    if (parsed === undefined) {
      logger.info({ stream: 'raw' }, line);
      return;
    }
    const { level, msg, ts: _ts, ...fields } = parsed;
    const mapped = ZAP_LEVELS[String(level)] ?? 'info';
    logger[mapped]({ etcd: fields }, typeof msg === 'string' ? msg : line);
  });
  stream.on('data', (chunk: Buffer | string) => splitter.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk));
  stream.once('end', () => splitter.end());
  // A pipe that breaks when etcd dies is not the steward's problem; an unhandled 'error' would be.
  stream.on('error', () => undefined);
}

function parseZap(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
