import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { parse as parseYaml } from 'yaml';
import { ConfigError, UsageError, errorText } from '../errors/index.js';
import { SETTINGS, envName, type Config, type RawValue, type SettingKey, type SettingSpec } from './settings.js';

export type Source = 'cli' | 'env' | 'config' | 'default' | 'derived';

/** Thrown for --help and --version: not an error, the caller exits 0. */
export class HelpShown extends Error {}

const SETTING_KEYS = Object.keys(SETTINGS) as SettingKey[];

/** The daemon's command line: one option per setting, plus --config. Help lists every default and env name. */
export function daemonCommand(version: string): Command {
  const command = new Command('etcd-steward')
    .description("Supervises this node's etcd member, elects a leader among the stewards and serves the ctl API.")
    .version(version)
    .helpOption('-h, --help', 'show this help')
    .exitOverride()
    .configureOutput({ outputError: () => undefined })
    .addOption(new Option('--config <file>', 'YAML file whose keys are the flag names below').env('ETCD_STEWARD_CONFIG'));
  for (const key of SETTING_KEYS) {
    const spec: SettingSpec<unknown> = SETTINGS[key];
    let description = `${spec.description}; ${spec.kind.allowed}`;
    if (spec.derived) description += ` (default: ${spec.derived})`;
    const option = new Option(`--${spec.flag} <value>`, description).env(envName(spec));
    if (spec.repeatable) option.argParser((value: string, previous: unknown) => [...(Array.isArray(previous) ? (previous as string[]) : []), value]);
    if (spec.default !== undefined) option.default(spec.default);
    command.addOption(option);
  }
  return command;
}

/** Parses flags, env and the YAML file into one validated Config; throws ConfigError/UsageError, or HelpShown. */
export async function loadConfig(argv: readonly string[], version: string): Promise<Config> {
  const command = daemonCommand(version);
  try {
    command.parse([...argv], { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') throw new HelpShown();
      throw new UsageError(err.message.replace(/^error: /, ''), { hint: 'run etcd-steward --help for every setting' });
    }
    throw err;
  }
  if (command.args.length > 0) {
    throw new UsageError(`unexpected argument '${command.args[0]}'`, { hint: 'every setting is a --flag; run etcd-steward --help' });
  }
  const configFile = command.getOptionValue('config') as string | undefined;
  const fileValues = configFile ? await readConfigFile(configFile) : {};

  const raw = new Map<SettingKey, { value: RawValue; source: Source }>();
  for (const key of SETTING_KEYS) {
    const source = command.getOptionValueSource(key) as Source | undefined;
    const fromFile = fileValues[SETTINGS[key].flag];
    if ((source === undefined || source === 'default') && fromFile !== undefined) {
      raw.set(key, { value: fromFile, source: 'config' });
    } else if (source !== undefined) {
      raw.set(key, { value: command.getOptionValue(key) as RawValue, source });
    }
  }
  return validate(raw, configFile);
}

async function readConfigFile(path: string): Promise<Record<string, RawValue>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`--config: cannot read ${path}: ${errorText(err)}`, { hint: 'point --config at a readable YAML file' });
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`--config: ${path} is not valid YAML: ${errorText(err).split('\n')[0]}`, { hint: 'fix the file' });
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new ConfigError(`--config: ${path} must be a YAML mapping of setting names to values`);
  }
  const known = new Set(SETTING_KEYS.map((key) => SETTINGS[key].flag));
  const values: Record<string, RawValue> = {};
  for (const [name, value] of Object.entries(parsed)) {
    if (!known.has(name)) {
      throw new ConfigError(`--config: unknown setting '${name}' in ${path}`, {
        hint: 'keys are the flag names without dashes in front; run etcd-steward --help',
      });
    }
    if (!isRawValue(value)) throw new ConfigError(`${name} in ${path}: expected a string, number, boolean or list of strings`);
    values[name] = value;
  }
  return values;
}

function isRawValue(value: unknown): value is RawValue {
  return (
    typeof value === 'string' ||
    typeof value === 'number' ||
    typeof value === 'boolean' ||
    (Array.isArray(value) && value.every((item) => typeof item === 'string'))
  );
}

function where(key: SettingKey, source: Source, configFile: string | undefined): string {
  const spec = SETTINGS[key];
  if (source === 'env') return envName(spec);
  if (source === 'config') return `${spec.flag} in ${configFile ?? 'the config file'}`;
  return `--${spec.flag}`;
}

