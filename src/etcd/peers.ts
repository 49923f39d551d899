import type { Config } from '../config/settings.js';

/** One entry of a member's `GET <peer-url>/members`: the cluster's member list as that member knows it. */
interface PeerMember {
  /** Kept as the decimal string it was sent as: a uint64 does not fit a JS number. */
  id?: string;
  name?: string;
  peerURLs?: string[];
  /** Published once the member has joined a cluster with quorum; empty for a member that never ran. */
  clientURLs?: string[];
}

export interface PeerView {
  /** Peer URLs of the other members that answered: an etcd cluster runs there. */
  answered: string[];
  /** Some member lists this node as having run (client URLs published): its data existed once. */
  thisMemberRan: boolean;
  /** This node's member ID in hex, as `etcdctl member remove` wants it, when a member listed it. */
  thisMemberId: string | undefined;
}

/**
 * What the other members say, asked over their peer URLs (the only addresses known before etcd runs here;
 * client URLs are not in --initial-cluster). The same question etcd itself asks before it bootstraps, asked
 * first so the steward can hold back with a clear message instead of letting etcd crash-loop. A member that
 * does not answer (down, or peer TLS we cannot speak) says nothing.
 */
export async function askPeers(
  config: Pick<Config, 'name' | 'initialCluster' | 'initialAdvertisePeerUrls'>,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<PeerView> {
  const mine = new Set(config.initialAdvertisePeerUrls.map(normalise));
  for (const member of config.initialCluster) if (member.name === config.name) mine.add(normalise(member.peerUrl));
  const others = config.initialCluster.filter((member) => member.name !== config.name && !mine.has(normalise(member.peerUrl)));
  const answers = await Promise.all(
    others.map(async (member) => {
      try {
        const response = await fetch(new URL('/members', member.peerUrl), { signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) });
        if (!response.ok) {
          await response.body?.cancel();
          return undefined;
        }
        const body = await readBounded(response, MAX_MEMBERS_BODY_BYTES);
        if (body === undefined) return undefined;
        const members = JSON.parse(body.replace(/"id":\s*(\d+)/g, '"id":"$1"')) as unknown;
        return Array.isArray(members) ? { peerUrl: member.peerUrl, members: members as PeerMember[] } : undefined;
      } catch {
        return undefined;
      }
    }),
  );
  const answered = answers.filter((answer) => answer !== undefined);
  const isMe = (m: PeerMember): boolean => m.name === config.name || (m.peerURLs ?? []).some((url) => mine.has(normalise(url)));
  const listings = answered.flatMap(({ members }) => members.filter(isMe));
  const id = listings.find((m) => m.id && /^\d+$/.test(m.id))?.id;
  return {
    answered: answered.map((answer) => answer.peerUrl),
    thisMemberRan: listings.some((m) => (m.clientURLs?.length ?? 0) > 0),
    thisMemberId: id === undefined ? undefined : BigInt(id).toString(16),
  };
}

/**
 * A member list of even a thousand members is far below this; anything larger is not etcd talking, and is
 * never buffered whole: reading stops (and the connection is dropped) at the limit.
 */
export const MAX_MEMBERS_BODY_BYTES = 1024 * 1024;

/** The body as text, or undefined if it is longer than `limit` bytes (announced or actual). */
export async function readBounded(response: Response, limit: number): Promise<string | undefined> {
  const announced = Number(response.headers.get('content-length') ?? NaN);
  if (Number.isFinite(announced) && announced > limit) {
    await response.body?.cancel();
    return undefined;
  }
  if (!response.body) return '';
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function normalise(url: string): string {
  return url.replace(/\/+$/, '');
}
