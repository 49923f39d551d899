import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * One JSON event a line on stdout, so `kubectl logs` shows it. Components log through children carrying
 * `component`; fields that could hold a credential are redacted by name as a second line of defence.
 */
/** Field names that hold a credential wherever they appear (config keys, SDK and etcd3 option names). */
const CREDENTIAL_FIELDS = ['secretKey', 'secretAccessKey', 'sessionToken', 'password', 'etcdPassword', 'etcdS3SecretKey', 'etcdS3SessionToken', 'privateKey'];

export function createLogger(options: { level: LevelWithSilent; node?: string; destination?: NodeJS.WritableStream }): Logger {
  return pino(
    {
      level: options.level,
      base: options.node === undefined ? { pid: process.pid } : { pid: process.pid, node: options.node },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: CREDENTIAL_FIELDS.flatMap((field) => [field, `*.${field}`]), censor: '[redacted]' },
      serializers: { err: pino.stdSerializers.errWithCause },
    },
    options.destination ?? pino.destination({ fd: 1, sync: true }),
  );
}
