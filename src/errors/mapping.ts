import { Metadata, status as GrpcStatus, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import {
  CancelledError,
  DeadlineError,
  InternalError,
  PermissionError,
  StewardError,
  UnavailableError,
  errorText,
  prefixOf,
  type ErrorFamily,
} from './errors.js';

/** The one table that ties an error family to a gRPC status and a ctl exit code. */
const FAMILY: Record<ErrorFamily, { grpc: GrpcStatus; exit: number }> = {
  invalid: { grpc: GrpcStatus.INVALID_ARGUMENT, exit: 2 },
  'not-found': { grpc: GrpcStatus.NOT_FOUND, exit: 3 },
  precondition: { grpc: GrpcStatus.FAILED_PRECONDITION, exit: 4 },
  // A refusal like a precondition for scripts (exit 4); its own status so gRPC clients see PERMISSION_DENIED.
  permission: { grpc: GrpcStatus.PERMISSION_DENIED, exit: 4 },
  unavailable: { grpc: GrpcStatus.UNAVAILABLE, exit: 5 },
  deadline: { grpc: GrpcStatus.DEADLINE_EXCEEDED, exit: 6 },
  // 130 = 128 + SIGINT, what a shell reports for a command stopped with Ctrl-C.
  cancelled: { grpc: GrpcStatus.CANCELLED, exit: 130 },
  internal: { grpc: GrpcStatus.INTERNAL, exit: 1 },
};

export const EXIT_OK = 0;

/**
 * gRPC sends the status message in an HTTP/2 trailer: a message that echoes a multi-megabyte argument
 * overflows the peer's header-list limit and wedges the whole connection. Nothing longer than this leaves.
 */
const MAX_DETAILS = 1024;

export function exitCodeFor(err: unknown): number {
  return FAMILY[asStewardError(err).family].exit;
}

/**
 * Any thrown value as a StewardError. An AbortSignal's reason is typed by what aborted it: a timeout
 * (`AbortSignal.timeout`, a call deadline) is a DeadlineError, any other abort a CancelledError.
 */
export function asStewardError(err: unknown): StewardError {
  if (err instanceof StewardError) return err;
  if (err instanceof Error || (typeof err === 'object' && err !== null && 'name' in err)) {
    const name = (err as { name: unknown }).name;
    if (name === 'TimeoutError')
      return new DeadlineError(`timed out: ${errorText(err)}`, { cause: err, hint: 'try again; if it keeps timing out, check the cluster and S3 health' });
    if (name === 'AbortError') return new CancelledError(`cancelled: ${errorText(err)}`, { cause: err });
  }
  return new InternalError('INTERNAL', `unexpected error: ${errorText(err)}`, { cause: err });
}

/**
 * What an error means once `signal` has fired: the signal's reason decides (deadline or cancellation),
 * whatever the interrupted code threw (often a plain Error from a closed stream).
 */
export function abortedError(signal: AbortSignal, err: unknown): StewardError {
  if (err instanceof StewardError && (err.family === 'cancelled' || err.family === 'deadline')) return err;
  const reason: unknown = signal.reason;
  if (reason instanceof StewardError) return reason;
  const mapped = asStewardError(reason);
  return mapped.family === 'internal' ? new CancelledError(`cancelled: ${errorText(reason)}`, { cause: err }) : mapped;
}

/** `error[CODE]: what — what to do`, the line the ctl and the daemon's entry point print on stderr. */
export function renderError(err: unknown): string {
  const stewardError = asStewardError(err);
  return `error[${stewardError.code}]: ${stewardError.describe()}`;
}

const CODE_KEY = 'steward-error-code';
// Binary metadata: a hint may hold any UTF-8 (a quoted name, '—'), which text metadata refuses with a throw.
const HINT_KEY = 'steward-error-hint-bin';

/** Server side: what a handler's thrown error becomes on the wire. */
export function toGrpcStatus(err: unknown): Partial<StatusObject> {
  const stewardError = asStewardError(err);
  const metadata = new Metadata();
  // Codes are ours ([A-Z_]); anything else would make Metadata.set throw and leave the call unanswered.
  metadata.set(CODE_KEY, /^[A-Z0-9_]+$/.test(stewardError.code) ? stewardError.code : 'INTERNAL');
  if (stewardError.hint) metadata.set(HINT_KEY, Buffer.from(prefixOf(stewardError.hint, MAX_DETAILS), 'utf8'));
  return { code: FAMILY[stewardError.family].grpc, details: prefixOf(stewardError.message, MAX_DETAILS), metadata };
}

/** Client side: the inverse of toGrpcStatus, plus transport failures that never reached a handler. */
export function fromGrpcError(err: ServiceError, endpoint: string): StewardError {
  const code = firstString(err.metadata?.get(CODE_KEY));
  const hintValue = err.metadata?.get(HINT_KEY)[0];
  const hint = Buffer.isBuffer(hintValue) ? hintValue.toString('utf8') : undefined;
  const message = err.details || err.message;
  if (code === undefined) {
    switch (err.code) {
      case GrpcStatus.UNAVAILABLE:
        return new UnavailableError('STEWARD_UNREACHABLE', `cannot reach the steward at ${endpoint} (${message})`, {
          hint: 'check that etcd-steward is running there and that --endpoint / ETCD_STEWARD_ENDPOINT points at its gRPC address; a steward with mTLS needs --cacert, --cert and --key (or ETCD_STEWARD_CACERT, _CERT, _KEY)',
          cause: err,
        });
      case GrpcStatus.PERMISSION_DENIED:
        return new PermissionError('PERMISSION_DENIED', `the steward at ${endpoint} refused the call: ${message}`, { cause: err });
      case GrpcStatus.DEADLINE_EXCEEDED:
        return new DeadlineError(`the call to ${endpoint} did not finish before its deadline (${message})`, {
          hint: 'the steward may be overloaded or unreachable; check it with etcd-stewardctl status and try again',
          cause: err,
        });
      case GrpcStatus.CANCELLED:
        return new CancelledError(`the call to ${endpoint} was cancelled (${message})`, { hint: 'nothing more happens; run it again to retry', cause: err });
      default:
        return new InternalError('RPC_FAILED', `the call to ${endpoint} failed: ${message}`, { cause: err });
    }
  }
  const family = familyOfStatus(err.code);
  return new StewardError(family, code, message, {
    cause: err,
    retryable: family === 'unavailable' || family === 'deadline',
    ...(hint === undefined ? {} : { hint }),
  });
}

function familyOfStatus(code: GrpcStatus): ErrorFamily {
  for (const [family, mapped] of Object.entries(FAMILY) as [ErrorFamily, (typeof FAMILY)[ErrorFamily]][]) {
    if (mapped.grpc === code) return family;
  }
  return 'internal';
}

function firstString(values: unknown[] | undefined): string | undefined {
  const first = values?.[0];
  return typeof first === 'string' ? first : undefined;
}
