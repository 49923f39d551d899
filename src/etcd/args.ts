import type { Config } from '../config/settings.js';

/** etcd's own flags, derived from the steward's config; the steward owns them so no node drifts. */
export function etcdArgs(config: Config): string[] {
  return [
    `--name=${config.name}`,
    `--data-dir=${config.dataDir}`,
    `--listen-client-urls=${config.listenClientUrls.join(',')}`,
    `--advertise-client-urls=${config.advertiseClientUrls.join(',')}`,
    `--listen-peer-urls=${config.listenPeerUrls.join(',')}`,
    `--initial-advertise-peer-urls=${config.initialAdvertisePeerUrls.join(',')}`,
    `--initial-cluster=${config.initialCluster.map((m) => `${m.name}=${m.peerUrl}`).join(',')}`,
    `--initial-cluster-token=${config.initialClusterToken}`,
    // Ignored by etcd when the data dir already holds a member: a restart never bootstraps a new cluster.
    `--initial-cluster-state=${config.initialClusterState}`,
    // JSON lines on stderr, so the supervisor can re-emit them as structured steward events.
    '--logger=zap',
    '--log-outputs=stderr',
  ];
}
