/**
 * A whole restore of a ~1 GB database in a 3-steward cluster, next to what etcd's own tools take:
 *   steward:  `etcd-stewardctl -o json restore NAME --yes` against the leader; per-phase durations from its
 *             NDJSON events, distribution MB/s (snapshot bytes × members / streaming time), total time
 *   baseline: one `etcdctl snapshot restore` of the same snapshot file into a temp dir (under /usr/bin/time -v
 *             for its peak RSS), then etcd started on that dir until `etcdctl endpoint health` passes
 *   memory:   every steward's VmRSS sampled every 100 ms during the restore, and its VmHWM (reset first)
 * Targets (issue): restore ≤ 2 × (etcdctl restore + etcd start-up); every steward ≤ 150 MB RSS throughout.
 * Run: BENCH_DB_MB=1024 [BENCH_MEMBERS=1] npx vitest run --config vitest.bench.config.ts test/bench/restore.bench.ts
 * (`make bench` runs it with the others). The snapshot is saved to local + S3 (s3rver); the restore streams
 * it from the leader's local copy. etcd's default 2 GiB quota holds 1 GB: the steward has no quota setting.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort } from '../harness/ports.js';
import { killGroup, waitUntil } from '../harness/processes.js';
import { S3Server } from '../harness/s3.js';
import { runCtl, StewardCluster } from '../harness/steward-cluster.js';
import {
  cpuPercentBetween,
  etcdStops,
  fillConcurrently,
  maxBetween,
  parseEvents,
  peakRssMb,
  resetPeakRss,
  sampleRss,
  timedRun,
  timeline,
} from './restore-measure.js';

const DB_MB = Number(process.env.BENCH_DB_MB ?? 1024);
// 3 is the issue's case. On one machine the three members share its 2 cores and one disk, which hosts of
// their own would not: BENCH_MEMBERS=1 measures one member's whole path against the same baseline.
const MEMBERS = Number(process.env.BENCH_MEMBERS ?? 3);
const FILL_CONCURRENCY = Number(process.env.BENCH_FILL_CONCURRENCY ?? 8);
const RSS_LIMIT_MB = 150;
const RESTORE_TIMEOUT_MS = 60 * 60_000;
const ETCDCTL_ENV = { ETCDCTL_API: '3' };

function loadAverage(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

function healthy(endpoint: string): Promise<boolean> {
  return timedRun('etcdctl', ['--endpoints', endpoint, '--command-timeout=1s', 'endpoint', 'health'], ETCDCTL_ENV, 5000).then(
    () => true,
    () => false,
  );
}

describe('restore benchmark', () => {
  let s3: S3Server | undefined;
  let cluster: StewardCluster | undefined;
  let baselineEtcd: ChildProcess | undefined;
  let scratch = '';
  afterAll(async () => {
    if (baselineEtcd?.pid) killGroup(baselineEtcd.pid);
    await cluster?.destroy();
    await s3?.stop();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  it(`prints per-phase times, MB/s, the ratio to etcdctl restore + etcd start-up and steward RSS at ${DB_MB} MB`, async () => {
    const lines: string[] = [];
    const report = (line: string): void => {
      lines.push(line);
      console.log(line);
    };
    report(`load average at start: ${loadAverage()} (2 cores; other runs may share them)`);
    s3 = await S3Server.start({ bucket: 'bench' });
    cluster = await StewardCluster.create({
      size: MEMBERS,
      extraArgs: [...s3.stewardArgs(), '--etcd-disable-snapshots=true', '--etcd-snapshot-timeout=2h', '--etcd-s3-timeout=1h', '--restore-checks-timeout=30m'],
    });
    const c = cluster;
    await c.startAll();
    const { leader } = await c.waitForStableLeader(60_000);
    const endpoints = c.nodes.map((n) => n.clientUrl);
    const dbBytes = async (endpoint: string): Promise<number> => {
      const etcd = new Etcd3({ hosts: endpoint });
      try {
        return Number((await etcd.maintenance.status()).dbSize);
      } finally {
        etcd.close();
      }
    };

    // --- the database
    let started = Date.now();
    // bbolt's pages hold 512 KiB values with ~15 % overhead: fill most of what is missing, look again; at most 5 rounds.
    let dbMb = (await dbBytes(endpoints[leader] as string)) / 2 ** 20;
    for (let round = 0; round < 5 && dbMb < DB_MB * 0.98; round++) {
      await fillConcurrently(endpoints, Math.max(8, (DB_MB - dbMb) * 0.85), `/bench/${round}/`, FILL_CONCURRENCY);
      dbMb = (await dbBytes(endpoints[leader] as string)) / 2 ** 20;
    }
    report(`filled etcd to a ${dbMb.toFixed(0)} MB db in ${((Date.now() - started) / 1000).toFixed(0)} s (${FILL_CONCURRENCY} puts of 512 KiB at a time)`);

    // --- the snapshot, local + S3
    const leaderNode = c.node(leader);
    started = Date.now();
    const saved = await runCtl(['--endpoint', leaderNode.grpc, '-o', 'json', 'save'], {}, RESTORE_TIMEOUT_MS);
    if (saved.code !== 0) throw new Error(`save failed: ${saved.stderr}`);
    const name = (JSON.parse(saved.stdout) as { name: string }).name;
    const snapshotDir = join(leaderNode.stateDir, 'snapshots');
    const file = readdirSync(snapshotDir).find((f) => f.startsWith(name) && !f.endsWith('.json'));
    if (!file) throw new Error(`no local copy of ${name} in ${snapshotDir}: ${readdirSync(snapshotDir).join(', ')}`);
    const snapshotFile = join(snapshotDir, file);
    const snapshotBytes = statSync(snapshotFile).size;
    const snapshotMb = snapshotBytes / 2 ** 20;
    report(`saved ${name} (${snapshotMb.toFixed(0)} MB) to local + S3 in ${((Date.now() - started) / 1000).toFixed(1)} s`);

    // --- the baseline: one etcdctl snapshot restore, then etcd's own start-up on that dir
    scratch = await mkdtemp(join(c.root, 'baseline-'));
    const dataDir = join(scratch, 'etcd');
    const peerUrl = `http://127.0.0.1:${await freePort()}`;
    const clientUrl = `http://127.0.0.1:${await freePort()}`;
    const member = ['--name', 'baseline', '--initial-cluster', `baseline=${peerUrl}`, '--initial-advertise-peer-urls', peerUrl];
    const toolRestore = await timedRun(
      'etcdctl',
      ['snapshot', 'restore', snapshotFile, '--data-dir', dataDir, ...member, '--initial-cluster-token', 'baseline'],
      ETCDCTL_ENV,
      RESTORE_TIMEOUT_MS,
    );
    report(`load average before the baseline etcd start: ${loadAverage()}`);
    const etcdLog = openSync(join(scratch, 'etcd.log'), 'a');
    started = Date.now();
    baselineEtcd = spawn(
      'etcd',
      [
        `--name=baseline`,
        `--data-dir=${dataDir}`,
        `--listen-client-urls=${clientUrl}`,
        `--advertise-client-urls=${clientUrl}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=baseline=${peerUrl}`,
      ],
      { stdio: ['ignore', etcdLog, etcdLog], detached: true },
    );
    closeSync(etcdLog);
    await waitUntil('the baseline etcd to answer endpoint health', async () => ((await healthy(clientUrl)) ? true : undefined), 10 * 60_000, 100);
    const startupSeconds = (Date.now() - started) / 1000;
    const exited = once(baselineEtcd, 'exit');
    baselineEtcd.kill('SIGTERM');
    await exited;
    baselineEtcd = undefined;
    await rm(scratch, { recursive: true, force: true });
    scratch = '';
    const baselineSeconds = toolRestore.seconds + startupSeconds;

    // --- the steward's restore, with every steward's RSS sampled
    const pids = c.nodes.map((n) => n.process?.pid as number);
    const resets = pids.map((pid) => resetPeakRss(pid));
    const sampling = new AbortController();
    const samples = sampleRss(pids, 100, RESTORE_TIMEOUT_MS, sampling.signal);
    report(`load average before the restore: ${loadAverage()}`);
    started = Date.now();
    const result = await runCtl(['--endpoint', leaderNode.grpc, '-o', 'json', 'restore', name, '--yes'], {}, RESTORE_TIMEOUT_MS).finally(() =>
      sampling.abort(),
    );
    const ctlSeconds = (Date.now() - started) / 1000;
    const rss = await samples;
    const hwm = pids.map((pid) => peakRssMb(pid));
    report(`load average after the restore: ${loadAverage()}`);
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    await c.waitForStableLeader(120_000);
    const afterMb = (await dbBytes(endpoints[0] as string)) / 2 ** 20;

    const events = parseEvents(result.stdout);
    const summary = events.find((e) => e.event === 'result');
    const t = timeline(events);
    const at = (phase: string): number => t.phases.find((p) => p.phase === phase)?.at ?? NaN;
    const s = (ms: number): string => `${(ms / 1000).toFixed(2).padStart(7)} s`;
    report(`\n== restore of ${name}: ${snapshotMb.toFixed(0)} MB snapshot, ${c.nodes.length} members ==`);
    report('phase (cluster-wide events, each until the next)   duration');
    report(`  ctl start → Started (plan: prepare every member, lock) ${s(at('Started') - started)}`);
    t.phases.forEach((p, i) => {
      const next = t.phases[i + 1];
      if (next) report(`  ${p.phase.padEnd(50)} ${s(next.at - p.at)}`);
    });
    report('per member (from Distribute)            streamed      verified      restored (swap end, from Shutdown)');
    for (const [node, m] of Object.entries(t.members)) {
      const from = at('Distribute');
      report(`  ${node.padEnd(36)} ${s((m.streamedAt ?? NaN) - from)}  ${s((m.verifiedAt ?? NaN) - from)}  ${s((m.restoredAt ?? NaN) - at('Shutdown'))}`);
    }
    const streamedEnd = Math.max(...Object.values(t.members).map((m) => m.streamedAt ?? NaN));
    const distributeS = (streamedEnd - at('Distribute')) / 1000;
    const distributeVerifyS = (at('Verify') - at('Distribute')) / 1000;
    const members = Object.keys(t.members).length;
    report(
      `distribution: ${((snapshotMb * members) / distributeS).toFixed(0)} MB/s streaming (${members} × ${snapshotMb.toFixed(0)} MB in ${distributeS.toFixed(2)} s), ` +
        `${((snapshotMb * members) / distributeVerifyS).toFixed(0)} MB/s with the members' verify (${distributeVerifyS.toFixed(2)} s); bytesDistributed ${summary?.bytesDistributed}`,
    );
    report(`total restore: ${ctlSeconds.toFixed(2)} s ctl wall time; ${summary?.durationSeconds?.toFixed(2)} s Started→Finished by the coordinator`);
    report(`db after the restore: ${afterMb.toFixed(0)} MB`);
    report('etcd stops per member, from the steward logs (Shutdown, then the move back to the client URLs in RestartCluster):');
    c.nodes.forEach((node) => {
      const stops = etcdStops(c.logs(node.index), at('Started'), at('Finished'));
      report(
        `  ${node.name}: stops ${stops.stops.map((x) => `${x.toFixed(2)} s`).join(', ')}; etcd "leadership transfer failed" ${stops.failedTransfers}×; ` +
          `etcdctl restore + status + swap ${stops.restoreSeconds.toFixed(2)} s`,
      );
    });
    report(`\n== baseline (same snapshot file, one member) ==`);
    report(`  etcdctl snapshot restore        ${s(toolRestore.seconds * 1000)}   peak RSS ${toolRestore.peakRssMb.toFixed(0)} MB`);
    report(`  etcd start-up until healthy     ${s(startupSeconds * 1000)}`);
    report(`  sum                             ${s(baselineSeconds * 1000)}`);
    const ratio = ctlSeconds / baselineSeconds;
    report(`ratio restore / (etcdctl restore + etcd start-up): ${ratio.toFixed(2)} (target ≤ 2: ${ratio <= 2 ? 'met' : 'NOT met'})`);

    report(`\n== steward RSS during the restore (VmRSS every 100 ms; VmHWM after a clear_refs reset) ==`);
    const phaseNames = t.phases.map((p) => p.phase);
    report(
      `  steward  ${'at start'.padStart(8)} ${'sampled max'.padStart(11)} ${'VmHWM'.padStart(7)}  ${phaseNames
        .slice(0, -1)
        .map((p) => p.padStart(16))
        .join('')}`,
    );
    let worst = 0;
    c.nodes.forEach((node, i) => {
      const r = rss[i];
      if (!r) return;
      const peak = resets[i] ? Math.max(r.maxMb, hwm[i] ?? 0) : r.maxMb;
      worst = Math.max(worst, peak);
      const perPhase = t.phases.slice(0, -1).map((p, j) => maxBetween(r.samples, p.at, t.phases[j + 1]?.at ?? p.at));
      report(
        `  ${node.name.padEnd(7)}${i === leader ? '*' : ' '} ${(r.samples[0]?.[1] ?? NaN).toFixed(0).padStart(8)} ${r.maxMb.toFixed(0).padStart(11)} ${(resets[i] ? (hwm[i] ?? NaN).toFixed(0) : 'n/a').padStart(7)}  ${perPhase.map((mb) => (mb > 0 ? mb.toFixed(0) : '-').padStart(16)).join('')}   (${r.count} samples)`,
      );
    });
    report('steward CPU, % of one core (Distribute, Shutdown, RestartCluster):');
    c.nodes.forEach((node, i) => {
      const r = rss[i];
      if (!r) return;
      const cpu = ['Distribute', 'Shutdown', 'RestartCluster'].map((p) => {
        const from = at(p);
        const to = t.phases.find((q) => q.at > from)?.at ?? from;
        return `${cpuPercentBetween(r.samples, from, to).toFixed(0)} %`;
      });
      report(`  ${node.name}${i === leader ? '*' : ' '} ${cpu.join(', ')}`);
    });
    report(`  (* the coordinator) worst steward peak ${worst.toFixed(0)} MB (target ≤ ${RSS_LIMIT_MB} MB: ${worst <= RSS_LIMIT_MB ? 'met' : 'NOT met'})`);
    console.log(`\nSUMMARY\n${lines.join('\n')}`);
  });
});
