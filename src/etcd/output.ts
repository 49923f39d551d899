import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';

const MAX_LINE = 8192;
type Level = 'debug' | 'info' | 'warn' | 'error';
const ZAP_LEVELS: Record<string, Level> = { debug: 'debug', info: 'info', warn: 'warn', error: 'error', dpanic: 'error', panic: 'error', fatal: 'error' };

/** Re-emits etcd's zap JSON lines (or plain text) as steward log events with component `etcd`. */
export function forwardEtcdOutput(stream: Readable, logger: Logger): void {
  const lines = createInterface({ input: stream, crlfDelay: Infinity });
  lines.on('line', (raw) => {
    const line = raw.length > MAX_LINE ? `${raw.slice(0, MAX_LINE)}…` : raw;
    const parsed = parseZap(line);
    if (parsed === undefined) {
      logger.info({ stream: 'raw' }, line);
      return;
    }
    const { level, msg, ts: _ts, ...fields } = parsed;
    const mapped = ZAP_LEVELS[String(level)] ?? 'info';
    logger[mapped]({ etcd: fields }, typeof msg === 'string' ? msg : line);
  });
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
