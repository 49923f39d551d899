import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import { ListObjectsV2Command, PutObjectCommand, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { Readable, addAbortSignal } from 'node:stream';
import { InternalError, InvalidArgumentError, NotFoundError, StewardError, UnavailableError, errorText } from '../errors/index.js';
import { checkKey } from './local.js';
import { S3ClientSource, endpointUrl, type S3StoreOptions } from './s3-client.js';
import { MultipartWriter } from './s3-multipart.js';
import type { BackupStore, ObjectInfo, ObjectWriter } from './store.js';

export { createS3Client, type S3StoreOptions } from './s3-client.js';

const MIB = 1024 * 1024;
const SMALL_LIMIT = MIB;
const DEFAULT_PART_SIZE = 8 * MIB;
const DEFAULT_QUEUE_SIZE = 2;
/** S3 refuses smaller parts (except the last). */
const MIN_PART_SIZE = 5 * MIB;

/** What a writer and the error mapping need to know about their store. */
interface S3Target {
  /** The client for the next request: it changes when credentials rotate. */
  readonly client: S3Client;
  readonly bucket: string;
  readonly location: string;
  readonly endpoint: string;
  readonly timeoutMs: number;
}

/** Snapshots under `s3://<bucket>/<folder>/`; keys are plain names (`checkKey`), listed one level deep. */
export class S3Store implements BackupStore {
  readonly kind = 's3' as const;
  readonly location: string;
  private readonly target: S3Target;
  private readonly folder: string;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly source: S3ClientSource;

  constructor(private readonly options: S3StoreOptions) {
    if (!options.bucket) throw new InvalidArgumentError('S3 bucket name is empty', { hint: 'set --etcd-s3-bucket' });
    this.partSize = options.partSizeBytes ?? DEFAULT_PART_SIZE;
    this.queueSize = options.queueSize ?? DEFAULT_QUEUE_SIZE;
    if (!Number.isInteger(this.partSize) || this.partSize < MIN_PART_SIZE) {
      throw new InvalidArgumentError(`S3 part size ${this.partSize} is below the 5 MiB S3 minimum`, { hint: 'use a part size of at least 5 MiB' });
    }
    if (!Number.isInteger(this.queueSize) || this.queueSize < 1) {
      throw new InvalidArgumentError(`S3 upload queue size must be a positive integer, got ${this.queueSize}`);
    }
    this.folder = options.folder.replace(/^\/+|\/+$/g, '');
    this.location = this.folder ? `s3://${options.bucket}/${this.folder}` : `s3://${options.bucket}`;
    this.source = new S3ClientSource(options, options.configFile);
    const source = this.source;
    this.target = {
      get client(): S3Client {
        return source.current;
      },
      bucket: options.bucket,
      location: this.location,
      endpoint: endpointUrl(options) ?? `AWS S3 (${options.region})`,
      timeoutMs: options.timeoutMs,
    };
  }

  urlFor(key: string): string {
    checkKey(key);
    return `${this.location}/${key}`;
  }

  /**
   * When the credentials in use expire, if they say (temporary credentials from the default chain, STS,
   * web identity, or AWS_CREDENTIAL_EXPIRATION); undefined for long-lived keys.
   */
  async credentialsExpiry(): Promise<Date | undefined> {
    await this.source.sync();
    const provider = this.target.client.config.credentials;
    const identity = await provider();
    return identity.expiration;
  }

  /** Closes every connection pool this store opened. */
  close(): void {
    this.source.close();
  }

  async createWriter(key: string, signal: AbortSignal): Promise<ObjectWriter> {
    checkKey(key);
    signal.throwIfAborted();
    await this.source.sync();
    const url = this.urlFor(key);
    let reported = false;
    return new MultipartWriter(this.target, this.objectKey(key), url, this.partSize, this.queueSize, signal, (err) => {
      const mapped = toStoreError(err, 'upload', url, this.target, signal);
      // One failed upload is one error in the metrics, however many parts it had in flight.
      if (!reported && mapped instanceof StewardError) this.options.onError?.('upload', mapped.code);
      reported = true;
      return mapped;
    });
  }

  async putSmall(key: string, body: string | Buffer, signal: AbortSignal): Promise<void> {
    checkKey(key);
    const data = typeof body === 'string' ? Buffer.from(body) : body;
    await this.call('write', key, signal, (Bucket, Key, bounded) =>
      this.target.client.send(new PutObjectCommand({ Bucket, Key, Body: data, ContentLength: data.length }), { abortSignal: bounded }),
    );
  }

  async readSmall(key: string, signal: AbortSignal): Promise<Buffer> {
    const body = await this.read(key, signal);
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > SMALL_LIMIT) {
          throw new InvalidArgumentError(`${this.urlFor(key)} is larger than the ${SMALL_LIMIT} bytes a metadata object may have`, {
            hint: 'this key is not a metadata object; check which key was asked for',
          });
        }
        chunks.push(chunk);
      }
    } catch (err) {
      body.destroy();
      throw toStoreError(err, 'read', this.urlFor(key), this.target, signal);
    }
    return Buffer.concat(chunks);
  }

  async read(key: string, signal: AbortSignal): Promise<Readable> {
    checkKey(key);
    const out = await this.call('read', key, signal, (Bucket, Key) => this.target.client.send(new GetObjectCommand({ Bucket, Key }), { abortSignal: signal }));
    if (!(out.Body instanceof Readable)) {
      throw new InternalError('S3_UNEXPECTED_BODY', `GetObject of ${this.urlFor(key)} returned no Node stream`);
    }
    // The request's own abort hook is gone once headers arrived; this keeps the signal cutting the body.
    return addAbortSignal(signal, out.Body);
  }

  async head(key: string, signal: AbortSignal): Promise<ObjectInfo | undefined> {
    checkKey(key);
    try {
      const out = await this.call('head', key, signal, (Bucket, Key, bounded) => this.target.client.send(new HeadObjectCommand({ Bucket, Key }), { abortSignal: bounded }));
      return { key, size: out.ContentLength ?? 0, lastModified: out.LastModified ?? new Date(0) };
    } catch (err) {
      // HEAD has no body, so a missing bucket is also a bare 404 here; list() tells the two apart.
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
  }

  async list(prefix: string, signal: AbortSignal): Promise<ObjectInfo[]> {
    const folderPrefix = this.folder ? `${this.folder}/` : '';
    const infos: ObjectInfo[] = [];
    let token: string | undefined;
    do {
      const page = await this.call('list', undefined, signal, (Bucket, _key, bounded) =>
        // The delimiter keeps the listing one level deep, like a directory.
        this.target.client.send(new ListObjectsV2Command({ Bucket, Prefix: folderPrefix + prefix, Delimiter: '/', ContinuationToken: token }), { abortSignal: bounded }),
      );
      for (const object of page.Contents ?? []) {
        if (!object.Key?.startsWith(folderPrefix)) continue;
        infos.push({ key: object.Key.slice(folderPrefix.length), size: object.Size ?? 0, lastModified: object.LastModified ?? new Date(0) });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return infos.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string, signal: AbortSignal): Promise<void> {
    checkKey(key);
    try {
      await this.call('delete', key, signal, (Bucket, Key, bounded) => this.target.client.send(new DeleteObjectCommand({ Bucket, Key }), { abortSignal: bounded }));
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
  }

  private objectKey(key: string): string {
    return this.folder ? `${this.folder}/${key}` : key;
  }

  /**
   * Runs one SDK call for `key` (or the whole store) and maps its failure. Rotated credentials are picked up
   * first; an auth failure (expired token, rotated-away key) rebuilds the client and retries once.
   */
  private async call<T>(
    op: string,
    key: string | undefined,
    signal: AbortSignal,
    /** `bounded` ends the call, retries included, after --etcd-s3-timeout; streamed bodies use the caller's own signal. */
    run: (bucket: string, objectKey: string, bounded: AbortSignal) => Promise<T>,
  ): Promise<T> {
    signal.throwIfAborted();
    const url = key === undefined ? this.location : this.urlFor(key);
    const attempt = async (): Promise<T> => {
      try {
        await this.source.sync();
        const bounded = AbortSignal.any([signal, AbortSignal.timeout(this.target.timeoutMs)]);
        return await run(this.target.bucket, key === undefined ? '' : this.objectKey(key), bounded);
      } catch (err) {
        const mapped = toStoreError(err, op, url, this.target, signal);
        if (mapped instanceof StewardError && mapped.code !== 'NOT_FOUND') this.options.onError?.(op, mapped.code);
        throw mapped;
      }
    };
    try {
      return await attempt();
    } catch (err) {
      if (!(err instanceof StewardError) || err.code !== 'S3_ACCESS_DENIED' || signal.aborted) throw err;
      await this.source.rebuild();
      return attempt();
    }
  }
}

const ACCESS_DENIED = new Set(['AccessDenied', 'InvalidAccessKeyId', 'ExpiredToken', 'InvalidToken', 'TokenRefreshRequired', 'SignatureDoesNotMatch', 'AllAccessDisabled', 'CredentialsProviderError']);
const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ECONNABORTED', 'EPROTO']);

/** The one place an SDK or socket failure becomes a typed error. Messages name the S3 error and status, never credentials. */
function toStoreError(err: unknown, op: string, url: string, target: S3Target, signal: AbortSignal): unknown {
  if (signal.aborted) return signal.reason;
  if (err instanceof StewardError) return err;
  const { name, status, errno } = failureOf(err);
  const text = errorText(err);
  const detail = `${name}${status ? `, HTTP ${status}` : ''}${errno && errno !== name ? `, ${errno}` : ''}${text && text !== 'UnknownError' && text !== name ? `: ${text}` : ''}`;
  const message = `S3 ${op} of ${url} failed (${detail})`;
  if (name === 'NoSuchKey' || (status === 404 && name === 'NotFound')) {
    return new NotFoundError(`${url} does not exist`, { cause: err, hint: 'list the store to see which snapshots exist' });
  }
  if (name === 'NoSuchBucket') {
    return new StewardError('invalid', 'S3_NO_SUCH_BUCKET', `${message}: bucket ${target.bucket} does not exist at ${target.endpoint}`, {
      cause: err,
      hint: 'create the bucket or fix --etcd-s3-bucket',
    });
  }
  if (ACCESS_DENIED.has(name) || status === 403) {
    return new UnavailableError('S3_ACCESS_DENIED', message, {
      cause: err,
      hint: `check --etcd-s3-access-key / --etcd-s3-secret-key (or the role the pod runs as): they must be valid, unexpired and allowed to get, put, list and delete under ${target.location}`,
    });
  }
  if (errno && /CERT|UNABLE_TO_VERIFY|SELF_SIGNED|^ERR_SSL|^ERR_TLS/.test(errno)) {
    return new UnavailableError('S3_TLS', `the TLS certificate of ${target.endpoint} was not accepted: ${message}`, {
      cause: err,
      hint: 'for a private CA pass --etcd-s3-endpoint-ca with its PEM; --etcd-s3-skip-ssl-verify only in a lab',
    });
  }
  if (name === 'AbortError' || name === 'TimeoutError') {
    // Not the caller's signal (handled above): our own --etcd-s3-timeout bound on the call and its retries.
    return new UnavailableError('S3_UNREACHABLE', `no answer from S3 at ${target.endpoint} within --etcd-s3-timeout (${target.timeoutMs} ms): ${message}`, {
      cause: err,
      hint: 'check the endpoint and network; raise --etcd-s3-timeout on a slow link',
    });
  }
  if (errno && UNREACHABLE.has(errno)) {
    return new UnavailableError('S3_UNREACHABLE', `cannot reach S3 at ${target.endpoint}: ${message}`, {
      cause: err,
      hint: 'check --etcd-s3-endpoint and --etcd-s3-insecure (http or https), DNS and network policy; raise --etcd-s3-timeout on a slow link',
    });
  }
  if ((status !== undefined && status >= 500) || name === 'SlowDown') {
    return new UnavailableError('S3_SERVER_ERROR', message, { cause: err, hint: `the S3 service at ${target.endpoint} failed; the operation is retried later, check the service if it persists` });
  }
  return new InternalError('S3_REQUEST_FAILED', message, { cause: err, hint: `check the S3 service at ${target.endpoint} and the bucket's configuration` });
}

function failureOf(err: unknown): { name: string; status: number | undefined; errno: string | undefined } {
  if (typeof err !== 'object' || err === null) return { name: 'Error', status: undefined, errno: undefined };
  // SDK exceptions carry `$metadata.httpStatusCode`; socket errors carry a string `code`. Read both structurally.
  const record = err as { name?: unknown; code?: unknown; $metadata?: { httpStatusCode?: unknown } };
  return {
    name: typeof record.name === 'string' ? record.name : 'Error',
    status: typeof record.$metadata?.httpStatusCode === 'number' ? record.$metadata.httpStatusCode : undefined,
    errno: typeof record.code === 'string' ? record.code : undefined,
  };
}
