import type { Config } from '../config/settings.js';
import { ConfigError } from '../errors/index.js';

/**
 * What a restore may change for one start of etcd (EtcdSupervisor.resume(args)): a new cluster token, client
 * URLs kept apart from the usual ones until the restored members check out, and the bootstrap state.
 */
export type EtcdArgOverrides = Partial<Pick<Config, 'initialClusterToken' | 'listenClientUrls' | 'advertiseClientUrls' | 'initialClusterState' | 'dataDir'>>;

type ServerTls = Pick<
  Config,
  | 'etcdCertFile'
  | 'etcdKeyFile'
  | 'etcdTrustedCaFile'
  | 'etcdClientCertAuth'
  | 'etcdPeerCertFile'
  | 'etcdPeerKeyFile'
  | 'etcdPeerTrustedCaFile'
  | 'etcdPeerClientCertAuth'
>;

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
    ...tlsArgs(c),
    // JSON lines on stderr, so the supervisor can re-emit them as structured steward events.
    '--logger=zap',
    '--log-outputs=stderr',
    // Last, so the operator's flags are what etcd sees after ours; none can name an owned flag (checked here).
    ...nodeEtcdArgs(c.etcdArg),
  ];
}

function tlsArgs(c: ServerTls): string[] {
  const args: string[] = [];
  if (c.etcdCertFile) args.push(`--cert-file=${c.etcdCertFile}`, `--key-file=${c.etcdKeyFile}`);
  if (c.etcdTrustedCaFile) args.push(`--trusted-ca-file=${c.etcdTrustedCaFile}`);
  if (c.etcdClientCertAuth) args.push('--client-cert-auth=true');
  if (c.etcdPeerCertFile) args.push(`--peer-cert-file=${c.etcdPeerCertFile}`, `--peer-key-file=${c.etcdPeerKeyFile}`);
  if (c.etcdPeerTrustedCaFile) args.push(`--peer-trusted-ca-file=${c.etcdPeerTrustedCaFile}`);
  if (c.etcdPeerClientCertAuth) args.push('--peer-client-cert-auth=true');
  return args;
}

const TLS_SETTINGS = "the steward's TLS settings (--etcd-cert-file, --etcd-key-file, --etcd-trusted-ca-file, --etcd-client-cert-auth, --etcd-peer-*)";

/**
 * etcd flags the steward sets itself, each with what to use instead. A second value for any of them would
 * either be ignored or silently beat the steward's (Go's flag package keeps the last), and the steward's own
 * client, peer checks, restore and log reading all depend on them.
 */
const OWNED_FLAGS: Record<string, string> = {
  name: '--name',
  'data-dir': '--data-dir',
  'wal-dir': '--data-dir (a restore moves the data dir as a whole: the WAL must live inside it)',
  'listen-client-urls': '--listen-client-urls',
  'advertise-client-urls': '--advertise-client-urls',
  'listen-peer-urls': '--listen-peer-urls',
  'initial-advertise-peer-urls': '--initial-advertise-peer-urls',
  'initial-cluster': '--initial-cluster',
  'initial-cluster-token': '--initial-cluster-token',
  'initial-cluster-state': '--initial-cluster-state',
  'cert-file': '--etcd-cert-file',
  'key-file': '--etcd-key-file',
  'trusted-ca-file': '--etcd-trusted-ca-file',
  'client-cert-auth': '--etcd-client-cert-auth',
  'client-crl-file': TLS_SETTINGS,
  'client-cert-allowed-hostname': TLS_SETTINGS,
  'auto-tls': '--etcd-cert-file and --etcd-key-file (the steward must be able to trust the certificate etcd serves)',
  'cipher-suites': TLS_SETTINGS,
  'experimental-peer-skip-client-san-verification': TLS_SETTINGS,
  'force-new-cluster': 'etcd-stewardctl restore (it starts the cluster anew from a snapshot on every member)',
  'config-file': "--etcd-arg for each flag (with a config file etcd ignores every other flag, the steward's included)",
  logger: "none: the steward reads etcd's JSON log on stderr and re-emits it (--log-level sets the steward's)",
  'log-outputs': "none: the steward reads etcd's JSON log on stderr and re-emits it",
  proxy: 'none: the steward supervises a member, never a proxy',
};

/** Why `name` (without dashes) may not be given to etcd by an operator, or undefined when it may. */
export function ownedFlag(name: string): string | undefined {
  if (Object.hasOwn(OWNED_FLAGS, name)) return OWNED_FLAGS[name];
  if (name.startsWith('peer-')) return name === 'peer-cert-file' ? '--etcd-peer-cert-file' : name === 'peer-key-file' ? '--etcd-peer-key-file' : TLS_SETTINGS;
  if (name.startsWith('discovery')) return '--initial-cluster (the steward bootstraps from the static member list)';
  return undefined;
}

/** The flag's name without its dashes and value: `--quota-backend-bytes=8G` → `quota-backend-bytes`. */
export function flagName(arg: string): string {
  return arg.replace(/^-+/, '').split('=', 1)[0] ?? '';
}

function refuseOwned(name: string, where: string): void {
  const instead = ownedFlag(name);
  if (instead === undefined) return;
  throw new ConfigError(`${where}: --${name} is set by the steward itself and may not be passed to etcd`, {
    hint: instead.startsWith('none') ? `remove it; ${instead.slice('none: '.length)}` : `remove it and use ${instead} instead; nothing was started`,
  });
}

/** The node's --etcd-arg values, checked: an owned flag is refused with a ConfigError naming what to use. */
export function nodeEtcdArgs(args: readonly string[]): string[] {
  for (const arg of args) refuseOwned(flagName(arg), '--etcd-arg');
  return [...args];
}

/**
 * The cluster spec's `etcdFlags` as etcd flags, in a stable order. Throws a ConfigError for an owned flag: the
 * spec's schema refuses those already, this guards a spec written by hand into the control store.
 */
export function specEtcdArgs(flags: Readonly<Record<string, string>> | undefined): string[] {
  const names = Object.keys(flags ?? {}).sort();
  for (const name of names) refuseOwned(name, "the cluster spec's etcdFlags");
  return names.map((name) => `--${name}=${flags?.[name] ?? ''}`);
}

/**
 * One start's args: the steward's (normal or a restore's, the node's --etcd-arg values included) and the
 * spec's flags that the node does not set itself, so a node that must differ (a larger quota on a bigger
 * disk) keeps its own value.
 */
export function withSpecFlags(base: readonly string[], spec: readonly string[]): string[] {
  const given = new Set(base.map(flagName));
  return [...base, ...spec.filter((arg) => !given.has(flagName(arg)))];
}
