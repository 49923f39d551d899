import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { setTimeout as sleep } from 'node:timers/promises';
import { InternalError, NotFoundError, UnavailableError } from '../errors/index.js';
import { isAuthFailure, secretFreeCause, type S3Target } from './s3-errors.js';
import type { ObjectWriter } from './store.js';

/** What a writer needs of its store: the client of the moment, where to write, the timeout, how to refresh credentials. */
export type MultipartTarget = Pick<S3Target, 'client' | 'bucket' | 'timeoutMs' | 'refreshCredentials'>;

type State = 'open' | 'committing' | 'committed' | 'aborted';

/** Read-back tries after CompleteMultipartUpload: 0.25 + 0.5 + 1 + 2 s of backoff between five HEADs. */
const READ_BACK_ATTEMPTS = 5;
const READ_BACK_FIRST_DELAY_MS = 250;
const READ_BACK_MAX_DELAY_MS = 2000;

/**
 * A multipart upload fed chunk by chunk, with a fixed pool of `parallel + 1` part buffers that are reused
 * for the whole upload: memory is exactly parts × part size, and no per-part buffer is left for the GC
 * (lib-storage allocated a new concatenated buffer per part, which held a tee'd 1 GB snapshot ~50 MB above
 * a local one). An object smaller than one part is sent with a single PutObject.
 */
export class MultipartWriter implements ObjectWriter {
  private state: State = 'open';
  private readonly free: Buffer[] = [];
  private allocated = 0;
  private current: Buffer | undefined;
  private filled = 0;
  private bytes = 0;
  private partNumber = 0;
  private uploadId: Promise<string> | undefined;
  private readonly parts: Array<{ PartNumber: number; ETag: string }> = [];
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown;
  private aborting: Promise<void> | undefined;
  /** Cancels every request of this upload at once, whatever the caller's signal does. */
  private readonly cancel = new AbortController();
  private readonly onAbort = (): void => void this.abort(this.signal.reason);

  constructor(
    private readonly target: MultipartTarget,
    private readonly key: string,
    private readonly url: string,
    private readonly partSize: number,
    private readonly parallel: number,
    private readonly signal: AbortSignal,
    /** Maps an SDK failure to the store's typed error (and counts it). */
    private readonly mapError: (err: unknown) => unknown,
  ) {
    signal.addEventListener('abort', this.onAbort, { once: true });
  }

  async write(chunk: Buffer): Promise<void> {
    this.assertOpen();
    try {
      let offset = 0;
      while (offset < chunk.length) {
        this.current ??= await this.takeBuffer();
        const copied = chunk.copy(this.current, this.filled, offset);
        this.filled += copied;
        offset += copied;
        if (this.filled === this.partSize) this.sendPart();
      }
      this.bytes += chunk.length;
    } catch (err) {
      throw await this.fail(err);
    }
  }

  async commit(): Promise<{ size: number }> {
    this.assertOpen();
    this.state = 'committing';
    try {
      if (this.partNumber === 0) {
        const body = this.current ? this.current.subarray(0, this.filled) : Buffer.alloc(0);
        await this.send((client) =>
          client.send(new PutObjectCommand({ Bucket: this.target.bucket, Key: this.key, Body: body, ContentLength: body.length }), this.options()),
        );
      } else {
        if (this.filled > 0) this.sendPart();
        await this.drain();
        const parts = [...this.parts].sort((a, b) => a.PartNumber - b.PartNumber);
        const UploadId = await (this.uploadId as Promise<string>);
        await this.send((client) =>
          client.send(
            new CompleteMultipartUploadCommand({ Bucket: this.target.bucket, Key: this.key, UploadId, MultipartUpload: { Parts: parts } }),
            this.options(),
          ),
        );
      }
    } catch (err) {
      throw await this.fail(err);
    }
    this.state = 'committed';
    try {
      const size = await this.readBackSize();
      if (size !== this.bytes) {
        // A definite answer that the object is wrong: it must not stay behind looking like a good backup.
        await this.target.client
          .send(new DeleteObjectCommand({ Bucket: this.target.bucket, Key: this.key }), { abortSignal: AbortSignal.timeout(this.target.timeoutMs) })
          .catch(() => undefined);
        this.state = 'aborted';
        throw new InternalError('S3_SIZE_MISMATCH', `${this.url} holds ${size} bytes after upload, ${this.bytes} were written; removed it`, {
          hint: 'the S3 endpoint altered the upload (a proxy or an incompatible server?); check it before trusting any snapshot there',
        });
      }
      return { size };
    } finally {
      this.release();
    }
  }

