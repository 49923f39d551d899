import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Gauge } from 'prom-client';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import { errorText } from '../errors/index.js';
import { parseCertificates } from './tls-files.js';

/** A certificate file the steward uses, and the flag that named it (for the log). */
export interface WatchedCertificate {
  flag: string;
  path: string;
}

export const EXPIRY_WARNING_MS = 7 * 86_400_000;
export const EXPIRY_CHECK_MS = 60 * 60_000;

/** Every certificate file the configuration names, each path once (a CA is often named twice). */
export function certificateFilesOf(config: Config): WatchedCertificate[] {
  const named: [string, string][] = [
    ['tls-cert', config.tlsCert],
    ['tls-ca', config.tlsCa],
    ['etcd-cert-file', config.etcdCertFile],
    ['etcd-trusted-ca-file', config.etcdTrustedCaFile],
    ['etcd-peer-cert-file', config.etcdPeerCertFile],
    ['etcd-peer-trusted-ca-file', config.etcdPeerTrustedCaFile],
    ['etcd-cert', config.etcdCert],
    ['etcd-cacert', config.etcdCacert],
  ];
  const seen = new Set<string>();
  return named.flatMap(([flag, path]) => {
    if (!path || seen.has(path)) return [];
    seen.add(path);
    return [{ flag, path }];
  });
}

/**
 * Exports when each certificate file expires (the earliest certificate in it: a CA bundle during a
 * rollover holds two) and warns in the log when one expires within 7 days. Re-read every check, so a
 * renewed file is seen without a restart.
 */
export class CertificateExpiry {
  private readonly log: Logger;

  constructor(
    private readonly files: WatchedCertificate[],
    private readonly gauge: Gauge<'file'>,
    logger: Logger,
    private readonly options: { warnWithinMs?: number; intervalMs?: number; now?: () => number } = {},
  ) {
    this.log = logger.child({ component: 'cert-expiry' });
  }

  async check(): Promise<void> {
    const now = (this.options.now ?? Date.now)();
    const warnWithin = this.options.warnWithinMs ?? EXPIRY_WARNING_MS;
    for (const { flag, path } of this.files) {
      let expiresMs: number;
      try {
        const certificates = parseCertificates(await readFile(path), `--${flag} ${path}`);
        if (certificates.length === 0) throw new Error('no PEM certificate in it');
        expiresMs = Math.min(...certificates.map((c) => Date.parse(c.validTo)));
      } catch (err) {
        this.log.warn({ flag, file: path, err: errorText(err) }, 'cannot read a certificate file to check its expiry');
        continue;
      }
      this.gauge.set({ file: path }, expiresMs / 1000);
      const left = expiresMs - now;
      const expires = new Date(expiresMs).toISOString();
      if (left <= 0) this.log.error({ flag, file: path, expires }, 'a certificate has EXPIRED: connections that rely on it fail; renew it now');
      else if (left < warnWithin) {
        this.log.warn(
          { flag, file: path, expires, daysLeft: Math.floor(left / 86_400_000) },
          'a certificate expires within 7 days: renew it (files are re-read without a restart)',
        );
      }
    }
  }

  /** Checks now, then every hour, until `signal` fires. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await this.check();
      await sleep(this.options.intervalMs ?? EXPIRY_CHECK_MS, undefined, { signal }).catch(() => undefined);
    }
  }
}
