import { Writable } from 'node:stream';
import type { Logger } from 'pino';
import { UnavailableError, errorText } from '../errors/index.js';
import type { ObjectWriter } from '../store/store.js';

export interface Destination {
  locationId: string;
  writer: ObjectWriter;
  failure?: unknown;
  /**
   * A best-effort copy (S3) is dropped when it accepts no chunk for this long, so a hung endpoint costs
   * only its own copy: the others wait at most this long for it. Unset: the copy paces the stream however slow.
   */
  idleTimeoutMs?: number;
}

/**
 * Writes each chunk to every destination and accepts the next only when all have taken it, so the
 * slowest destination paces the etcd stream and nothing piles up in memory. A destination that fails is
 * aborted and dropped while the others go on (an S3 outage must not cost the local snapshot); when none
 * is left the stream fails.
 */
export class FanOut extends Writable {
  constructor(
    private readonly destinations: Destination[],
    private readonly log: Logger,
  ) {
    // One block may wait while the previous one is being written: reading etcd overlaps the writes.
    super({ highWaterMark: 2 * 1024 * 1024 });
  }

  get live(): Destination[] {
    return this.destinations.filter((d) => d.failure === undefined);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    Promise.all(this.live.map((destination) => this.writeTo(destination, chunk))).then(() => {
      if (this.live.length === 0) {
        const first = this.destinations[0]?.failure;
        callback(first instanceof Error ? first : new Error(`every location failed: ${errorText(first)}`));
      } else {
        callback();
      }
    }, callback);
  }

  private async writeTo(destination: Destination, chunk: Buffer): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const writing = destination.writer.write(chunk);
      if (destination.idleTimeoutMs === undefined) {
        await writing;
        return;
      }
      const { idleTimeoutMs } = destination;
      // The write left behind settles when the writer is aborted below; its outcome no longer matters.
      writing.catch(() => undefined);
      await Promise.race([
        writing,
        new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => {
            reject(
              new UnavailableError('SNAPSHOT_COPY_STALLED', `${destination.locationId} accepted no snapshot data for ${idleTimeoutMs} ms; dropping this copy`, {
                hint: 'the endpoint hangs or is far too slow; the other copies go on',
              }),
            );
          }, idleTimeoutMs);
        }),
      ]);
    } catch (err) {
      if (destination.failure !== undefined) return;
      destination.failure = err;
      this.log.error({ location: destination.locationId, err: errorText(err) }, 'writing the snapshot to this location failed; continuing with the others');
      // Not awaited: cleaning up a hung endpoint (S3's AbortMultipartUpload) must not hold the others back.
      destination.writer.abort(err).catch(() => undefined);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }
}
