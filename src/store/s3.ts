import { AbortMultipartUploadCommand, DeleteObjectCommand, GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import { ListObjectsV2Command, PutObjectCommand, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { PassThrough, Readable, addAbortSignal } from 'node:stream';
import { InternalError, InvalidArgumentError, NotFoundError, StewardError, UnavailableError, errorText } from '../errors/index.js';
import { checkKey } from './local.js';
import type { BackupStore, ObjectInfo, ObjectWriter } from './store.js';

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
}

const MIB = 1024 * 1024;
const SMALL_LIMIT = MIB;
const DEFAULT_PART_SIZE = 8 * MIB;
const DEFAULT_QUEUE_SIZE = 2;
/** S3 refuses smaller parts (except the last), and lib-storage refuses them up front. */
const MIN_PART_SIZE = 5 * MIB;
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
    requestHandler: new NodeHttpHandler({
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

function endpointUrl(options: S3StoreOptions): string | undefined {
  const endpoint = options.endpoint?.trim();
  // With an explicit global endpoint the SDK would not route to the bucket's region.
  if (!endpoint || AWS_DEFAULT_ENDPOINT.test(endpoint)) return undefined;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint)) return endpoint;
  return `${options.insecure ? 'http' : 'https'}://${endpoint}`;
}

/** What a writer and the error mapping need to know about their store. */
interface S3Target {
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
  private readonly ownsClient: boolean;

  /** Pass `client` to share one connection pool between stores; it must come from `createS3Client`. */
  constructor(options: S3StoreOptions, client?: S3Client) {
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
    this.target = {
      client: client ?? createS3Client(options),
      bucket: options.bucket,
      location: this.location,
      endpoint: endpointUrl(options) ?? `AWS S3 (${options.region})`,
      timeoutMs: options.timeoutMs,
    };
    this.ownsClient = client === undefined;
  }

  urlFor(key: string): string {
    checkKey(key);
    return `${this.location}/${key}`;
  }

  /** Closes the connection pool if this store created it. */
  close(): void {
    if (this.ownsClient) this.target.client.destroy();
  }

  async createWriter(key: string, signal: AbortSignal): Promise<ObjectWriter> {
    checkKey(key);
    signal.throwIfAborted();
    const body = new PassThrough();
    const controller = new AbortController();
    const upload = new Upload({
      client: withSignal(this.target.client, controller.signal),
      params: { Bucket: this.target.bucket, Key: this.objectKey(key), Body: body },
      partSize: this.partSize,
      queueSize: this.queueSize,
      leavePartsOnError: false,
      abortController: controller,
    });
    // Started before the first write: the upload is what drains the stream, so writing first would deadlock.
    const done = upload.done().then(() => undefined);
    return new S3Writer(this.target, upload, done, body, this.urlFor(key), this.objectKey(key), signal);
  }

  async putSmall(key: string, body: string | Buffer, signal: AbortSignal): Promise<void> {
    checkKey(key);
    const data = typeof body === 'string' ? Buffer.from(body) : body;
    await this.call('write', key, signal, (Bucket, Key) =>
      this.target.client.send(new PutObjectCommand({ Bucket, Key, Body: data, ContentLength: data.length }), { abortSignal: signal }),
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
      const out = await this.call('head', key, signal, (Bucket, Key) => this.target.client.send(new HeadObjectCommand({ Bucket, Key }), { abortSignal: signal }));
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
      const page = await this.call('list', undefined, signal, (Bucket) =>
        // The delimiter keeps the listing one level deep, like a directory.
        this.target.client.send(new ListObjectsV2Command({ Bucket, Prefix: folderPrefix + prefix, Delimiter: '/', ContinuationToken: token }), { abortSignal: signal }),
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
      await this.call('delete', key, signal, (Bucket, Key) => this.target.client.send(new DeleteObjectCommand({ Bucket, Key }), { abortSignal: signal }));
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
  }

  private objectKey(key: string): string {
    return this.folder ? `${this.folder}/${key}` : key;
  }

  /** Runs one SDK call for `key` (or the whole store) and maps its failure. */
  private async call<T>(op: string, key: string | undefined, signal: AbortSignal, run: (bucket: string, objectKey: string) => Promise<T>): Promise<T> {
    signal.throwIfAborted();
    try {
      return await run(this.target.bucket, key === undefined ? '' : this.objectKey(key));
    } catch (err) {
      throw toStoreError(err, op, key === undefined ? this.location : this.urlFor(key), this.target, signal);
    }
  }
}

type WriterState = 'open' | 'committing' | 'committed' | 'aborted';

class S3Writer implements ObjectWriter {
  private state: WriterState = 'open';
  private bytes = 0;
  private aborting: Promise<void> | undefined;
  /** Rejects (mapped) as soon as the upload fails; never resolves otherwise. Raced against every write. */
  private readonly failed: Promise<never>;
  private readonly onAbort = (): void => void this.abort(this.signal.reason);

  constructor(
    private readonly target: S3Target,
    private readonly upload: Upload,
    private readonly done: Promise<void>,
    private readonly body: PassThrough,
    private readonly url: string,
    private readonly objectKey: string,
    private readonly signal: AbortSignal,
  ) {
    this.failed = done.then(
      () => new Promise<never>(() => {}),
      (err: unknown) => Promise.reject(this.stopError(err)),
    );
    // Nobody may be waiting when the upload fails; the failure surfaces on the next write or commit.
    this.failed.catch(() => {});
    signal.addEventListener('abort', this.onAbort, { once: true });
  }

  async write(chunk: Buffer): Promise<void> {
    this.assertOpen();
    // lib-storage keeps the chunk by reference until its part is sent: BackupStore's contract is that a
    // written chunk is handed over, so no copy (which doubled the garbage of a 1 GB upload).
    const accepted = new Promise<void>((resolve, reject) => this.body.write(chunk, (err) => (err ? reject(err) : resolve())));
    try {
      await Promise.race([accepted, this.failed]);
    } catch (err) {
      const error = this.stopError(err);
      await this.abort(error);
      throw error;
    }
    this.bytes += chunk.length;
  }

  async commit(): Promise<{ size: number }> {
    this.assertOpen();
    this.state = 'committing';
    try {
      this.body.end();
      await this.done;
      // From here the object is visible; only a failed check below can take it back.
      this.state = 'committed';
      const head = await this.target.client.send(new HeadObjectCommand({ Bucket: this.target.bucket, Key: this.objectKey }), { abortSignal: this.signal });
      const size = head.ContentLength ?? -1;
      if (size !== this.bytes) {
        throw new InternalError('S3_SIZE_MISMATCH', `${this.url} holds ${size} bytes after upload, ${this.bytes} were written; removing it`, {
          hint: 'the S3 endpoint altered the upload (a proxy or an incompatible server?); check it before trusting any snapshot there',
        });
      }
      return { size };
    } catch (err) {
      const error = this.stopError(err);
      if (this.state === 'committed') {
        // A commit that fails must not leave an object behind that looks like a good backup.
        await this.target.client
          .send(new DeleteObjectCommand({ Bucket: this.target.bucket, Key: this.objectKey }), { abortSignal: AbortSignal.timeout(this.target.timeoutMs) })
          .catch(() => {});
        this.state = 'aborted';
      } else {
        await this.abort(error);
      }
      throw error;
    } finally {
      this.signal.removeEventListener('abort', this.onAbort);
    }
  }

  async abort(_reason?: unknown): Promise<void> {
    if (this.state === 'committed') return;
    // A second caller (the signal, then a failing write) waits for the same cleanup to finish.
    this.aborting ??= this.discard();
    return this.aborting;
  }

  private async discard(): Promise<void> {
    this.state = 'aborted';
    this.signal.removeEventListener('abort', this.onAbort);
    // Cancels the parts in flight too: the client lib-storage was given carries this controller's signal.
    await this.upload.abort();
    this.body.destroy();
    await this.done.catch(() => {});
    // lib-storage's own AbortMultipartUpload went out on the aborted signal, so it never reached S3.
    const uploadId = this.upload.uploadId;
    if (uploadId) {
      await this.target.client
        .send(new AbortMultipartUploadCommand({ Bucket: this.target.bucket, Key: this.objectKey, UploadId: uploadId }), {
          abortSignal: AbortSignal.timeout(this.target.timeoutMs),
        })
        .catch(() => {}); // s3rver answers 405; real S3 expires leftovers by a bucket lifecycle rule.
    }
  }

  private assertOpen(): void {
    if (this.state === 'open') return;
    if (this.signal.aborted) throw this.signal.reason;
    throw new InternalError('STORE_WRITER_CLOSED', `the writer for ${this.url} is already ${this.state}`);
  }

  /** What a failed write or commit reports: the caller's abort reason, a closed writer, or the S3 error. */
  private stopError(err: unknown): unknown {
    if (this.signal.aborted) return this.signal.reason;
    if (this.state === 'aborted') return new InternalError('STORE_WRITER_CLOSED', `the upload of ${this.url} was aborted`, { cause: err });
    return toStoreError(err, 'upload', this.url, this.target, this.signal);
  }
}

/**
 * lib-storage sends its requests without a signal, so an aborted upload would keep its parts (and a final
 * PutObject) in flight until they finish. This view of the client attaches the upload's own signal to each.
 */
function withSignal(client: S3Client, signal: AbortSignal): S3Client {
  return new Proxy(client, {
    get(target, prop, receiver) {
      if (prop === 'send') {
        return (command: Parameters<S3Client['send']>[0]) => target.send(command, { abortSignal: signal });
      }
      return Reflect.get(target, prop, receiver);
    },
  });
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
  if ((errno && (UNREACHABLE.has(errno) || errno.startsWith('ERR_SSL') || errno.includes('CERT'))) || name === 'TimeoutError') {
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
