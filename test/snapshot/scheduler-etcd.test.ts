import { Etcd3 } from 'etcd3';
import { Cron } from 'croner';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { LeaderTerm } from '../../src/election/election.js';
import { createLogger } from '../../src/observability/logger.js';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { encodeSlot } from '../../src/snapshot/schedule-claims.js';
import { SnapshotScheduler } from '../../src/snapshot/scheduler.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';
import { waitUntil } from '../harness/processes.js';

// Yearly: the only due slot is the last 1 January, taken as a catch-up at term start; the next one is far away.
const CRON = '0 0 0 1 1 *';
const SLOT = new Cron(CRON, { paused: true }).previousRuns(1, new Date())[0] as Date;
const DONE_KEY = 'etcd-steward/schedule/last-done';
const CLAIMED_KEY = 'etcd-steward/schedule/last-slot';
const logger = createLogger({ level: 'silent' });

describe('snapshot scheduler against real etcd', () => {
  let etcd: EtcdCluster;
  let client: Etcd3;
  let terms = 0;

  /** A term as the election makes one: a campaign key whose create revision is the fencing token. */
  const newTerm = async (): Promise<LeaderTerm & { end: () => Promise<void> }> => {
    const campaignKey = `test/election/term-${++terms}`;
    await client.put(campaignKey).value('leader');
    const kv = (await client.get(campaignKey).exec()).kvs[0];
    const controller = new AbortController();
    return {
      campaignKey,
      fencingToken: String(kv?.create_revision),
      signal: controller.signal,
      startedAt: new Date(),
      // What a lost lease does: the campaign key goes, the term's signal aborts.
      end: async () => {
        await client.delete().key(campaignKey);
        controller.abort(new Error('lease lost'));
      },
    };
  };

  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
    client = new Etcd3({ hosts: etcd.endpoints });
  });
  beforeEach(async () => {
    // A schedule that ran before and missed its newest slot (both markers in the older, token-less format).
    await client.put(DONE_KEY).value(encodeSlot(SLOT.getTime() - 1000));
    await client.put(CLAIMED_KEY).value(encodeSlot(SLOT.getTime() - 1000));
  });
  afterAll(async () => {
    client?.close();
    await etcd?.stop();
  });

  it('a claimed slot whose snapshot failed is retried within the slot, each retry counted, then marked done', async () => {
    const metrics = new StewardMetrics();
    const calls: Date[] = [];
    const scheduler = new SnapshotScheduler({
      client,
      cron: CRON,
      logger,
      metrics,
      retry: { firstDelayMs: 100, maxDelayMs: 400 },
      run: async (_term, slot) => {
        calls.push(slot);
        if (calls.length < 3) throw new Error(`S3 and disk both down (attempt ${calls.length})`);
      },
    });
    const term = await newTerm();
    const running = scheduler.runTerm(term);
    await waitUntil('the slot marked done', async () => (await client.get(DONE_KEY).string()) === encodeSlot(SLOT) || undefined, 10_000, 50);
    expect(calls.map((c) => c.getTime())).toEqual([SLOT.getTime(), SLOT.getTime(), SLOT.getTime()]);
    expect((await metrics.scheduledSnapshotRetries.get()).values[0]?.value).toBe(2);
    expect((await metrics.scheduledSlotsMissed.get()).values[0]?.value ?? 0).toBe(0);
    await term.end();
    await running;
  });

  it('a term that ends while its slot is being committed still marks it done, and the next leader does not run it again', async () => {
    const calls: string[] = [];
    const first = await newTerm();
    let started = false;
    const a = new SnapshotScheduler({
      client,
      cron: CRON,
      logger,
      run: async () => {
        calls.push('a');
        started = true;
        // A snapshot past its stream is committed whatever the term does.
        await new Promise((resolve) => setTimeout(resolve, 1500));
      },
    });
    const runningA = a.runTerm(first);
    await waitUntil('the first leader running the slot', () => started || undefined, 10_000, 20);
    await first.end();
    // The next leader starts its term at once, while the first one is still committing.
    const second = await newTerm();
    const b = new SnapshotScheduler({ client, cron: CRON, logger, run: async () => void calls.push('b') });
    const runningB = b.runTerm(second);
    await runningA;
    await waitUntil('the slot marked done', async () => (await client.get(DONE_KEY).string()) === encodeSlot(SLOT) || undefined, 10_000, 50);
    // Longer than B's poll of the done marker: B has decided by now.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(calls).toEqual(['a']);
    await second.end();
    await runningB;
  });

  it('a slot whose term died without finishing it is taken over once the wait for that term ends', async () => {
    const calls: string[] = [];
    const first = await newTerm();
    const a = new SnapshotScheduler({
      client,
      cron: CRON,
      logger,
      run: async (term) => {
        calls.push('a');
        // Killed mid-snapshot: the run fails with the term.
        await new Promise((_resolve, reject) => term.signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true }));
      },
    });
    const runningA = a.runTerm(first);
    await waitUntil('the first leader running the slot', () => calls.length > 0 || undefined, 10_000, 20);
    await first.end();
    await runningA;
    const second = await newTerm();
    const b = new SnapshotScheduler({ client, cron: CRON, logger, takeOverAfterMs: 1000, run: async () => void calls.push('b') });
    const runningB = b.runTerm(second);
    await waitUntil('the slot marked done', async () => (await client.get(DONE_KEY).string()) === encodeSlot(SLOT) || undefined, 10_000, 50);
    expect(calls).toEqual(['a', 'b']);
    await second.end();
    await runningB;
  });
});
