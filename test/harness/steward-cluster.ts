import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { STEWARD_NODE_FLAGS, STEWARD_PROCESS_ENV } from '../../src/cli/node-flags.js';
import { hasMemberData } from '../../src/control/bootstrap.js';
import { StewardClient } from '../../src/rpc/client.js';
import type { StatusResponse } from '../../src/rpc/types.js';
import { ctlCredentials, type CtlTlsOptions } from '../../src/security/ctl-tls.js';
import { devTlsFlags, makeDevPki, type DevPki } from '../../src/security/dev-pki.js';
import { freePort } from './ports.js';
import { isAlive, killGroup, waitUntil } from './processes.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const STEWARD_JS = join(REPO_ROOT, 'dist/cli/steward.js');
export const CTL_JS = join(REPO_ROOT, 'dist/cli/ctl.js');

export function assertBuilt(): void {
  if (!existsSync(STEWARD_JS) || !existsSync(CTL_JS)) throw new Error(`${STEWARD_JS} is missing: run 'make build' (make test does) first`);
}

export interface StewardNode {
  index: number;
  name: string;
  grpc: string;
  http: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  stateDir: string;
  logFile: string;
  process?: ChildProcess;
}

export interface ClusterOptions {
  size?: number;
  electionTtl?: string;
  extraArgs?: string[];
  /** Extra flags for single nodes, by index. */
  nodeArgs?: Record<number, string[]>;
  /** Extra environment for every steward (e.g. AWS_* for the SDK's default credential chain). */
  env?: NodeJS.ProcessEnv;
  /** Extra environment for single nodes, by index (e.g. a restore failpoint). */
  nodeEnv?: Record<number, NodeJS.ProcessEnv>;
  /**
   * mTLS on the gRPC API: a dev PKI under <root>/pki, stewards started with --tls-* instead of
   * --grpc-plaintext-dev, and ctl() / status() calling with a certificate (admin unless told otherwise).
   */
  grpcTls?: boolean;
  /**
   * etcd with TLS both ways: a dev PKI under the cluster root, https client and peer URLs, client and peer
   * certificates required, and each steward's etcd client with its node's steward certificate.
   */
  etcdTls?: boolean;
}

/**
 * Who a ctl run is, with grpcTls: the dev admin (default) or viewer, 'none' (the CA but no certificate:
 * TLS without a client identity), or files of its own. Passed as ETCD_STEWARD_CACERT / _CERT / _KEY.
 */
export type CtlIdentity = 'admin' | 'viewer' | 'none' | CtlTlsOptions;

/**
 * N real steward processes, each supervising a real etcd on free loopback ports, in one temp dir.
 * Each steward is a process-group leader, so its etcd child can be found and killed with it even after
 * the steward itself was SIGKILLed.
 */
export class StewardCluster {
  private constructor(
    readonly root: string,
    readonly nodes: StewardNode[],
    private readonly options: ClusterOptions,
    /** The dev PKI when `etcdTls` or `grpcTls` is on: the CA, every node's certificates, admin and viewer. */
    readonly pki?: DevPki,
  ) {}

  static async create(options: ClusterOptions = {}): Promise<StewardCluster> {
    assertBuilt();
    const root = await mkdtemp(join(tmpdir(), 'steward-test-'));
    const etcdScheme = options.etcdTls ? 'https' : 'http';
    const nodes: StewardNode[] = [];
    for (let index = 0; index < (options.size ?? 3); index++) {
      const name = `node-${index + 1}`;
      nodes.push({
        index,
        name,
        grpc: `127.0.0.1:${await freePort()}`,
        http: `127.0.0.1:${await freePort()}`,
        clientUrl: `${etcdScheme}://127.0.0.1:${await freePort()}`,
        peerUrl: `${etcdScheme}://127.0.0.1:${await freePort()}`,
        dataDir: join(root, name, 'etcd'),
        stateDir: join(root, name, 'steward'),
        logFile: join(root, `${name}.log`),
      });
    }
    const pki =
      options.etcdTls || options.grpcTls
        ? await makeDevPki(
            join(root, 'pki'),
            nodes.map((n) => n.name),
          )
        : undefined;
    return new StewardCluster(root, nodes, options, pki);
  }

