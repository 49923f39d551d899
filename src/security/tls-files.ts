import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { ServerCredentials, experimental, type ChannelCredentials } from '@grpc/grpc-js';
import type { SecureContextOptions } from 'node:tls';
import type { Logger } from 'pino';
import { ConfigError, errorText } from '../errors/index.js';

/** Where this steward's mTLS material lives: the CA it trusts, its certificate and its private key. */
export interface TlsFilePaths {
  ca: string;
  cert: string;
  key: string;
}

/** One consistent read of the three files: the key matches the certificate, every PEM parses. */
export interface TlsPem {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** Subject of the certificate, for logs (never the key). */
  subject: string;
  validTo: string;
}

/** How often the files are stat'ed for a change: cheap (three stats), and a rotation is seen within seconds. */
export const TLS_POLL_MS = 2000;

/**
 * The steward's mTLS files, re-read when they change on disk (a renewed certificate, a new CA bundle
 * rolled out, a Kubernetes secret volume's symlink swap): new connections use the new files, no restart.
 *
 * Unlike grpc-js's FileWatcherCertificateProvider, a read is published only when it is consistent: a
 * certificate replaced before its key (or a half-written file) keeps the previous, working pair until
 * the next good read, instead of refusing every new connection meanwhile. It implements grpc-js's
 * CertificateProvider, so the peer clients' channel credentials follow it too.
 */
export class TlsFiles implements experimental.CertificateProvider {
  private readonly listeners = new Set<(pem: TlsPem) => void>();
  private readonly caListeners = new Set<experimental.CaCertificateUpdateListener>();
  private readonly identityListeners = new Set<experimental.IdentityCertificateUpdateListener>();

  private constructor(
    readonly paths: TlsFilePaths,
    private pem: TlsPem,
    private signature: string,
    private readonly log: Logger,
  ) {}

  /** Reads and checks the files once; a ConfigError names the file at fault (never its content). */
  static async load(paths: TlsFilePaths, logger: Logger): Promise<TlsFiles> {
    const signature = await signatureOf(paths);
    const pem = await readPem(paths);
    const log = logger.child({ component: 'tls' });
    // A warning, not a refusal: Kubernetes mounts secrets 0644 unless defaultMode says otherwise.
    const mode = (await stat(paths.key)).mode & 0o777;
    if ((mode & 0o077) !== 0)
      log.warn(
        { key: paths.key, mode: mode.toString(8) },
        'the --tls-key file is readable by group or others: restrict it to the steward (0600, or defaultMode: 0400 on the secret volume)',
      );
    return new TlsFiles(paths, pem, signature, log);
  }

  get current(): TlsPem {
    return this.pem;
  }

  /** Calls `listener` with every new consistent read; returns how to stop. */
  onChange(listener: (pem: TlsPem) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Polls the files until `signal` fires; settles then. */
  async run(signal: AbortSignal, pollMs = TLS_POLL_MS): Promise<void> {
    let failedSignature = '';
    while (!signal.aborted) {
      await sleep(pollMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) return;
      const signature = await signatureOf(this.paths).catch(() => '');
      if (signature === '' || signature === this.signature || signature === failedSignature) continue;
      try {
        const pem = await readPem(this.paths);
        this.signature = signature;
        failedSignature = '';
        if (pem.ca.equals(this.pem.ca) && pem.cert.equals(this.pem.cert) && pem.key.equals(this.pem.key)) continue;
        this.pem = pem;
        this.log.info(
          { subject: pem.subject, validTo: pem.validTo, cert: this.paths.cert, ca: this.paths.ca },
          'TLS files changed on disk: new connections use them',
        );
        this.publish();
      } catch (err) {
        // Logged once per state of the files: a file still being written is retried when it changes again.
        failedSignature = signature;
        this.log.warn({ err: errorText(err) }, 'TLS files changed on disk but do not form a usable set; keeping the previous certificate');
      }
    }
  }

  addCaCertificateListener(listener: experimental.CaCertificateUpdateListener): void {
    this.caListeners.add(listener);
    process.nextTick(listener, { caCertificate: this.pem.ca });
  }

  removeCaCertificateListener(listener: experimental.CaCertificateUpdateListener): void {
    this.caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.add(listener);
    process.nextTick(listener, { certificate: this.pem.cert, privateKey: this.pem.key });
  }

  removeIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.delete(listener);
  }

