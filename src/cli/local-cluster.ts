#!/usr/bin/env node
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { ChannelCredentials } from '@grpc/grpc-js';
import { Command, Option } from 'commander';
import { PreconditionError, StewardError, UnavailableError, asStewardError, exitCodeFor, renderError } from '../errors/index.js';
import { StewardClient } from '../rpc/client.js';
import { hasMemberData } from '../control/bootstrap.js';
import { ctlCredentials } from '../security/ctl-tls.js';
import { devTlsFlags, makeDevPki, type DevPki } from '../security/dev-pki.js';
import { STEWARD_NODE_FLAGS, STEWARD_PROCESS_ENV } from './node-flags.js';
import { ChildRestarter } from './child-restarter.js';
import { rootSignalFromProcess } from './signals.js';

/**
 * `make run`: the embedded default. Three stewards, each supervising its own etcd member, and a local
 * S3-compatible server, all on 127.0.0.1 with state under `.run/`. Running it again resumes the same
 * cluster from the same data dirs; it refuses to start if only some of them exist.
 */
const STEWARD_JS = fileURLToPath(new URL('./steward.js', import.meta.url));
const MEMBERS = 3;
const DEFAULT_CTL_ENDPOINT = '127.0.0.1:7401';

interface Options {
  dir: string;
  grpcPorts: string;
  httpPorts: string;
  clientPorts: string;
  peerPorts: string;
  s3Port: string;
  bucket: string;
}

function ports(list: string, what: string): number[] {
  const values = list.split(',').map((p) => Number(p.trim()));
  if (values.length !== MEMBERS || !values.every((p) => Number.isInteger(p) && p > 0 && p < 65536)) {
    throw new StewardError('invalid', 'INVALID_CONFIG', `--${what}: '${list}' must be ${MEMBERS} comma-separated ports`);
  }
  return values;
}

function parseOptions(argv: string[]): Options {
  const opt = (flag: string, env: string, description: string, value: string): Option => new Option(flag, description).env(env).default(value);
  return new Command('local-cluster')
    .description('start the embedded default: 3 stewards, 3 etcd members and a local S3 server on 127.0.0.1')
    .addOption(opt('--dir <path>', 'ETCD_STEWARD_RUN_DIR', 'state directory', '.run'))
    .addOption(opt('--grpc-ports <list>', 'ETCD_STEWARD_RUN_GRPC_PORTS', 'steward gRPC ports', '7401,7402,7403'))
    .addOption(opt('--http-ports <list>', 'ETCD_STEWARD_RUN_HTTP_PORTS', 'steward metrics/health ports', '7481,7482,7483'))
    .addOption(opt('--client-ports <list>', 'ETCD_STEWARD_RUN_CLIENT_PORTS', 'etcd client ports', '2379,22379,32379'))
    .addOption(opt('--peer-ports <list>', 'ETCD_STEWARD_RUN_PEER_PORTS', 'etcd peer ports', '2380,22380,32380'))
    .addOption(opt('--s3-port <port>', 'ETCD_STEWARD_RUN_S3_PORT', 'S3 server port', '9000'))
    .addOption(opt('--bucket <name>', 'ETCD_STEWARD_RUN_BUCKET', 'bucket created on the S3 server', 'etcd-snapshots'))
    .parse(argv, { from: 'user' })
    .opts<Options>();
}

interface Member {
  name: string;
  grpc: string;
  http: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  stateDir: string;
}

function members(options: Options, dir: string): Member[] {
  const grpc = ports(options.grpcPorts, 'grpc-ports');
  const http = ports(options.httpPorts, 'http-ports');
  const client = ports(options.clientPorts, 'client-ports');
  const peer = ports(options.peerPorts, 'peer-ports');
  return grpc.map((port, i) => ({
    name: `node-${i + 1}`,
    grpc: `127.0.0.1:${port}`,
    http: `127.0.0.1:${http[i]}`,
    clientUrl: `https://127.0.0.1:${client[i]}`,
    peerUrl: `https://127.0.0.1:${peer[i]}`,
    dataDir: join(dir, `node-${i + 1}`, 'etcd'),
    stateDir: join(dir, `node-${i + 1}`, 'steward'),
  }));
}

const markerFile = (dir: string): string => join(dir, 'cluster.json');

/**
 * `.run/env`: what `. .run/env` gives a shell so that the ctl (as the operator) and plain etcdctl (with a
 * client certificate) reach this cluster. Paths only; the keys stay 0600 in .run/pki.
 */
