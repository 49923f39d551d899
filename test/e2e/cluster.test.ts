import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Etcd3 } from 'etcd3';
import { StewardCluster } from '../harness/steward-cluster.js';
import { isAlive, processGroupMembers, waitUntil } from '../harness/processes.js';

const TTL_SECONDS = 5;

async function metric(cluster: StewardCluster, index: number, name: string): Promise<number> {
  const body = await (await fetch(`http://${cluster.node(index).http}/metrics`)).text();
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`metric ${name} missing`);
  return Number(line.split(' ')[1]);
}

describe('three stewards on a real etcd cluster', () => {
  let cluster: StewardCluster;
  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 3, electionTtl: `${TTL_SECONDS}s` });
    await cluster.startAll();
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('elects exactly one leader within 15 s and every steward sees 3 healthy members', async () => {
    const started = Date.now();
    const { statuses, leader } = await cluster.waitForStableLeader(15_000);
    console.log(`start-up: 3 stewards up with a leader and 3 healthy members in ${Date.now() - started} ms`);
    expect(statuses.filter((s) => s.isLeader)).toHaveLength(1);
    expect(statuses[leader]?.fencingToken).toMatch(/^\d+$/);
    for (const status of statuses) {
      expect(status.members.map((m) => m.name).sort()).toEqual(['node-1', 'node-2', 'node-3']);
      expect(status.members.every((m) => m.healthy)).toBe(true);
      expect(status.members.filter((m) => m.isRaftLeader)).toHaveLength(1);
      expect(status.clusterId).toBe(statuses[0]?.clusterId);
    }
    expect(await metric(cluster, leader, 'etcd_steward_is_leader')).toBe(1);
    const ready = await fetch(`http://${cluster.node(0).http}/readyz`);
    expect(ready.status).toBe(200);
  });

  it('etcd-stewardctl status prints a table and camelCase JSON', async () => {
    const { leader } = await cluster.waitForStableLeader(15_000);
    const text = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'status']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^node:\s+node-1/m);
    expect(text.stdout).toMatch(new RegExp(`^leader:\\s+${cluster.node(leader).name}`, 'm'));
    expect(text.stdout).toMatch(/MEMBER\s+ENDPOINT\s+HEALTH/);
    expect(text.stdout.match(/healthy/g)).toHaveLength(3);

    const json = await cluster.ctl(['-o', 'json', 'status'], { ETCD_STEWARD_ENDPOINT: cluster.node(1).grpc });
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as Record<string, unknown> & { members: Array<Record<string, unknown>> };
    expect(parsed).toMatchObject({ node: 'node-2', isLeader: leader === 1, leader: cluster.node(leader).name, version: '0.1.0' });
    expect(typeof parsed.uptimeSeconds).toBe('number');
    expect(parsed.members).toHaveLength(3);
    for (const member of parsed.members) {
      expect(Object.keys(member)).toEqual(expect.arrayContaining(['name', 'endpoint', 'healthy', 'isRaftLeader', 'dbSizeBytes', 'revision', 'alarms']));
      expect(member.healthy).toBe(true);
      expect(member.dbSizeBytes).toBeGreaterThan(0);
      expect(member.revision).toBeGreaterThan(0);
    }
  });

  it('restarts an etcd child that was SIGKILLed and counts the restart', async () => {
    const victim = 2;
    const oldPid = cluster.etcdPid(victim);
    expect(oldPid).toBeDefined();
    const before = await metric(cluster, victim, 'etcd_steward_etcd_restarts_total');
    process.kill(oldPid as number, 'SIGKILL');
    const newPid = await waitUntil(
      'a new etcd pid',
      () => {
        const pid = cluster.etcdPid(victim);
        return pid !== undefined && pid !== oldPid ? pid : undefined;
      },
      15_000,
    );
    expect(isAlive(newPid)).toBe(true);
    await cluster.waitForStableLeader(20_000);
    expect(await metric(cluster, victim, 'etcd_steward_etcd_restarts_total')).toBe(before + 1);
    expect((await cluster.status(victim)).etcdRestarts).toBe(before + 1);
    expect(cluster.logs(victim)).toContain('etcd exited unexpectedly; restarting it');
  });

  it(`elects a new leader within TTL + 3 s after the leader steward is SIGKILLed`, async () => {
    const { leader } = await cluster.waitForStableLeader(15_000);
    const survivors = cluster.nodes.map((n) => n.index).filter((i) => i !== leader);
    const killedAt = Date.now();
    cluster.signal(leader, 'SIGKILL');
    const newLeader = await waitUntil(
      'a new leader',
      async () => {
        for (const i of survivors) {
          const status = await cluster.status(i).catch(() => undefined);
          if (status?.isLeader) return status.node;
        }
        return undefined;
      },
      (TTL_SECONDS + 10) * 1000,
      100,
    );
    const failoverMs = Date.now() - killedAt;
    console.log(`failover: new leader ${newLeader} ${failoverMs} ms after SIGKILL of ${cluster.node(leader).name} (election TTL ${TTL_SECONDS}s)`);
    expect(newLeader).not.toBe(cluster.node(leader).name);
    expect(failoverMs).toBeLessThan((TTL_SECONDS + 3) * 1000);

    // The killed steward comes back: it stops the etcd it orphaned, starts a supervised one and rejoins.
    cluster.start(leader);
    const { statuses } = await cluster.waitForStableLeader(30_000);
    expect(statuses.filter((s) => s.isLeader).map((s) => s.node)).toEqual([newLeader]);
  });

  it('SIGTERM makes a steward exit 0 with its etcd stopped and no process left behind', async () => {
    const victim = 0;
    const stewardPid = cluster.node(victim).process?.pid as number;
    const etcdPid = cluster.etcdPid(victim) as number;
    expect(etcdPid).toBeDefined();
    const result = await cluster.stop(victim);
    console.log(`graceful stop: exit ${result.code} in ${result.ms} ms`);
    expect(result.code).toBe(0);
    expect(result.ms).toBeLessThan(30_000);
    expect(isAlive(etcdPid)).toBe(false);
    expect(processGroupMembers(stewardPid)).toEqual([]);
    cluster.start(victim);
    await cluster.waitForStableLeader(30_000);
  });

  it('a whole-cluster restart on the same data dirs keeps the cluster ID and every key', async () => {
    const { statuses } = await cluster.waitForStableLeader(15_000);
    const clusterId = statuses[0]?.clusterId;
    const client = new Etcd3({ hosts: cluster.nodes.map((n) => n.clientUrl) });
    try {
      for (let i = 0; i < 20; i++) await client.put(`/test/key-${i}`).value(`value-${i}`);
    } finally {
      client.close();
    }
    const stops = await Promise.all(cluster.nodes.map((n) => cluster.stop(n.index)));
    expect(stops.map((s) => s.code)).toEqual([0, 0, 0]);
    await cluster.startAll();
    const after = await cluster.waitForStableLeader(30_000);
    expect(after.statuses.every((s) => s.clusterId === clusterId)).toBe(true);
    const reader = new Etcd3({ hosts: cluster.nodes.map((n) => n.clientUrl) });
    try {
      const keys = await reader.getAll().prefix('/test/').strings();
      expect(Object.keys(keys)).toHaveLength(20);
      expect(keys['/test/key-7']).toBe('value-7');
    } finally {
      reader.close();
    }
  });
});
