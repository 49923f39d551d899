import type { z } from 'zod';
import { Cron } from 'croner';
import {
  boolean,
  cronExpression,
  duration,
  flagList,
  integer,
  hostPort,
  initialCluster,
  memberName,
  oneOf,
  optionalText,
  text,
  textList,
  urlList,
  type ValueKind,
} from './values.js';

/**
 * Every daemon setting, once. Each is a flag `--<flag>`, a key `<flag>` in the YAML file given by
 * `--config`, and an env variable `ETCD_STEWARD_<FLAG_IN_UPPER_SNAKE>`; flag beats env beats file beats
 * default. A setting without `default` is derived from others (see `load.ts`) and says so in `derived`.
 */
export interface SettingSpec<T> {
  flag: string;
  kind: ValueKind<T>;
  description: string;
  default?: string;
  derived?: string;
  /** The flag may be given more than once; every value is kept, in order. */
  repeatable?: boolean;
}

function setting<T>(
  flag: string,
  kind: ValueKind<T>,
  description: string,
  more: { default?: string; derived?: string; repeatable?: boolean } = {},
): SettingSpec<T> {
  return { flag, kind, description, ...more };
}

export const SETTINGS = {
  name: setting('name', memberName(), "this node's etcd member name", { derived: 'the host name' }),
  dataDir: setting('data-dir', text('a directory path'), "the etcd member's data dir (never deleted: a replaced one is renamed aside)", {
    default: '/var/lib/etcd',
  }),
  stateDir: setting('state-dir', text('a directory path'), "the steward's own state (pid file, restore phases, staging files)", {
    default: '/var/lib/etcd-steward',
  }),
  etcdBinary: setting('etcd-binary', text('a command name or path'), 'the etcd binary to supervise', { default: 'etcd' }),
  listenClientUrls: setting('listen-client-urls', urlList(), 'URLs etcd listens on for clients', {
    default: 'http://127.0.0.1:2379',
  }),
  advertiseClientUrls: setting('advertise-client-urls', urlList(), 'client URLs etcd advertises to the cluster', {
    derived: '--listen-client-urls',
  }),
  listenPeerUrls: setting('listen-peer-urls', urlList(), 'URLs etcd listens on for peers', { default: 'http://127.0.0.1:2380' }),
  initialAdvertisePeerUrls: setting('initial-advertise-peer-urls', urlList(), 'peer URLs etcd advertises', {
    derived: '--listen-peer-urls',
  }),
  initialCluster: setting('initial-cluster', initialCluster(), 'every member as name=peerURL, comma-separated', {
    derived: '<name>=<first initial-advertise-peer-url>',
  }),
  initialClusterToken: setting('initial-cluster-token', text(), "the cluster's bootstrap token", { default: 'etcd-steward' }),
  initialClusterState: setting('initial-cluster-state', oneOf(['new', 'existing'] as const), 'bootstrap state for an empty data dir', {
    default: 'new',
  }),
  etcdEndpoints: setting('etcd-endpoints', urlList(), "client URLs of every member, for the steward's own etcd client", {
    derived: '--advertise-client-urls',
  }),
  etcdCertFile: setting('etcd-cert-file', optionalText('a PEM file path'), "etcd's certificate for clients (etcd --cert-file)", { default: '' }),
  etcdKeyFile: setting('etcd-key-file', optionalText('a PEM file path'), "etcd's key for clients (etcd --key-file)", { default: '' }),
  etcdTrustedCaFile: setting('etcd-trusted-ca-file', optionalText('a PEM file path'), 'CA of the client certificates etcd accepts (etcd --trusted-ca-file)', {
    default: '',
  }),
  etcdClientCertAuth: setting('etcd-client-cert-auth', boolean(), 'etcd requires a client certificate (etcd --client-cert-auth)', { default: 'false' }),
  etcdPeerCertFile: setting('etcd-peer-cert-file', optionalText('a PEM file path'), "etcd's certificate for its peers (etcd --peer-cert-file)", {
    default: '',
  }),
  etcdPeerKeyFile: setting('etcd-peer-key-file', optionalText('a PEM file path'), "etcd's key for its peers (etcd --peer-key-file)", { default: '' }),
  etcdPeerTrustedCaFile: setting('etcd-peer-trusted-ca-file', optionalText('a PEM file path'), "CA of the peers' certificates (etcd --peer-trusted-ca-file)", {
    default: '',
  }),
  etcdPeerClientCertAuth: setting('etcd-peer-client-cert-auth', boolean(), 'etcd requires a certificate from its peers (etcd --peer-client-cert-auth)', {
    default: 'false',
  }),
  etcdCacert: setting('etcd-cacert', optionalText('a PEM file path'), "CA the steward checks etcd's certificates with (etcdctl --cacert)", {
    default: '',
  }),
  etcdCert: setting('etcd-cert', optionalText('a PEM file path'), "the steward's client certificate for etcd (etcdctl --cert)", { default: '' }),
  etcdKey: setting('etcd-key', optionalText('a PEM file path'), "the steward's client key for etcd (etcdctl --key; never logged)", { default: '' }),
  etcdUser: setting('etcd-user', optionalText('an etcd user name'), 'etcd user of the steward when etcd auth is on', { default: '' }),
  etcdPassword: setting('etcd-password', optionalText('a password'), 'password of --etcd-user (never logged)', { default: '' }),
  etcdArg: setting(
    'etcd-arg',
    flagList(),
    'an etcd flag the steward does not own, passed to etcd as given (quota, timeouts, compaction, metrics URLs...); repeatable',
    { default: '', repeatable: true },
  ),
  etcdStopGrace: setting('etcd-stop-grace', duration({ minMs: 1000, maxMs: 300_000 }), 'time etcd gets after SIGTERM before SIGKILL', {
    default: '10s',
  }),
  etcdRestartMaxBackoff: setting('etcd-restart-max-backoff', duration({ minMs: 100, maxMs: 600_000 }), 'longest wait between etcd restarts', {
    default: '30s',
  }),
  electionTtl: setting('election-ttl', duration({ minMs: 2000, maxMs: 300_000 }), 'lease TTL of the leader election (whole seconds)', {
    default: '10s',
  }),
  healthInterval: setting('health-interval', duration({ minMs: 500, maxMs: 300_000 }), 'how often every member is probed', {
    default: '5s',
  }),
  grpcListen: setting('grpc-listen', hostPort(), 'address of the gRPC API (ctl and peers)', { default: '127.0.0.1:7401' }),
  httpListen: setting('http-listen', hostPort(), 'address of /metrics, /healthz and /readyz', { default: '127.0.0.1:7481' }),
  tlsCa: setting('tls-ca', optionalText('a PEM file path'), 'CA that signs every steward and ctl certificate (mTLS on the gRPC API)', { default: '' }),
  tlsCert: setting('tls-cert', optionalText('a PEM file path'), "this steward's certificate, for the gRPC API and its calls to peers", {
    default: '',
  }),
  tlsKey: setting('tls-key', optionalText('a PEM file path'), "this steward's private key (never logged; 0600)", { default: '' }),
  adminCn: setting(
    'admin-cn',
    textList('comma-separated certificate common names, * matching any run of characters', (item) => /^[A-Za-z0-9*._@:-]+$/.test(item)),
    'client certificate identities allowed the destructive verbs (delete, prune, restore, restore abort, init, spec set)',
    { default: 'etcd-steward-admin' },
  ),
  grpcPlaintextDev: setting(
    'grpc-plaintext-dev',
    boolean(),
    'serve the gRPC API without TLS or client authentication: development on loopback only, warned about every minute',
    { default: 'false' },
  ),
  advertiseGrpc: setting('advertise-grpc', hostPort(), 'gRPC address other stewards use to reach this one', { derived: '--grpc-listen' }),
  etcdSnapshotDir: setting('etcd-snapshot-dir', text('a directory path'), 'local snapshot dir', { derived: '<state-dir>/snapshots' }),
  etcdSnapshotScheduleCron: setting('etcd-snapshot-schedule-cron', cronExpression(isCron), 'when the leader takes scheduled snapshots', {
    default: '0 */12 * * *',
  }),
  etcdSnapshotVerifyCron: setting(
    'etcd-snapshot-verify-cron',
    {
      ...cronExpression((expr) => expr === 'after-snapshot' || expr === 'off' || isCron(expr)),
      allowed: "'after-snapshot' (a restore drill of each scheduled snapshot), 'off', or a cron expression (a drill of the newest snapshot)",
    },
    'when the leader runs restore drills (etcd-stewardctl verify), one at a time',
    { default: 'after-snapshot' },
  ),
  etcdDisableSnapshots: setting('etcd-disable-snapshots', boolean(), 'turn scheduled snapshots off', { default: 'false' }),
  etcdSnapshotRetention: setting('etcd-snapshot-retention', integer(1, 10_000), 'scheduled snapshots kept per location', { default: '5' }),
  etcdSnapshotCompress: setting('etcd-snapshot-compress', boolean(), 'store snapshots gzip-compressed (.gz)', { default: 'false' }),
  etcdSnapshotReconcileInterval: setting(
    'etcd-snapshot-reconcile-interval',
    duration({ minMs: 1000, maxMs: 7 * 24 * 3_600_000 }),
    'how often the leader reconciles the inventory with every location and applies retention',
    { default: '10m' },
  ),
  etcdSnapshotTimeout: setting('etcd-snapshot-timeout', duration({ minMs: 1000, maxMs: 24 * 3_600_000 }), 'longest a snapshot may take', {
    default: '1h',
  }),
  etcdS3: setting('etcd-s3', boolean(), 'also store snapshots in S3', { default: 'false' }),
  etcdS3Endpoint: setting('etcd-s3-endpoint', text('host[:port] or a URL'), 'S3 endpoint', { default: 's3.amazonaws.com' }),
  etcdS3Bucket: setting('etcd-s3-bucket', optionalText('a bucket name'), 'S3 bucket (required with --etcd-s3)', { default: '' }),
  etcdS3Region: setting('etcd-s3-region', text('a region name'), 'S3 region', { default: 'us-east-1' }),
  etcdS3Folder: setting('etcd-s3-folder', optionalText('a key prefix without leading slash'), 'folder (key prefix) for snapshots in the bucket', {
    default: '',
  }),
  etcdS3AccessKey: setting('etcd-s3-access-key', optionalText('an access key id'), 'S3 access key', { default: '' }),
  etcdS3SecretKey: setting('etcd-s3-secret-key', optionalText('a secret key'), 'S3 secret key (never logged)', { default: '' }),
  etcdS3SessionToken: setting('etcd-s3-session-token', optionalText('a session token'), 'S3 session token for temporary credentials (never logged)', {
    default: '',
  }),
  etcdS3ConfigFile: setting(
    'etcd-s3-config-file',
    optionalText('a file path'),
    'YAML with etcd-s3-access-key, etcd-s3-secret-key, etcd-s3-session-token, re-read before every S3 operation so keys rotate without a restart',
    { default: '' },
  ),
  etcdS3EndpointCa: setting('etcd-s3-endpoint-ca', optionalText('a PEM file path'), 'CA certificate(s) for a private S3 endpoint', { default: '' }),
  etcdS3SkipSslVerify: setting('etcd-s3-skip-ssl-verify', boolean(), 'accept any S3 certificate (lab use only)', { default: 'false' }),
  etcdS3Proxy: setting('etcd-s3-proxy', optionalText('http(s)://host:port'), 'forward proxy for S3 traffic', { default: '' }),
  etcdS3BucketLookupType: setting(
    'etcd-s3-bucket-lookup-type',
    oneOf(['auto', 'path', 'dns'] as const),
    'path-style or virtual-host addressing (auto: path for custom endpoints)',
    {
      default: 'auto',
    },
  ),
  etcdS3Insecure: setting('etcd-s3-insecure', boolean(), 'use http instead of https for S3', { default: 'false' }),
  etcdS3Timeout: setting('etcd-s3-timeout', duration({ minMs: 1000, maxMs: 24 * 3_600_000 }), 'timeout of one S3 request', { default: '5m' }),
  controlS3Folder: setting(
    'control-s3-folder',
    optionalText('a key prefix without leading slash'),
    "where the cluster spec lives in S3, never inside the backups' prefix",
    {
      derived: '<etcd-s3-folder>-control',
    },
  ),
  controlS3Bucket: setting('control-s3-bucket', optionalText('a bucket name'), 'bucket of the cluster spec', { derived: '--etcd-s3-bucket' }),
  controlSpecTtl: setting('control-spec-ttl', duration({ minMs: 1000, maxMs: 24 * 3_600_000 }), 'how often the cluster spec is re-read', {
    default: '60s',
  }),
  etcdOldDataRetention: setting(
    'etcd-old-data-retention',
    integer(1, 100),
    'data dirs a restore moved aside (<data-dir>-old-<unix-ts>) kept per member; older ones are removed only after a restore finished',
    { default: '2' },
  ),
  restorePauseStaticPods: setting(
    'restore-pause-static-pods',
    optionalText('/MANIFEST-DIR:FILE[,...]'),
    "static-pod manifests moved out of the kubelet's dir while a restore replaces this member's data (e.g. /etc/kubernetes/manifests:kube-apiserver.yaml), and back after",
    { default: '' },
  ),
  restoreChecksTimeout: setting(
    'restore-checks-timeout',
    duration({ minMs: 5000, maxMs: 3_600_000 }),
    'how long the restored members may take to form a healthy cluster before the restore is rolled back',
    { default: '3m' },
  ),
  logLevel: setting('log-level', oneOf(['trace', 'debug', 'info', 'warn', 'error'] as const), 'log level', { default: 'info' }),
} as const;

function isCron(expression: string): boolean {
  try {
    new Cron(expression, { paused: true }).stop();
    return true;
  } catch {
    return false;
  }
}

export type SettingKey = keyof typeof SETTINGS;

type ValueOf<S> = S extends SettingSpec<infer T> ? T : never;

export type Config = { [K in SettingKey]: ValueOf<(typeof SETTINGS)[K]> };

export type RawValue = string | number | boolean | string[];

export function envName(spec: SettingSpec<unknown>): string {
  return `ETCD_STEWARD_${spec.flag.toUpperCase().replace(/-/g, '_')}`;
}

export type SettingSchema<K extends SettingKey> = z.ZodType<ValueOf<(typeof SETTINGS)[K]>>;