  /** Channel credentials for calls to peers: the steward's own certificate is its client certificate. */
  channelCredentials(): ChannelCredentials {
    return experimental.createCertificateProviderChannelCredentials(this, this);
  }

  private publish(): void {
    for (const listener of this.listeners) listener(this.pem);
    for (const listener of this.caListeners) listener({ caCertificate: this.pem.ca });
    for (const listener of this.identityListeners) listener({ certificate: this.pem.cert, privateKey: this.pem.key });
  }
}

/** The TLS version floor of the gRPC API: 1.2's weaker suites and renegotiation are never offered. */
export const TLS_MIN_VERSION = 'TLSv1.3';

/**
 * Server credentials that follow TlsFiles. grpc-js's own certificate-provider credentials cannot set a
 * minimum TLS version: Node's `setSecureContext` (called on every reload) resets `minVersion` to the
 * default (1.2) unless each update carries it, so every context here does.
 *
 * The client certificate is requested and verified against the CA, but a failed verification does not
 * drop the connection (`rejectUnauthorized: false`): the access interceptor (security/access.ts) refuses
 * every call of such a connection before any handler runs, with PERMISSION_DENIED saying why (no
 * certificate, expired, another CA) instead of a bare connection reset the operator cannot read.
 */
export class ReloadingServerCredentials extends ServerCredentials {
  constructor(files: TlsFiles) {
    super({ requestCert: true, rejectUnauthorized: false, minVersion: TLS_MIN_VERSION }, contextOf(files.current));
    files.onChange((pem) => this.updateSecureContextOptions(contextOf(pem)));
  }

  _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

function contextOf(pem: TlsPem): SecureContextOptions {
  return { ca: pem.ca, cert: pem.cert, key: pem.key, minVersion: TLS_MIN_VERSION };
}

/** Changes when any of the files is replaced, rewritten or re-pointed (stat follows symlinks). */
async function signatureOf(paths: TlsFilePaths): Promise<string> {
  const parts = await Promise.all(
    [paths.ca, paths.cert, paths.key].map(async (path) => {
      const s = await stat(path);
      return `${s.ino}:${s.size}:${s.mtimeMs}`;
    }),
  );
  return parts.join('|');
}

async function readPem(paths: TlsFilePaths): Promise<TlsPem> {
  const read = async (path: string, flag: string): Promise<Buffer> => {
    try {
      return await readFile(path);
    } catch (err) {
      throw new ConfigError(`--${flag}: cannot read ${path}: ${errorText(err)}`, { hint: `check the path and that the steward's user may read it` });
    }
  };
  const [ca, cert, key] = await Promise.all([read(paths.ca, 'tls-ca'), read(paths.cert, 'tls-cert'), read(paths.key, 'tls-key')]);
  const cas = parseCertificates(ca, `--tls-ca ${paths.ca}`);
  if (cas.length === 0)
    throw new ConfigError(`--tls-ca: ${paths.ca} holds no PEM certificate`, {
      hint: 'pass the CA certificate (PEM) that signs every steward and ctl certificate',
    });
  const [leaf] = parseCertificates(cert, `--tls-cert ${paths.cert}`);
  if (!leaf) throw new ConfigError(`--tls-cert: ${paths.cert} holds no PEM certificate`, { hint: "pass this steward's certificate (PEM)" });
  let matches: boolean;
  try {
    matches = leaf.checkPrivateKey(createPrivateKey(key));
  } catch (err) {
    // The crypto error names the failure (unsupported, bad decrypt), never the key's bytes.
    throw new ConfigError(`--tls-key: ${paths.key} is not a usable PEM private key (${errorText(err)})`, {
      hint: 'pass the unencrypted PEM key of --tls-cert',
    });
  }
  if (!matches) {
    throw new ConfigError(`--tls-key: ${paths.key} is not the key of the certificate in ${paths.cert} (${leaf.subject.replace(/\n/g, ', ')})`, {
      hint: 'replace the certificate and its key together (each by an atomic rename)',
    });
  }
  return { ca, cert, key, subject: leaf.subject.replace(/\n/g, ', '), validTo: leaf.validTo };
}

/** Every certificate of a PEM bundle (a CA file may hold the old and the new CA during a rollover). */
export function parseCertificates(pem: Buffer, what: string): X509Certificate[] {
  const blocks = pem.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((block) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new ConfigError(`${what}: a certificate does not parse (${errorText(err)})`, { hint: 'write PEM certificate files whole (temp file + rename)' });
    }
  });
}
