import type { Logger } from 'pino';
import { inventoryRecordSchema, orphanRecordSchema } from '../inventory/inventory.js';
import type { SnapshotLocation } from '../inventory/keeper.js';
import { deleteFromStore, scanStore } from '../inventory/scan.js';
import type { PeerPool } from '../rpc/peer-pool.js';
import type { NamedStore } from '../snapshot/snapshotter.js';

/**
 * This steward's own dir, S3, and every other steward's dir through the peer API. The location of a
 * peer's dir is `local:<node>` for the node the directory names: the peer header guarantees that node is
 * who answers, and the keeper stamps that id on every record, whatever the reply says.
 */
export async function snapshotLocations(options: { own: NamedStore[]; peers: PeerPool; log: Logger }, signal: AbortSignal): Promise<SnapshotLocation[]> {
  const own: SnapshotLocation[] = options.own.map((named) => ({
    locationId: named.locationId,
    scan: (s) => scanStore(named, s, options.log),
    remove: (name, key, s) => deleteFromStore(named.store, name, key, s),
  }));
  signal.throwIfAborted();
  const others = await options.peers.others(signal);
  return [
    ...own,
    ...others.map((peer): SnapshotLocation => {
      const locationId = `local:${peer.node}`;
      return {
        locationId,
        scan: async (s) => {
          const listing = await peer.listLocal(s);
          // Records cross the wire from another process: validate them like any input.
          return {
            records: listing.snapshots.map((record) => ({ ...inventoryRecordSchema.parse(record), locationId })),
            orphans: listing.orphans.map((orphan) => ({ ...orphanRecordSchema.parse(orphan), locationId })),
          };
        },
        remove: (name, key, s) => peer.deleteLocal(name, key, s),
      };
    }),
  ];
}
