import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Candidacy } from '../../src/election/candidacy.js';
import { LeaderElection, keepaliveStaleAfterMs, leaseLooksAbandoned, type LeaderTerm } from '../../src/election/election.js';
import { createClusterClient } from '../../src/etcd/client.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';
import { waitUntil } from '../harness/processes.js';

describe('election watchdog rules (pure)', () => {
  it('ends a term before the lease can expire', () => {
    expect(keepaliveStaleAfterMs(10)).toBe(7500);
    expect(keepaliveStaleAfterMs(10)).toBeLessThan(10_000);
  });
  it('calls a lease abandoned only after two missed renewals', () => {
    // Renewed every TTL/3: a live holder never drops below 2/3 of the TTL.
    expect(leaseLooksAbandoned(7, 10)).toBe(false);
    expect(leaseLooksAbandoned(5, 10)).toBe(false);
    expect(leaseLooksAbandoned(4, 10)).toBe(true);
    expect(leaseLooksAbandoned(0, 10)).toBe(true);
  });
});

describe('leader view on a real etcd', () => {
  let etcd: EtcdCluster;
  const logger = pino({ level: 'silent' });
  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
  });
  afterAll(async () => {
    await etcd?.stop();
  });

  it('names a live leader, and reports a killed leader as stale with the seconds its lease has left', async () => {
    const client = createClusterClient(etcd.endpoints);
    const observerClient = createClusterClient(etcd.endpoints);
    const stop = new AbortController();
    let term: LeaderTerm | undefined;
    const leader = new LeaderElection({ client, node: 'node-a', ttlSeconds: 4, logger, onTermStarted: (t) => (term = t) });
    const observer = new LeaderElection({ client: observerClient, node: 'node-b', ttlSeconds: 4, logger });
    const running = leader.run(stop.signal);
    try {
      await waitUntil('node-a elected', () => term, 10_000);
      expect(await observer.leaderView()).toEqual({ leader: 'node-a' });
      expect(await leader.leaderView()).toEqual({ leader: 'node-a' });

      // A steward that is SIGKILLed leaves its key and stops renewing: etcd keeps the key until the lease runs out.
      const orphan = new Candidacy(observerClient, 'etcd-steward/election/leader/', 'node-dead', 4);
      stop.abort();
      await running;
      await orphan.campaign(new AbortController().signal);
      // What kill -9 does to keepalives, without revoking the lease.
      (orphan as unknown as { lease: { release(): void } }).lease.release();
      const stale = await waitUntil(
        'the dead holder to look abandoned',
        async () => {
          const view = await observer.leaderView();
          return view.stale ? view : undefined;
        },
        10_000,
        250,
      );
      expect(stale.leader).toBeUndefined();
      expect(stale.stale?.node).toBe('node-dead');
      expect(stale.stale?.expiresInSeconds).toBeGreaterThanOrEqual(0);
      expect(stale.stale?.expiresInSeconds).toBeLessThan(2);
      await waitUntil('the lease to expire', async () => ((await observer.leaderView()).stale ? undefined : true), 10_000, 250);
      expect(await observer.leaderView()).toEqual({ leader: undefined });
    } finally {
      stop.abort();
      await running;
      client.close();
      observerClient.close();
    }
  });
});
