import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAlive, waitUntil } from '../harness/processes.js';
import { StewardCluster } from '../harness/steward-cluster.js';

async function readyz(http: string): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://${http}/readyz`, { signal: AbortSignal.timeout(2000) });
  return { status: response.status, body: await response.text() };
}

describe('/readyz follows the supervised etcd at once (1 steward, real etcd)', () => {
  let cluster: StewardCluster;

  beforeAll(async () => {
    // A slow probe: the last good probe stays "recent" for 15 s, so only the live check can answer 503.
    cluster = await StewardCluster.create({ size: 1, extraArgs: ['--health-interval=5s', '--etcd-disable-snapshots=true', '--etcd-restart-max-backoff=5s'] });
    await cluster.startAll();
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('answers 503 naming etcd as soon as etcd is gone, though the last health probe was good', async () => {
    const { http } = cluster.node(0);
    await waitUntil('ready', async () => ((await readyz(http)).status === 200 ? true : undefined), 30_000, 200);
    const pid = cluster.etcdPid(0);
    expect(pid).toBeDefined();
    process.kill(pid as number, 'SIGKILL');
    await waitUntil('etcd to be gone', () => (!isAlive(pid as number) ? true : undefined), 5000, 5);
    const seen: number[] = [];
    let reason = '';
    // Inside the supervisor's restart backoff: etcd is not running, whatever the last probe said.
    // The supervisor counts as running from the spawn, a moment before it writes the new pid file,
    // so a 200 is right only when a new etcd has been started; that is checked after the loop.
    for (let i = 0; i < 8; i++) {
      const answer = await readyz(http);
      seen.push(answer.status);
      if (answer.status === 503) reason = answer.body;
      if (answer.status !== 503 || cluster.etcdPid(0) !== undefined) break;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    expect(seen[0]).toBe(503);
    expect(seen.slice(0, -1).every((status) => status === 503)).toBe(true);
    if (seen.at(-1) !== 503) {
      const restarted = await waitUntil("the restarted etcd's pid file", () => cluster.etcdPid(0), 2000, 10);
      expect(restarted).not.toBe(pid);
    }
    expect(reason).toMatch(/etcd is not running under this steward/);
    // And it is ready again once the restarted etcd answers.
    await waitUntil('ready again', async () => ((await readyz(http)).status === 200 ? true : undefined), 30_000, 200);
  });
});
