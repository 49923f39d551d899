import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Readable, addAbortSignal } from 'node:stream';
import { InternalError, InvalidArgumentError, NotFoundError, StewardError } from '../errors/index.js';
import { checkKey } from './local.js';
import { S3ClientSource, endpointUrl, type S3StoreOptions } from './s3-client.js';
import { MultipartWriter } from './s3-multipart.js';
import type { BackupStore, ObjectInfo, ObjectWriter, PutOptions } from './store.js';
import { toStoreError, type S3Target } from './s3-errors.js';

export { createS3Client, type S3StoreOptions } from './s3-client.js';

const MIB = 1024 * 1024;
const SMALL_LIMIT = MIB;
const DEFAULT_PART_SIZE = 8 * MIB;
const DEFAULT_QUEUE_SIZE = 2;
/** S3 refuses smaller parts (except the last). */
const MIN_PART_SIZE = 5 * MIB;

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
      refreshCredentials: (failed) => source.rebuild(failed),
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

  async putSmall(key: string, body: string | Buffer, signal: AbortSignal, options: PutOptions = {}): Promise<void> {
    checkKey(key);
    const data = typeof body === 'string' ? Buffer.from(body) : body;
    // S3 (since 2024), MinIO and most compatibles honour If-None-Match on PUT: S3 itself decides "create only".
    const condition = options.createOnly ? { IfNoneMatch: '*' } : {};
    await this.call('write', key, signal, (Bucket, Key, bounded) =>
      this.target.client.send(new PutObjectCommand({ Bucket, Key, Body: data, ContentLength: data.length, ...condition }), { abortSignal: bounded }),
    );
  }

  /** Bounded as a whole by --etcd-s3-timeout: a spec or metadata read never stalls a check. */
  async readSmall(key: string, signal: AbortSignal): Promise<Buffer> {
    const bounded = AbortSignal.any([signal, AbortSignal.timeout(this.target.timeoutMs)]);
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      const body = await this.read(key, bounded);
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
      } finally {
        body.destroy();
      }
    } catch (err) {
      // Mapped against the caller's signal, so our own timeout reads as S3_UNREACHABLE, not as a cancel.
      const mapped = toStoreError(err, 'read', this.urlFor(key), this.target, signal);
      // call() counted every failure but our own timeout, which it saw as a cancel.
      if (bounded.aborted && !signal.aborted && mapped instanceof StewardError) this.options.onError?.('read', mapped.code);
      throw mapped;
    }
    return Buffer.concat(chunks);
  }

  async read(key: string, signal: AbortSignal): Promise<Readable> {
    checkKey(key);
    let pinned: ReturnType<S3ClientSource['pin']> | undefined;
    // The request is bounded until its headers arrive; the body then runs as long as the caller's signal allows,
    // on a client kept alive for it even if credentials rotate meanwhile.
    const out = await this.call('read', key, signal, (Bucket, Key, bounded) => {
      pinned?.release();
      pinned = this.source.pin();
      return pinned.client.send(new GetObjectCommand({ Bucket, Key }), { abortSignal: bounded });
    }).catch((err: unknown) => {
      pinned?.release();
      throw err;
    });
    const release = pinned?.release ?? (() => undefined);
    if (!(out.Body instanceof Readable)) {
      release();
      throw new InternalError('S3_UNEXPECTED_BODY', `GetObject of ${this.urlFor(key)} returned no Node stream`);
    }
    out.Body.once('close', release);
    // The request's own abort hook is gone once headers arrived; this keeps the signal cutting the body.
    return addAbortSignal(signal, out.Body);
  }

  async head(key: string, signal: AbortSignal): Promise<ObjectInfo | undefined> {
    checkKey(key);
    try {
      const out = await this.call('head', key, signal, (Bucket, Key, bounded) =>
        this.target.client.send(new HeadObjectCommand({ Bucket, Key }), { abortSignal: bounded }),
      );
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
        this.target.client.send(new ListObjectsV2Command({ Bucket, Prefix: folderPrefix + prefix, Delimiter: '/', ContinuationToken: token }), {
          abortSignal: bounded,
        }),
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
      await this.call('delete', key, signal, (Bucket, Key, bounded) =>
        this.target.client.send(new DeleteObjectCommand({ Bucket, Key }), { abortSignal: bounded }),
      );
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
    let used: S3Client | undefined;
    const attempt = async (): Promise<T> => {
      try {
        await this.source.sync();
        used = this.source.current;
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
      await this.source.rebuild(used);
      return attempt();
    }
  }
}
