import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { freePort } from './ports.js';
import { waitUntil } from './processes.js';

/** Debian's Ceph binaries this harness runs (packages radosgw, ceph-mon, ceph-osd, ceph-common: `make deps`). */
export const CEPH_TOOLS = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'ceph', 'ceph-authtool', 'monmaptool'] as const;

export function missingCephTools(): string[] {
  return CEPH_TOOLS.filter((tool) => {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
}

export interface S3Key {
  accessKey: string;
  secretKey: string;
}

export interface RadosGatewayOptions {
  bucket?: string;
  /** Bound on the whole start, from mkfs to the bucket created. Measured here: ~18 s on 2 cores. */
  timeoutMs?: number;
}

/** Every daemon any RadosGateway started, so an exiting test process never leaves one behind. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) if (child.pid !== undefined && child.exitCode === null) child.kill('SIGKILL');
});

/**
 * A real Ceph object gateway that verifies S3 signatures (SigV4 and V2), unlike s3rver: one ceph-mon, one
 * ceph-osd on the in-memory `memstore` object store and radosgw with its beast frontend, all on 127.0.0.1
 * free ports, in foreground mode (-f) as children of this process, with their config, keyrings, logs and
 * mon store in one temp dir. cephx is on between the daemons. No ceph-mgr: radosgw does not need one.
 * Users and keys are made and revoked with radosgw-admin, which radosgw sees at once (its user cache is
 * invalidated through a RADOS watch), as an operator revoking a key would.
 */
export class RadosGateway {
  private readonly children: { name: string; child: ChildProcess }[] = [];
  /** The first user's key, made at start: what stewardArgs() passes unless told otherwise. */
  key: S3Key = { accessKey: '', secretKey: '' };
  /** Milliseconds from the start call to the bucket created (the first S3 write that succeeded). */
  startMs = 0;

  private constructor(
    readonly root: string,
    readonly port: number,
    readonly bucket: string,
    readonly uid: string,
  ) {}

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private get conf(): string {
    return join(this.root, 'ceph.conf');
  }

  static async start(options: RadosGatewayOptions = {}): Promise<RadosGateway> {
    const missing = missingCephTools();
    if (missing.length > 0) {
      throw new Error(
        `the radosgw tests need ${missing.join(', ')} on PATH: 'make deps' (make test does) installs Debian's radosgw, ceph-mon, ceph-osd and ceph-common`,
      );
    }
    const started = Date.now();
    const deadline = started + (options.timeoutMs ?? 60_000);
    const left = (): number => Math.max(1000, deadline - Date.now());
    const root = await mkdtemp(join(tmpdir(), 'steward-rgw-'));
    const [monPort, rgwPort] = [await freePort(), await freePort()];
    const gw = new RadosGateway(root, rgwPort, options.bucket ?? 'steward-test', 'steward');
    try {
      await gw.writeConfig(monPort);
      const keyring = join(root, 'keyring');
      await gw.tool('ceph-authtool', ['--create-keyring', keyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
      await gw.tool('ceph-authtool', [
        keyring,
        '--gen-key',
        '-n',
        'client.admin',
        '--cap',
        'mon',
        'allow *',
        '--cap',
        'osd',
        'allow *',
        '--cap',
        'mgr',
        'allow *',
      ]);
      await gw.tool('ceph-authtool', [
        keyring,
        '--gen-key',
        '-n',
        'osd.0',
        '--cap',
        'mon',
        'allow profile osd',
        '--cap',
        'osd',
        'allow *',
        '--cap',
        'mgr',
        'allow profile osd',
      ]);
      await gw.tool('ceph-authtool', [
        keyring,
        '--gen-key',
        '-n',
        'client.rgw.a',
        '--cap',
        'mon',
        'allow rw',
        '--cap',
        'osd',
        'allow rwx',
        '--cap',
        'mgr',
        'allow rw',
      ]);
      const fsid = /^fsid = (\S+)$/m.exec(readFileSync(gw.conf, 'utf8'))?.[1] ?? '';
      await gw.tool('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, join(root, 'monmap')]);
      await gw.tool('ceph-mon', ['-c', gw.conf, '--mkfs', '-i', 'a', '--monmap', join(root, 'monmap'), '--keyring', keyring]);
      gw.daemon('ceph-mon', ['-c', gw.conf, '-i', 'a', '-f']);
      await gw.ceph(['-s'], left());

      const osdUuid = randomUUID();
      await gw.ceph(['osd', 'new', osdUuid, '0'], left());
      await mkdir(join(root, 'osd.0'), { recursive: true });
      // The OSD reads its own key from <osd data>/keyring; the shared keyring holds it too.
      await writeFile(join(root, 'osd.0', 'keyring'), readFileSync(keyring));
      await gw.tool('ceph-osd', ['-c', gw.conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid], left());
      gw.daemon('ceph-osd', ['-c', gw.conf, '-i', '0', '-f']);
      await waitUntil(
        'the memstore OSD to be up',
        async () => {
          gw.assertRunning();
          const stat = JSON.parse(await gw.ceph(['osd', 'stat', '-f', 'json'], 10_000)) as { num_up_osds?: number };
          return stat.num_up_osds === 1;
        },
        left(),
        300,
      );

      // radosgw creates its pools (.rgw.root, default.rgw.*) before it listens: most of the start time.
      gw.daemon('radosgw', ['-c', gw.conf, '-n', 'client.rgw.a', '-f']);
      await waitUntil(
        `radosgw on ${gw.endpoint}`,
        async () => {
          gw.assertRunning();
          await new Promise<void>((resolve, reject) => {
            const socket = connect(rgwPort, '127.0.0.1', () => {
              socket.destroy();
              resolve();
            });
            socket.on('error', reject);
          });
          return true;
        },
        left(),
        200,
      );
      gw.key = await gw.createUser(gw.uid, left());
      const client = gw.client(gw.key);
      try {
        // The first bucket makes radosgw create its index and data pools: a few seconds.
        await client.send(new CreateBucketCommand({ Bucket: gw.bucket }), { abortSignal: AbortSignal.timeout(left()) });
      } finally {
        client.destroy();
      }
      gw.startMs = Date.now() - started;
    } catch (err) {
      const logs = gw.logTails();
      await gw.stop();
      throw new Error(`radosgw did not start: ${err instanceof Error ? err.message : String(err)}\n${logs}`, { cause: err });
    }
    return gw;
  }

  private async writeConfig(monPort: number): Promise<void> {
    const d = this.root;
    await mkdir(join(d, 'run'), { recursive: true });
    await mkdir(join(d, 'rgw'), { recursive: true });
    // Everything under the temp dir; one replica of everything; quiet logs; nothing from /etc/ceph.
    const lines = [
      '[global]',
      `fsid = ${randomUUID()}`,
      `mon host = v2:127.0.0.1:${monPort}`,
      'mon initial members = a',
      'ms bind msgr1 = false',
      'ms bind ipv6 = false',
      'public addr = 127.0.0.1',
      `keyring = ${d}/keyring`,
      `run dir = ${d}/run`,
      `admin socket = ${d}/run/$name.asok`,
      `log file = ${d}/$name.log`,
      'log to stderr = false',
      'err to stderr = true',
      `pid file = ${d}/run/$name.pid`,
      `mon data = ${d}/mon.$id`,
      `osd data = ${d}/osd.$id`,
      'osd objectstore = memstore',
      // What the OSD reports as its capacity; memstore holds only what is written, in memory.
      'memstore device bytes = 536870912',
      'osd pool default size = 1',
      'osd pool default min size = 1',
      'osd pool default pg num = 8',
      'osd pool default pgp num = 8',
      'osd pool default pg autoscale mode = off',
      'osd crush chooseleaf type = 0',
      'mon allow pool size one = true',
      'mon warn on pool no redundancy = false',
      // The mon stops itself when its data dir's disk is nearly full; a test machine's /tmp may be.
      'mon data avail crit = 0',
      'mon data avail warn = 0',
      'mon max pg per osd = 1000',
      'ms async op threads = 1',
      '[client.rgw.a]',
      `rgw frontends = beast endpoint=127.0.0.1:${this.port}`,
      `rgw data = ${d}/rgw`,
      'rgw thread pool size = 16',
      '',
    ];
    await writeFile(this.conf, lines.join('\n'));
  }

  private daemon(name: string, args: string[]): void {
    const log = openSync(join(this.root, `${name}.out`), 'a');
    const child = spawn(name, args, { stdio: ['ignore', log, log] });
    closeSync(log);
    running.add(child);
    child.once('exit', () => running.delete(child));
    this.children.push({ name, child });
  }

  private assertRunning(): void {
    for (const { name, child } of this.children) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${name} exited (${child.exitCode ?? child.signalCode})`);
    }
  }

  private tool(file: string, args: string[], timeoutMs = 20_000): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${err.message} ${stderr}`.trim()));
        else resolve(stdout);
      });
    });
  }

  private ceph(args: string[], timeoutMs: number): Promise<string> {
    const seconds = String(Math.max(1, Math.floor(timeoutMs / 1000)));
    return this.tool('ceph', ['-c', this.conf, '--connect-timeout', seconds, ...args], timeoutMs + 2000);
  }

  private admin(args: string[], timeoutMs = 30_000): Promise<string> {
    return this.tool('radosgw-admin', ['-c', this.conf, '-n', 'client.admin', ...args], timeoutMs);
  }

  /** A new radosgw user with one S3 key made by radosgw-admin. */
  async createUser(uid: string, timeoutMs = 30_000): Promise<S3Key> {
    const key = newS3Key();
    await this.admin(['user', 'create', `--uid=${uid}`, `--display-name=${uid}`, `--access-key=${key.accessKey}`, `--secret-key=${key.secretKey}`], timeoutMs);
    return key;
  }

  /** Removes an S3 key (default: the first user's): radosgw refuses it from the next request on. */
  async revokeKey(accessKey: string, uid = this.uid): Promise<void> {
    await this.admin(['key', 'rm', `--uid=${uid}`, '--key-type=s3', `--access-key=${accessKey}`]);
  }

  /** Adds another S3 key to a user (default: the first user), as an operator rotating keys does. */
  async newKey(uid = this.uid): Promise<S3Key> {
    const key = newS3Key();
    await this.admin(['key', 'create', `--uid=${uid}`, '--key-type=s3', `--access-key=${key.accessKey}`, `--secret-key=${key.secretKey}`]);
    return key;
  }

  /** The user's keys as radosgw-admin reports them. */
  async keys(uid = this.uid): Promise<string[]> {
    const info = JSON.parse(await this.admin(['user', 'info', `--uid=${uid}`])) as { keys: { access_key: string }[] };
    return info.keys.map((k) => k.access_key);
  }

  client(key: S3Key): S3Client {
    return new S3Client({
      endpoint: this.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: key.accessKey, secretAccessKey: key.secretKey },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 1,
    });
  }

  /** Flags that point a steward at this gateway's bucket; `keys: false` leaves credentials to the caller. */
  stewardArgs(options: { folder?: string; keys?: boolean } = {}): string[] {
    return [
      '--etcd-s3=true',
      `--etcd-s3-endpoint=127.0.0.1:${this.port}`,
      '--etcd-s3-insecure=true',
      `--etcd-s3-bucket=${this.bucket}`,
      `--etcd-s3-folder=${options.folder ?? 'backups'}`,
      ...(options.keys === false ? [] : [`--etcd-s3-access-key=${this.key.accessKey}`, `--etcd-s3-secret-key=${this.key.secretKey}`]),
    ];
  }

  /** The last lines of every daemon's log, for a failure message. */
  logTails(lines = 15): string {
    const out: string[] = [];
    for (const name of ['mon.a.log', 'osd.0.log', 'client.rgw.a.log', 'ceph-mon.out', 'ceph-osd.out', 'radosgw.out']) {
      const file = join(this.root, name);
      if (!existsSync(file)) continue;
      const text = readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
      if (text) out.push(`--- ${name}\n${text}`);
    }
    return out.join('\n');
  }

  /** SIGTERM to every daemon (radosgw first), SIGKILL after 5 s; then the temp dir goes (unless KEEP_TEST_DIRS). */
  async stop(): Promise<void> {
    for (const { child } of [...this.children].reverse()) {
      if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) continue;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    if (!process.env.KEEP_TEST_DIRS) await rm(this.root, { recursive: true, force: true });
  }
}

function newS3Key(): S3Key {
  return { accessKey: `STEWARD${randomBytes(7).toString('hex').toUpperCase()}`, secretKey: randomBytes(30).toString('base64url') };
}