  /** The node's --tls-* flags with grpcTls, else the plaintext dev flag. */
  private grpcSecurityArgs(node: StewardNode): string[] {
    if (!this.options.grpcTls || !this.pki) return ['--grpc-plaintext-dev=true'];
    return devTlsFlags(this.pki, node.name, { etcd: false, grpc: true });
  }

  /** The ETCD_STEWARD_CACERT / _CERT / _KEY a ctl run gets for `identity` (nothing without grpcTls). */
  ctlEnv(identity: CtlIdentity = 'admin'): NodeJS.ProcessEnv {
    const files = this.ctlFiles(identity);
    const env: NodeJS.ProcessEnv = {};
    if (files.cacert) env.ETCD_STEWARD_CACERT = files.cacert;
    if (files.cert) env.ETCD_STEWARD_CERT = files.cert;
    if (files.key) env.ETCD_STEWARD_KEY = files.key;
    return env;
  }

  private ctlFiles(identity: CtlIdentity): CtlTlsOptions {
    if (typeof identity === 'object') return identity;
    if (!this.options.grpcTls || !this.pki) return {};
    if (identity === 'none') return { cacert: this.pki.ca };
    const pair = this.pki[identity];
    return { cacert: this.pki.ca, cert: pair.cert, key: pair.key };
  }

  args(node: StewardNode): string[] {
    return [
      `--name=${node.name}`,
      `--data-dir=${node.dataDir}`,
      `--state-dir=${node.stateDir}`,
      `--listen-client-urls=${node.clientUrl}`,
      `--listen-peer-urls=${node.peerUrl}`,
      `--initial-cluster=${this.nodes.map((n) => `${n.name}=${n.peerUrl}`).join(',')}`,
      `--etcd-endpoints=${this.nodes.map((n) => n.clientUrl).join(',')}`,
      ...this.etcdTlsArgs(node),
      `--grpc-listen=${node.grpc}`,
      ...this.grpcSecurityArgs(node),
      `--http-listen=${node.http}`,
      `--election-ttl=${this.options.electionTtl ?? '5s'}`,
      '--health-interval=1s',
      '--etcd-restart-max-backoff=2s',
      '--log-level=debug',
      ...(this.options.extraArgs ?? []),
      ...(this.options.nodeArgs?.[node.index] ?? []),
    ];
  }

  private etcdTlsArgs(node: StewardNode): string[] {
    // The PKI is shared with grpcTls: etcd's flags only when etcdTls asks for them.
    if (!this.options.etcdTls || !this.pki) return [];
    return devTlsFlags(this.pki, node.name, { etcd: true, grpc: false });
  }

  /** Environment one node gets from its next start on. */
  setNodeEnv(index: number, env: NodeJS.ProcessEnv): void {
    this.options.nodeEnv = { ...this.options.nodeEnv, [index]: env };
  }

  /** Flags one node gets from its next start on (e.g. to restart it with another setting). */
  setNodeArgs(index: number, args: string[]): void {
    this.options.nodeArgs = { ...this.options.nodeArgs, [index]: args };
  }

  async startAll(): Promise<void> {
    for (const node of this.nodes) this.start(node.index);
    if (this.nodes.some((n) => this.args(n).includes('--etcd-s3=true'))) await this.initIfNew();
  }

  /**
   * With S3, stewards keep an empty data dir empty until a cluster spec exists (no silent new clusters),
   * so a new test cluster is created the way an operator would: `etcd-stewardctl init --yes`.
   * A cluster with data is left alone; a spec left by an earlier start (SPEC_EXISTS) is fine; any other
   * refusal fails the test's set-up.
   */
  async initIfNew(): Promise<void> {
    // A cluster with data resumes: init there is (rightly) refused with HAS_DATA.
    if (this.nodes.some((n) => hasMemberData(n.dataDir))) return;
    await waitUntil(
      'init --yes to be answered',
      async () => {
        const result = await this.ctl(['--endpoint', this.node(0).grpc, 'init', '--yes']);
        if (result.code === 0 || result.stderr.startsWith('error[SPEC_EXISTS]')) return true;
        // Any other refusal (CLUSTER_RUNNING, SNAPSHOTS_EXIST, ...) is a test set-up error, not "fine".
        if (result.code === 4) throw new Error(`init --yes was refused: ${result.stderr}`);
        return undefined;
      },
      20_000,
      250,
    );
  }

