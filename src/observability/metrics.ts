import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

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

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'etcd_steward_' });
  }
}
