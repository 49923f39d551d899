import { z } from 'zod';
import { hostPort, memberName, urlList } from '../config/values.js';
import { InvalidArgumentError } from '../errors/index.js';
import { ownedFlag } from '../etcd/args.js';

/**
 * The highest generation a spec may carry. Every write moves it by exactly one, so no real cluster comes near
 * it; a bound well inside Number.MAX_SAFE_INTEGER (and int32, for any reader that holds it in one) means the
 * next generation is always exact. 9007199254740990 once wedged every later write: +1 stopped changing it.
 */
export const MAX_GENERATION = 2 ** 31 - 1;
/** The largest spec accepted as input or read back, in bytes. */
export const MAX_SPEC_BYTES = 1024 * 1024;

/** No control characters (NUL included) and no format characters: such text ends up in etcd's argv or a log. */
const isPlainText = (value: string): boolean => !/[\p{Cc}\p{Cf}]/u.test(value);
// The same checks the flags get (src/config/values.ts), so a spec can never hold what a flag would refuse.
const isMemberName = (value: string): boolean => memberName().schema.safeParse(value).success && value.trim() === value;
// The WHATWG parser drops leading and trailing control characters and spaces: refuse them before it can.
const isEtcdUrl = (value: string): boolean => isPlainText(value) && !/\s/.test(value) && urlList().schema.safeParse([value]).success;

/** `host:port` a peer can dial: the flag's syntax, and a concrete host (not empty, not the wildcard). */
export function isPeerGrpcAddress(value: string): boolean {
  const parsed = hostPort().schema.safeParse(value);
  return parsed.success && !value.startsWith(':') && parsed.data.host !== '0.0.0.0' && parsed.data.host !== '[::]' && isPlainText(value);
}

const member = z.object({
  name: z.string().refine(isMemberName, 'a name of letters, digits, dots, dashes and underscores (at most 63 characters)'),
  peerUrl: z.string().max(2048).refine(isEtcdUrl, 'an http(s)://host:port URL, as --initial-cluster takes it'),
  /**
   * The member's steward gRPC address (its --advertise-grpc), recorded by the leader from the stewards'
   * registrations, so stewards reach each other from the spec (or a kept copy) with etcd down. Absent in
   * older specs, which stay valid.
   */
  grpc: z.string().max(300).refine(isPeerGrpcAddress, 'host:port a peer can dial (not empty, not 0.0.0.0), port 1-65535').optional(),
});

/** What the cluster is meant to be. Lives in the control store, apart from the backups, and is re-read on a TTL. */
export const clusterSpecSchema = z
  .object({
    formatVersion: z.literal(1),
    /** Bumped by exactly one on every write; a write that does not follow the current generation is refused. */
    generation: z.number().int().min(1).max(MAX_GENERATION),
    members: z
      .array(member)
      .min(1)
      .max(100)
      .refine((members) => new Set(members.map((m) => m.name)).size === members.length, 'member names must be unique')
      .refine((members) => new Set(members.map((m) => m.peerUrl.replace(/\/+$/, ''))).size === members.length, 'peer URLs must be unique'),
    etcdVersion: z.string().max(64).refine(isPlainText, 'no control characters'),
    /**
     * Compared with --initial-cluster-token before an empty data dir may bootstrap. A restore that starts the
     * cluster anew with a new token (DESIGN: restore) must write the new token and cluster ID here.
     */
    clusterToken: z
      .string()
      .min(1)
      .max(255)
      .refine(isPlainText, 'no control characters (NUL included)')
      .refine((token) => token.trim() === token, 'no leading or trailing whitespace'),
    /**
     * The etcd cluster ID (hex) once every member has run: from then on an empty data dir is a member that
     * lost its data, never a reason to bootstrap. '' until the leader records it.
     */
    clusterId: z
      .string()
      .regex(/^[0-9a-f]{0,16}$/, 'hex, at most 16 digits')
      .default(''),
    /**
     * Members known to have run (joined with quorum), recorded by the leader from the cluster's first
     * formation on: an empty data dir of one of them is lost data; any other member may still join. Absent
     * in a spec that records a clusterId means every member had run.
     */
    startedMembers: z.array(z.string().refine(isMemberName, 'a member name')).max(100).optional(),
    /**
     * The last restore that started the cluster anew (src/restore): its token replaced the bootstrap token,
     * so --initial-cluster-token is no longer compared with clusterToken.
     */
    lastRestore: z
      .object({
        restoreId: z.string().max(64),
        snapshot: z.string().max(255),
        at: z.string().max(64),
        /** Members the restore left out (--skip-member): their data is the old cluster's; held back until re-added. */
        skipped: z.array(z.string().refine(isMemberName, 'a member name')).max(100).optional(),
      })
      .optional(),
    /** Extra etcd flags the cluster runs with, by name without dashes. */
    etcdFlags: z
      .record(z.string().regex(/^[a-z][a-z0-9-]{0,63}$/, 'a flag name without dashes'), z.string().max(4096).refine(isPlainText, 'no control characters'))
      .refine((flags) => Object.keys(flags).length <= 100, 'at most 100 flags')
      .superRefine((flags, ctx) => {
        // Refused here, at `spec set`, rather than when a member next starts etcd.
        for (const name of Object.keys(flags)) {
          const instead = ownedFlag(name);
          if (instead !== undefined) ctx.addIssue({ code: 'custom', path: [name], message: `--${name} is set by the steward itself (use ${instead})` });
        }
      })
      .default({}),
    updatedAt: z
      .string()
      .max(64)
      .refine((value) => value === '' || !Number.isNaN(Date.parse(value)), 'an ISO 8601 time'),
    /** The leader that wrote it ('' for init): a record of who changed the spec. */
    fencingToken: z.string().regex(/^\d{0,20}$/, 'a decimal revision or empty'),
  })
  .refine((spec) => (spec.startedMembers ?? []).every((name) => spec.members.some((m) => m.name === name)), {
    message: 'startedMembers may only name members of the spec',
    path: ['startedMembers'],
  });

export type ClusterSpec = z.infer<typeof clusterSpecSchema>;

/** Whether the spec records that `member` has run in the formed cluster. */
export function memberHasRun(spec: ClusterSpec, member: string): boolean {
  if (!spec.clusterId) return false;
  return spec.startedMembers ? spec.startedMembers.includes(member) : spec.members.some((m) => m.name === member);
}

/** Parses operator input (`spec set FILE`) or a stored object; every problem named, none guessed at. */
export function parseSpec(text: string, where: string): ClusterSpec {
  if (Buffer.byteLength(text) > MAX_SPEC_BYTES) {
    throw new InvalidArgumentError(`${where} is ${Buffer.byteLength(text)} bytes, more than the ${MAX_SPEC_BYTES} a cluster spec may be`, {
      hint: 'start from the output of etcd-stewardctl spec get -o json',
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`${where} is not valid JSON: ${(err as Error).message.slice(0, 200)}`, {
      hint: 'start from the output of etcd-stewardctl spec get -o json',
    });
  }
  const result = clusterSpecSchema.safeParse(json);
  if (!result.success) {
    const problems = result.error.issues
      .slice(0, 10)
      .map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`)
      .join('; ');
    throw new InvalidArgumentError(`${where} is not a valid cluster spec: ${problems}`, { hint: 'start from the output of etcd-stewardctl spec get -o json' });
  }
  return result.data;
}
