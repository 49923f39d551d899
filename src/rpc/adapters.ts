import type { Metadata, sendUnaryData, ServerReadableStream, ServerUnaryCall, ServerWritableStream } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { CancelledError, DeadlineError, abortedError, asStewardError, prefixOf, toGrpcStatus, type StewardError } from '../errors/index.js';
import { certificateCn } from '../security/access.js';
import { checkRequestHeader, replyHeader } from './peer-header.js';
import type { CallContext, PeerCallContext, PeerHeader, PeerIdentity, PeerReplyHeader } from './types.js';

/**
 * grpc-js calls adapted to `handler(request, ctx)`: every handler gets an AbortSignal that fires when the
 * client cancels, the call's deadline passes, or the steward shuts down; errors are mapped in one place
 * (errors/mapping.ts); inputs are checked by `validate` before any work; logs carry only a short prefix.
 */
export interface AdapterOptions {
  log: Logger;
  /** Aborted when the steward shuts down: every call in flight stops its work. */
  shutdown: AbortSignal;
  /** mTLS on: every call has a verified client certificate (security/access.ts refused the others). */
  tls: boolean;
}

interface AnyCall {
  metadata: Metadata;
  getAuthContext(): ReturnType<ServerUnaryCall<unknown, unknown>['getAuthContext']> | null;
  getDeadline(): Date | number;
  on(event: 'cancelled', listener: () => void): unknown;
  removeListener(event: 'cancelled', listener: () => void): unknown;
}

/** The signal of one call and how to release what watching it holds. */
export function callContext(call: AnyCall, shutdown: AbortSignal): { ctx: CallContext; done: () => void } {
  const controller = new AbortController();
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  // grpc-js reports a passed deadline as 'cancelled' too: tell the two apart by the clock.
  const onCancel = (): void =>
    controller.abort(Date.now() >= deadlineMs - 20 ? new DeadlineError('the call passed its deadline') : new CancelledError('the client cancelled the call'));
  const onShutdown = (): void =>
    controller.abort(
      new CancelledError('the steward is shutting down', { code: 'STEWARD_SHUTTING_DOWN', hint: 'retry against another steward or once it is back' }),
    );
  call.on('cancelled', onCancel);
  shutdown.addEventListener('abort', onShutdown, { once: true });
  if (shutdown.aborted) onShutdown();
  // grpc-js ends a call whose deadline passed, but the handler would run on: fire its signal too.
  const ms = deadlineMs - Date.now();
  const timer = Number.isFinite(ms) ? setTimeout(() => controller.abort(new DeadlineError('the call passed its deadline')), Math.max(0, ms)) : undefined;
  timer?.unref();
  return {
    ctx: { signal: controller.signal, metadata: call.metadata, caller: certificateCn(call.getAuthContext()?.sslPeerCertificate) },
    done: () => {
      clearTimeout(timer);
      call.removeListener('cancelled', onCancel);
      shutdown.removeEventListener('abort', onShutdown);
    },
  };
}

function failure(err: unknown, ctx: CallContext, method: string, log: Logger): StewardError {
  const mapped = ctx.signal.aborted ? abortedError(ctx.signal, err) : asStewardError(err);
  // Never a whole input in the log: a refused 3 MB argument would otherwise be logged whole.
  log.warn({ method, code: mapped.code, err: prefixOf(mapped.message, 300) }, 'call failed');
  return mapped;
}

export function unary<Req, Res>(
  method: string,
  options: AdapterOptions,
  handler: (request: Req, ctx: CallContext) => Promise<Res>,
  validate: (request: Req) => void = () => undefined,
) {
  return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
    const { ctx, done } = callContext(call, options.shutdown);
    const run = async (): Promise<Res> => {
      validate(call.request);
      return handler(call.request, ctx);
    };
    run().then(
      (response) => {
        done();
        callback(null, response);
      },
      (err: unknown) => {
        done();
        callback(toGrpcStatus(failure(err, ctx, method, options.log)));
      },
    );
  };
}

/** A server stream whose handler emits events and resolves with the last one. */
export function serverStream<Req, Event, Res>(
  method: string,
  options: AdapterOptions,
  handler: (request: Req, emit: (event: Event) => void, ctx: CallContext) => Promise<Res>,
  last: (result: Res) => Event,
  validate: (request: Req) => void = () => undefined,
) {
  return (call: ServerWritableStream<Req, Event>): void => {
    const { ctx, done } = callContext(call, options.shutdown);
    const run = async (): Promise<Res> => {
      validate(call.request);
      return handler(call.request, (event) => call.write(event), ctx);
    };
    run().then(
      (result) => {
        done();
        call.write(last(result));
        call.end();
      },
      (err: unknown) => {
        done();
        call.emit('error', toGrpcStatus(failure(err, ctx, method, options.log)));
      },
    );
  };
}

