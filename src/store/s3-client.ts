import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { rootCertificates } from 'node:tls';
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { HttpProxyAgent } from 'http-proxy-agent';
import { HttpsProxyAgent } from 'https-proxy-agent';
import { parse as parseYaml } from 'yaml';
import { InvalidArgumentError, UnavailableError, errorText } from '../errors/index.js';

export interface S3StoreOptions {
  /** host[:port] or a URL; empty or `s3.amazonaws.com` means AWS itself, addressed by region. */
  endpoint?: string;
  bucket: string;
  region: string;
  /** Key prefix without leading or trailing slash; may be empty. */
  folder: string;
  /** Both or neither; neither uses the SDK's default chain (env, web identity, instance role). */
  accessKey?: string;
  secretKey?: string;
  sessionToken?: string;
  /** Plain http for an endpoint given without a scheme. */
  insecure: boolean;
  /** Defaults to true with a custom endpoint (MinIO and friends rarely do virtual-host buckets). */
  forcePathStyle?: boolean;
  /** Bounds connecting, each request until its response headers, and any idle gap in a transfer. */
  timeoutMs: number;
  partSizeBytes?: number;
  queueSize?: number;
  /** PEM of the CA that signed the endpoint's certificate (--etcd-s3-endpoint-ca), added to the system roots. */
  caPem?: string;
  /** Accept any certificate (--etcd-s3-skip-ssl-verify): for lab setups only, and logged as such. */
  skipTlsVerify?: boolean;
  /** http(s)://host:port of a forward proxy (--etcd-s3-proxy). */
  proxy?: string;
  /** YAML re-read before every operation for rotated credentials (--etcd-s3-config-file). */
  configFile?: string;
  /** SDK attempts per request; transient failures (5xx, throttling, resets) retry with jittered backoff. */
  maxAttempts?: number;
  /** Told of every failed S3 call, for metrics: the operation and a stable error code. */
  onError?: (op: string, code: string) => void;
}

const DEFAULT_MAX_ATTEMPTS = 5;
const AWS_DEFAULT_ENDPOINT = /^(https?:\/\/)?s3\.amazonaws\.com\/?$/i;

/** The one place an S3Client is built, so every client gets the same checksum and timeout settings. */
export function createS3Client(options: S3StoreOptions): S3Client {
  if (!(options.timeoutMs > 0)) throw new InvalidArgumentError(`S3 timeout must be positive, got ${options.timeoutMs}`, { hint: 'set --etcd-s3-timeout' });
  if (Boolean(options.accessKey) !== Boolean(options.secretKey)) {
    throw new InvalidArgumentError('S3 credentials are incomplete: an access key needs its secret key and the other way round', {
      hint: 'set both --etcd-s3-access-key and --etcd-s3-secret-key, or neither to use the default credential chain',
    });
  }
  const endpoint = endpointUrl(options);
  const config: S3ClientConfig = {
    region: options.region,
    forcePathStyle: options.forcePathStyle ?? endpoint !== undefined,
    // Otherwise a streamed PutObject stores aws-chunked framing inside the object on S3-compatible servers.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
    requestHandler: new NodeHttpHandler({
      ...agents(options),
      connectionTimeout: options.timeoutMs,
      requestTimeout: options.timeoutMs,
      // Without this an exceeded requestTimeout is only logged and the request hangs on.
      throwOnRequestTimeout: true,
      // Catches a download that stalls after its headers arrived, which requestTimeout no longer covers.
      socketTimeout: options.timeoutMs,
    }),
  };
  if (endpoint !== undefined) config.endpoint = endpoint;
  if (options.accessKey && options.secretKey) {
    config.credentials = {
      accessKeyId: options.accessKey,
      secretAccessKey: options.secretKey,
      ...(options.sessionToken ? { sessionToken: options.sessionToken } : {}),
    };
  }
  return new S3Client(config);
}

function agents(options: S3StoreOptions): { httpAgent: HttpAgent; httpsAgent: HttpsAgent } {
  const tls = {
    keepAlive: true,
    ...(options.caPem ? { ca: [...rootCertificates, options.caPem] } : {}),
    ...(options.skipTlsVerify ? { rejectUnauthorized: false } : {}),
  };
  if (options.proxy) {
    return { httpAgent: new HttpProxyAgent(options.proxy, { keepAlive: true }), httpsAgent: new HttpsProxyAgent(options.proxy, tls) };
  }
  return { httpAgent: new HttpAgent({ keepAlive: true }), httpsAgent: new HttpsAgent(tls) };
}

export function endpointUrl(options: S3StoreOptions): string | undefined {
  const endpoint = options.endpoint?.trim();
  // With an explicit global endpoint the SDK would not route to the bucket's region.
  if (!endpoint || AWS_DEFAULT_ENDPOINT.test(endpoint)) return undefined;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint)) return endpoint;
  return `${options.insecure ? 'http' : 'https'}://${endpoint}`;
}

/** The keys of `--etcd-s3-config-file` honoured on every operation: credentials, so they rotate without a restart. */
const ROTATING_KEYS = { 'etcd-s3-access-key': 'accessKey', 'etcd-s3-secret-key': 'secretKey', 'etcd-s3-session-token': 'sessionToken' } as const;

