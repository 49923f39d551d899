import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { isIP } from 'node:net';
import type { Config } from '../config/settings.js';
import { readClientTls, type EtcdClientSecurity } from './client.js';

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
  config: Pick<Config, 'name' | 'initialCluster' | 'initialAdvertisePeerUrls'> & Partial<EtcdClientSecurity>,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<PeerView> {
  const mine = new Set(config.initialAdvertisePeerUrls.map(normalise));
  for (const member of config.initialCluster) if (member.name === config.name) mine.add(normalise(member.peerUrl));
  const others = config.initialCluster.filter((member) => member.name !== config.name && !mine.has(normalise(member.peerUrl)));
  // Read once per question, like the etcd clients: a rotated certificate is used by the next question.
  const tls = readClientTls(config);
  const answers = await Promise.all(
    others.map(async (member) => {
      try {
        const body = await getBounded(
          new URL('/members', member.peerUrl),
          tls,
          MAX_MEMBERS_BODY_BYTES,
          AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]),
        );
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

/**
 * GET `url`'s body as text; undefined for a status other than 200 or a body longer than `limit` bytes
 * (announced or actual). An https URL is asked with the steward's etcd CA and client certificate: with
 * --peer-client-cert-auth etcd answers no one else, and its peer certificate is checked against that CA.
 */
export function getBounded(url: URL, tls: { ca?: Buffer; cert?: Buffer; key?: Buffer }, limit: number, signal: AbortSignal): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    // No SNI for an IP address (RFC 6066 forbids it, and Node warns); the certificate is still checked against it.
    const servername = isIP(url.hostname.replace(/^\[|\]$/g, '')) ? '' : url.hostname;
    const options = url.protocol === 'https:' ? { ...tls, servername, signal } : { signal };
    const request = (url.protocol === 'https:' ? httpsGet : httpGet)(url, options, (response) => {
      const announced = Number(response.headers['content-length'] ?? NaN);
      if (response.statusCode !== 200 || (Number.isFinite(announced) && announced > limit)) {
        response.destroy();
        resolve(undefined);
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > limit) {
          // Stops reading and drops the connection: nothing past the limit is buffered.
          response.destroy();
          resolve(undefined);
          return;
        }
        chunks.push(chunk);
      });
      response.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      response.once('error', reject);
      response.once('close', () => resolve(undefined));
    });
    request.once('error', reject);
  });
}

function normalise(url: string): string {
  return url.replace(/\/+$/, '');
}