  start(index: number): ChildProcess {
    const node = this.node(index);
    const log = openSync(node.logFile, 'a');
    const child = spawn(process.execPath, [...STEWARD_NODE_FLAGS, STEWARD_JS, ...this.args(node)], {
      stdio: ['ignore', log, log],
      detached: true,
      env: { ...STEWARD_PROCESS_ENV, ...process.env, ...this.options.env, ...this.options.nodeEnv?.[index] },
    });
    closeSync(log);
    node.process = child;
    return child;
  }

  node(index: number): StewardNode {
    const node = this.nodes[index];
    if (!node) throw new Error(`no node ${index}`);
    return node;
  }

  /** Sends a signal to the steward process only (not its etcd child). */
  signal(index: number, signal: NodeJS.Signals): void {
    const pid = this.node(index).process?.pid;
    if (pid) process.kill(pid, signal);
  }

  /** SIGTERM and wait for exit; returns the exit code and how long it took. */
  async stop(index: number, timeoutMs = 35_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }> {
    const child = this.node(index).process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return { code: child?.exitCode ?? null, signal: null, ms: 0 };
    const started = Date.now();
    const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const [code, signal] = await exited;
    clearTimeout(timer);
    return { code, signal, ms: Date.now() - started };
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.nodes.map((n) => this.stop(n.index)));
  }

  etcdPid(index: number): number | undefined {
    try {
      const pid = Number.parseInt(readFileSync(join(this.node(index).stateDir, 'etcd.pid'), 'utf8'), 10);
      return Number.isInteger(pid) && isAlive(pid) ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  async status(index: number): Promise<StatusResponse> {
    const client = new StewardClient(this.node(index).grpc, 5000, await ctlCredentials(this.ctlFiles('viewer')));
    try {
      return await client.status();
    } finally {
      client.close();
    }
  }

  /** Waits until every running steward agrees on one leader and sees every member healthy. */
  async waitForStableLeader(timeoutMs: number, running = this.nodes.map((n) => n.index)): Promise<{ leader: number; statuses: StatusResponse[] }> {
    return waitUntil(
      'one leader and all members healthy',
      async () => {
        const statuses = await Promise.all(running.map((i) => this.status(i)));
        const leaders = statuses.filter((s) => s.isLeader);
        const allHealthy = statuses.every((s) => s.etcdRunning && s.members.length === this.nodes.length && s.members.every((m) => m.healthy));
        const agreed = statuses.every((s) => s.leader === leaders[0]?.node);
        if (leaders.length !== 1 || !allHealthy || !agreed) return undefined;
        const leader = this.nodes.findIndex((n) => n.name === leaders[0]?.node);
        return { leader, statuses };
      },
      timeoutMs,
    );
  }

  /** A ctl run; with grpcTls as `identity` (admin by default), its files passed through the environment. */
  async ctl(args: string[], env: NodeJS.ProcessEnv = {}, identity: CtlIdentity = 'admin'): Promise<{ code: number; stdout: string; stderr: string }> {
    return runCtl(args, { ...this.ctlEnv(identity), ...env });
  }

  logs(index: number): string {
    return readFileSync(this.node(index).logFile, 'utf8');
  }

  async destroy(): Promise<void> {
    for (const node of this.nodes) {
      const pid = node.process?.pid;
      if (pid) killGroup(pid);
      const etcd = this.etcdPid(node.index);
      if (etcd) killGroup(etcd);
    }
    if (!process.env.KEEP_TEST_DIRS) await rm(this.root, { recursive: true, force: true });
  }
}

export function runCtl(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CTL_JS, ...args], { env: { ...process.env, ...env }, timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err && typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : err ? 1 : 0;
      resolve({ code, stdout, stderr });
    });
  });
}
