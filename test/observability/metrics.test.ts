import { describe, expect, it } from 'vitest';
import { StewardMetrics } from '../../src/observability/metrics.js';

/** `name{labels} value` lines of one metric in the text exposition, samples only. */
function samples(text: string, name: string): Map<string, number> {
  const found = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^([a-z0-9_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (match?.[1] === name) found.set(match[2] ?? '', Number(match[3]));
  }
  return found;
}

describe('labelled counters exist at 0 from start-up (alerts need no absent())', () => {
  it('a fresh registry exports every known label value of each labelled counter at 0', async () => {
    const text = await new StewardMetrics().registry.metrics();

    const failures = samples(text, 'etcd_steward_snapshot_failures_total');
    for (const reason of ['location_local', 'location_s3', 'snapshot_failed', 'cluster_unhealthy', 'no_healthy_member', 'deadline_exceeded', 'error']) {
      expect(failures.get(`{reason="${reason}"}`), reason).toBe(0);
    }
    expect(samples(text, 'etcd_steward_snapshot_rejected_requests_total')).toEqual(new Map([['{reason="invalid_argument"}', 0]]));

    const s3 = samples(text, 'etcd_steward_s3_errors_total');
    for (const op of ['write', 'read', 'head', 'list', 'delete', 'upload']) {
      for (const code of ['S3_ACCESS_DENIED', 'S3_UNREACHABLE', 'S3_TLS', 'S3_SERVER_ERROR', 'S3_REQUEST_FAILED']) {
        expect(s3.get(`{op="${op}",code="${code}"}`), `${op} ${code}`).toBe(0);
      }
    }
    for (const value of [...failures.values(), ...s3.values()]) expect(value).toBe(0);
  });

  it('every labelled counter of the registry has samples before anything happened', async () => {
    const metrics = new StewardMetrics();
    for (const metric of await metrics.registry.getMetricsAsJSON()) {
      if (String(metric.type) !== 'counter' || !metric.name.startsWith('etcd_steward_')) continue;
      expect(metric.values.length, `${metric.name} has no sample at start-up`).toBeGreaterThan(0);
    }
  });

  it('a counted failure adds to its label value, the others stay at 0', async () => {
    const metrics = new StewardMetrics();
    metrics.snapshotFailures.inc({ reason: 'location_s3' });
    const failures = samples(await metrics.registry.metrics(), 'etcd_steward_snapshot_failures_total');
    expect(failures.get('{reason="location_s3"}')).toBe(1);
    expect(failures.get('{reason="location_local"}')).toBe(0);
  });
});
