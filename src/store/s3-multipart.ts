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
import { InternalError } from '../errors/index.js';
import { isAuthFailure, secretFreeCause, type S3Target } from './s3-errors.js';
import type { ObjectWriter } from './store.js';

/** What a writer needs of its store: the client of the moment, where to write, the timeout, how to refresh credentials. */
export type MultipartTarget = Pick<S3Target, 'client' | 'bucket' | 'timeoutMs' | 'refreshCredentials'>;

type State = 'open' | 'committing' | 'committed' | 'aborted';

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
        await this.send((client) => client.send(new PutObjectCommand({ Bucket: this.target.bucket, Key: this.key, Body: body, ContentLength: body.length }), this.options()));
      } else {
        if (this.filled > 0) this.sendPart();
        await this.drain();
        const parts = [...this.parts].sort((a, b) => a.PartNumber - b.PartNumber);
        const UploadId = await (this.uploadId as Promise<string>);
        await this.send((client) => client.send(new CompleteMultipartUploadCommand({ Bucket: this.target.bucket, Key: this.key, UploadId, MultipartUpload: { Parts: parts } }), this.options()));
      }
    } catch (err) {
      throw await this.fail(err);
    }
    this.state = 'committed';
    try {
      // Read back: the object as stored must be exactly what was sent.
      const head = await this.send((client) => client.send(new HeadObjectCommand({ Bucket: this.target.bucket, Key: this.key }), this.options()));
      const size = head.ContentLength ?? -1;
      if (size !== this.bytes) {
        throw new InternalError('S3_SIZE_MISMATCH', `${this.url} holds ${size} bytes after upload, ${this.bytes} were written; removing it`, {
          hint: 'the S3 endpoint altered the upload (a proxy or an incompatible server?); check it before trusting any snapshot there',
        });
      }
      return { size };
    } catch (err) {
      // A failed check must not leave an object behind that looks like a good backup.
      await this.target.client
        .send(new DeleteObjectCommand({ Bucket: this.target.bucket, Key: this.key }), { abortSignal: AbortSignal.timeout(this.target.timeoutMs) })
        .catch(() => undefined);
      this.state = 'aborted';
      throw err instanceof InternalError ? err : this.mapError(err);
    } finally {
      this.release();
    }
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
          client.send(new UploadPartCommand({ Bucket: this.target.bucket, Key: this.key, UploadId, PartNumber, Body: buffer.subarray(0, length), ContentLength: length }), this.options()),
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
    this.uploadId ??= this.send((client) => client.send(new CreateMultipartUploadCommand({ Bucket: this.target.bucket, Key: this.key }), this.options())).then((out) => {
      if (!out.UploadId) throw new InternalError('S3_NO_UPLOAD_ID', `S3 started no multipart upload for ${this.url}`);
      return out.UploadId;
    });
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
    const error = this.signal.aborted ? this.signal.reason : this.state === 'aborted' ? new InternalError('STORE_WRITER_CLOSED', `the upload of ${this.url} was aborted`, { cause: secretFreeCause(err) }) : this.mapError(err);
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
