import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors/index.js';
import { createLogger } from '../../src/observability/logger.js';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { Snapshotter } from '../../src/snapshot/snapshotter.js';
import { LocalStore } from '../../src/store/local.js';

describe('rejected operator input is not a snapshot failure', () => {
  it('an invalid --name counts in snapshot_rejected_requests_total, not in snapshot_failures_total', async () => {
    const metrics = new StewardMetrics();
    let probed = 0;
    const snapshotter = new Snapshotter({
      node: 'n1',
      stores: [{ locationId: 'local:n1', store: new LocalStore('/nonexistent-never-written') }],
      compress: false,
      timeoutMs: 1000,
      checkHealth: () => {
        probed += 1;
        return Promise.reject(new Error('a rejected request must not reach the cluster'));
      },
      memberClient: () => {
        throw new Error('a rejected request must not open a client');
      },
      metrics,
      logger: createLogger({ level: 'silent' }),
    });
    for (const name of ['../etc', 'UPPER', 'a'.repeat(300)]) {
      await expect(snapshotter.take({ kind: 'on-demand', base: name, fencingToken: '', signal: AbortSignal.timeout(1000) })).rejects.toBeInstanceOf(
        InvalidArgumentError,
      );
    }
    expect(probed).toBe(0);
    // Every known reason is exported at 0 from start-up: only the counted ones are non-zero.
    const counted = async (counter: typeof metrics.snapshotFailures) => (await counter.get()).values.filter((v) => v.value > 0);
    expect(await counted(metrics.snapshotRejectedRequests)).toEqual([{ labels: { reason: 'invalid_argument' }, value: 3 }]);
    expect(await counted(metrics.snapshotFailures)).toEqual([]);

    // A real failure still counts as one.
    await expect(snapshotter.take({ kind: 'on-demand', fencingToken: '', signal: AbortSignal.timeout(1000) })).rejects.toThrow(/must not reach the cluster/);
    expect(await counted(metrics.snapshotFailures)).toEqual([{ labels: { reason: 'error' }, value: 1 }]);
  });
});
