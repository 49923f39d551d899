import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import type { Logger } from 'pino';
import { InternalError, errorText } from '../errors/index.js';
import { forwardEtcdOutput } from '../etcd/output.js';
import { quarantineEndpoint } from './paths.js';

/**
 * A throwaway single-member etcd on a restored data dir, for a restore drill: loopback client and peer
 * URLs of the kernel's choosing (nothing else is configured with them, so no client can find it), its
 * log lines tagged component "drill", stopped by its PID. Never the supervised etcd, never its data dir.
 */
export class DrillEtcd {
  private exitedAt: Promise<void>;
  private constructor(
    private readonly child: ChildProcess,
    readonly clientUrl: string,
    readonly peerUrl: string,
  ) {
    this.exitedAt = once(child, 'exit').then(
      () => undefined,
      () => undefined,
    );
  }

  /** Two free loopback ports, chosen before the restore tool runs: the member's peer URL is baked into the data dir. */
  static async ports(): Promise<{ clientUrl: string; peerUrl: string }> {
    return { clientUrl: await quarantineEndpoint(), peerUrl: await quarantineEndpoint() };
  }

  static start(options: {
    binary: string;
    dataDir: string;
    name: string;
    clientUrl: string;
    peerUrl: string;
    clusterToken: string;
    logger: Logger;
  }): DrillEtcd {
    const { binary, dataDir, name, clientUrl, peerUrl, clusterToken } = options;
    const args = [
      '--name',
      name,
      '--data-dir',
      dataDir,
      '--listen-client-urls',
      clientUrl,
      '--advertise-client-urls',
      clientUrl,
      '--listen-peer-urls',
      peerUrl,
      '--initial-advertise-peer-urls',
      peerUrl,
      '--initial-cluster',
      `${name}=${peerUrl}`,
      '--initial-cluster-token',
      clusterToken,
      // No background compaction of the keyspace being checked.
      '--auto-compaction-retention',
      '0',
      // JSON lines, which forwardEtcdOutput re-emits field by field at etcd's own levels.
      '--logger',
      'zap',
      '--log-outputs',
      'stderr',
    ];
    // Nothing of the steward's environment: etcd reads ETCD_* as flags (the steward's data dir, its listen
    // URLs), and the S3 keys or an etcd password there are no business of a throwaway member.
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    const log = options.logger.child({ component: 'drill' });
    child.once('error', (err) => log.warn({ err: errorText(err) }, 'cannot run the drill etcd'));
    // Line-bounded like the supervised etcd's output; tagged drill, so it is never mistaken for the node's etcd.
    const etcdLog = options.logger.child({ component: 'drill', process: 'drill-etcd' });
    if (child.stdout) forwardEtcdOutput(child.stdout, etcdLog);
    if (child.stderr) forwardEtcdOutput(child.stderr, etcdLog);
    log.info({ pid: child.pid, client: clientUrl, dataDir }, 'drill etcd started');
    return new DrillEtcd(child, clientUrl, peerUrl);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Settles when the process exits: a drill etcd that dies before it serves fails the drill at once. */
  exited(): Promise<void> {
    return this.exitedAt;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined;
  }

  /** SIGTERM by PID, SIGKILL after `graceMs`; resolves once it has exited, so nothing writes into the scratch dir after. */
  async stop(graceMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    timer.unref();
    try {
      await this.exitedAt;
    } finally {
      clearTimeout(timer);
    }
    if (this.running) throw new InternalError('DRILL_ETCD_STOP_FAILED', `the drill etcd (pid ${this.child.pid}) did not exit`);
  }
}
