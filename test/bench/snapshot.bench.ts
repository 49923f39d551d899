/**
 * Snapshot throughput and memory, side by side with what other tools do, on one machine:
 *   local only:  `etcdctl snapshot save` vs. the steward's save to its dir (sha256 + etcd integrity check included)
 *   local + S3:  etcdctl save, then a lib-storage upload of that file  vs. the steward's one-stream tee
 *   compressed:  the same two with gzip (etcdctl save then gzip the file)
 *   memory:      the steward's peak RSS (VmHWM) after the runs at ~256 MB and at ~1 GB of data
 * Run: make bench   (BENCH_DB_MB=1100 BENCH_RUNS=3 by default). Ratios matter more than absolute
 * speeds: s3rver, etcd and the steward share the same cores and disk.
 */
import { execFile } from 'node:child_process';
import { createReadStream, createWriteStream, readFileSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Etcd3 } from 'etcd3';
import { afterAll, describe, it } from 'vitest';
import { createS3Client } from '../../src/store/s3.js';
import { fillEtcd } from '../harness/etcd-cluster.js';
import { S3Server } from '../harness/s3.js';
import { StewardCluster } from '../harness/steward-cluster.js';

const DB_MB = Number(process.env.BENCH_DB_MB ?? 1100);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const SMALL_MB = Number(process.env.BENCH_SMALL_MB ?? 256);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const started = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - started) / 1e9;
}

function run(command: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(command, args, { env: { ...process.env, ETCDCTL_API: '3' }, maxBuffer: 1 << 24 }, (err, _o, stderr) =>
      err ? reject(new Error(`${command} ${args.join(' ')}: ${stderr}`)) : resolve(),
    ),
  );
}

function peakRssMb(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmHWM:'));
  return Number(line?.split(/\s+/)[1] ?? NaN) / 1024;
}

