import type { S3Client } from '@aws-sdk/client-s3';
import { InternalError, NotFoundError, PreconditionError, StewardError, UnavailableError, errorText } from '../errors/index.js';

/** What a writer and the error mapping need to know about their store. */
export interface S3Target {
  /** The client for the next request: it changes when credentials rotate. */
  readonly client: S3Client;
  readonly bucket: string;
  readonly location: string;
  readonly endpoint: string;
  readonly timeoutMs: number;
  /** Rebuilds the client with fresh credentials (config file re-read, default chain re-fetched) unless `failed` was already replaced. */
  readonly refreshCredentials: (failed: S3Client) => Promise<void>;
}

const ACCESS_DENIED = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'ExpiredToken',
  'InvalidToken',
  'TokenRefreshRequired',
  'SignatureDoesNotMatch',
  'AllAccessDisabled',
  'CredentialsProviderError',
]);
const UNREACHABLE = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  'ECONNABORTED',
  'EPROTO',
]);

/** The one place an SDK or socket failure becomes a typed error. Messages name the S3 error and status, never credentials. */
export function toStoreError(err: unknown, op: string, url: string, target: S3Target, signal: AbortSignal): unknown {
  if (signal.aborted) return signal.reason;
  if (err instanceof StewardError) return err;
  const { name, status, errno } = failureOf(err);
  // Only the first line, bounded: the same text the rebuilt cause keeps.
  const text = (errorText(err).split('\n')[0] ?? '').slice(0, 500);
  // SDK exceptions copy the server's error fields onto themselves (a SignatureDoesNotMatch carries the
  // canonical request, key id and token): only a rebuilt, field-free cause may reach a log.
  err = secretFreeCause(err, name, errno);
  const detail = `${name}${status ? `, HTTP ${status}` : ''}${errno && errno !== name ? `, ${errno}` : ''}${text && text !== 'UnknownError' && text !== name ? `: ${text}` : ''}`;
  const message = `S3 ${op} of ${url} failed (${detail})`;
  if (name === 'NoSuchKey' || (status === 404 && name === 'NotFound')) {
    return new NotFoundError(`${url} does not exist`, { cause: err, hint: 'list the store to see which snapshots exist' });
  }
  if (name === 'PreconditionFailed' || status === 412) {
    return new PreconditionError('OBJECT_EXISTS', `${url} already exists (${detail})`, { cause: err });
  }
  if (name === 'NoSuchBucket') {
    return new StewardError('invalid', 'S3_NO_SUCH_BUCKET', `${message}: bucket ${target.bucket} does not exist at ${target.endpoint}`, {
      cause: err,
      hint: 'create the bucket, or fix --etcd-s3-bucket (backups) or --control-s3-bucket (the cluster spec)',
    });
  }
  if (ACCESS_DENIED.has(name) || status === 403) {
    return new UnavailableError('S3_ACCESS_DENIED', message, {
      cause: err,
      hint: `check --etcd-s3-access-key / --etcd-s3-secret-key (or the role the pod runs as): they must be valid, unexpired and allowed to get, put, list and delete under ${target.location}`,
    });
  }
  if (errno && /CERT|UNABLE_TO_VERIFY|SELF_SIGNED|^ERR_SSL|^ERR_TLS/.test(errno)) {
    return new UnavailableError('S3_TLS', `the TLS certificate of ${target.endpoint} was not accepted: ${message}`, {
      cause: err,
      hint: 'for a private CA pass --etcd-s3-endpoint-ca with its PEM; --etcd-s3-skip-ssl-verify only in a lab',
    });
  }
  if (name === 'AbortError' || name === 'TimeoutError') {
    // Not the caller's signal (handled above): our own --etcd-s3-timeout bound on the call and its retries.
    return new UnavailableError('S3_UNREACHABLE', `no answer from S3 at ${target.endpoint} within --etcd-s3-timeout (${target.timeoutMs} ms): ${message}`, {
      cause: err,
      hint: 'check the endpoint and network; raise --etcd-s3-timeout on a slow link',
    });
  }
  if (errno && UNREACHABLE.has(errno)) {
    return new UnavailableError('S3_UNREACHABLE', `cannot reach S3 at ${target.endpoint}: ${message}`, {
      cause: err,
      hint: 'check --etcd-s3-endpoint and --etcd-s3-insecure (http or https), DNS and network policy; raise --etcd-s3-timeout on a slow link',
    });
  }
  if (status === 501 || name === 'NotImplemented') {
    return new InternalError('S3_NOT_IMPLEMENTED', `${message}: the S3 service at ${target.endpoint} does not implement this request`, {
      cause: err,
      hint: 'the server lacks an S3 feature etcd-steward uses (init needs If-None-Match on PUT); use AWS S3, MinIO or another server that has it',
    });
  }
  if ((status !== undefined && status >= 500) || name === 'SlowDown') {
    return new UnavailableError('S3_SERVER_ERROR', message, {
      cause: err,
      hint: `the S3 service at ${target.endpoint} failed; the operation is retried later, check the service if it persists`,
    });
  }
  return new InternalError('S3_REQUEST_FAILED', message, { cause: err, hint: `check the S3 service at ${target.endpoint} and the bucket's configuration` });
}

/** An expired, rotated-away or refused credential: worth one retry on a rebuilt client. */
export function isAuthFailure(err: unknown): boolean {
  const { name, status } = failureOf(err);
  return ACCESS_DENIED.has(name) || status === 403;
}

/** name, first line of the message, a socket code and the original stack frames; nothing the server sent along. */
export function secretFreeCause(err: unknown, name = failureOf(err).name, errno = failureOf(err).errno): Error {
  const cause: Error & { code?: string } = new Error(errorText(err).split('\n')[0]?.slice(0, 500) ?? '');
  cause.name = name;
  if (errno) cause.code = errno;
  const frames = err instanceof Error ? (err.stack ?? '').split('\n').filter((line) => line.startsWith('    at ')) : [];
  cause.stack = [`${cause.name}: ${cause.message}`, ...frames].join('\n');
  return cause;
}

function failureOf(err: unknown): { name: string; status: number | undefined; errno: string | undefined } {
  if (typeof err !== 'object' || err === null) return { name: 'Error', status: undefined, errno: undefined };
  // SDK exceptions carry `$metadata.httpStatusCode`; socket errors carry a string `code`. Read both structurally.
  const record = err as { name?: unknown; code?: unknown; $metadata?: { httpStatusCode?: unknown } };
  return {
    name: typeof record.name === 'string' ? record.name : 'Error',
    status: typeof record.$metadata?.httpStatusCode === 'number' ? record.$metadata.httpStatusCode : undefined,
    errno: typeof record.code === 'string' ? record.code : undefined,
  };
}