  /**
   * The object's size as S3 stores it, asked until S3 gives an answer. S3 completed the upload, so the object
   * is most likely good: a failed HEAD says nothing about it, and deleting on such an unknown result would
   * throw a good backup away. The read-back is retried with backoff (each try bounded by --etcd-s3-timeout);
   * if S3 never answers, the copy is reported as unverified and left in place (no metadata is written for
   * it, so it is no snapshot; reconcile reports it).
   */
  private async readBackSize(): Promise<number> {
    let lastError: unknown;
    for (let attempt = 0; attempt < READ_BACK_ATTEMPTS; attempt++) {
      if (attempt > 0) {
        const delay = Math.min(READ_BACK_FIRST_DELAY_MS * 2 ** (attempt - 1), READ_BACK_MAX_DELAY_MS);
        await sleep(delay * (0.5 + Math.random() / 2), undefined, { signal: this.signal }).catch(() => undefined);
      }
      if (this.signal.aborted) break;
      try {
        const head = await this.send((client) => client.send(new HeadObjectCommand({ Bucket: this.target.bucket, Key: this.key }), this.options()));
        return head.ContentLength ?? -1;
      } catch (err) {
        lastError = this.mapError(err);
        // Missing right after a completed upload is an answer too (S3 reads are strongly consistent).
        if (lastError instanceof NotFoundError) {
          throw new InternalError('S3_OBJECT_MISSING', `${this.url} is missing right after its upload completed`, { cause: secretFreeCause(err) });
        }
      }
    }
    throw new UnavailableError(
      'S3_COMMIT_UNVERIFIED',
      `${this.url} was uploaded but S3 did not answer the read-back (${READ_BACK_ATTEMPTS} tries); the object is kept, unverified and without metadata`,
      {
        cause: lastError instanceof Error ? lastError : undefined,
        hint: 'check S3; the next snapshot stores a verified copy, and reconcile reports the leftover object',
      },
    );
  }

  async abort(_reason?: unknown): Promise<void> {
    if (this.state === 'committed') return;
    this.state = 'aborted';
    // A second caller (the signal, then a failing write) waits for the same cleanup.
    this.aborting ??= this.discard();
    return this.aborting;
  }

  private async discard(): Promise<void> {
    this.cancel.abort();
    await Promise.allSettled([...this.inFlight]);
    const uploadId = await this.uploadId?.catch(() => undefined);
    if (uploadId) {
      await this.target.client
        .send(new AbortMultipartUploadCommand({ Bucket: this.target.bucket, Key: this.key, UploadId: uploadId }), {
          abortSignal: AbortSignal.timeout(this.target.timeoutMs),
        })
        .catch(() => undefined); // s3rver answers 405; real S3 expires leftovers by a bucket lifecycle rule.
    }
    this.release();
  }

  private sendPart(): void {
    const buffer = this.current as Buffer;
    const length = this.filled;
    const PartNumber = ++this.partNumber;
    this.current = undefined;
    this.filled = 0;
    const part = (async () => {
      try {
        const UploadId = await this.startUpload();
        const out = await this.send((client) =>
          client.send(
            new UploadPartCommand({ Bucket: this.target.bucket, Key: this.key, UploadId, PartNumber, Body: buffer.subarray(0, length), ContentLength: length }),
            this.options(),
          ),
        );
        this.parts.push({ PartNumber, ETag: out.ETag ?? '' });
      } catch (err) {
        this.failure ??= err;
      } finally {
        // The SDK is done with the buffer once the call settled (its retries included): reuse it.
        this.free.push(buffer);
      }
    })();
    this.inFlight.add(part);
    void part.finally(() => this.inFlight.delete(part));
  }

  private startUpload(): Promise<string> {
    this.uploadId ??= this.send((client) => client.send(new CreateMultipartUploadCommand({ Bucket: this.target.bucket, Key: this.key }), this.options())).then(
      (out) => {
        if (!out.UploadId) throw new InternalError('S3_NO_UPLOAD_ID', `S3 started no multipart upload for ${this.url}`);
        return out.UploadId;
      },
    );
    return this.uploadId;
  }

  /** A free part buffer; waits for a part in flight to finish when all are taken (the backpressure). */
  private async takeBuffer(): Promise<Buffer> {
    for (;;) {
      if (this.failure !== undefined) throw this.failure;
      const buffer = this.free.pop();
      if (buffer) return buffer;
      if (this.allocated < this.parallel + 1) {
        this.allocated += 1;
        return Buffer.allocUnsafe(this.partSize);
      }
      await Promise.race(this.inFlight);
    }
  }

  private async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
    if (this.failure !== undefined) throw this.failure;
  }

  /**
   * One request, retried once on a rebuilt client if its credentials were refused: temporary credentials
   * that expire in the middle of a long upload cost one retry, not the upload.
   */
  private async send<T>(request: (client: S3Client) => Promise<T>): Promise<T> {
    const client = this.target.client;
    try {
      return await request(client);
    } catch (err) {
      if (!isAuthFailure(err) || this.signal.aborted || this.cancel.signal.aborted) throw err;
      // Parts in flight fail together when a key expires: only the first rebuilds, the rest find a fresh client.
      await this.target.refreshCredentials(client);
      return request(this.target.client);
    }
  }

  /** Per request: the caller's signal, this upload's cancel, and --etcd-s3-timeout for the request and its retries. */
  private options(): { abortSignal: AbortSignal } {
    return { abortSignal: AbortSignal.any([this.signal, this.cancel.signal, AbortSignal.timeout(this.target.timeoutMs)]) };
  }

  private async fail(err: unknown): Promise<unknown> {
    const error = this.signal.aborted
      ? this.signal.reason
      : this.state === 'aborted'
        ? new InternalError('STORE_WRITER_CLOSED', `the upload of ${this.url} was aborted`, { cause: secretFreeCause(err) })
        : this.mapError(err);
    await this.abort(error);
    return error;
  }

  private release(): void {
    this.signal.removeEventListener('abort', this.onAbort);
    this.free.length = 0;
    this.current = undefined;
  }

  private assertOpen(): void {
    if (this.state === 'open') return;
    if (this.signal.aborted) throw this.signal.reason;
    throw new InternalError('STORE_WRITER_CLOSED', `the writer for ${this.url} is already ${this.state}`);
  }
}
