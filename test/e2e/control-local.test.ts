import { existsSync, readFileSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlStore } from '../../src/control/control-store.js';
import { SpecPeerDirectory } from '../../src/control/peer-directory.js';
import { LocalStore } from '../../src/store/local.js';
import { waitUntil } from '../harness/processes.js';
import { StewardCluster } from '../harness/steward-cluster.js';

describe('without S3: the running cluster is recorded as the spec on every node (3 stewards, real etcd)', () => {
  let cluster: StewardCluster;

  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 3, extraArgs: ['--control-spec-ttl=2s', '--etcd-disable-snapshots=true'] });
    await cluster.startAll();
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('every steward ends up with a healthy spec naming the cluster ID, kept in its own state dir', async () => {
    const { statuses } = await cluster.waitForStableLeader(30_000);
    const clusterId = statuses[0]?.clusterId;
    await waitUntil(
      'every steward to report the recorded spec',
      async () => {
        for (const node of cluster.nodes) if (!(await cluster.status(node.index)).specHealthy) return undefined;
        return true;
      },
      20_000,
      250,
    );
    for (const node of cluster.nodes) {
      const copy = JSON.parse(readFileSync(join(node.stateDir, 'control', 'cluster-spec.json'), 'utf8')) as { clusterId: string; members: unknown[] };
      expect(copy.clusterId).toBe(clusterId);
      expect(copy.members).toHaveLength(3);
      // Owner-only state: the dir 0700, the pid file and the mirrored spec 0600.
      expect(statSync(node.stateDir).mode & 0o777).toBe(0o700);
      expect(statSync(join(node.stateDir, 'etcd.pid')).mode & 0o777).toBe(0o600);
      expect(statSync(join(node.stateDir, 'control', 'cluster-spec.json')).mode & 0o777).toBe(0o600);
    }
  });

  it("every member's steward gRPC address is recorded in the spec, and a steward finds its peers from its own copy with etcd down", async () => {
    await waitUntil(
      'the addresses in every copy',
      () => {
        for (const node of cluster.nodes) {
          const copy = JSON.parse(readFileSync(join(node.stateDir, 'control', 'cluster-spec.json'), 'utf8')) as {
            members: Array<{ name: string; grpc?: string }>;
          };
          if (!cluster.nodes.every((n) => copy.members.find((m) => m.name === n.name)?.grpc === n.grpc)) return undefined;
        }
        return true;
      },
      20_000,
      250,
    );
    // Every steward and etcd stopped: nothing answers on a client URL any more.
    await cluster.stopAll();
    const node = cluster.node(1);
    const client = new Etcd3({ hosts: node.clientUrl });
    try {
      const directory = new SpecPeerDirectory({
        control: new ControlStore(new LocalStore(join(node.stateDir, 'control')), client),
        stateDir: node.stateDir,
        logger: pino({ level: 'silent' }),
      });
      const peers = await directory.list(AbortSignal.timeout(5000));
      expect(peers.sort((a, b) => a.node.localeCompare(b.node))).toEqual(cluster.nodes.map((n) => ({ node: n.name, grpc: n.grpc })));
    } finally {
      client.close();
    }
    await cluster.startAll();
  });

  it('a member whose whole disk was lost (data dir and state dir) is held back: the running members know it ran', async () => {
    const { leader } = await cluster.waitForStableLeader(15_000);
    const victim = (leader + 2) % 3;
    const node = cluster.node(victim);
    await cluster.stop(victim);
    await rm(node.dataDir, { recursive: true, force: true });
    await rm(node.stateDir, { recursive: true, force: true });
    cluster.start(victim);
    await waitUntil('the start to be held back', () => (cluster.logs(victim).includes('refusing to start etcd: the data dir') ? true : undefined), 20_000, 200);
    const status = await cluster.status(victim);
    expect(status.etcdRunning).toBe(false);
    expect(status.specProblem).toMatch(/lost its data .*the members at .* list it as started/);
    expect(existsSync(join(node.dataDir, 'member'))).toBe(false);
  });
});
