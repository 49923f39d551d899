import { existsSync, readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Server } from '../harness/s3.js';
import { waitUntil } from '../harness/processes.js';
import { StewardCluster, runCtl } from '../harness/steward-cluster.js';
import { keptDataDirs, putKeys, quietStatus, restoreCtl, restoreStatus, save, userKeys } from '../harness/restore.js';

/**
 * The hard cases: quorum lost with every data dir gone, and stewards SIGKILLed in the middle of a restore
 * (by the failpoints in src/restore/failpoints.ts, at the worst moments: a member right after its data dir
 * was moved aside, the coordinator right after every member swapped).
 */
describe('restore with quorum lost, and crash safety (3 stewards, gzip snapshots, real s3rver)', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  const a: Record<string, string> = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`/a/${i}`, `value-${i}`]));

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'snapshots' });
    cluster = await StewardCluster.create({
      size: 3,
      extraArgs: [
        ...s3.stewardArgs(),
        '--etcd-disable-snapshots=true',
        '--etcd-snapshot-compress=true',
        '--restore-checks-timeout=90s',
        '--control-spec-ttl=2s',
      ],
    });
    await cluster.startAll();
    await cluster.waitForStableLeader(30_000);
  });
  afterAll(async () => {
    await cluster?.destroy();
    await s3?.stop();
  });

  it('quorum lost and every data dir emptied: ls lists the stores, restore --yes against the survivor brings all three back from S3', async () => {
    await putKeys(cluster, a);
    const name = await save(cluster.node(0));
    await putKeys(cluster, { '/b/1': 'lost' });
    // With etcd down the stewards find each other through the spec, which the leader fills in once they run.
    await waitUntil(
      "every steward's address in the spec",
      async () => {
        const got = await runCtl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'spec', 'get']);
        const spec = got.code === 0 ? (JSON.parse(got.stdout) as { members: { grpc?: string }[] }) : undefined;
        return spec?.members.every((m) => m.grpc) ? true : undefined;
      },
      30_000,
      500,
    );
    await cluster.stop(1);
    await cluster.stop(2);
    for (const node of cluster.nodes) await rm(node.dataDir, { recursive: true, force: true });
    // The survivor's own copy goes too: the snapshot must come from S3.
    for (const entry of readdirSync(join(cluster.node(0).stateDir, 'snapshots'))) {
      if (entry.startsWith(name)) await rm(join(cluster.node(0).stateDir, 'snapshots', entry));
    }
    cluster.start(1);
    cluster.start(2);
    await waitUntil(
      'the restarted stewards to answer',
      async () => ((await quietStatus(cluster.node(2))) && (await quietStatus(cluster.node(1))) ? true : undefined),
      30_000,
    );

    const ls = await runCtl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'ls'], {}, 60_000);
    expect(ls.code, ls.stderr).toBe(0);
    expect((JSON.parse(ls.stdout) as { name: string }[]).map((r) => r.name)).toContain(name);
    expect(ls.stderr).toMatch(/note:/);

    const result = await restoreCtl(cluster.node(0), [name, '--yes']);
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(result.stdout).toContain(`s3://snapshots/backups/${name}.gz`);
    await cluster.waitForStableLeader(60_000);
    for (const node of cluster.nodes) expect(await userKeys(node.clientUrl), node.name).toEqual(a);
    const ids = new Set(await Promise.all(cluster.nodes.map(async (n) => (await quietStatus(n))?.clusterId)));
    expect(ids.size).toBe(1);

    // The spec follows: after a full restart the gate and the spec checks accept the restored cluster.
    const [id] = [...ids];
    await cluster.stopAll();
    await cluster.startAll();
    const { statuses } = await cluster.waitForStableLeader(60_000);
    for (const s of statuses) {
      expect(s.clusterId).toBe(id);
      expect(s.specHealthy, s.specProblem).toBe(true);
    }
  });

  it('a member SIGKILLed right after its data dir was moved aside completes the swap on restart; abort then rolls it back', async () => {
    const { leader } = await cluster.waitForStableLeader(60_000);
    const victim = (leader + 1) % 3;
    cluster.setNodeEnv(victim, { ETCD_STEWARD_FAILPOINTS: 'restore-member-after-old-moved' });
    await cluster.stop(victim);
    cluster.start(victim);
    const { leader: coordinator } = await cluster.waitForStableLeader(60_000);
    const name = await save(cluster.node(coordinator));
    await putKeys(cluster, { '/c/1': 'before-the-crash' });
    const kept = await userKeys(cluster.node(coordinator).clientUrl);

    const result = await restoreCtl(cluster.node(coordinator), [name, '--yes']);
    expect(result.code, `${result.stdout}\n${result.stderr}`).not.toBe(0);
    const node = cluster.node(victim);
    await waitUntil('the victim to be dead', () => (node.process?.exitCode !== null || node.process?.signalCode !== null ? true : undefined), 30_000);
    expect(existsSync(node.dataDir)).toBe(false);
    expect(keptDataDirs(node).some((d) => d.includes('-old-'))).toBe(true);

    cluster.setNodeEnv(victim, {});
    cluster.start(victim);
    const status = await waitUntil(
      'the victim to report its part',
      async () => {
        const s = await restoreStatus(cluster.node(victim)).catch(() => undefined);
        return s?.members.find((m) => m.node === node.name)?.phase === 'RestartCluster' ? s : undefined;
      },
      60_000,
      500,
    );
    const mine = status.members.find((m) => m.node === node.name);
    expect(mine?.swapped).toBe(true);
    expect(existsSync(node.dataDir)).toBe(true);
    expect(status.nextStep).toMatch(/abort|resume/);

    const abort = await runCtl(['--endpoint', cluster.node(coordinator).grpc, 'restore', 'abort'], {}, 120_000);
    expect(abort.code, `${abort.stdout}\n${abort.stderr}`).toBe(0);
    const after = await restoreStatus(cluster.node(coordinator));
    expect(after.members.find((m) => m.node === node.name)?.rolledBack).toBe(true);
    expect(after.lockHolder).toBe('');
    await cluster.waitForStableLeader(60_000);
    for (const n of cluster.nodes) expect(await userKeys(n.clientUrl), n.name).toEqual(kept);
    expect(keptDataDirs(node).some((d) => d.includes('-restored-'))).toBe(true);
  });

  it('the coordinator SIGKILLed right after every member swapped: restarted, `restore NAME --yes` resumes and finishes', async () => {
    const { leader } = await cluster.waitForStableLeader(60_000);
    const name = await save(cluster.node(leader));
    const expected = await userKeys(cluster.node(leader).clientUrl);
    expect(expected['/c/1']).toBe('before-the-crash');
    await putKeys(cluster, { '/d/1': 'gone-after-restore' });
    // Armed everywhere: only the steward that coordinates reaches this failpoint, whichever leads after the restart.
    for (const n of cluster.nodes) cluster.setNodeEnv(n.index, { ETCD_STEWARD_FAILPOINTS: 'restore-coordinator-after-swap' });
    await cluster.stopAll();
    await cluster.startAll();
    const { leader: armed } = await cluster.waitForStableLeader(60_000);
    const result = await restoreCtl(cluster.node(armed), [name, '--yes']);
    expect(result.code).not.toBe(0);
    for (const n of cluster.nodes) cluster.setNodeEnv(n.index, {});
    cluster.start(armed);
    const status = await waitUntil(
      'every member to wait quarantined',
      async () => {
        const s = await restoreStatus(cluster.node(armed)).catch(() => undefined);
        return s && s.members.length === 3 && s.members.every((m) => m.phase === 'RestartCluster') ? s : undefined;
      },
      60_000,
      500,
    );
    expect(status.lockHolder).toBe(cluster.node(armed).name);
    const resumed = await restoreCtl(cluster.node(armed), [name, '--yes']);
    expect(resumed.code, `${resumed.stdout}\n${resumed.stderr}`).toBe(0);
    await cluster.waitForStableLeader(60_000);
    for (const n of cluster.nodes) expect(await userKeys(n.clientUrl), n.name).toEqual(expected);
  });
});