function writeEnvFile(dir: string, nodes: Member[], pki: DevPki): string {
  const file = join(dir, 'env');
  const first = nodes[0];
  const lines = [
    `export ETCD_STEWARD_ENDPOINT=${first?.grpc ?? ''}`,
    `export ETCD_STEWARD_CACERT=${pki.ca}`,
    `export ETCD_STEWARD_CERT=${pki.admin.cert}`,
    `export ETCD_STEWARD_KEY=${pki.admin.key}`,
    'export ETCDCTL_API=3',
    `export ETCDCTL_ENDPOINTS=${nodes.map((n) => n.clientUrl).join(',')}`,
    `export ETCDCTL_CACERT=${pki.ca}`,
    `export ETCDCTL_CERT=${pki.admin.cert}`,
    `export ETCDCTL_KEY=${pki.admin.key}`,
  ];
  writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o600 });
  return file;
}

/** A `.run/` made before make run spoke TLS has http URLs in its members: resuming it over https cannot work. */
function checkMarkerTls(dir: string): void {
  if (!existsSync(markerFile(dir))) return;
  const marker = JSON.parse(readFileSync(markerFile(dir), 'utf8')) as { tls?: boolean };
  if (marker.tls === true) return;
  throw new PreconditionError('LOCAL_CLUSTER_PLAINTEXT', `${dir} holds a cluster made before make run used TLS; its members know each other by http:// URLs`, {
    hint: `nothing was started and nothing was deleted; move ${dir} aside (e.g. mv ${dir} ${dir}.plaintext) and run make run again for a new TLS cluster`,
  });
}

/**
 * A fresh `.run/` bootstraps a cluster; a complete one resumes; a partial one is refused, never
 * re-initialised. The marker is written only once the cluster is up, so a first run that failed half-way
 * can simply be run again.
 */
function checkExistingData(dir: string, nodes: Member[]): 'new' | 'resume' {
  // The stewards' own test (WAL files present), so this and their bootstrap gate never disagree.
  const present = nodes.filter((n) => hasMemberData(n.dataDir));
  if (present.length === 0 && !existsSync(markerFile(dir))) {
    mkdirSync(dir, { recursive: true });
    return 'new';
  }
  if (present.length === nodes.length) return 'resume';
  const missing = nodes.filter((n) => !present.includes(n)).map((n) => n.dataDir);
  throw new PreconditionError('PARTIAL_LOCAL_CLUSTER', `${dir} holds a cluster but these data dirs are missing: ${missing.join(', ')}`, {
    hint: `nothing was started and nothing was deleted; restore the missing dirs, or move ${dir} aside to start a brand-new cluster`,
  });
}

/**
 * The embedded default's S3 server is s3rver, an optional dependency: `make run` installs it, the shipped
 * steward never loads it (a production image is built with `--omit=optional`), so a node never carries an
 * unmaintained test server. Resolved once, up front, so a missing one is a clear error and not a crash loop.
 */
function resolveS3rver(): string {
  try {
    return createRequire(import.meta.url).resolve('s3rver/bin/s3rver.js');
  } catch (err) {
    throw new PreconditionError('S3_SERVER_MISSING', 'the embedded default needs the s3rver package, which is not installed', {
      hint: "run 'make run' (it installs the optional dependencies) or 'npm ci' without --omit=optional",
      cause: err,
    });
  }
}

function startS3(options: Options, dir: string, logs: string, s3rverBin: string): ChildProcess {
  const s3Dir = join(dir, 's3');
  // s3rver removes a folder's directory when its last object is deleted, and crashes if a PUT into that
  // folder races the removal (three stewards' S3 canaries at start-up did). An empty subdirectory keeps the
  // backups' folder from ever being removed; s3rver lists only objects, so nothing else sees it.
  mkdirSync(join(s3Dir, options.bucket, 'backups', '.keep'), { recursive: true });
  const log = openSync(join(logs, 's3.log'), 'a');
  // Without the legacy provider, s3rver answers 500 to any paginated listing (it uses DES for tokens).
  const child = spawn(
    process.execPath,
    ['--openssl-legacy-provider', s3rverBin, '-d', s3Dir, '-a', '127.0.0.1', '-p', options.s3Port, '--configure-bucket', options.bucket],
    // Own process groups: a terminal's Ctrl-C reaches only this process, which then stops each child once.
    { stdio: ['ignore', log, log], detached: true },
  );
  closeSync(log);
  return child;
}

