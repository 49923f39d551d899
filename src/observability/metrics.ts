import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Every metric the steward exports, on one registry that the HTTP listener serves. */
export class StewardMetrics {
  readonly registry = new Registry();
  readonly isLeader = new Gauge({ name: 'etcd_steward_is_leader', help: '1 while this steward holds the election lease', registers: [this.registry] });
  readonly memberHealthy = new Gauge({
    name: 'etcd_steward_etcd_member_healthy',
    help: '1 if the etcd member answered Status without alarms at the last probe',
    labelNames: ['member'] as const,
    registers: [this.registry],
  });
  readonly etcdRestarts = new Counter({
    name: 'etcd_steward_etcd_restarts_total',
    help: 'times the supervised etcd process exited and was started again',
    registers: [this.registry],
  });
  readonly etcdUp = new Gauge({ name: 'etcd_steward_etcd_process_up', help: '1 while the supervised etcd process runs', registers: [this.registry] });
  readonly leaderTerms = new Counter({
    name: 'etcd_steward_leader_terms_total',
    help: 'leadership terms this steward has started',
    registers: [this.registry],
  });

  readonly restorePhase = new Gauge({
    name: 'etcd_steward_restore_phase',
    help: "1 for the phase of the restore this steward coordinates (or its member's part in one), 0 for the others",
    labelNames: ['phase'] as const,
    registers: [this.registry],
  });
  readonly restoreLast = new Gauge({
    name: 'etcd_steward_restore_last_timestamp_seconds',
    help: 'when the last restore this steward coordinated ended, by result (Finished or Failed)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly restoreDuration = new Histogram({
    name: 'etcd_steward_restore_duration_seconds',
    help: 'wall time of restores this steward coordinated, from the lock to Finished or Failed',
    buckets: [10, 30, 60, 120, 300, 600, 1800, 3600],
    registers: [this.registry],
  });
  readonly restoreBytes = new Counter({
    name: 'etcd_steward_restore_bytes_distributed_total',
    help: 'snapshot bytes this coordinator streamed to members (counted once per member)',
    registers: [this.registry],
  });

