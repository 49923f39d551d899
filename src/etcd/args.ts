import type { Config } from '../config/settings.js';

/**
 * What a restore may change for one start of etcd (EtcdSupervisor.resume(args)): a new cluster token, client
 * URLs kept apart from the usual ones until the restored members check out, and the bootstrap state.
 */
export type EtcdArgOverrides = Partial<Pick<Config, 'initialClusterToken' | 'listenClientUrls' | 'advertiseClientUrls' | 'initialClusterState' | 'dataDir'>>;

/** etcd's own flags, derived from the steward's config; the steward owns them so no node drifts. */
export function etcdArgs(config: Config, overrides: EtcdArgOverrides = {}): string[] {
  const c = { ...config, ...overrides };
  return [
    `--name=${c.name}`,
    `--data-dir=${c.dataDir}`,
    `--listen-client-urls=${c.listenClientUrls.join(',')}`,
    `--advertise-client-urls=${c.advertiseClientUrls.join(',')}`,
    `--listen-peer-urls=${c.listenPeerUrls.join(',')}`,
    `--initial-advertise-peer-urls=${c.initialAdvertisePeerUrls.join(',')}`,
    `--initial-cluster=${c.initialCluster.map((m) => `${m.name}=${m.peerUrl}`).join(',')}`,
    `--initial-cluster-token=${c.initialClusterToken}`,
    // Ignored by etcd when the data dir already holds a member: a restart never bootstraps a new cluster.
    `--initial-cluster-state=${c.initialClusterState}`,
    // JSON lines on stderr, so the supervisor can re-emit them as structured steward events.
    '--logger=zap',
    '--log-outputs=stderr',
  ];
}
