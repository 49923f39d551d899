import type { Logger } from 'pino';
import { InvalidArgumentError, NotFoundError, errorText } from '../errors/index.js';
import { parseMetadata, type SnapshotMetadata } from '../snapshot/metadata.js';
import { METADATA_SUFFIX, metadataKey, validateName } from '../snapshot/names.js';
import { CANARY_KEY_PREFIX } from '../store/canary.js';
import type { BackupStore, NamedStore } from '../store/store.js';
import type { InventoryRecord, OrphanRecord } from './inventory.js';

export interface LocationScan {
  records: InventoryRecord[];
  /** Data objects without metadata: snapshots whose metadata was deleted, or one being written right now. */
  orphans: OrphanRecord[];
}

/**
 * What really is at one location: every snapshot whose metadata parses and whose object exists with the
 * recorded size. A snapshot without metadata is unfinished or orphaned and never listed as a snapshot;
 * one whose object is missing or truncated is reported, not listed.
 */
export async function scanStore({ locationId, store }: NamedStore, signal: AbortSignal, log: Logger): Promise<LocationScan> {
  const objects = await store.list('', signal);
  const sizes = new Map(objects.map((o) => [o.key, o.size]));
  const records: InventoryRecord[] = [];
  for (const object of objects) {
    if (!object.key.endsWith(METADATA_SUFFIX)) continue;
    let metadata;
    try {
      metadata = parseMetadata((await store.readSmall(object.key, signal)).toString('utf8'));
    } catch (err) {
      // Deleted between the listing and the read: really gone. Anything else (a 500, a timeout) must not
      // read as "gone", or reconcile would drop a good snapshot's record: fail the whole scan instead.
      if (err instanceof NotFoundError) continue;
      log.warn({ location: locationId, key: object.key, err: errorText(err) }, 'cannot read snapshot metadata; not reconciling this location now');
      throw err;
    }
    if (!metadata || metadataKey(metadata.name) !== object.key) {
      log.warn({ location: locationId, key: object.key }, 'snapshot metadata is malformed; skipping it');
      continue;
    }
    const size = sizes.get(metadata.key);
    if (size !== metadata.size) {
      log.warn(
        { location: locationId, snapshot: metadata.name, expected: metadata.size, found: size ?? 'missing' },
        'snapshot object missing or of the wrong size; not listing it',
      );
      continue;
    }
    records.push({
      name: metadata.name,
      node: metadata.node,
      locationId,
      location: store.urlFor(metadata.key),
      key: metadata.key,
      size: metadata.size,
      sha256: metadata.sha256,
      created: metadata.created,
      kind: metadata.kind,
      compressed: metadata.compressed,
    });
  }
  const orphans: OrphanRecord[] = [];
  for (const object of objects) {
    const name = orphanName(object.key);
    if (name === undefined || sizes.has(metadataKey(name))) continue;
    orphans.push({ locationId, location: store.urlFor(object.key), key: object.key, size: object.size, modified: object.lastModified.toISOString() });
  }
  return { records, orphans };
}

/** The snapshot name a data object would belong to, or undefined for anything that is not snapshot data. */
export function orphanName(key: string): string | undefined {
  if (key.endsWith(METADATA_SUFFIX) || key.startsWith(CANARY_KEY_PREFIX)) return undefined;
  const name = key.endsWith('.gz') ? key.slice(0, -3) : key;
  try {
    validateName(name);
    return name;
  } catch (err) {
    if (err instanceof InvalidArgumentError) return undefined;
    throw err;
  }
}

/** Deletes a snapshot from a store: metadata first, so a half-done delete leaves it invisible, not broken. */
export async function deleteFromStore(store: NamedStore['store'], name: string, key: string, signal: AbortSignal): Promise<void> {
  await store.delete(metadataKey(name), signal);
  await store.delete(key, signal);
}

/** What one store holds under a snapshot name (see findInStore). */
export type StoreLookup =
  | { state: 'complete'; metadata: SnapshotMetadata }
  | { state: 'absent' }
  /** Metadata that does not parse or name this snapshot, or a data object missing or of the wrong size. */
  | { state: 'broken'; problem: string };

/**
 * The snapshot `name` in one store, checked as scanStore checks every snapshot it lists (metadata parses
 * and names it, its object exists with the recorded size), without listing the whole store. Store
 * failures (a 500, a timeout) throw: they must not read as "absent".
 */
export async function findInStore(store: BackupStore, name: string, signal: AbortSignal): Promise<StoreLookup> {
  let text: string;
  try {
    text = (await store.readSmall(metadataKey(name), signal)).toString('utf8');
  } catch (err) {
    if (err instanceof NotFoundError) return { state: 'absent' };
    throw err;
  }
  const metadata = parseMetadata(text);
  if (!metadata || metadata.name !== name) return { state: 'broken', problem: `the metadata ${store.urlFor(metadataKey(name))} is malformed` };
  const object = await store.head(metadata.key, signal);
  if (object?.size !== metadata.size) {
    return {
      state: 'broken',
      problem: `${store.urlFor(metadata.key)} is ${object ? `${object.size} bytes, not the ${metadata.size} its metadata records` : 'missing though its metadata exists'}`,
    };
  }
  return { state: 'complete', metadata };
}