function parseOne<K extends SettingKey>(key: K, value: RawValue, source: Source, configFile: string | undefined): Config[K] {
  const spec = SETTINGS[key];
  const result = spec.kind.schema.safeParse(value);
  if (!result.success) {
    throw new ConfigError(`${where(key, source, configFile)}: ${JSON.stringify(value)} is not allowed: expected ${spec.kind.allowed}`, {
      hint: `fix ${where(key, source, configFile)}; nothing was started`,
    });
  }
  return result.data as Config[K];
}

function validate(raw: Map<SettingKey, { value: RawValue; source: Source }>, configFile: string | undefined): Config {
  const out: Partial<Config> = {};
  const set = <K extends SettingKey>(key: K, value: Config[K]): void => {
    out[key] = value;
  };
  for (const [key, { value, source }] of raw) set(key, parseOne(key, value, source, configFile));

  const derive = <K extends SettingKey>(key: K, value: () => RawValue): Config[K] => out[key] ?? parseOne(key, value(), 'derived', configFile);
  const config: Partial<Config> = { ...out };
  config.name = derive('name', () => hostname());
  config.advertiseClientUrls = derive('advertiseClientUrls', () => out.listenClientUrls as string[]);
  config.initialAdvertisePeerUrls = derive('initialAdvertisePeerUrls', () => out.listenPeerUrls as string[]);
  config.initialCluster = out.initialCluster ?? [{ name: config.name, peerUrl: config.initialAdvertisePeerUrls[0] as string }];
  config.etcdEndpoints = derive('etcdEndpoints', () => config.advertiseClientUrls as string[]);
  config.advertiseGrpc = out.advertiseGrpc ?? (out.grpcListen as Config['grpcListen']);
  config.etcdSnapshotDir = derive('etcdSnapshotDir', () => join(out.stateDir as string, 'snapshots'));
  config.controlS3Bucket = out.controlS3Bucket || (out.etcdS3Bucket as string);
  config.controlS3Folder = out.controlS3Folder || `${(out.etcdS3Folder as string) || 'etcd-steward'}-control`;
  const complete = config as Config;
  checkConsistency(complete);
  return complete;
}

function checkConsistency(config: Config): void {
  if (!config.initialCluster.some((member) => member.name === config.name)) {
    throw new ConfigError(`--initial-cluster: this node's name '${config.name}' is not one of its members`, {
      hint: 'list this node in --initial-cluster under the same --name',
    });
  }
  if (config.electionTtl % 1000 !== 0) {
    throw new ConfigError(`--election-ttl: ${config.electionTtl}ms is not allowed: etcd leases take whole seconds`, {
      hint: 'use a whole number of seconds such as 10s',
    });
  }
  if (config.etcdS3 && !config.etcdS3Bucket) {
    throw new ConfigError('--etcd-s3-bucket: empty is not allowed when --etcd-s3 is true', { hint: 'name the bucket snapshots go to' });
  }
  if (config.etcdS3Proxy && !/^https?:\/\/[^\s/]+(:\d+)?\/?$/.test(config.etcdS3Proxy)) {
    throw new ConfigError(`--etcd-s3-proxy: ${JSON.stringify(config.etcdS3Proxy)} is not allowed: expected http(s)://host:port`);
  }
  if (config.etcdS3AccessKey && !config.etcdS3SecretKey) {
    throw new ConfigError('--etcd-s3-secret-key: empty is not allowed with --etcd-s3-access-key', {
      hint: 'give both keys, or neither to use --etcd-s3-config-file or the default credential chain',
    });
  }
  if (config.etcdS3Folder.startsWith('/') || config.etcdS3Folder.includes('..')) {
    throw new ConfigError(`--etcd-s3-folder: ${JSON.stringify(config.etcdS3Folder)} is not allowed: expected a key prefix without a leading slash or '..'`);
  }
  checkControlPrefix(config);
  checkTls(config);
}