export interface PeerAdapterOptions extends AdapterOptions {
  identity: PeerIdentity;
}

/** With mTLS, who the certificate says called (checked against the header); null without TLS: nothing to check. */
function callerOf(ctx: CallContext, options: AdapterOptions): string | null {
  return options.tls ? (ctx.caller ?? '') : null;
}

/** A peer unary call: the header is checked before the handler runs and the reply names who answered. */
export function peerUnary<Req extends { header: PeerHeader | null }, Res extends object>(
  method: string,
  options: PeerAdapterOptions,
  handler: (request: Req, ctx: PeerCallContext) => Promise<Res>,
  validate: (request: Req) => void = () => undefined,
) {
  return unary<Req, Res & { header: PeerReplyHeader }>(
    method,
    options,
    async (request, ctx) => {
      const peer = checkRequestHeader(request.header, options.identity, callerOf(ctx, options));
      const response = await handler(request, { ...ctx, peer });
      return { ...response, header: replyHeader(options.identity) };
    },
    validate,
  );
}

/**
 * A peer client stream: the first message carries the header, every later one a chunk of bytes. The
 * handler reads the chunks as an async iterable; grpc-js reads the next message off the wire only when
 * the stream is read, so a slow consumer slows the sender through HTTP/2 flow control and no more than
 * the stream's high-water mark (16 messages) plus the HTTP/2 windows is ever buffered here.
 */
export function peerClientStream<Chunk extends { header?: PeerHeader | null; data?: Buffer }, Res extends object>(
  method: string,
  options: PeerAdapterOptions,
  handler: (first: Chunk, data: AsyncIterable<Buffer>, ctx: PeerCallContext) => Promise<Res>,
) {
  return (call: ServerReadableStream<Chunk, Res & { header: PeerReplyHeader }>, callback: sendUnaryData<Res & { header: PeerReplyHeader }>): void => {
    const { ctx, done } = callContext(call, options.shutdown);
    const run = async (): Promise<Res & { header: PeerReplyHeader }> => {
      const messages = call[Symbol.asyncIterator]() as AsyncIterator<Chunk>;
      const first = await messages.next();
      const peer = checkRequestHeader(first.done ? undefined : first.value.header, options.identity, callerOf(ctx, options));
      const data = (async function* (): AsyncGenerator<Buffer> {
        // Data in the first message (beside the header) is part of the stream too.
        if (!first.done && first.value.data && first.value.data.length > 0) yield first.value.data;
        for (;;) {
          // A cancelled client stream is destroyed with neither 'error' nor 'end': the signal ends the wait.
          ctx.signal.throwIfAborted();
          const next = await messages.next();
          if (next.done) return;
          if (next.value.data) yield next.value.data;
        }
      })();
      const response = await handler(first.value as Chunk, data, { ...ctx, peer });
      return { ...response, header: replyHeader(options.identity) };
    };
    run().then(
      (response) => {
        done();
        callback(null, response);
      },
      (err: unknown) => {
        done();
        call.destroy();
        callback(toGrpcStatus(failure(err, ctx, method, options.log)));
      },
    );
  };
}

/**
 * A peer server stream of bytes: the header is checked, the first message names who answers, every later
 * one carries a chunk. Written with backpressure: the handler's iterable is read only as fast as the
 * client takes it.
 */
export function peerByteStream<Req extends { header: PeerHeader | null }>(
  method: string,
  options: PeerAdapterOptions,
  handler: (request: Req, ctx: PeerCallContext) => Promise<AsyncIterable<Buffer>>,
  validate: (request: Req) => void = () => undefined,
) {
  return (call: ServerWritableStream<Req, { header?: PeerReplyHeader; data?: Buffer }>): void => {
    const { ctx, done } = callContext(call, options.shutdown);
    const run = async (): Promise<void> => {
      validate(call.request);
      const peer = checkRequestHeader(call.request.header, options.identity, callerOf(ctx, options));
      const source = await handler(call.request, { ...ctx, peer });
      call.write({ header: replyHeader(options.identity) });
      for await (const data of source) {
        ctx.signal.throwIfAborted();
        if (!call.write({ data })) await waitForDrain(call, ctx.signal);
      }
    };
    run().then(
      () => {
        done();
        call.end();
      },
      (err: unknown) => {
        done();
        call.emit('error', toGrpcStatus(failure(err, ctx, method, options.log)));
      },
    );
  };
}

function waitForDrain(
  call: { once(event: 'drain', listener: () => void): unknown; removeListener(event: 'drain', listener: () => void): unknown },
  signal: AbortSignal,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    };
    const onAbort = (): void => {
      call.removeListener('drain', onDrain);
      reject(signal.reason as Error);
    };
    call.once('drain', onDrain);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
