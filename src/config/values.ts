import { z } from 'zod';

/**
 * Value kinds shared by every setting. Each accepts what a flag or env variable gives (a string) and what a
 * YAML file gives (a number or boolean), and says in `allowed` what an operator may write.
 */
export interface ValueKind<T> {
  schema: z.ZodType<T>;
  allowed: string;
}

const GO_DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
const GO_DURATION = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go-style durations ("10s", "5m0s", "1h30m") as k3s and RKE2 users write them; a bare number is seconds. */
export function parseDuration(text: string): number | undefined {
  const trimmed = text.trim();
  if (/^\d+(?:\.\d+)?$/.test(trimmed)) return Number(trimmed) * 1000;
  if (!GO_DURATION.test(trimmed)) return undefined;
  let total = 0;
  for (const match of trimmed.matchAll(GO_DURATION_PART)) {
    total += Number(match[1]) * (UNIT_MS[match[2] ?? 's'] ?? 1000);
  }
  return total;
}

export function duration(options: { minMs: number; maxMs?: number }): ValueKind<number> {
  const schema = z.union([z.number(), z.string()]).transform((value, ctx) => {
    const ms = typeof value === 'number' ? value * 1000 : parseDuration(value);
    if (ms === undefined || !Number.isFinite(ms) || ms < options.minMs || ms > (options.maxMs ?? Infinity)) {
      ctx.addIssue({ code: 'custom', message: 'out of range' });
      return z.NEVER;
    }
    return ms;
  });
  const range = options.maxMs === undefined ? `at least ${options.minMs}ms` : `between ${options.minMs}ms and ${options.maxMs}ms`;
  return { schema, allowed: `a duration such as 10s, 5m or 1h30m, ${range}` };
}

export function integer(min: number, max: number): ValueKind<number> {
  const schema = z
    .union([
      z.number(),
      z
        .string()
        .trim()
        .regex(/^-?\d+$/)
        .transform(Number),
    ])
    .pipe(z.number().int().min(min).max(max));
  return { schema, allowed: `a whole number from ${min} to ${max}` };
}

export function text(description = 'a non-empty string'): ValueKind<string> {
  return { schema: z.string().trim().min(1), allowed: description };
}

export function oneOf<const T extends readonly [string, ...string[]]>(values: T): ValueKind<T[number]> {
  return { schema: z.enum(values), allowed: `one of ${values.join(', ')}` };
}

export function boolean(): ValueKind<boolean> {
  const schema = z.union([z.boolean(), z.enum(['true', 'false']).transform((v) => v === 'true')]);
  return { schema, allowed: 'true or false' };
}

/** `host:port`, port 1–65535; an empty host means every interface. */
export function hostPort(): ValueKind<{ host: string; port: number }> {
  const schema = z.string().transform((value, ctx) => {
    const match = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]*):(\d{1,5})$/.exec(value.trim());
    const port = Number(match?.[2]);
    if (!match || !Number.isInteger(port) || port < 1 || port > 65535) {
      ctx.addIssue({ code: 'custom', message: 'not host:port' });
      return z.NEVER;
    }
    return { host: match[1] || '0.0.0.0', port };
  });
  return { schema, allowed: 'host:port with a port from 1 to 65535, e.g. 127.0.0.1:7401' };
}

/** Comma-separated http(s) URLs with a port, as etcd's own URL flags take them. */
export function urlList(): ValueKind<string[]> {
  const schema = z.union([z.string(), z.array(z.string())]).transform((value, ctx) => {
    const items = (Array.isArray(value) ? value : value.split(',')).map((s) => s.trim()).filter(Boolean);
    if (items.length === 0 || !items.every(isEtcdUrl)) {
      ctx.addIssue({ code: 'custom', message: 'bad url list' });
      return z.NEVER;
    }
    return items;
  });
  return { schema, allowed: 'comma-separated http(s)://host:port URLs' };
}

/** `name=peerURL,...` as etcd's --initial-cluster takes it. */
export function initialCluster(): ValueKind<Array<{ name: string; peerUrl: string }>> {
  const schema = z.string().transform((value, ctx) => {
    const members = value
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
      .map((entry) => {
        const eq = entry.indexOf('=');
        return { name: entry.slice(0, eq), peerUrl: entry.slice(eq + 1) };
      });
    const names = new Set(members.map((m) => m.name));
    if (members.length === 0 || names.size !== members.length || !members.every((m) => isMemberName(m.name) && isEtcdUrl(m.peerUrl))) {
      ctx.addIssue({ code: 'custom', message: 'bad initial cluster' });
      return z.NEVER;
    }
    return members;
  });
  return { schema, allowed: 'comma-separated name=http(s)://host:port entries with unique names' };
}

/** A cron expression as croner parses it: 5 fields, or 6 with seconds first. */
export function cronExpression(validate: (expr: string) => boolean): ValueKind<string> {
  return {
    schema: z.string().trim().refine(validate),
    allowed: "a cron expression of 5 fields (or 6 with seconds first), e.g. '0 */12 * * *'",
  };
}

/** Comma-separated items (a YAML list works too), each checked by `valid`; empty means none. */
export function textList(description: string, valid: (item: string) => boolean = () => true): ValueKind<string[]> {
  const schema = z.union([z.string(), z.array(z.string())]).transform((value, ctx) => {
    const items = (Array.isArray(value) ? value : value.split(',')).map((s) => s.trim()).filter(Boolean);
    if (!items.every(valid)) {
      ctx.addIssue({ code: 'custom', message: 'bad item' });
      return z.NEVER;
    }
    return items;
  });
  return { schema, allowed: description };
}

/**
 * Flags for another program, `--flag=value` or `--flag`: repeated on the command line (`--etcd-arg=--x=1`),
 * a YAML list in the config file, whitespace-separated in the env variable.
 */
export function flagList(): ValueKind<string[]> {
  const schema = z.union([z.string(), z.array(z.string())]).transform((value, ctx) => {
    // The env variable reaches commander's collector as one value: every value is split, so no flag's
    // value may hold whitespace (no etcd flag a member needs does).
    const items = (Array.isArray(value) ? value : [value]).flatMap((item) => item.split(/\s+/)).filter(Boolean);
    if (!items.every((item) => /^--[a-z0-9][a-z0-9-]*(=\S*)?$/.test(item))) {
      ctx.addIssue({ code: 'custom', message: 'bad flag' });
      return z.NEVER;
    }
    return items;
  });
  return { schema, allowed: 'flags written --name=value (or --name), one per --etcd-arg' };
}

/** Free text that may be empty (an S3 folder, an optional endpoint). */
export function optionalText(description: string): ValueKind<string> {
  return { schema: z.union([z.string(), z.number()]).transform((v) => String(v).trim()), allowed: description };
}

export function memberName(): ValueKind<string> {
  return {
    schema: z.string().trim().refine(isMemberName),
    allowed: 'a name of letters, digits, dots, dashes and underscores (at most 63 characters)',
  };
}

function isMemberName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name);
}

function isEtcdUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.port !== '' && url.pathname === '/';
  } catch {
    return false;
  }
}