/** Every TLS setting comes with what it needs, and the gRPC API is plaintext only when asked, on loopback. */
function checkTls(config: Config): void {
  const pair = (cert: SettingKey, key: SettingKey): void => {
    if (Boolean(config[cert]) !== Boolean(config[key])) {
      const [given, missing] = config[cert] ? [cert, key] : [key, cert];
      throw new ConfigError(`--${SETTINGS[missing].flag}: empty is not allowed with --${SETTINGS[given].flag}`, {
        hint: 'a certificate needs its key and a key its certificate: give both, or neither',
      });
    }
  };
  pair('etcdCertFile', 'etcdKeyFile');
  pair('etcdPeerCertFile', 'etcdPeerKeyFile');
  pair('etcdCert', 'etcdKey');
  if (config.etcdClientCertAuth && !config.etcdTrustedCaFile) {
    throw new ConfigError('--etcd-trusted-ca-file: empty is not allowed with --etcd-client-cert-auth', { hint: "name the CA of the clients' certificates" });
  }
  if (config.etcdPeerClientCertAuth && !config.etcdPeerTrustedCaFile) {
    throw new ConfigError('--etcd-peer-trusted-ca-file: empty is not allowed with --etcd-peer-client-cert-auth', {
      hint: "name the CA of the peers' certificates",
    });
  }
  const scheme = (urls: string[], tls: boolean, flag: string, certFlag: string): void => {
    for (const url of urls) {
      if (url.startsWith('https:') !== tls) {
        throw new ConfigError(
          `--${flag}: ${url} is not allowed ${tls ? `with --${certFlag}: etcd serves TLS there, so the URL is https` : `without --${certFlag}: an https URL needs etcd's certificate`}`,
          {
            hint: tls ? `write https:// in --${flag}` : `give --${certFlag} and its key, or write http://`,
          },
        );
      }
    }
  };
  scheme(config.listenClientUrls, Boolean(config.etcdCertFile), 'listen-client-urls', 'etcd-cert-file');
  scheme(config.advertiseClientUrls, Boolean(config.etcdCertFile), 'advertise-client-urls', 'etcd-cert-file');
  scheme(config.listenPeerUrls, Boolean(config.etcdPeerCertFile), 'listen-peer-urls', 'etcd-peer-cert-file');
  scheme(config.initialAdvertisePeerUrls, Boolean(config.etcdPeerCertFile), 'initial-advertise-peer-urls', 'etcd-peer-cert-file');
  if (config.etcdUser && !config.etcdPassword) {
    throw new ConfigError('--etcd-password: empty is not allowed with --etcd-user', { hint: "give the user's password, or leave --etcd-user empty" });
  }
  const tls = [config.tlsCa, config.tlsCert, config.tlsKey].filter(Boolean).length;
  if (tls > 0 && tls < 3) {
    throw new ConfigError('--tls-ca, --tls-cert and --tls-key: give all three or none', {
      hint: "mTLS needs the cluster CA, this steward's certificate and its key",
    });
  }
  if (tls === 3 && config.grpcPlaintextDev) {
    throw new ConfigError('--grpc-plaintext-dev: true is not allowed with --tls-cert', { hint: 'choose mTLS or the development plaintext mode, not both' });
  }
  if (tls === 0 && !config.grpcPlaintextDev) {
    throw new ConfigError('--tls-cert: the gRPC API needs mTLS (--tls-ca, --tls-cert, --tls-key)', {
      hint: "give the cluster CA and this steward's certificate and key; for development on one machine only, --grpc-plaintext-dev=true",
    });
  }
  const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(config.grpcListen.host) || config.grpcListen.host.startsWith('127.');
  if (config.grpcPlaintextDev && !loopback) {
    throw new ConfigError(`--grpc-listen: ${config.grpcListen.host} is not a loopback address and --grpc-plaintext-dev serves without TLS`, {
      hint: 'listen on 127.0.0.1 for development, or use mTLS (--tls-ca, --tls-cert, --tls-key) on the network',
    });
  }
}

/**
 * A bucket lifecycle rule on the backups' prefix must never reach the cluster spec (the kops failure), so
 * the control prefix may not equal or sit under it. Backups at the bucket root put every prefix under them.
 */
function checkControlPrefix(config: Config): void {
  if (!config.etcdS3 || config.controlS3Bucket !== config.etcdS3Bucket) return;
  const backups = config.etcdS3Folder.replace(/\/+$/, '');
  const control = config.controlS3Folder.replace(/\/+$/, '');
  if (backups === '' || control === backups || control.startsWith(`${backups}/`)) {
    throw new ConfigError(
      `--control-s3-folder: ${JSON.stringify(control)} is not allowed: it is ${backups === '' ? 'inside the backups, which are at the bucket root' : `inside the backups' prefix ${JSON.stringify(backups)}`}`,
      {
        hint: 'a lifecycle rule on the backups would delete the cluster spec: give --etcd-s3-folder a folder, or put the spec elsewhere with --control-s3-folder / --control-s3-bucket',
      },
    );
  }
}
