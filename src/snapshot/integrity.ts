import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { InternalError } from '../errors/index.js';

const TRAILER = 32;

/**
 * Passes an etcd snapshot through unchanged while checking etcd's own integrity hash: the last 32 bytes
 * are the SHA-256 of everything before them (`etcdctl snapshot status` does not check it). A stream cut
 * short or corrupted fails at its end, before anything is committed.
 *
 * When the stored bytes are the raw snapshot, the same running hash also yields the SHA-256 of the whole
 * file (`fileSha256`), so 1 GB is hashed once, not twice.
 */
export class EtcdIntegrityCheck extends Transform {
  private readonly hash: Hash = createHash('sha256');
  private tail: Buffer = Buffer.alloc(0);
  private bytes = 0;
  fileSha256 = '';

  get size(): number {
    return this.bytes;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    // Hold back the last 32 bytes seen: they may be the trailer.
    if (chunk.length >= TRAILER) {
      if (this.tail.length > 0) this.hash.update(this.tail);
      this.hash.update(chunk.subarray(0, chunk.length - TRAILER));
      this.tail = Buffer.from(chunk.subarray(chunk.length - TRAILER));
    } else {
      const joined = Buffer.concat([this.tail, chunk]);
      const release = Math.max(0, joined.length - TRAILER);
      this.hash.update(joined.subarray(0, release));
      this.tail = Buffer.from(joined.subarray(release));
    }
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    if (this.tail.length < TRAILER) {
      callback(new InternalError('SNAPSHOT_TRUNCATED', `etcd snapshot stream ended after ${this.bytes} bytes, too short to hold its integrity hash`));
      return;
    }
    const expected = this.hash.copy().digest();
    if (!expected.equals(this.tail)) {
      callback(
        new InternalError(
          'SNAPSHOT_CORRUPT',
          `etcd snapshot failed its integrity check: trailing SHA-256 does not match the ${this.bytes - TRAILER} bytes before it`,
          {
            hint: 'the stream was cut short or corrupted; take the snapshot again',
          },
        ),
      );
      return;
    }
    this.fileSha256 = this.hash.update(this.tail).digest('hex');
    callback();
  }
}

/** SHA-256 and size of the bytes as stored (used when they differ from the raw snapshot: compressed). */
export class StoredDigest extends Transform {
  private readonly hash = createHash('sha256');
  size = 0;
  sha256 = '';

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.size += chunk.length;
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.sha256 = this.hash.digest('hex');
    callback();
  }
}
