import { lstatSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Etcd3 } from 'etcd3';
import type { RestoreStatusResponse, StatusResponse } from '../../src/rpc/types.js';
import { StewardClient } from '../../src/rpc/client.js';
import { runCtl, type StewardCluster, type StewardNode } from './steward-cluster.js';

/** Every user key (the steward's own under etcd-steward/ left out) and its value, read from one member only. */
export async function userKeys(clientUrl: string): Promise<Record<string, string>> {
  const client = new Etcd3({ hosts: [clientUrl], dialTimeout: 3000 });
  try {
    // Keys first and values one by one: a test's large values together pass gRPC's 4 MiB message limit.
    const keys = (await client.getAll().keys()).filter((key) => !key.startsWith('etcd-steward'));
    const entries: [string, string][] = [];
    for (const key of keys) entries.push([key, (await client.get(key).string()) ?? '']);
    return Object.fromEntries(entries);
  } finally {
    client.close();
  }
}

export async function putKeys(cluster: StewardCluster, entries: Record<string, string>): Promise<void> {
  const client = new Etcd3({ hosts: cluster.nodes.map((n) => n.clientUrl) });
  try {
    for (const [key, value] of Object.entries(entries)) await client.put(key).value(value);
  } finally {
    client.close();
  }
}

export async function deleteKeys(cluster: StewardCluster, keys: string[]): Promise<void> {
  const client = new Etcd3({ hosts: cluster.nodes.map((n) => n.clientUrl) });
  try {
    for (const key of keys) await client.delete().key(key);
  } finally {
    client.close();
  }
}

/** Data dirs a restore moved aside beside a node's data dir. */
export function keptDataDirs(node: StewardNode): string[] {
  const prefix = `${basename(node.dataDir)}-`;
  return readdirSync(dirname(node.dataDir))
    .filter((entry) => entry.startsWith(`${prefix}old-`) || entry.startsWith(`${prefix}restored-`))
    .sort();
}

/** `etcd-stewardctl restore ...` with a timeout fit for a restore. */
export function restoreCtl(node: StewardNode, args: string[], timeoutMs = 240_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return runCtl(['--endpoint', node.grpc, 'restore', ...args], {}, timeoutMs);
}

export async function restoreStatus(node: StewardNode): Promise<RestoreStatusResponse> {
  const client = new StewardClient(node.grpc, 30_000);
  try {
    return await client.restoreStatus();
  } finally {
    client.close();
  }
}

export async function quietStatus(node: StewardNode): Promise<StatusResponse | undefined> {
  const client = new StewardClient(node.grpc, 3000);
  try {
    return await client.status();
  } catch {
    return undefined;
  } finally {
    client.close();
  }
}

/** `save` on one node; the snapshot's name. */
export async function save(node: StewardNode): Promise<string> {
  const result = await runCtl(['--endpoint', node.grpc, '-o', 'json', 'save'], {}, 120_000);
  if (result.code !== 0) throw new Error(`save failed: ${result.stderr}`);
  return (JSON.parse(result.stdout) as { name: string }).name;
}

/** Every file and dir under `root` that its group or others may read, write or enter, with its mode. */
export function looseModes(root: string): string[] {
  const loose: string[] = [];
  const walk = (path: string): void => {
    const info = lstatSync(path);
    if (info.isSymbolicLink()) return;
    if ((info.mode & 0o077) !== 0) loose.push(`${path} ${(info.mode & 0o777).toString(8)}`);
    if (info.isDirectory()) for (const entry of readdirSync(path)) walk(join(path, entry));
  };
  walk(root);
  return loose;
}
