import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Store } from '../../src/store/s3.js';
import { fillEtcd } from '../harness/etcd-cluster.js';
import { waitUntil } from '../harness/processes.js';
import { S3Server } from '../harness/s3.js';
import { etcdTrailerOk, restoreWithEtcdctl, sha256File } from '../harness/snapshot-checks.js';
import { CTL_JS, StewardCluster } from '../harness/steward-cluster.js';
import { TcpProxy } from '../harness/tcp-proxy.js';

interface Saved {
  name: string;
  size: number;
  sha256: string;
  locations: string[];
  failures: string[];
}

describe('snapshots under faults: compression, S3 cut mid-upload, steward killed mid-snapshot', () => {
  let s3: S3Server;
  let proxy: TcpProxy;
  let cluster: StewardCluster;
  let bucket: S3Store;
  const snapshotDir = (i: number): string => join(cluster.node(i).stateDir, 'snapshots');
  const lsNames = async (): Promise<Array<{ name: string; location: string }>> =>
    JSON.parse((await cluster.ctl(['--endpoint', cluster.node(2).grpc, '-o', 'json', 'ls'])).stdout) as Array<{ name: string; location: string }>;

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'snapshots' });
    proxy = await TcpProxy.start(s3.port);
    bucket = new S3Store(s3.storeOptions('backups'));
    cluster = await StewardCluster.create({
      size: 3,
      extraArgs: [
        ...s3.stewardArgs({ endpoint: `127.0.0.1:${proxy.port}` }),
        // As deployed: a hung S3 must cost only the S3 copy without waiting for this bound.
        '--etcd-s3-timeout=5m',
        '--etcd-disable-snapshots=true',
        '--etcd-snapshot-reconcile-interval=1h',
      ],
      nodeArgs: { 2: ['--etcd-snapshot-compress=true'] },
    });
    await cluster.startAll();
    await cluster.waitForStableLeader(20_000);
    await fillEtcd(
      cluster.nodes.map((n) => n.clientUrl),
      96,
    );
  });
  afterAll(async () => {
    bucket?.close();
    await cluster?.destroy();
    await proxy?.stop();
    await s3?.stop();
  });

  it('a compressed snapshot is checksummed over the stored bytes and restores after gunzip', async () => {
    const result = await cluster.ctl(['--endpoint', cluster.node(2).grpc, '-o', 'json', 'save']);
    expect(result.code, result.stderr).toBe(0);
    const saved = JSON.parse(result.stdout) as Saved;
    const gz = join(snapshotDir(2), `${saved.name}.gz`);
    expect(saved.locations).toEqual([`file://${gz}`, `s3://snapshots/backups/${saved.name}.gz`]);
    expect(await sha256File(gz)).toBe(saved.sha256);
    expect(statSync(gz).size).toBe(saved.size);
    const head = await bucket.head(`${saved.name}.gz`, AbortSignal.timeout(5000));
    expect(head?.size).toBe(saved.size);
    expect(await etcdTrailerOk(gz, true)).toBe(true);
    const raw = join(cluster.root, `${saved.name}.db`);
    await pipeline(createReadStream(gz), createGunzip(), createWriteStream(raw));
    expect(statSync(raw).size).toBeGreaterThan(saved.size);
    const restore = await restoreWithEtcdctl(raw);
    expect(restore.code, restore.output).toBe(0);
  });

  it('S3 cut mid-upload: the local snapshot is kept, the S3 copy never appears, the failure is counted', async () => {
    proxy.bytesUp = 0;
    const saving = cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'save']);
    await waitUntil('upload under way', () => proxy.bytesUp > 8 * 1024 * 1024 || undefined, 30_000, 10);
    proxy.cut();
    const result = await saving;
    proxy.restore();
    // Stored locally only: exit 1, with what was stored where on stdout.
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toMatch(/^error\[SAVE_INCOMPLETE\]: /);
    const saved = JSON.parse(result.stdout) as Saved;
    expect(saved.locations).toEqual([`file://${join(snapshotDir(0), saved.name)}`]);
    expect(saved.failures).toHaveLength(1);
    expect(saved.failures[0]).toMatch(/^s3: /);
    expect(await sha256File(join(snapshotDir(0), saved.name))).toBe(saved.sha256);
    expect(await bucket.head(saved.name, AbortSignal.timeout(5000))).toBeUndefined();
    expect(await bucket.head(`${saved.name}.metadata.json`, AbortSignal.timeout(5000))).toBeUndefined();
    expect((await lsNames()).filter((e) => e.name === saved.name).map((e) => e.location)).toEqual([`file://${join(snapshotDir(0), saved.name)}`]);
    const metrics = await (await fetch(`http://${cluster.node(0).http}/metrics`)).text();
    expect(metrics).toMatch(/etcd_steward_snapshot_failures_total\{reason="location_s3"\} 1/);
    // S3 is back: the next snapshot reaches it again.
    const next = JSON.parse((await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'save'])).stdout) as Saved;
    expect(next.locations).toHaveLength(2);
  });

  it('s3rver frozen (SIGSTOP): save finishes with the local copy within seconds and reports the S3 failure', async () => {
    const pid = s3.pid;
    if (pid === undefined) throw new Error('s3rver has no pid');
    process.kill(pid, 'SIGSTOP');
    let result: { code: number; stdout: string; stderr: string };
    const started = Date.now();
    try {
      result = await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'save']);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const ms = Date.now() - started;
    // The S3 copy is dropped once it takes no data for 15 s; before, the name check alone waited 5 min per try.
    expect(ms).toBeLessThan(30_000);
    const output = result.stdout + result.stderr;
    const name = /(on-demand-node-1-\d+)/.exec(output)?.[1];
    expect(name, output).toBeDefined();
    expect(output).toContain(`file://${join(snapshotDir(0), name as string)}`);
    expect(output).toMatch(/s3: .*(accepted no snapshot data|did not finish within)/);
    expect(existsSync(join(snapshotDir(0), `${name as string}.metadata.json`))).toBe(true);
    expect(await bucket.head(`${name as string}.metadata.json`, AbortSignal.timeout(10_000))).toBeUndefined();
  });

  it('steward SIGKILLed mid-snapshot: nothing partial is ever listed, and the temp file is removed at restart', async () => {
    const before = new Set((await lsNames()).map((e) => e.name));
    const objectsBefore = new Set((await bucket.list('', AbortSignal.timeout(5000))).map((o) => o.key));
    const ctl = spawn(process.execPath, [CTL_JS, '--endpoint', cluster.node(1).grpc, 'save'], { stdio: 'ignore' });
    const exited = new Promise<number | null>((resolve) => ctl.once('exit', (code) => resolve(code)));
    const temp = await waitUntil(
      'a temp file of the snapshot in progress',
      () => {
        if (!existsSync(snapshotDir(1))) return undefined;
        const file = readdirSync(snapshotDir(1)).find((f) => f.startsWith('.'));
        return file && statSync(join(snapshotDir(1), file)).size > 4 * 1024 * 1024 ? file : undefined;
      },
      30_000,
      10,
    );
    cluster.signal(1, 'SIGKILL');
    expect(await exited).not.toBe(0);
    expect((await lsNames()).filter((e) => !before.has(e.name))).toEqual([]);
    const newObjects = (await bucket.list('', AbortSignal.timeout(5000))).map((o) => o.key).filter((k) => !objectsBefore.has(k));
    expect(newObjects).toEqual([]);
    expect(readdirSync(snapshotDir(1)).filter((f) => !f.startsWith('.') && !before.has(f.replace(/\.metadata\.json$/, '')))).toEqual([]);
    expect(existsSync(join(snapshotDir(1), temp))).toBe(true);

    cluster.start(1);
    await cluster.waitForStableLeader(30_000);
    expect(existsSync(join(snapshotDir(1), temp))).toBe(false);
    expect(cluster.logs(1)).toContain('removed unfinished snapshot files left by an interrupted snapshot');
    const client = new Etcd3({ hosts: cluster.nodes.map((n) => n.clientUrl) });
    try {
      expect(Number((await client.maintenance.status()).dbSize)).toBeGreaterThan(90 * 1024 * 1024);
    } finally {
      client.close();
    }
  });
});
