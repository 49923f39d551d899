import { readFile, stat } from 'node:fs/promises';
import { credentials, type ChannelCredentials } from '@grpc/grpc-js';
import { StewardError, UsageError, errorText } from '../errors/index.js';

/** The ctl's TLS flags (or ETCD_STEWARD_CACERT / _CERT / _KEY); all absent = plaintext. */
export interface CtlTlsOptions {
  cacert?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
}

/**
 * Channel credentials of one ctl run: read once (a ctl run is short; nothing to rotate), undefined for
 * plaintext. A private key that group or others may read is refused before any connection: it is the
 * operator's identity, and whoever can read it can act as them.
 */
export async function ctlCredentials(options: CtlTlsOptions): Promise<ChannelCredentials | undefined> {
  const { cacert, cert, key } = options;
  if (!cacert && !cert && !key) return undefined;
  if (Boolean(cert) !== Boolean(key)) {
    throw new UsageError('--cert and --key go together', { hint: 'pass both (or ETCD_STEWARD_CERT and ETCD_STEWARD_KEY), or neither' });
  }
  if (!cacert) {
    // Never the public root bundle: a steward's certificate comes from the cluster's own CA.
    throw new UsageError('--cert needs --cacert: the CA that signed the steward certificates', { hint: 'pass --cacert (or ETCD_STEWARD_CACERT)' });
  }
  if (key) await checkKeyMode(key);
  const [ca, certPem, keyPem] = await Promise.all([readPem(cacert, '--cacert'), cert ? readPem(cert, '--cert') : null, key ? readPem(key, '--key') : null]);
  return credentials.createSsl(ca, keyPem, certPem);
}

async function checkKeyMode(path: string): Promise<void> {
  let mode: number;
  try {
    mode = (await stat(path)).mode;
  } catch (err) {
    throw new UsageError(`--key: cannot read ${path}: ${errorText(err)}`, { hint: 'pass the path of your PEM private key' });
  }
  if ((mode & 0o077) !== 0) {
    throw new StewardError(
      'invalid',
      'TLS_KEY_PERMISSIONS',
      `--key: ${path} is accessible by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')})`,
      {
        hint: `restrict it to its owner: chmod 600 ${path}`,
      },
    );
  }
}

async function readPem(path: string, flag: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new UsageError(`${flag}: cannot read ${path}: ${errorText(err)}`, { hint: `pass the path of a PEM file to ${flag}` });
  }
}
