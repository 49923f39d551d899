import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { CertificateExpiry, certificateFilesOf } from '../../src/security/cert-expiry.js';
import { DevCa, nowStamp } from '../../src/security/dev-pki.js';
import type { Config } from '../../src/config/settings.js';

let root: string;
let ca: DevCa;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'steward-expiry-'));
  ca = await DevCa.open(join(root, 'ca'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function capture(): { logger: Logger; lines: Array<{ level: number; msg: string; file?: string }> } {
  const lines: Array<{ level: number; msg: string; file?: string }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line) as (typeof lines)[number]);
      done();
    },
  });
  return { logger: pino({ level: 'info' }, sink), lines };
}

describe('certificate expiry: metric per file and a warning within 7 days', () => {
  it('exports each file’s earliest expiry and warns only about the one expiring soon, or already expired', async () => {
    const soon = await ca.issue('soon', { cn: 'soon', endDate: nowStamp(3) });
    const later = await ca.issue('later', { cn: 'later', days: 365 });
    const expired = await ca.issue('expired', { cn: 'expired', startDate: '20200101000000Z', endDate: '20200201000000Z' });
    // A CA bundle during a rollover: the earlier of its two certificates counts.
    const bundle = join(root, 'bundle.pem');
    const other = await DevCa.open(join(root, 'other'), 'other');
    await writeFile(bundle, Buffer.concat([await readFile(ca.ca), await readFile(soon.cert)]));
    const metrics = new StewardMetrics();
    const { logger, lines } = capture();
    const files = [
      { flag: 'tls-cert', path: later.cert },
      { flag: 'etcd-cert', path: soon.cert },
      { flag: 'etcd-peer-cert-file', path: expired.cert },
      { flag: 'tls-ca', path: bundle },
      { flag: 'etcd-cacert', path: join(root, 'missing.pem') },
      { flag: 'etcd-trusted-ca-file', path: other.ca },
    ];
    await new CertificateExpiry(files, metrics.certificateExpiry, logger).check();
    const values = new Map((await metrics.certificateExpiry.get()).values.map((v) => [v.labels.file, v.value * 1000]));
    const day = 86_400_000;
    expect(values.get(later.cert)).toBeGreaterThan(Date.now() + 360 * day);
    expect(values.get(soon.cert)).toBeLessThan(Date.now() + 4 * day);
    expect(values.get(bundle)).toBe(values.get(soon.cert));
    expect(values.get(expired.cert)).toBeLessThan(Date.now());
    expect(values.has(join(root, 'missing.pem'))).toBe(false);
    const warned = (level: number): Array<string | undefined> => lines.filter((l) => l.level === level).map((l) => l.file);
    expect(warned(40).sort()).toEqual([bundle, soon.cert, join(root, 'missing.pem')].sort());
    expect(warned(50)).toEqual([expired.cert]);
  });

  it('lists every configured certificate file once', () => {
    const config = {
      tlsCert: '/t/cert',
      tlsCa: '/ca',
      etcdCertFile: '',
      etcdTrustedCaFile: '/ca',
      etcdPeerCertFile: '/p',
      etcdPeerTrustedCaFile: '',
      etcdCert: '/c',
      etcdCacert: '/ca',
    };
    expect(certificateFilesOf(config as unknown as Config)).toEqual([
      { flag: 'tls-cert', path: '/t/cert' },
      { flag: 'tls-ca', path: '/ca' },
      { flag: 'etcd-peer-cert-file', path: '/p' },
      { flag: 'etcd-cert', path: '/c' },
    ]);
  });
});
