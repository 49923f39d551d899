import { z } from 'zod';
import { InvalidArgumentError } from '../errors/index.js';

/** What the cluster is meant to be. Lives in the control store, apart from the backups, and is re-read on a TTL. */
export const clusterSpecSchema = z.object({
  formatVersion: z.literal(1),
  /** Bumped by every write; a write that does not follow the current generation is refused. */
  generation: z.number().int().min(1),
  members: z
    .array(z.object({ name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/), peerUrl: z.string().url() }))
    .min(1)
    .refine((members) => new Set(members.map((m) => m.name)).size === members.length, 'member names must be unique'),
  etcdVersion: z.string(),
  /**
   * Compared with --initial-cluster-token before an empty data dir may bootstrap. A restore that starts the
   * cluster anew with a new token (DESIGN: restore) must write the new token and cluster ID here.
   */
  clusterToken: z.string().min(1),
  /**
   * The etcd cluster ID (hex) once every member has run: from then on an empty data dir is a member that
   * lost its data, never a reason to bootstrap. '' until the leader records it.
   */
  clusterId: z.string().regex(/^[0-9a-f]*$/).default(''),
  /**
   * Members known to have run (joined with quorum), recorded by the leader from the cluster's first
   * formation on: an empty data dir of one of them is lost data; any other member may still join. Absent
   * in a spec that records a clusterId means every member had run.
   */
  startedMembers: z.array(z.string()).optional(),
  /** Extra etcd flags the cluster runs with, by name without dashes. */
  etcdFlags: z.record(z.string(), z.string()).default({}),
  updatedAt: z.string(),
  /** The leader that wrote it ('' for init): a record of who changed the spec. */
  fencingToken: z.string(),
});

export type ClusterSpec = z.infer<typeof clusterSpecSchema>;

/** Whether the spec records that `member` has run in the formed cluster. */
export function memberHasRun(spec: ClusterSpec, member: string): boolean {
  if (!spec.clusterId) return false;
  return spec.startedMembers ? spec.startedMembers.includes(member) : spec.members.some((m) => m.name === member);
}

/** Parses operator input (`spec set FILE`) or a stored object; every problem named, none guessed at. */
export function parseSpec(text: string, where: string): ClusterSpec {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`${where} is not valid JSON: ${(err as Error).message}`, { hint: 'start from the output of etcd-stewardctl spec get -o json' });
  }
  const result = clusterSpecSchema.safeParse(json);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`).join('; ');
    throw new InvalidArgumentError(`${where} is not a valid cluster spec: ${problems}`, { hint: 'start from the output of etcd-stewardctl spec get -o json' });
  }
  return result.data;
}