function startSteward(member: Member, nodes: Member[], logs: string, s3: { port: string; bucket: string; credentials: string }, pki: DevPki): ChildProcess {
  const log = openSync(join(logs, `${member.name}.log`), 'a');
  const child = spawn(
    process.execPath,
    [
      ...STEWARD_NODE_FLAGS,
      STEWARD_JS,
      `--name=${member.name}`,
      `--data-dir=${member.dataDir}`,
      `--state-dir=${member.stateDir}`,
      `--listen-client-urls=${member.clientUrl}`,
      `--listen-peer-urls=${member.peerUrl}`,
      `--initial-cluster=${nodes.map((n) => `${n.name}=${n.peerUrl}`).join(',')}`,
      `--etcd-endpoints=${nodes.map((n) => n.clientUrl).join(',')}`,
      `--grpc-listen=${member.grpc}`,
      // etcd with client and peer TLS, certificates required both ways; the stewards on mTLS.
      ...devTlsFlags(pki, member.name, { etcd: true, grpc: true }),
      `--http-listen=${member.http}`,
      '--etcd-s3=true',
      `--etcd-s3-endpoint=127.0.0.1:${s3.port}`,
      '--etcd-s3-insecure=true',
      `--etcd-s3-bucket=${s3.bucket}`,
      '--etcd-s3-folder=backups',
      // Keys in a file, not on the command line: re-read before every S3 call, so they can be rotated live.
      `--etcd-s3-config-file=${s3.credentials}`,
    ],
    // Own process groups: a terminal's Ctrl-C reaches only this process, which then stops each child once.
    { stdio: ['ignore', log, log], detached: true, env: { ...STEWARD_PROCESS_ENV, ...process.env } },
  );
  closeSync(log);
  return child;
}

async function initNewCluster(nodes: Member[], admin: ChannelCredentials, signal: AbortSignal): Promise<void> {
  while (!signal.aborted) {
    const client = new StewardClient(nodes[0]?.grpc ?? '', 5000, admin);
    try {
      await client.init(true);
      return;
    } catch (err) {
      // An earlier run that stopped after init left the spec behind: that is the cluster we are creating.
      if (err instanceof StewardError && err.code === 'SPEC_EXISTS') return;
      if (err instanceof StewardError && err.family !== 'unavailable') throw err;
    } finally {
      client.close();
    }
    await sleep(250, undefined, { signal }).catch(() => undefined);
  }
}

async function waitForHealthy(nodes: Member[], admin: ChannelCredentials, signal: AbortSignal, timeoutMs: number): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (!signal.aborted && Date.now() < deadline) {
    const client = new StewardClient(nodes[0]?.grpc ?? '', 2000, admin);
    try {
      const status = await client.status();
      if (status.leader && status.members.length === nodes.length && status.members.every((m) => m.healthy)) return status.leader;
    } catch {
      // Not up yet.
    } finally {
      client.close();
    }
    await sleep(500, undefined, { signal }).catch(() => undefined);
  }
  return undefined;
}

function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}

