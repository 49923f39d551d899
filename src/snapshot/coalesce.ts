import { Transform, type TransformCallback } from 'node:stream';

/**
 * Gathers small chunks (etcd sends 32 KiB, gzip emits 16 KiB) into blocks of `blockBytes`, so every later
 * stage — hashing, file writes, S3 parts — handles a few large buffers instead of tens of thousands of
 * small ones. Holds at most one block.
 */
export class Coalesce extends Transform {
  private parts: Buffer[] = [];
  private pending = 0;

  constructor(private readonly blockBytes = 1024 * 1024) {
    super({ highWaterMark: blockBytes });
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.parts.push(chunk);
    this.pending += chunk.length;
    if (this.pending >= this.blockBytes) this.release();
    callback();
  }

  override _flush(callback: TransformCallback): void {
    if (this.pending > 0) this.release();
    callback();
  }

  private release(): void {
    const block = this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.pending);
    this.parts = [];
    this.pending = 0;
    this.push(block);
  }
}