/**
 * Hands out the S3 client to use for the next operation. With a config file, the file is re-read before
 * every operation and a new client is built when its credentials changed; after an auth failure the
 * client is rebuilt, which also makes the SDK's default chain fetch fresh temporary credentials.
 * A replaced client is destroyed once no request started on it can still run (every request is bounded
 * by --etcd-s3-timeout), so rotations do not pile up connection pools.
 */
export class S3ClientSource {
  private client: S3Client;
  private fingerprint = '';
  private readonly retiring = new Map<S3Client, NodeJS.Timeout>();
  /** Clients with a download still streaming: never destroyed under it, whatever its length. */
  private readonly pins = new Map<S3Client, number>();
  private rebuilding: Promise<void> | undefined;

  constructor(
    private readonly base: S3StoreOptions,
    private readonly configFile: string | undefined,
  ) {
    this.client = createS3Client(base);
  }

  get current(): S3Client {
    return this.client;
  }

  /** Picks up rotated credentials from the config file; throws an operator-readable error if it cannot be read. */
  async sync(): Promise<void> {
    if (!this.configFile) return;
    const credentials = await this.readCredentials(this.configFile);
    const fingerprint = createHash('sha256').update(JSON.stringify(credentials)).digest('hex');
    if (fingerprint === this.fingerprint) return;
    const first = this.fingerprint === '';
    this.fingerprint = fingerprint;
    // A keyless file at start-up leaves the flags' (or the default chain's) client as it is.
    if (first && !credentials.accessKey && !credentials.secretKey && !credentials.sessionToken) return;
    this.replace(createS3Client({ ...this.base, ...credentials }));
  }

  /**
   * After an auth failure of a request sent on `failed`: a fresh client, so the default chain (with no keys
   * anywhere) fetches fresh credentials too. A no-op when `failed` was already replaced: requests that
   * failed together share one rebuild.
   */
  async rebuild(failed?: S3Client): Promise<void> {
    if (failed !== undefined && failed !== this.client) return;
    // Set before the first await, so every request that failed on the same client joins this one rebuild.
    this.rebuilding ??= (async () => {
      const credentials = this.configFile ? await this.readCredentials(this.configFile) : {};
      if (this.configFile) this.fingerprint = createHash('sha256').update(JSON.stringify(credentials)).digest('hex');
      this.replace(createS3Client({ ...this.base, ...credentials }));
    })().finally(() => {
      this.rebuilding = undefined;
    });
    return this.rebuilding;
  }

  /** The current client, kept alive until `release()` even if it is replaced meanwhile. */
  pin(): { client: S3Client; release: () => void } {
    const client = this.client;
    this.pins.set(client, (this.pins.get(client) ?? 0) + 1);
    let released = false;
    return {
      client,
      release: () => {
        if (released) return;
        released = true;
        const left = (this.pins.get(client) ?? 1) - 1;
        if (left > 0) {
          this.pins.set(client, left);
          return;
        }
        this.pins.delete(client);
        // Its retirement came due while pinned: finish it now.
        if (client !== this.client && !this.retiring.has(client)) client.destroy();
      },
    };
  }

  close(): void {
    for (const [client, timer] of this.retiring) {
      clearTimeout(timer);
      client.destroy();
    }
    this.retiring.clear();
    this.pins.clear();
    this.client.destroy();
  }

  private replace(next: S3Client): void {
    const old = this.client;
    this.client = next;
    const timer = setTimeout(() => {
      this.retiring.delete(old);
      if (!this.pins.has(old)) old.destroy();
    }, this.base.timeoutMs + 5_000);
    timer.unref();
    this.retiring.set(old, timer);
  }

  private async readCredentials(path: string): Promise<Partial<Pick<S3StoreOptions, 'accessKey' | 'secretKey' | 'sessionToken'>>> {
    let parsed: unknown;
    try {
      parsed = parseYaml(await readFile(path, 'utf8'));
    } catch (err) {
      // Never echo the file's content: it holds secrets.
      throw new UnavailableError('S3_CONFIG_FILE', `cannot read the S3 config file ${path}: ${errorText(err).split('\n')[0]}`, {
        hint: 'fix or restore --etcd-s3-config-file (YAML with etcd-s3-access-key, etcd-s3-secret-key, etcd-s3-session-token); S3 operations fail until then, local snapshots go on',
      });
    }
    if (parsed === null || parsed === undefined) return {};
    if (typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new UnavailableError('S3_CONFIG_FILE', `the S3 config file ${path} is not a YAML mapping`, { hint: 'write it as key: value lines' });
    }
    const out: Partial<Record<'accessKey' | 'secretKey' | 'sessionToken', string>> = {};
    for (const [fileKey, option] of Object.entries(ROTATING_KEYS)) {
      const value = (parsed as Record<string, unknown>)[fileKey];
      if (typeof value === 'string' && value.trim() !== '') out[option] = value.trim();
    }
    if (Boolean(out.accessKey) !== Boolean(out.secretKey)) {
      throw new UnavailableError('S3_CONFIG_FILE', `the S3 config file ${path} has only one of etcd-s3-access-key and etcd-s3-secret-key`, {
        hint: 'write both, or neither to use the default credential chain',
      });
    }
    return out;
  }
}
