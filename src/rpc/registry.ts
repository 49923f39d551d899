import type { Etcd3 } from '../etcd/client.js';
import { z } from 'zod';
import { parseJson } from '../inventory/inventory.js';
import type { PeerAddress, PeerDirectory } from './peer-pool.js';

const PREFIX = 'etcd-steward/stewards/';
const entrySchema = z.object({ node: z.string(), grpc: z.string(), version: z.string(), registeredAt: z.string() });
export type StewardEntry = z.infer<typeof entrySchema>;

/**
 * Where each steward's gRPC API is, kept in etcd so the leader can reach every node's local snapshot dir
 * without a static peer list: one PeerDirectory. Entries are plain keys, not leased: a steward that is
 * down keeps its entry, and callers treat an unreachable peer as "unknown right now". An entry is only
 * an address: the peer header decides who really answers there.
 */
export class StewardRegistry implements PeerDirectory {
  constructor(private readonly client: Etcd3) {}

  async register(entry: Omit<StewardEntry, 'registeredAt'>): Promise<void> {
    await this.client.put(`${PREFIX}${entry.node}`).value(JSON.stringify({ ...entry, registeredAt: new Date().toISOString() }));
  }

  async list(signal?: AbortSignal): Promise<PeerAddress[]> {
    signal?.throwIfAborted();
    return (await this.entries()).map(({ node, grpc }) => ({ node, grpc }));
  }

  async entries(): Promise<StewardEntry[]> {
    const values = await this.client.getAll().prefix(PREFIX).strings();
    return Object.values(values)
      .map((text) => entrySchema.safeParse(parseJson(text)))
      .flatMap((parsed) => (parsed.success ? [parsed.data] : []));
  }
}
