import { InvalidArgumentError, prefixOf } from '../errors/index.js';

/**
 * Limits on every field a caller sends, checked by the ctl before it dials and again by the server before
 * any work: a request over a limit is refused at once with INVALID_ARGUMENT, and neither the refusal nor
 * the log quotes more than a short prefix of the input.
 */
export const LIMITS = {
  /** Bytes (UTF-8) of one snapshot name or name base. */
  nameBytes: 255,
  /** Names in one delete. */
  deleteNames: 1000,
  /** Bytes of a spec JSON. */
  specJsonBytes: 1024 * 1024,
  /** The largest retention a prune accepts (as --etcd-snapshot-retention). */
  retentionMax: 10_000,
  /** Bytes of a peer header field (node, cluster ID, restore ID, fencing token). */
  headerFieldBytes: 255,
} as const;

/**
 * A decimal integer written the plain way, in [min, max]: no sign other than a leading '-', no
 * exponent, hex, blanks or fraction. `1e3`, `0x10`, `' 3'`, `3.0` and 4294967297 for an int32 are refused.
 */
export function parseDecimalInteger(text: string, what: string, min: number, max: number): number {
  if (!/^-?(0|[1-9][0-9]*)$/.test(text)) {
    throw new InvalidArgumentError(`${what}: ${JSON.stringify(prefixOf(text, 40))} is not a decimal integer`, {
      hint: `pass a whole number from ${min} to ${max}, digits only (no exponent, hex, sign or blanks)`,
    });
  }
  const value = Number(text);
  return checkInteger(value, what, min, max);
}

/** The server's check of a number that came over the wire (proto int64 decoded as a JS number). */
export function checkInteger(value: number, what: string, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${what}: ${String(value).slice(0, 40)} is out of range`, { hint: `pass a whole number from ${min} to ${max}` });
  }
  return value;
}

export function checkName(name: string, what: string): string {
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > LIMITS.nameBytes) {
    throw new InvalidArgumentError(`${what}: a name of ${bytes} bytes is too long (at most ${LIMITS.nameBytes})`, {
      hint: `snapshot names are short: ${JSON.stringify(prefixOf(name, 40))} is not one`,
    });
  }
  return name;
}

export function checkNames(names: string[], what: string): string[] {
  if (names.length > LIMITS.deleteNames) {
    throw new InvalidArgumentError(`${what}: ${names.length} names in one call is too many (at most ${LIMITS.deleteNames})`, {
      hint: `delete in batches of at most ${LIMITS.deleteNames}; nothing was deleted`,
    });
  }
  names.forEach((name) => checkName(name, what));
  return names;
}

export function checkSpecJson(json: string): string {
  const bytes = Buffer.byteLength(json, 'utf8');
  if (bytes > LIMITS.specJsonBytes) {
    throw new InvalidArgumentError(`spec: ${bytes} bytes is too large (at most ${LIMITS.specJsonBytes})`, {
      hint: 'a cluster spec is a few KiB: check the file you passed',
    });
  }
  return json;
}

export function checkHeaderField(value: string, what: string): string {
  if (Buffer.byteLength(value, 'utf8') > LIMITS.headerFieldBytes) {
    throw new InvalidArgumentError(`peer header ${what}: longer than ${LIMITS.headerFieldBytes} bytes`, {
      hint: 'the caller is not a steward of this version',
    });
  }
  return value;
}
