import { MultiBar, SingleBar } from 'cli-progress';
import type { RestoreProgress } from '../rpc/types.js';
import { humanBytes } from './format.js';

/**
 * A save's progress on a terminal's stderr: a cli-progress bar with percent, rate and ETA once the steward
 * says the snapshot's size (etcd's remaining_bytes); from an older steward that does not, a byte counter
 * and rate as before. Silent when stderr is not a TTY, so pipes, logs and `-o json` get exactly what they
 * always did. cli-progress's SIGINT handler is off: signals belong to the entry point.
 */
export class SaveProgressView {
  private readonly started = Date.now();
  private bar: SingleBar | undefined;
  private counter = false;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  update(progress: { bytes: number; total: number }): void {
    if (!this.stream.isTTY) return;
    const { bytes, total } = progress;
    const seconds = Math.max(0.001, (Date.now() - this.started) / 1000);
    const perSecond = bytes / seconds;
    const rate = `${humanBytes(perSecond)}/s`;
    if (total <= 0) {
      this.stream.write(`\r\x1b[Ksnapshotting: ${humanBytes(bytes)} (${rate})`);
      this.counter = true;
      return;
    }
    // Never past 100%: the size is etcd's, the bytes are what arrived.
    const value = Math.min(bytes, total);
    // The ETA at the average rate so far (cli-progress's own {eta} says 0 until it has several samples).
    const payload = { sent: humanBytes(value), size: humanBytes(total), rate, timeLeft: perSecond > 0 ? duration((total - value) / perSecond) : '?' };
    if (!this.bar) {
      if (this.counter) this.stream.write('\r\x1b[K');
      this.bar = new SingleBar({
        stream: this.stream,
        format: 'snapshot [{bar}] {percentage}% {sent} / {size}  {rate}  ETA {timeLeft}',
        barsize: 30,
        gracefulExit: false,
        hideCursor: false,
        clearOnComplete: false,
        fps: 10,
      });
      this.bar.start(total, value, payload);
      return;
    }
    if (this.bar.getTotal() !== total) this.bar.setTotal(total);
    this.bar.update(value, payload);
  }

  /** Leaves the bar's last state on its own line (or clears the counter); idempotent. */
  done(): void {
    if (this.bar) {
      this.bar.stop();
      this.bar = undefined;
    } else if (this.counter) this.stream.write('\r\x1b[K');
    this.counter = false;
  }
}

/** `42s`, `3m05s`, `2h07m`. */
function duration(seconds: number): string {
  const s = Math.ceil(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** How a restore's progress events show on stderr while it runs. */
export interface RestoreProgressView {
  progress(event: RestoreProgress): void;
  /** Idempotent; leaves the terminal with the final state of every bar and the cursor below them. */
  close(): void;
}

/** Bars and redraws on a terminal; plain lines anywhere else (a log file, CI, a pipe). */
export function restoreProgressView(stream: NodeJS.WriteStream, members: string[]): RestoreProgressView {
  return stream.isTTY ? new TerminalRestoreProgress(stream, members) : new LineRestoreProgress(stream);
}

function clock(at: string): string {
  const date = at ? new Date(at) : new Date();
  return (Number.isNaN(date.getTime()) ? new Date() : date).toTimeString().slice(0, 8);
}

/** `12:00:03 node-1: Verify — sha256 matches`; member '' is the whole restore. */
export function progressLine(event: RestoreProgress): string {
  const bytes = event.total > 0 ? ` ${humanBytes(event.bytes)} of ${humanBytes(event.total)}` : '';
  return `${clock(event.at)} ${event.member || 'restore'}: ${event.phase}${bytes}${event.message ? ` — ${event.message}` : ''}`;
}

/**
 * One line when a member (or the whole restore) enters a phase, and one when a member's Distribute has
 * sent everything: no redraws, so a log reads top to bottom.
 */
class LineRestoreProgress implements RestoreProgressView {
  private readonly phases = new Map<string, string>();
  private readonly sent = new Set<string>();

  constructor(private readonly stream: NodeJS.WritableStream) {}

  progress(event: RestoreProgress): void {
    const changed = this.phases.get(event.member) !== event.phase;
    this.phases.set(event.member, event.phase);
    const complete = event.phase === 'Distribute' && event.total > 0 && event.bytes >= event.total && !this.sent.has(event.member);
    if (complete) this.sent.add(event.member);
    if (changed || complete) this.stream.write(`${progressLine(event)}\n`);
  }

  close(): void {}
}

/**
 * cli-progress's MultiBar: one bar per member for Distribute (bytes sent of total, then "verified"), with
 * phase lines logged above the bars. Its own SIGINT handler is off: signals belong to the entry point,
 * which cancels the call, and the command closes this view on the way out.
 */
class TerminalRestoreProgress implements RestoreProgressView {
  private readonly bars = new Map<string, SingleBar>();
  private readonly phases = new Map<string, string>();
  private readonly multi: MultiBar;
  private readonly width: number;
  private closed = false;

  constructor(
    private readonly stream: NodeJS.WriteStream,
    members: string[],
  ) {
    this.width = Math.max(8, ...members.map((m) => m.length));
    this.multi = new MultiBar({
      stream,
      format: '{node} [{bar}] {percentage}% {sent} / {size}  {status}',
      barsize: 30,
      autopadding: true,
      emptyOnZero: true,
      gracefulExit: false,
      hideCursor: false,
      clearOnComplete: false,
      // Lines logged above the bars overwrite them; an unchanged bar is only drawn again when forced.
      forceRedraw: true,
      fps: 10,
    });
  }

  progress(event: RestoreProgress): void {
    if (this.closed) return;
    const changed = this.phases.get(event.member) !== event.phase;
    this.phases.set(event.member, event.phase);
    if (event.member && event.phase === 'Distribute') this.distribute(event);
    else if (event.member && this.bars.has(event.member)) {
      const status = event.phase === 'Verify' ? 'verified' : event.phase === 'Failed' ? 'FAILED' : undefined;
      if (status) this.bars.get(event.member)?.update({ status });
    }
    if (changed) this.line(progressLine(event));
  }

  private distribute(event: RestoreProgress): void {
    const payload = { node: event.member.padEnd(this.width), sent: humanBytes(event.bytes), size: humanBytes(event.total), status: 'sending' };
    const bar = this.bars.get(event.member);
    if (!bar) {
      this.bars.set(event.member, this.multi.create(event.total, event.bytes, payload));
      return;
    }
    if (bar.getTotal() !== event.total) bar.setTotal(event.total);
    bar.update(event.bytes, payload);
  }

  /** Above the bars once there are any (MultiBar prints its log at the next redraw, forced here). */
  private line(text: string): void {
    if (this.bars.size === 0) this.stream.write(`${text}\n`);
    else {
      this.multi.log(`${text}\n`);
      this.multi.update();
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.bars.size > 0) {
      this.multi.update();
      this.multi.stop();
    }
  }
}