  readonly lastSuccessfulSnapshot = new Gauge({
    name: 'etcd_steward_last_successful_snapshot_timestamp_seconds',
    help: 'when the last snapshot was committed to each location (alert when it grows old)',
    labelNames: ['location'] as const,
    registers: [this.registry],
  });
  readonly snapshotDuration = new Histogram({
    name: 'etcd_steward_snapshot_duration_seconds',
    help: 'wall time of successful snapshots, from health gate to metadata written',
    buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800],
    registers: [this.registry],
  });
  readonly snapshotSize = new Gauge({ name: 'etcd_steward_snapshot_size_bytes', help: 'size of the last snapshot as stored', registers: [this.registry] });
  readonly snapshotFailures = new Counter({
    name: 'etcd_steward_snapshot_failures_total',
    help: 'snapshots (or a location of one) that failed, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly snapshotRejectedRequests = new Counter({
    name: 'etcd_steward_snapshot_rejected_requests_total',
    help: 'snapshot requests refused for invalid operator input (a bad --name): not failures, so failure alerts ignore typos',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly scheduledSnapshotRetries = new Counter({
    name: 'etcd_steward_scheduled_snapshot_retries_total',
    help: 'retries of a claimed scheduled slot whose snapshot failed (retried with backoff until the next slot starts)',
    registers: [this.registry],
  });
  readonly scheduledSlotsMissed = new Counter({
    name: 'etcd_steward_scheduled_slots_missed_total',
    help: 'claimed scheduled slots that no retry could complete before the next slot started (alert on any)',
    registers: [this.registry],
  });
  readonly snapshots = new Gauge({
    name: 'etcd_steward_snapshots',
    help: 'snapshots in the inventory per location',
    labelNames: ['location'] as const,
    registers: [this.registry],
  });
  readonly orphanedObjects = new Gauge({
    name: 'etcd_steward_orphaned_objects',
    help: 'data objects without metadata per location, as of the last reconcile (prune removes those older than the grace)',
    labelNames: ['location'] as const,
    registers: [this.registry],
  });

  readonly s3Errors = new Counter({
    name: 'etcd_steward_s3_errors_total',
    help: 'failed S3 calls by operation and error code (S3_ACCESS_DENIED means credentials: check their expiry)',
    labelNames: ['op', 'code'] as const,
    registers: [this.registry],
  });
  /** Without S3 the canary never runs and s3_healthy sits at prom-client's 0: rules read it only where this is 1. */
  readonly s3Enabled = new Gauge({
    name: 'etcd_steward_s3_enabled',
    help: '1 if this steward stores snapshots in S3 (--etcd-s3), else 0',
    registers: [this.registry],
  });
  readonly s3Healthy = new Gauge({
    name: 'etcd_steward_s3_healthy',
    help: '1 if the last S3 canary (write, read, delete under the backups prefix) succeeded',
    registers: [this.registry],
  });

  readonly s3CredentialsExpiry = new Gauge({
    name: 'etcd_steward_s3_credentials_expiry_timestamp_seconds',
    help: 'when the S3 credentials in use expire, if they are temporary (alert when it nears now)',
    registers: [this.registry],
  });
  readonly controlSpecHealthy = new Gauge({
    name: 'etcd_steward_control_spec_healthy',
    help: '1 if the cluster spec was read from the control store at the last check (alert on 0)',
    registers: [this.registry],
  });
  readonly controlSpecGeneration = new Gauge({
    name: 'etcd_steward_control_spec_generation',
    help: 'generation of the cluster spec at the last successful read',
    registers: [this.registry],
  });

  readonly certificateExpiry = new Gauge({
    name: 'etcd_steward_certificate_expiry_timestamp_seconds',
    help: 'when each configured certificate file expires (its earliest certificate); alert when it nears now',
    labelNames: ['file'] as const,
    registers: [this.registry],
  });

  // Restore drills (etcd-stewardctl verify; src/steward/drills.ts).
  readonly lastVerifiedSnapshot = new Gauge({
    name: 'etcd_steward_last_verified_snapshot_timestamp_seconds',
    help: 'creation time of the newest snapshot that passed a restore drill on this steward (0: none yet); alert when it falls behind',
    registers: [this.registry],
  });
  readonly snapshotVerifyFailures = new Counter({
    name: 'etcd_steward_snapshot_verify_failures_total',
    help: 'restore drills that found a snapshot not restorable, by reason (integrity, restore, keys, serve, revision)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly snapshotVerifyDuration = new Histogram({
    name: 'etcd_steward_snapshot_verify_duration_seconds',
    help: 'duration of restore drills that concluded (passed or failed)',
    buckets: [1, 2, 5, 10, 30, 60, 120, 300, 600],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'etcd_steward_' });
    // Each labelled counter at 0 for the label values it is known to take, from start-up: an alert's
    // increase() sees the first failure and no rule needs absent(). A value not listed still counts; it
    // appears at its first increment.
    for (const reason of [
      // one location of a snapshot stored elsewhere (snapshotter: `location_<kind of its location ID>`)
      'location_local',
      'location_s3',
      // the whole snapshot: the StewardError code, lower-cased; `error` for anything untyped
      'snapshot_failed',
      'cluster_unhealthy',
      'no_healthy_member',
      'snapshot_truncated',
      'snapshot_exists',
      'deadline_exceeded',
      'error',
    ]) {
      this.snapshotFailures.inc({ reason }, 0);
    }
    this.snapshotRejectedRequests.inc({ reason: 'invalid_argument' }, 0);
    // The operations S3Store.call and its multipart writer report, and the codes of toStoreError (NOT_FOUND is never counted).
    for (const op of ['write', 'read', 'head', 'list', 'delete', 'upload']) {
      for (const code of [
        'S3_ACCESS_DENIED',
        'S3_UNREACHABLE',
        'S3_TLS',
        'S3_SERVER_ERROR',
        'S3_NOT_IMPLEMENTED',
        'S3_NO_SUCH_BUCKET',
        'S3_REQUEST_FAILED',
        'OBJECT_EXISTS',
      ]) {
        this.s3Errors.inc({ op, code }, 0);
      }
    }
    // Why a restore drill found a snapshot not restorable (DrillFailureReason in src/restore/drill.ts).
    for (const reason of ['integrity', 'restore', 'keys', 'serve', 'revision']) this.snapshotVerifyFailures.inc({ reason }, 0);
  }
}
