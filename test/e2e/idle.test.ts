import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { measureIdle } from '../harness/idle-meter.js';
import { StewardCluster } from '../harness/steward-cluster.js';

// An idle follower once re-ran its campaign wait in a tight loop: a Range, a Watch and a fresh HTTP/2
// channel per turn, ~35 TCP connections a second and a third of a core. The bound here is a handful a
// minute: a probe client that reconnects after an etcd blip is fine, a loop is not.
const WINDOW_MS = 30_000;
const MAX_NEW_CONNECTIONS = 4;
// Generous for a loaded 2-core CI machine; `make bench` prints the real figure (well under 1 %).
const MAX_CPU_PERCENT = 8;

describe('an idle cluster costs almost nothing', () => {
  let cluster: StewardCluster;
  beforeAll(async () => {
    // The default probe interval (5 s), not the harness's 1 s: this measures what a node really runs.
    cluster = await StewardCluster.create({ size: 3, electionTtl: '5s', extraArgs: ['--health-interval=5s', '--log-level=info'] });
    await cluster.startAll();
    await cluster.waitForStableLeader(30_000);
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('no steward, leader or follower, opens new connections or burns CPU while nothing happens', async () => {
    const { leader } = await cluster.waitForStableLeader(15_000);
    const pids = cluster.nodes.map((n) => n.process?.pid ?? 0);
    expect(pids.every((pid) => pid > 0)).toBe(true);
    const costs = await measureIdle(pids, WINDOW_MS);
    for (const [i, cost] of costs.entries()) {
      const role = i === leader ? 'leader' : 'follower';
      console.log(
        `idle ${cluster.node(i).name} (${role}): cpu ${cost.cpuPercent.toFixed(2)} %, rss ${cost.rssMb.toFixed(0)} MB, new TCP connections ${cost.newTcpConnections} in ${cost.windowMs} ms`,
      );
    }
    for (const cost of costs) {
      expect(cost.newTcpConnections).toBeLessThanOrEqual(MAX_NEW_CONNECTIONS);
      expect(cost.cpuPercent).toBeLessThan(MAX_CPU_PERCENT);
    }
    // Leadership must not flap under an idle load: the same leader before and after the window.
    const after = await cluster.waitForStableLeader(15_000);
    expect(after.leader).toBe(leader);
  });
});
