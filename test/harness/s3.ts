import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { once } from 'node:events';
import { connect } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import type { StartedTestContainer } from 'testcontainers';
import type { S3StoreOptions } from '../../src/store/s3.js';
import { MINIO_IMAGE, selectedBackend } from './backend.js';
import { freePort } from './ports.js';
import { waitUntil } from './processes.js';

const S3RVER_JS = createRequire(import.meta.url).resolve('s3rver/bin/s3rver.js');

export interface S3ServerOptions {
  bucket?: string;
  /** Serve HTTPS with this key and certificate (PEM file paths). */
  tls?: { key: string; cert: string };
}

/**
 * A real s3rver HTTP server in its own process and temp dir. It runs under --openssl-legacy-provider
 * because it encrypts ListObjectsV2 continuation tokens with DES, and without it every truncated page is a 500.
 */
export class S3Server {
  /** s3rver's built-in account; it checks the key id but not the signature. MinIO gets the same keys. */
  readonly accessKey = 'S3RVER';
  readonly secretKey = 'S3RVER-secret';

  private constructor(
    readonly root: string,
    private readonly dataDir: string,
    readonly port: number,
    readonly bucket: string,
    private readonly child: ChildProcess | undefined,
    private readonly container?: StartedTestContainer,
  ) {}

  private scheme = 'http';

  /** The data dir: objects live at `<dir>/<bucket>/<key>._S3rver_object`. Only s3rver has one to reach into. */
  get dir(): string {
    if (this.container) throw new Error("this test reaches into s3rver's files on disk, which a MinIO container does not have: run it with the local backend");
    return this.dataDir;
  }

  /** The backend this server is: a test that relies on s3rver's gaps (no signature checks) says so with this. */
  get kind(): 's3rver' | 'minio' {
    return this.container ? 'minio' : 's3rver';
  }

  /** The s3rver process, for tests that freeze it (SIGSTOP) the way a hung S3 looks to a client. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  get endpoint(): string {
    return `${this.scheme}://127.0.0.1:${this.port}`;
  }

  static async start(options: S3ServerOptions = {}): Promise<S3Server> {
    if (selectedBackend() === 'containers') return S3Server.startMinio(options);
    const bucket = options.bucket ?? 'steward-test';
    const root = await mkdtemp(join(tmpdir(), 'steward-s3-'));
    const dir = join(root, 'data');
    // s3rver removes a folder's directory with its last object and crashes if a PUT races that (concurrent
    // canaries); an empty subdirectory keeps the default folder in place. Other folders are used by one writer.
    await mkdir(join(dir, bucket, 'backups', '.keep'), { recursive: true });
    const port = await freePort();
    const logFile = join(root, 's3rver.log');
    const log = openSync(logFile, 'a');
    const args = ['--openssl-legacy-provider', S3RVER_JS, '-d', dir, '-a', '127.0.0.1', '-p', String(port), '--configure-bucket', bucket, '--silent'];
    if (options.tls) args.push('--key', options.tls.key, '--cert', options.tls.cert);
    const child = spawn(process.execPath, args, { stdio: ['ignore', log, log] });
    closeSync(log);
    const server = new S3Server(root, dir, port, bucket, child);
    if (options.tls) server.scheme = 'https';
    try {
      await waitUntil(
        `s3rver on ${server.endpoint}`,
        async () => {
          if (child.exitCode !== null) throw new Error(`s3rver exited with ${child.exitCode}: ${readFileSync(logFile, 'utf8')}`);
          // A TCP connect is enough to know it listens; with TLS, fetch would refuse the test CA.
          await new Promise<void>((resolve, reject) => {
            const socket = connect(port, '127.0.0.1', () => {
              socket.destroy();
              resolve();
            });
            socket.on('error', reject);
          });
          return true;
        },
        15_000,
        100,
      );
    } catch (err) {
      await server.stop();
      throw err;
    }
    return server;
  }

  /** MinIO in a container (STEWARD_TEST_BACKEND=containers): real signature checks and conditional writes. */
  private static async startMinio(options: S3ServerOptions): Promise<S3Server> {
    if (options.tls) throw new Error('the MinIO test backend serves plain HTTP only; run TLS tests with the local backend');
    const bucket = options.bucket ?? 'steward-test';
    const { GenericContainer, Wait } = await import('testcontainers');
    const root = await mkdtemp(join(tmpdir(), 'steward-minio-'));
    const container = await new GenericContainer(MINIO_IMAGE)
      .withCommand(['server', '/data'])
      .withEnvironment({ MINIO_ROOT_USER: 'S3RVER', MINIO_ROOT_PASSWORD: 'S3RVER-secret' })
      .withExposedPorts(9000)
      .withWaitStrategy(Wait.forHttp('/minio/health/ready', 9000))
      .start();
    const server = new S3Server(root, '', container.getMappedPort(9000), bucket, undefined, container);
    const client = new S3Client({
      endpoint: server.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: server.accessKey, secretAccessKey: server.secretKey },
    });
    try {
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    } finally {
      client.destroy();
    }
    return server;
  }

  /**
   * Flags that point a steward at this server's bucket, under `folder` (default `backups`). `endpoint`
   * replaces the address (a proxy in front of it); `keys: false` leaves credentials to the caller.
   */
  stewardArgs(options: { folder?: string; endpoint?: string; keys?: boolean } = {}): string[] {
    return [
      '--etcd-s3=true',
      `--etcd-s3-endpoint=${options.endpoint ?? `127.0.0.1:${this.port}`}`,
      '--etcd-s3-insecure=true',
      `--etcd-s3-bucket=${this.bucket}`,
      `--etcd-s3-folder=${options.folder ?? 'backups'}`,
      ...(options.keys === false ? [] : [`--etcd-s3-access-key=${this.accessKey}`, `--etcd-s3-secret-key=${this.secretKey}`]),
    ];
  }

  storeOptions(folder = ''): S3StoreOptions {
    return {
      endpoint: this.endpoint,
      bucket: this.bucket,
      region: 'us-east-1',
      folder,
      accessKey: this.accessKey,
      secretKey: this.secretKey,
      insecure: true,
      timeoutMs: 10_000,
    };
  }

  async stop(): Promise<void> {
    const { child } = this;
    if (this.container) await this.container.stop();
    if (child && child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      const exited = once(child, 'exit');
      process.kill(child.pid, 'SIGTERM');
      const timer = setTimeout(() => child.pid !== undefined && process.kill(child.pid, 'SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    if (!process.env.KEEP_TEST_DIRS) await rm(this.root, { recursive: true, force: true });
  }
}
