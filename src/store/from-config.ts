import { readFile } from 'node:fs/promises';
import type { Config } from '../config/settings.js';
import { ConfigError, errorText } from '../errors/index.js';
import type { StewardMetrics } from '../observability/metrics.js';
import type { S3Store } from './s3.js';

/** Loads the AWS SDK only when S3 is on: it costs ~23 MB of RSS that a local-only steward does not need. */
export async function loadS3Store(config: Config, metrics: StewardMetrics, where: { bucket: string; folder: string }): Promise<S3Store | undefined> {
  if (!config.etcdS3) return undefined;
  const { S3Store } = await import('./s3.js');
  let caPem: string | undefined;
  if (config.etcdS3EndpointCa) {
    try {
      caPem = await readFile(config.etcdS3EndpointCa, 'utf8');
    } catch (err) {
      throw new ConfigError(`--etcd-s3-endpoint-ca: cannot read ${config.etcdS3EndpointCa}: ${errorText(err)}`, { hint: 'point it at a PEM file' });
    }
  }
  const explicitKeys = config.etcdS3AccessKey
    ? {
        accessKey: config.etcdS3AccessKey,
        secretKey: config.etcdS3SecretKey,
        ...(config.etcdS3SessionToken ? { sessionToken: config.etcdS3SessionToken } : {}),
      }
    : {};
  return new S3Store({
    endpoint: config.etcdS3Endpoint,
    bucket: where.bucket,
    region: config.etcdS3Region,
    folder: where.folder,
    ...explicitKeys,
    // Credential sources in order: flags, then the config file (re-read every operation), then the SDK's default chain.
    ...(!config.etcdS3AccessKey && config.etcdS3ConfigFile ? { configFile: config.etcdS3ConfigFile } : {}),
    insecure: config.etcdS3Insecure,
    timeoutMs: config.etcdS3Timeout,
    ...(config.etcdS3BucketLookupType === 'auto' ? {} : { forcePathStyle: config.etcdS3BucketLookupType === 'path' }),
    ...(caPem ? { caPem } : {}),
    skipTlsVerify: config.etcdS3SkipSslVerify,
    ...(config.etcdS3Proxy ? { proxy: config.etcdS3Proxy } : {}),
    onError: (op, code) => metrics.s3Errors.inc({ op, code }),
  });
}
