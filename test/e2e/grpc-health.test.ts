import { once } from 'node:events';
import { status as grpcStatus } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HealthProbe } from '../harness/grpc-health.js';
import { isAlive, waitUntil } from '../harness/processes.js';
import { StewardCluster } from '../harness/steward-cluster.js';

describe('grpc.health.v1.Health follows readiness (1 steward, real etcd, plaintext)', () => {
  let cluster: StewardCluster;
  let probe: HealthProbe;

  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 1, extraArgs: ['--health-interval=5s', '--etcd-disable-snapshots=true', '--etcd-restart-max-backoff=5s'] });
    await cluster.startAll();
    probe = new HealthProbe(cluster.node(0).grpc);
  });
  afterAll(async () => {
    probe?.close();
    await cluster?.destroy();
  });

  it('SERVING once ready, for the server and the ctl service; NOT_FOUND for any other name', async () => {
    await waitUntil('SERVING', async () => ((await probe.check('')) === 'SERVING' ? true : undefined), 30_000, 200);
    expect(await probe.check('etcdsteward.v1.StewardCtl')).toBe('SERVING');
    expect(await probe.check('no.such.Service')).toBe(`error:${grpcStatus.NOT_FOUND}`);
    const readyz = await fetch(`http://${cluster.node(0).http}/readyz`, { signal: AbortSignal.timeout(2000) });
    expect(readyz.status).toBe(200);
  });

  it('NOT_SERVING as soon as etcd is killed, SERVING again (on Check and on a Watch) once it is back', async () => {
    await waitUntil('SERVING', async () => ((await probe.check('')) === 'SERVING' ? true : undefined), 30_000, 200);
    const pid = cluster.etcdPid(0) as number;
    expect(pid).toBeDefined();
    process.kill(pid, 'SIGKILL');
    await waitUntil('etcd to be gone', () => (!isAlive(pid) ? true : undefined), 5000, 5);
    // Check reads the live state (as /readyz does): inside the supervisor's restart backoff it is NOT_SERVING.
    // The supervisor counts as running from the respawn, so a quick restart may win; then a new pid must exist.
    const seen: string[] = [];
    for (let i = 0; i < 8; i++) {
      seen.push(await probe.check(''));
      if (seen.at(-1) !== 'NOT_SERVING' || cluster.etcdPid(0) !== undefined) break;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    expect(seen[0]).toBe('NOT_SERVING');
    // A Watch opened now gets the current status at once, then every change: it must end up SERVING.
    const watch = probe.watch('');
    const statuses: string[] = [];
    watch.on('data', (message: { status: string }) => statuses.push(message.status));
    watch.on('error', () => undefined);
    await waitUntil('the Watch to say SERVING', () => (statuses.at(-1) === 'SERVING' ? true : undefined), 30_000, 100);
    expect(statuses.length).toBeGreaterThan(0);
    expect(await probe.check('')).toBe('SERVING');
    expect(cluster.etcdPid(0)).not.toBe(pid);

    // Stopping: the Watch hears NOT_SERVING and its stream ends, so it does not hold the shutdown up.
    const ended = once(watch, 'status');
    const stopped = await cluster.stop(0);
    await ended;
    expect(statuses.at(-1)).toBe('NOT_SERVING');
    expect(stopped.code).toBe(0);
    // The API stopped well inside its 5 s grace (rpc/server.ts): the open Watch was ended, not waited for
    // until forceShutdown. Read from the log, as the process may linger after it for other reasons.
    const at = (msg: string): number => {
      const line = cluster
        .logs(0)
        .split('\n')
        .find((l) => l.includes(`"msg":"${msg}"`));
      return line ? Date.parse((JSON.parse(line) as { time: string }).time) : Number.NaN;
    };
    expect(at('stopping etcd (SIGTERM)') - at('shutting down: leadership released')).toBeLessThan(4000);
    expect(cluster.logs(0)).toMatch(/gRPC health status changed/);
  });
});
