/**
 * Every failure an operator can see is one of these classes. `code` is stable (scripts and alerts match
 * on it); `hint` says what to do next. How a class maps to a gRPC status and a ctl exit code is decided in
 * `mapping.ts` and nowhere else.
 */
export type ErrorFamily =
  | 'invalid' // bad input or configuration: exit 2
  | 'not-found' // exit 3
  | 'precondition' // refused because the cluster or the request is not in a safe state: exit 4
  | 'permission' // refused because of who is asking (mTLS identity): exit 4, like every refusal
  | 'unavailable' // cannot reach a peer or a dependency: exit 5 from the ctl
  | 'deadline' // a deadline or timeout passed before the work finished: exit 6
  | 'cancelled' // the caller cancelled (Ctrl-C) or the steward is shutting down: exit 130
  | 'internal'; // the operation failed: exit 1

export interface StewardErrorOptions {
  hint?: string;
  cause?: unknown;
  retryable?: boolean;
}

export class StewardError extends Error {
  readonly code: string;
  readonly family: ErrorFamily;
  readonly hint: string | undefined;
  readonly retryable: boolean;

  constructor(family: ErrorFamily, code: string, message: string, options: StewardErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.family = family;
    this.code = code;
    this.hint = options.hint;
    this.retryable = options.retryable ?? false;
  }

  /** `what happened — what to do`, the one line an operator reads. */
  describe(): string {
    return this.hint ? `${this.message} — ${this.hint}` : this.message;
  }
}

export class ConfigError extends StewardError {
  constructor(message: string, options: StewardErrorOptions = {}) {
    super('invalid', 'INVALID_CONFIG', message, options);
  }
}

export class UsageError extends StewardError {
  constructor(message: string, options: StewardErrorOptions = {}) {
    super('invalid', 'USAGE', message, options);
  }
}

export class InvalidArgumentError extends StewardError {
  constructor(message: string, options: StewardErrorOptions = {}) {
    super('invalid', 'INVALID_ARGUMENT', message, options);
  }
}

export class NotFoundError extends StewardError {
  constructor(message: string, options: StewardErrorOptions = {}) {
    super('not-found', 'NOT_FOUND', message, options);
  }
}

export class PreconditionError extends StewardError {
  constructor(code: string, message: string, options: StewardErrorOptions = {}) {
    super('precondition', code, message, options);
  }
}

/** Refused because of who asks: no valid client certificate, or one whose identity may not do this. */
export class PermissionError extends StewardError {
  constructor(code: string, message: string, options: StewardErrorOptions = {}) {
    super('permission', code, message, options);
  }
}

export class UnavailableError extends StewardError {
  constructor(code: string, message: string, options: StewardErrorOptions = {}) {
    super('unavailable', code, message, { retryable: true, ...options });
  }
}

/** The work was stopped because its caller went away or the steward is shutting down. */
export class CancelledError extends StewardError {
  constructor(message: string, options: StewardErrorOptions & { code?: string } = {}) {
    super('cancelled', options.code ?? 'CANCELLED', message, options);
  }
}

/** A deadline (the caller's, or a timeout of our own) passed before the work finished. */
export class DeadlineError extends StewardError {
  constructor(message: string, options: StewardErrorOptions & { code?: string } = {}) {
    super('deadline', options.code ?? 'DEADLINE_EXCEEDED', message, { retryable: true, ...options });
  }
}

export class InternalError extends StewardError {
  constructor(code: string, message: string, options: StewardErrorOptions = {}) {
    super('internal', code, message, options);
  }
}

/** Short, secret-free text of any thrown value, for logs and wrapped messages. */
export function errorText(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** At most `max` characters of an input, marked when cut: logs and error messages never carry a whole argument. */
export function prefixOf(text: string, max = 120): string {
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length} characters)`;
}
