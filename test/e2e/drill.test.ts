import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Server } from '../harness/s3.js';
import { StewardCluster } from '../harness/steward-cluster.js';
import { etcdProcessesUnder } from '../harness/processes.js';

interface LsEntry {
  name: string;
  location: string;
  verified: { result: string; at: string; hashKV: number; reason: string; node: string } | null;
}

interface VerifyJson {
  name: string;
  passed: boolean;
  failure: string;
  reason: string;
  source: string;
  node: string;
  revision: number;
  keys: number;
  snapshotKeys: number;
  hashKV: number;
  recordProblem: string;
}

async function metric(cluster: StewardCluster, index: number, line: RegExp): Promise<number | undefined> {
  const body = await (await fetch(`http://${cluster.node(index).http}/metrics`)).text();
  const match = body.split('\n').find((l) => line.test(l));
  return match === undefined ? undefined : Number(match.split(' ').pop());
}

describe('restore drills: etcd-stewardctl verify (3 stewards, real s3rver, real etcd)', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  const save = async (node: number): Promise<string> => {
    const result = await cluster.ctl(['--endpoint', cluster.node(node).grpc, '-o', 'json', 'save']);
    expect(result.code, result.stderr).toBe(0);
    return (JSON.parse(result.stdout) as { name: string }).name;
  };
  const ls = async (node: number): Promise<LsEntry[]> => {
    const result = await cluster.ctl(['--endpoint', cluster.node(node).grpc, '-o', 'json', 'ls']);
    expect(result.code, result.stderr).toBe(0);
    return JSON.parse(result.stdout) as LsEntry[];
  };
  const drillLeftovers = async (node: number): Promise<{ dirs: string[]; processes: string[] }> => {
    const drillDir = join(cluster.node(node).stateDir, 'drill');
    return { dirs: await readdir(drillDir).catch(() => []), processes: await etcdProcessesUnder(drillDir) };
  };

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'snapshots' });
    cluster = await StewardCluster.create({ size: 3, extraArgs: [...s3.stewardArgs(), '--etcd-disable-snapshots=true'] });
    await cluster.startAll();
    await cluster.waitForStableLeader(20_000);
  });
  afterAll(async () => {
    await cluster?.destroy();
    await s3?.stop();
  });

  it('save, then verify NAME on another steward passes; ls and status show it, the metrics are set, nothing is left behind', async () => {
    const name = await save(0);
    // node-2 holds no copy of its own: it drills the copy a restore there would read, S3's.
    const verify = await cluster.ctl(['--endpoint', cluster.node(1).grpc, '-o', 'json', 'verify', name], {});
    expect(verify.code, verify.stderr).toBe(0);
    const result = JSON.parse(verify.stdout) as VerifyJson;
    expect(result).toMatchObject({ name, passed: true, failure: '', reason: '', node: 'node-2', recordProblem: '' });
    expect(result.source).toBe(`s3://snapshots/backups/${name}`);
    expect(result.revision).toBeGreaterThan(0);
    // The stewards' own keys (election, registry, inventory) at least.
    expect(result.keys).toBeGreaterThan(0);
    expect(result.hashKV).not.toBe(0);

    const records = (await ls(2)).filter((e) => e.name === name);
    expect(records.length).toBe(2);
    for (const record of records) expect(record.verified).toMatchObject({ result: 'passed', hashKV: result.hashKV, reason: '', node: 'node-2' });
    const text = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'ls']);
    expect(text.stdout.split('\n')[0]).toContain('VERIFIED');
    expect(text.stdout.split('\n').find((l) => l.startsWith(name))).toMatch(/passed \d+(\.\d)?s ago$/);

    const status = await cluster.ctl(['--endpoint', cluster.node(2).grpc, 'status']);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toMatch(new RegExp(`last verified restorable: ${name}, \\d+(\\.\\d)?s ago`));
    const statusJson = JSON.parse((await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'status'])).stdout) as { lastVerified: string };
    expect(statusJson.lastVerified).toBe(name);

    const created = await metric(cluster, 1, /^etcd_steward_last_verified_snapshot_timestamp_seconds /);
    expect(created).toBeGreaterThan(Date.now() / 1000 - 600);
    expect(await metric(cluster, 1, /^etcd_steward_snapshot_verify_duration_seconds_count /)).toBe(1);

    expect(await drillLeftovers(1)).toEqual({ dirs: [], processes: [] });
  }, 180_000);

  it('a stored copy with one byte flipped fails its drill: exit 4 with the reason, recorded as FAILED, counted, nothing left', async () => {
    const name = await save(0);
    const local = join(cluster.node(0).stateDir, 'snapshots', name);
    const bytes = await readFile(local);
    bytes[8192] = (bytes[8192] as number) ^ 0x01;
    await writeFile(local, bytes);
    // node-1 reads its own dir first, as a restore coordinated there would.
    const verify = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'verify', name]);
    expect(verify.code, verify.stderr).toBe(4);
    expect(verify.stdout).toContain(`snapshot ${name} is NOT restorable (integrity)`);
    expect(verify.stderr).toMatch(/^error\[SNAPSHOT_NOT_RESTORABLE\]: .*SHA-256/);

    const records = (await ls(1)).filter((e) => e.name === name);
    for (const record of records) expect(record.verified).toMatchObject({ result: 'failed', node: 'node-1' });
    expect(records[0]?.verified?.reason).toContain('did not check out');
    expect(await metric(cluster, 0, /^etcd_steward_snapshot_verify_failures_total\{reason="integrity"\} /)).toBe(1);
    expect(await drillLeftovers(0)).toEqual({ dirs: [], processes: [] });

    // restore refuses it (a plan blocker, nothing changed) unless --force says to restore it anyway.
    const etcdPids = [0, 1, 2].map((i) => cluster.etcdPid(i));
    const refused = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'restore', name, '--yes']);
    expect(refused.code, refused.stderr).toBe(4);
    expect(refused.stderr).toMatch(/^error\[RESTORE_BLOCKED\]: .*FAILED its last restore drill/m);
    const forced = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'restore', name, '--force']);
    expect(forced.code, forced.stderr).toBe(4);
    expect(forced.stderr).toMatch(/^error\[RESTORE_NOT_CONFIRMED\]/m);
    expect(forced.stdout).toContain('restoring it anyway (--force)');
    expect(forced.stdout).not.toContain('pass --force to restore this one anyway');
    // Nothing changed: every member still runs the etcd it ran before.
    expect([0, 1, 2].map((i) => cluster.etcdPid(i))).toEqual(etcdPids);
    expect(etcdPids.every((pid) => pid !== undefined)).toBe(true);

    // A failed drill is not a restorable snapshot: status still names the one that passed.
    const status = await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'status']);
    expect((JSON.parse(status.stdout) as { lastVerified: string }).lastVerified).not.toBe(name);
  }, 180_000);

  it('an unknown snapshot is exit 3; no name is a usage error (exit 2)', async () => {
    const unknown = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'verify', 'nope-node-1-1700000000']);
    expect(unknown.code, unknown.stderr).toBe(3);
    expect(unknown.stderr).toMatch(/^error\[NOT_FOUND\]: no snapshot named nope-node-1-1700000000/);
    const missing = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'verify']);
    expect(missing.code).toBe(2);
    expect(await drillLeftovers(0)).toEqual({ dirs: [], processes: [] });
  }, 60_000);
});

