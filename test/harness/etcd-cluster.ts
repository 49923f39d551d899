import { spawn, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { freePort } from './ports.js';
import { waitUntil } from './processes.js';

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  process: ChildProcess;
}

/** N real etcd processes (no stewards) on free loopback ports in one temp dir, stopped by PID. */
export class EtcdCluster {
  private constructor(
    readonly root: string,
    readonly members: EtcdMember[],
  ) {}

  get endpoints(): string[] {
    return this.members.map((m) => m.clientUrl);
  }

  static async start(size = 1): Promise<EtcdCluster> {
    const root = await mkdtemp(join(tmpdir(), 'etcd-test-'));
    const specs = [];
    for (let i = 0; i < size; i++) {
      specs.push({ name: `etcd-${i + 1}`, clientUrl: `http://127.0.0.1:${await freePort()}`, peerUrl: `http://127.0.0.1:${await freePort()}` });
    }
    const initialCluster = specs.map((s) => `${s.name}=${s.peerUrl}`).join(',');
    const members = specs.map((spec) => {
      const dataDir = join(root, spec.name);
      const log = openSync(join(root, `${spec.name}.log`), 'a');
      const child = spawn(
        'etcd',
        [
          `--name=${spec.name}`,
          `--data-dir=${dataDir}`,
          `--listen-client-urls=${spec.clientUrl}`,
          `--advertise-client-urls=${spec.clientUrl}`,
          `--listen-peer-urls=${spec.peerUrl}`,
          `--initial-advertise-peer-urls=${spec.peerUrl}`,
          `--initial-cluster=${initialCluster}`,
          '--initial-cluster-state=new',
          // Large test databases: raise the backend quota above etcd's 2 GiB default guard.
          '--quota-backend-bytes=8589934592',
        ],
        { stdio: ['ignore', log, log] },
      );
      closeSync(log);
      return { ...spec, dataDir, process: child };
    });
    const cluster = new EtcdCluster(root, members);
    const client = new Etcd3({ hosts: cluster.endpoints });
    try {
      await waitUntil('etcd to answer', async () => (await client.maintenance.status()) !== undefined, 20_000);
    } finally {
      client.close();
    }
    return cluster;
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.members.map(async ({ process: child }) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = once(child, 'exit');
        child.kill('SIGKILL');
        await exited;
      }),
    );
    if (!process.env.KEEP_TEST_DIRS) await rm(this.root, { recursive: true, force: true });
  }
}

/**
 * Writes `megabytes` of 0.5 MiB values, half random and half zeros: about 2:1 for gzip, between
 * incompressible and the highly repetitive JSON/protobuf of real Kubernetes objects.
 */
export async function fillEtcd(endpoints: string[], megabytes: number, prefix = '/fill/'): Promise<void> {
  const client = new Etcd3({ hosts: endpoints });
  try {
    const value = Buffer.alloc(512 * 1024);
    for (let i = 0; i < megabytes * 2; i++) {
      randomFillSync(value, 0, value.length / 2);
      await client.put(`${prefix}${String(i).padStart(8, '0')}`).value(value);
    }
  } finally {
    client.close();
  }
}
