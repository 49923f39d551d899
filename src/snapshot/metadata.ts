import { z } from 'zod';

/** Written beside each snapshot, last: a snapshot without it is not a snapshot (it was never completed). */
export const snapshotMetadataSchema = z.object({
  formatVersion: z.literal(1),
  name: z.string(),
  key: z.string(),
  node: z.string(),
  kind: z.enum(['scheduled', 'on-demand']),
  created: z.string(),
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  compressed: z.boolean(),
  etcdVersion: z.string(),
  clusterId: z.string(),
  revision: z.number().int().nonnegative(),
  fencingToken: z.string(),
  /** The cluster spec when the snapshot was taken (generation and a copy), for `restore --with-spec`. */
  specGeneration: z.number().int().nonnegative().optional(),
  clusterSpec: z.record(z.string(), z.unknown()).optional(),
  /** Members that were down or unhealthy while the rest kept quorum; absent when every member was healthy. */
  degraded: z.array(z.object({ member: z.string(), problem: z.string() })).optional(),
});

export type SnapshotMetadata = z.infer<typeof snapshotMetadataSchema>;

export function parseMetadata(text: string): SnapshotMetadata | undefined {
  try {
    const result = snapshotMetadataSchema.safeParse(JSON.parse(text));
    return result.success ? result.data : undefined;
  } catch {
    return undefined;
  }
}
