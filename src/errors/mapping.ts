import { Metadata, status as GrpcStatus, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import {
  InternalError,
  StewardError,
  UnavailableError,
  errorText,
  type ErrorFamily,
} from './errors.js';

/** The one table that ties an error family to a gRPC status and a ctl exit code. */
const FAMILY: Record<ErrorFamily, { grpc: GrpcStatus; exit: number }> = {
  invalid: { grpc: GrpcStatus.INVALID_ARGUMENT, exit: 2 },
  'not-found': { grpc: GrpcStatus.NOT_FOUND, exit: 3 },
  precondition: { grpc: GrpcStatus.FAILED_PRECONDITION, exit: 4 },
  unavailable: { grpc: GrpcStatus.UNAVAILABLE, exit: 5 },
  internal: { grpc: GrpcStatus.INTERNAL, exit: 1 },
};

export const EXIT_OK = 0;

export function exitCodeFor(err: unknown): number {
  return err instanceof StewardError ? FAMILY[err.family].exit : FAMILY.internal.exit;
}

const CODE_KEY = 'steward-error-code';
const HINT_KEY = 'steward-error-hint';

/** Server side: what a handler's thrown error becomes on the wire. */
export function toGrpcStatus(err: unknown): Partial<StatusObject> {
  const stewardError =
    err instanceof StewardError ? err : new InternalError('INTERNAL', `unexpected error: ${errorText(err)}`);
  const metadata = new Metadata();
  metadata.set(CODE_KEY, stewardError.code);
  if (stewardError.hint) metadata.set(HINT_KEY, stewardError.hint);
  return { code: FAMILY[stewardError.family].grpc, details: stewardError.message, metadata };
}

/** Client side: the inverse of toGrpcStatus, plus transport failures that never reached a handler. */
export function fromGrpcError(err: ServiceError, endpoint: string): StewardError {
  const code = firstString(err.metadata?.get(CODE_KEY));
  const hint = firstString(err.metadata?.get(HINT_KEY));
  const message = err.details || err.message;
  if (code === undefined) {
    if (err.code === GrpcStatus.UNAVAILABLE || err.code === GrpcStatus.DEADLINE_EXCEEDED) {
      return new UnavailableError('STEWARD_UNREACHABLE', `cannot reach the steward at ${endpoint} (${message})`, {
        hint: 'check that etcd-steward is running there and that --endpoint / ETCD_STEWARD_ENDPOINT points at its gRPC address',
        cause: err,
      });
    }
    return new InternalError('RPC_FAILED', `the call to ${endpoint} failed: ${message}`, { cause: err });
  }
  const family = familyOfStatus(err.code);
  return new StewardError(family, code, message, { cause: err, retryable: family === 'unavailable', ...(hint === undefined ? {} : { hint }) });
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
