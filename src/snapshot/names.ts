import { InvalidArgumentError } from '../errors/index.js';

export type SnapshotKind = 'scheduled' | 'on-demand';

export const SCHEDULED_BASE = 'etcd-snapshot';
export const ON_DEMAND_BASE = 'on-demand';
const MAX_NAME = 200;
const BASE_PATTERN = /^[a-z0-9][a-z0-9.-]*$/;

/** Checks an operator-supplied base or snapshot name: no path tricks, nothing a store key cannot hold. */
export function validateName(name: string, what = 'name'): string {
  if (name.length === 0) throw new InvalidArgumentError(`--${what}: empty is not allowed`, { hint: 'use lowercase letters, digits, dots and dashes' });
  if (name.length > MAX_NAME) {
    throw new InvalidArgumentError(`--${what}: ${name.length} characters is too long (at most ${MAX_NAME})`, { hint: 'use a shorter name' });
  }
  if (!BASE_PATTERN.test(name) || name.includes('..')) {
    throw new InvalidArgumentError(`--${what}: ${JSON.stringify(name)} is not allowed: expected [a-z0-9][a-z0-9.-]* with no '..'`, {
      hint: 'use lowercase letters, digits, dots and dashes, starting with a letter or digit',
    });
  }
  return name;
}

/** `<base>-<node>-<unix-ts>` as k3s names them; node names are lowered so the result is a valid name. */
export function snapshotName(base: string, node: string, at: Date): string {
  const safeNode = node.toLowerCase().replace(/[^a-z0-9.-]/g, '-');
  return validateName(`${base}-${safeNode}-${Math.floor(at.getTime() / 1000)}`);
}

export function objectKey(name: string, compressed: boolean): string {
  return compressed ? `${name}.gz` : name;
}

export const METADATA_SUFFIX = '.metadata.json';

export function metadataKey(name: string): string {
  return `${name}${METADATA_SUFFIX}`;
}