describe('snapshot benchmark', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  let client: S3Client;
  afterAll(async () => {
    client?.destroy();
    await cluster?.destroy();
    await s3?.stop();
  });

  it(`prints wall times, MB/s, ratios and RSS at ${SMALL_MB} MB and ${DB_MB} MB`, async () => {
    s3 = await S3Server.start({ bucket: 'bench' });
    client = createS3Client(s3.storeOptions(''));
    const s3Args = s3.stewardArgs();
    // Four stewards on one etcd would be four members; instead one single-member cluster per variant,
    // each steward restarted with the variant's flags on the same data dir.
    cluster = await StewardCluster.create({ size: 1, extraArgs: ['--etcd-disable-snapshots=true', '--etcd-snapshot-timeout=2h'] });
    const node = cluster.node(0);
    const endpoint = node.clientUrl;
    const variants = {
      local: [] as string[],
      tee: s3Args,
      localGz: ['--etcd-snapshot-compress=true'],
      teeGz: ['--etcd-snapshot-compress=true', ...s3Args],
    };
    const restartWith = async (args: string[]): Promise<number> => {
      await cluster.stop(0);
      cluster.setNodeArgs(0, args);
      const child = cluster.start(0);
      await cluster.waitForStableLeader(60_000);
      return child.pid as number;
    };
    // Wall time of the whole `etcd-stewardctl save`, process start included, as an operator sees it.
    const stewardSave = async (): Promise<number> => {
      let name = '';
      const seconds = await timed(async () => {
        const result = await cluster.ctl(['--endpoint', node.grpc, '-o', 'json', 'save']);
        if (result.code !== 0) throw new Error(result.stderr);
        name = (JSON.parse(result.stdout) as { name: string }).name;
      });
      // Frees the disk for the next run, outside the timing.
      await cluster.ctl(['--endpoint', node.grpc, 'delete', name]);
      return seconds;
    };
    const lines: string[] = [];
    const report = (line: string): void => {
      lines.push(line);
      console.log(line);
    };

    await cluster.startAll();
    await cluster.waitForStableLeader(30_000);
    const dbBytes = async (): Promise<number> => {
      const etcd = new Etcd3({ hosts: endpoint });
      try {
        return Number((await etcd.maintenance.status()).dbSize);
      } finally {
        etcd.close();
      }
    };

    for (const [label, targetMb] of [
      ['small', SMALL_MB],
      ['large', DB_MB],
    ] as const) {
      const have = (await dbBytes()) / 1024 / 1024;
      if (have < targetMb) await fillEtcd([endpoint], Math.ceil(targetMb - have), `/bench-${label}/`);
      const sizeMb = (await dbBytes()) / 1024 / 1024;
      report(`\n== database ${sizeMb.toFixed(0)} MB (${label}), median of ${RUNS} runs ==`);
      const baseFile = join(cluster.root, 'etcdctl.db');
      const times: Record<string, number[]> = { etcdctl: [], seq: [], etcdctlGz: [], seqGz: [], local: [], tee: [], localGz: [], teeGz: [] };
      for (let i = 0; i < RUNS; i++) {
        times.etcdctl?.push(await timed(() => run('etcdctl', ['--endpoints', endpoint, 'snapshot', 'save', baseFile])));
        times.seq?.push(
          await timed(async () => {
            await run('etcdctl', ['--endpoints', endpoint, 'snapshot', 'save', baseFile]);
            await new Upload({ client, params: { Bucket: 'bench', Key: `seq-${i}`, Body: createReadStream(baseFile) } }).done();
          }),
        );
        times.etcdctlGz?.push(
          await timed(async () => {
            await run('etcdctl', ['--endpoints', endpoint, 'snapshot', 'save', baseFile]);
            await pipeline(createReadStream(baseFile), createGzip(), createWriteStream(`${baseFile}.gz`));
          }),
        );
        times.seqGz?.push(
          await timed(async () => {
            await run('etcdctl', ['--endpoints', endpoint, 'snapshot', 'save', baseFile]);
            await pipeline(createReadStream(baseFile), createGzip(), createWriteStream(`${baseFile}.gz`));
            await new Upload({ client, params: { Bucket: 'bench', Key: `seq-gz-${i}`, Body: createReadStream(`${baseFile}.gz`) } }).done();
          }),
        );
        await rm(`${baseFile}.gz`, { force: true });
      }
      const fileMb = statSync(baseFile).size / 1024 / 1024;
      let pid = 0;
      for (const [variant, args] of Object.entries(variants)) {
        pid = await restartWith(args);
        for (let i = 0; i < RUNS; i++) times[variant]?.push(await stewardSave());
        report(`steward peak RSS after ${variant} runs: ${peakRssMb(pid).toFixed(0)} MB`);
      }
      const m = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)])) as Record<string, number>;
      const row = (what: string, seconds: number): string =>
        `${what.padEnd(52)} ${seconds.toFixed(2).padStart(7)} s ${(fileMb / seconds).toFixed(0).padStart(6)} MB/s`;
      report(row('etcdctl snapshot save', m.etcdctl as number));
      report(row('steward save, local dir (sha256 + integrity)', m.local as number));
      report(`  ratio steward/etcdctl: ${((m.local as number) / (m.etcdctl as number)).toFixed(2)} (target <= 1.25)`);
      report(row('etcdctl save, then lib-storage upload to S3', m.seq as number));
      report(row('steward one-stream tee to local + S3', m.tee as number));
      report(`  ratio tee/sequence: ${((m.tee as number) / (m.seq as number)).toFixed(2)} (target <= 0.8)`);
      report(row('etcdctl save, then gzip', m.etcdctlGz as number));
      report(row('steward save, local, gzip', m.localGz as number));
      report(`  ratio: ${((m.localGz as number) / (m.etcdctlGz as number)).toFixed(2)}`);
      report(row('etcdctl save, gzip, then upload', m.seqGz as number));
      report(row('steward tee to local + S3, gzip', m.teeGz as number));
      report(`  ratio: ${((m.teeGz as number) / (m.seqGz as number)).toFixed(2)}`);
      await rm(baseFile, { force: true });
      await restartWith([]);
    }
    console.log(`\nSUMMARY\n${lines.join('\n')}`);
  });
});
