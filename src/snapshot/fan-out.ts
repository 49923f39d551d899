import { Writable } from 'node:stream';
import type { Logger } from 'pino';
import { errorText } from '../errors/index.js';
import type { ObjectWriter } from '../store/store.js';

export interface Destination {
  locationId: string;
  writer: ObjectWriter;
  failure?: unknown;
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
    Promise.all(
      this.live.map((destination) =>
        destination.writer.write(chunk).catch(async (err: unknown) => {
          destination.failure = err;
          this.log.error({ location: destination.locationId, err: errorText(err) }, 'writing the snapshot to this location failed; continuing with the others');
          await destination.writer.abort(err);
        }),
      ),
    ).then(() => {
      if (this.live.length === 0) {
        const first = this.destinations[0]?.failure;
        callback(first instanceof Error ? first : new Error(`every location failed: ${errorText(first)}`));
      } else {
        callback();
      }
    }, callback);
  }
}
