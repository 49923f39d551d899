import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { errorText } from '../errors/index.js';
import type { ClusterHealth, ClusterProbe } from '../etcd/health.js';
import type { StewardMetrics } from '../observability/metrics.js';
import type { LastRevisionFile } from '../state/last-revision.js';

/** Probes the cluster every interval, keeps the last result for /readyz and exports per-member health. */
export class HealthMonitor {
  private last: ClusterHealth | undefined;
  private readonly log: Logger;
  private readonly unhealthy = new Set<string>();

  constructor(
    private readonly probe: ClusterProbe,
    private readonly options: {
      intervalMs: number;
      localMember: string;
      metrics: StewardMetrics;
      logger: Logger;
      /** Where the local member's highest revision is remembered, for a restore's revision bump. */
      lastRevision?: LastRevisionFile;
    },
  ) {
    this.log = options.logger.child({ component: 'health' });
  }

  get lastHealth(): ClusterHealth | undefined {
    return this.last;
  }

  /** Null if the local member was healthy at a recent probe, else the reason. */
  localProblem(): string | null {
    const last = this.last;
    if (!last || Date.now() - last.checkedAt.getTime() > 3 * this.options.intervalMs) return 'no recent health probe of the local etcd member';
    const local = last.members.find((m) => m.name === this.options.localMember);
    if (!local) return `local etcd member ${this.options.localMember} is not in the member list`;
    return local.healthy ? null : `local etcd member ${local.name} is unhealthy: ${local.problem}`;
  }

  async run(signal: AbortSignal): Promise<void> {
    try {
      while (!signal.aborted) {
        // An abort (shutdown) cancels the probe in flight; a failed probe is not fatal to the loop.
        await this.check(signal).catch((err: unknown) => {
          if (!signal.aborted) this.log.warn({ err: errorText(err) }, 'health probe failed');
        });
        await sleep(this.options.intervalMs, undefined, { signal }).catch(() => undefined);
      }
    } finally {
      // Writes are throttled: what grew since the last one would otherwise be lost with this process.
      await this.options.lastRevision?.flush().catch((err: unknown) => this.log.warn({ err: errorText(err) }, 'cannot record the last revision seen'));
    }
  }

  /** One probe now; also used by Status so the ctl never sees stale health. */
  async check(signal?: AbortSignal): Promise<ClusterHealth> {
    const health = await this.probe.probe(signal);
    this.last = health;
    const local = health.members.find((m) => m.name === this.options.localMember);
    if (local?.reachable) this.options.lastRevision?.observe(local.revision);
    // Members are labelled by name; clearing first drops series of members that left or were never named.
    this.options.metrics.memberHealthy.reset();
    for (const member of health.members) {
      const key = member.name || member.endpoint;
      this.options.metrics.memberHealthy.set({ member: key }, member.healthy ? 1 : 0);
      const wasUnhealthy = this.unhealthy.has(key);
      if (!member.healthy && !wasUnhealthy) {
        this.unhealthy.add(key);
        this.log.warn({ member: key, endpoint: member.endpoint, problem: member.problem }, 'etcd member unhealthy');
      } else if (member.healthy && wasUnhealthy) {
        this.unhealthy.delete(key);
        this.log.info({ member: key }, 'etcd member healthy again');
      }
    }
    return health;
  }
}