describe('leader-scheduled restore drills (3 stewards, a snapshot every 5 s, --etcd-snapshot-verify-cron default)', () => {
  let cluster: StewardCluster;

  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 3, extraArgs: ['--etcd-snapshot-schedule-cron=*/5 * * * * *', '--etcd-snapshot-retention=2'] });
    await cluster.startAll();
    await cluster.waitForStableLeader(20_000);
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('after a scheduled snapshot the leader drills it in the background: ls shows it passed, drilled by the leader', async () => {
    let verified: LsEntry | undefined;
    const deadline = Date.now() + 60_000;
    while (!verified && Date.now() < deadline) {
      const result = await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'ls']);
      verified = (JSON.parse(result.stdout || '[]') as LsEntry[]).find((e) => e.name.startsWith('etcd-snapshot-') && e.verified?.result === 'passed');
      if (!verified) await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    expect(verified, 'no scheduled snapshot was drilled within 60 s').toBeDefined();
    const { leader } = await cluster.waitForStableLeader(10_000);
    expect(verified?.verified?.node).toBe(cluster.node(leader).name);
    // Nothing left on the leader between or after drills but, at most, the scratch dir of the one running now.
    const drillDir = join(cluster.node(leader).stateDir, 'drill');
    expect((await readdir(drillDir)).length).toBeLessThanOrEqual(1);
    expect((await etcdProcessesUnder(drillDir)).length).toBeLessThanOrEqual(1);
  }, 120_000);
});