/** What an operator can paste: the ctl's default endpoint is node-1's default port, so others are named. */
function tryLines(nodes: Member[], logs: string, envFile: string): string[] {
  const [first, second] = nodes;
  const endpoint = (member: Member | undefined): string => (member && member.grpc !== DEFAULT_CTL_ENDPOINT ? ` --endpoint ${member.grpc}` : '');
  return [
    `Try (after '. ${envFile}'):`,
    `  ./bin/etcd-stewardctl${endpoint(first)} status`,
    `  ./bin/etcd-stewardctl -o json status --endpoint ${second?.grpc ?? ''}`,
    `  curl -s http://${first?.http ?? ''}/metrics | grep etcd_steward_`,
    '  etcdctl endpoint status -w table',
    `  ./bin/etcd-stewardctl${endpoint(first)} save && ./bin/etcd-stewardctl${endpoint(first)} ls`,
    `  ./bin/etcd-stewardctl${endpoint(first)} spec get`,
    `  kill -9 <a steward's pid>   # it is restarted like a kubelet would; see ${logs}/local-cluster.log`,
  ];
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const dir = resolve(options.dir);
  const logs = join(dir, 'logs');
  const nodes = members(options, dir);
  const mode = checkExistingData(dir, nodes);
  if (mode === 'resume') checkMarkerTls(dir);
  mkdirSync(logs, { recursive: true });
  const restarters: ChildRestarter[] = [];
  const signal = rootSignalFromProcess(
    (received) => process.stdout.write(`\n${received}: stopping every process this started…\n`),
    // The children run in their own process groups; a forced exit must not leave them (or their etcds) behind.
    () => restarters.forEach((r) => r.current?.pid && killGroup(r.current.pid)),
  );
  const started = Date.now();
  const report = (line: string): void => {
    process.stderr.write(`${line}\n`);
    appendFileSync(join(logs, 'local-cluster.log'), `${JSON.stringify({ time: new Date().toISOString(), msg: line })}\n`);
  };
  // A throwaway CA for this cluster: etcd and the stewards speak TLS only, as on a real control plane.
  const pki = await makeDevPki(
    join(dir, 'pki'),
    nodes.map((n) => n.name),
  );
  const admin = await ctlCredentials({ cacert: pki.ca, cert: pki.admin.cert, key: pki.admin.key });
  if (!admin) throw new PreconditionError('DEV_PKI_INCOMPLETE', `no admin certificate in ${pki.dir}`);
  const envFile = writeEnvFile(dir, nodes, pki);
  const credentials = join(dir, 's3-credentials.yaml');
  // s3rver's built-in account; it checks the key id, not the signature.
  if (!existsSync(credentials)) writeFileSync(credentials, 'etcd-s3-access-key: S3RVER\netcd-s3-secret-key: S3RVER\n', { mode: 0o600 });
  const s3 = { port: options.s3Port, bucket: options.bucket, credentials };
  const s3rverBin = resolveS3rver();
  restarters.push(
    new ChildRestarter({ name: 's3', start: () => startS3(options, dir, logs, s3rverBin), logFile: join(logs, 's3.log'), stopGraceMs: 5000, report }),
  );
  for (const member of nodes) {
    restarters.push(
      // A steward gives itself 28 s to shut down; the grace period is a little longer so it never needs SIGKILL.
      new ChildRestarter({
        name: member.name,
        start: () => startSteward(member, nodes, logs, s3, pki),
        logFile: join(logs, `${member.name}.log`),
        stopGraceMs: 35_000,
        report,
      }),
    );
  }
  const failed = new AbortController();
  const stop = AbortSignal.any([signal, failed.signal]);
  // Like a kubelet, a child that dies is started again; only this process's own Ctrl-C/SIGTERM (or a set-up
  // that failed) stops them.
  const running = Promise.all(restarters.map((r) => r.run(stop)));
  process.stdout.write(`${mode === 'new' ? 'Initialising a new' : 'Resuming the'} local cluster in ${dir} …\n`);
  // The stewards never bootstrap an empty data dir without a cluster spec; on a fresh .run/ this command
  // is the operator who confirms a new cluster (etcd-stewardctl init --yes).
  if (mode === 'new') {
    try {
      await initNewCluster(nodes, admin, stop);
    } catch (err) {
      process.stderr.write(`${renderError(err)}\nthe new cluster could not be initialised; stopping everything (nothing was deleted)\n`);
      failed.abort();
    }
  }
  const leader = stop.aborted ? undefined : await waitForHealthy(nodes, admin, stop, 60_000);
  if (leader && mode === 'new') {
    writeFileSync(markerFile(dir), `${JSON.stringify({ createdAt: new Date().toISOString(), members: nodes.map((n) => n.name), tls: true }, null, 2)}\n`);
  }
  if (leader) {
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    process.stdout.write(
      [
        `Ready in ${seconds}s: 3 etcd members, 3 stewards (leader: ${leader}), S3 at http://127.0.0.1:${options.s3Port} (bucket ${options.bucket}).`,
        '',
        ...nodes.map((n) => `  ${n.name}: steward gRPC ${n.grpc}, metrics http://${n.http}/metrics, etcd ${n.clientUrl}`),
        '',
        `The ctl and etcdctl need this cluster's certificates (operator identity; ${pki.viewer.cert} is a read-only one):`,
        ...readFileSync(envFile, 'utf8')
          .trim()
          .split('\n')
          .map((line) => `  ${line}`),
        `(all in ${envFile}: '. ${envFile}' sets them)`,
        '',
        ...tryLines(nodes, logs, envFile),
        '',
        `Logs (JSON, one event a line): ${logs}/. Ctrl-C stops everything; 'make run' again resumes the same cluster.`,
        '',
      ].join('\n'),
    );
  } else if (!stop.aborted) {
    process.stderr.write(
      `${renderError(new UnavailableError('NOT_READY', 'the cluster did not become healthy within 60s', { hint: `see the logs in ${logs}` }))}\n`,
    );
    failed.abort();
  }
  await new Promise<void>((resolveStop) => (stop.aborted ? resolveStop() : stop.addEventListener('abort', () => resolveStop(), { once: true })));
  await running;
  process.stdout.write('Stopped.\n');
  return failed.signal.aborted && !signal.aborted ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${renderError(err)}\n`);
    process.exitCode = exitCodeFor(asStewardError(err));
  },
);
