import type { Etcd3 } from 'etcd3';
import { z } from 'zod';
import { parseJson } from '../inventory/inventory.js';

const PREFIX = 'etcd-steward/stewards/';
const entrySchema = z.object({ node: z.string(), grpc: z.string(), version: z.string(), registeredAt: z.string() });
export type StewardEntry = z.infer<typeof entrySchema>;

/**
 * Where each steward's gRPC API is, kept in etcd so the leader can reach every node's local snapshot dir
 * (and, later, distribute restores) without a static peer list. Entries are plain keys, not leased: a
 * steward that is down keeps its entry, and callers treat an unreachable peer as "unknown right now".
 */
export class StewardRegistry {
  constructor(private readonly client: Etcd3) {}

  async register(entry: Omit<StewardEntry, 'registeredAt'>): Promise<void> {
    await this.client.put(`${PREFIX}${entry.node}`).value(JSON.stringify({ ...entry, registeredAt: new Date().toISOString() }));
  }

  async list(): Promise<StewardEntry[]> {
    const values = await this.client.getAll().prefix(PREFIX).strings();
    return Object.values(values)
      .map((text) => entrySchema.safeParse(parseJson(text)))
      .flatMap((parsed) => (parsed.success ? [parsed.data] : []));
  }
}
