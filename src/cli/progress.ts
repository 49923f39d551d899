import { humanBytes } from './format.js';

/**
 * A byte counter on a terminal's stderr while a long save streams; silent when stderr is not a TTY,
 * so scripts and `-o json` output stay clean.
 */
export class ByteProgress {
  private readonly started = Date.now();
  private shown = false;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  update(bytes: number): void {
    if (!this.stream.isTTY) return;
    const seconds = Math.max(0.001, (Date.now() - this.started) / 1000);
    this.stream.write(`\r\x1b[Ksnapshotting: ${humanBytes(bytes)} (${humanBytes(bytes / seconds)}/s)`);
    this.shown = true;
  }

  done(): void {
    if (this.shown) this.stream.write('\r\x1b[K');
  }
}
