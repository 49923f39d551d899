import { chmod, copyFile, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StewardError } from '../../src/errors/index.js';
import { PeerPool } from '../../src/rpc/peer-pool.js';
import { DevCa, type CertFiles } from '../../src/security/dev-pki.js';
import { TlsFiles } from '../../src/security/tls-files.js';
import { ctlCredentials } from '../../src/security/ctl-tls.js';
import { HealthProbe } from '../harness/grpc-health.js';
import { waitUntil } from '../harness/processes.js';
import { StewardCluster } from '../harness/steward-cluster.js';
import { servedCertificate } from '../harness/tls-probe.js';

describe('mTLS between ctl and stewards and among stewards (3 stewards, real etcd)', () => {
  let cluster: StewardCluster;
  let ca: DevCa;
  let files: Record<'outsider' | 'expired' | 'foreign', CertFiles>;

  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 3, grpcTls: true, extraArgs: ['--etcd-disable-snapshots=true'] });
    ca = await DevCa.open(join(cluster.root, 'pki'));
    const other = await DevCa.open(join(cluster.root, 'other-ca'), 'another CA');
    files = {
      outsider: await ca.issue('steward-node-9', { cn: 'node-9', san: ['IP:127.0.0.1'] }),
      expired: await ca.issue('admin-expired', { cn: 'etcd-steward-admin', startDate: '20200101000000Z', endDate: '20200201000000Z' }),
      foreign: await other.issue('admin', { cn: 'etcd-steward-admin' }),
    };
    await cluster.startAll();
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('stewards elect a leader over mTLS; the viewer may read, not change; the admin may save and delete', async () => {
    const { leader } = await cluster.waitForStableLeader(45_000);
    for (const node of cluster.nodes) {
      expect(cluster.logs(node.index)).toContain('gRPC API listening with mTLS');
      expect(cluster.logs(node.index)).not.toContain('PLAINTEXT');
    }
    const endpoint = cluster.node(leader).grpc;
    const status = await cluster.ctl(['--endpoint', endpoint, 'status'], {}, 'viewer');
    expect(status.stderr).toBe('');
    expect(status.code).toBe(0);
    expect((await cluster.ctl(['--endpoint', endpoint, 'ls'], {}, 'viewer')).code).toBe(0);
    // The standard gRPC health service answers a viewer (read-only, like status): SERVING on a ready steward.
    const pki = cluster.pki as NonNullable<typeof cluster.pki>;
    const health = new HealthProbe(endpoint, await ctlCredentials({ cacert: pki.ca, cert: pki.viewer.cert, key: pki.viewer.key }));
    try {
      await waitUntil('SERVING to the viewer', async () => ((await health.check('')) === 'SERVING' ? true : undefined), 30_000, 200);
      expect(await health.check('etcdsteward.v1.StewardCtl')).toBe('SERVING');
    } finally {
      health.close();
    }

    const saved = await cluster.ctl(['--endpoint', endpoint, '-o', 'json', 'save', '--name', 'tls'], {}, 'admin');
    expect(saved.code, saved.stderr).toBe(0);
    const name = (JSON.parse(saved.stdout) as { name: string }).name;
    const listed = await cluster.ctl(['--endpoint', cluster.node((leader + 1) % 3).grpc, '-o', 'json', 'ls'], {}, 'viewer');
    expect((JSON.parse(listed.stdout) as Array<{ name: string }>).map((s) => s.name)).toContain(name);

    const refused = await cluster.ctl(['--endpoint', endpoint, 'delete', name], {}, 'viewer');
    expect(refused.code).toBe(4);
    expect(refused.stderr).toMatch(
      /^error\[NOT_ADMIN\]: etcd-steward-viewer may not call Delete: it needs an admin certificate \(CN matching etcd-steward-admin\)/,
    );
    // Delete reaches every member's local dir through the peer API: mTLS among stewards end to end.
    const deleted = await cluster.ctl(['--endpoint', endpoint, 'delete', name], {}, 'admin');
    expect(deleted.code, deleted.stderr).toBe(0);
  });

  it.each([
    ['no certificate', 'none' as const, 'TLS_CLIENT_CERT_MISSING'],
    ['a certificate of another CA', 'foreign' as const, 'TLS_CLIENT_CERT_UNTRUSTED'],
    ['an expired certificate', 'expired' as const, 'TLS_CLIENT_CERT_EXPIRED'],
  ])('a ctl with %s is refused: exit 4 with the reason', async (_what, who, code) => {
    const identity = who === 'none' ? 'none' : { cacert: cluster.pki?.ca, ...{ cert: files[who].cert, key: files[who].key } };
    const result = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'status'], {}, identity);
    expect(result.code).toBe(4);
    expect(result.stderr).toContain(`error[${code}]`);
  });

  it('a ctl whose key file is 0644 refuses to start; one without any TLS flag cannot reach the steward (exit 5)', async () => {
    const admin = cluster.pki?.admin as CertFiles;
    const loose = join(cluster.root, 'loose-key.pem');
    await writeFile(loose, await readFile(admin.key));
    await chmod(loose, 0o644);
    const refused = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'status'], {}, { cacert: cluster.pki?.ca, cert: admin.cert, key: loose });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('error[TLS_KEY_PERMISSIONS]');
    expect(refused.stderr).toContain('chmod 600');
    const plaintext = await cluster.ctl(['--endpoint', cluster.node(0).grpc, 'status'], {}, {});
    expect(plaintext.code).toBe(5);
  });

  it.each([
    ['a non-member', 'node-9', () => files.outsider, 'NOT_A_MEMBER', 'node-9 may not call the steward peer API'],
    [
      'a member claiming another node',
      'node-3',
      () => cluster.pki?.nodes['node-2']?.steward as CertFiles,
      'PEER_IDENTITY_MISMATCH',
      'claims to come from node-3 but its certificate names node-2',
    ],
  ])('the peer API of a real steward refuses %s', async (_what, claimed, cert, code, text) => {
    const tls = await TlsFiles.load({ ca: cluster.pki?.ca ?? '', ...cert() }, pino({ level: 'silent' }));
    const pool = new PeerPool({ list: async () => [] }, { node: claimed, clusterId: () => '', fencingToken: () => '' }, 5000, tls.channelCredentials());
    try {
      const err = await pool
        .peer({ node: 'node-1', grpc: cluster.node(0).grpc })
        .listLocal(AbortSignal.timeout(5000))
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).toBeInstanceOf(StewardError);
      expect((err as StewardError).code).toBe(code);
      expect((err as StewardError).message).toContain(text);
    } finally {
      pool.close();
    }
  });

  it('exports the expiry of every certificate file it uses', async () => {
    const metrics = await (await fetch(`http://${cluster.node(0).http}/metrics`)).text();
    for (const file of [cluster.pki?.ca, cluster.pki?.nodes['node-1']?.steward.cert]) {
      const line = metrics.split('\n').find((l) => l.startsWith(`etcd_steward_certificate_expiry_timestamp_seconds{file="${file}"}`));
      expect(line, `${file} in /metrics`).toBeDefined();
      expect(Number(line?.split(' ')[1]) * 1000).toBeGreaterThan(Date.now() + 300 * 86_400_000);
    }
  });

  it('a renewed steward certificate replaced on disk is served to new connections, without a restart', async () => {
    const node = cluster.node(2);
    const caPem = await readFile(cluster.pki?.ca ?? '');
    const before = await servedCertificate(node.grpc, caPem);
    const pid = node.process?.pid;
    const renewed = await ca.issue('steward-node-3-renewed', { cn: 'node-3', san: ['IP:127.0.0.1', 'DNS:localhost'] });
    const current = cluster.pki?.nodes['node-3']?.steward as CertFiles;
    for (const [from, to] of [
      [renewed.key, current.key],
      [renewed.cert, current.cert],
    ] as const) {
      await copyFile(from, `${to}.tmp`);
      await rename(`${to}.tmp`, to);
    }
    const after = await waitUntil(
      'the renewed certificate to be served',
      async () => {
        const served = await servedCertificate(node.grpc, caPem);
        return served.serialNumber !== before.serialNumber ? served : undefined;
      },
      15_000,
      250,
    );
    expect(after.subject.CN).toBe('node-3');
    expect(node.process?.pid).toBe(pid);
    expect(node.process?.exitCode).toBeNull();
    expect((await cluster.ctl(['--endpoint', node.grpc, 'status'], {}, 'viewer')).code).toBe(0);
    expect(cluster.logs(2)).toContain('TLS files changed on disk');
  });
});

describe('mTLS on the gRPC API and TLS both ways on etcd together, as in production (3 stewards, real etcd)', () => {
  let cluster: StewardCluster;
  beforeAll(async () => {
    cluster = await StewardCluster.create({ size: 3, grpcTls: true, etcdTls: true, extraArgs: ['--etcd-disable-snapshots=true'] });
    await cluster.startAll();
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('elects a leader, serves the viewer, and lets the admin save and delete across members', async () => {
    const { leader } = await cluster.waitForStableLeader(60_000);
    const endpoint = cluster.node(leader).grpc;
    expect((await cluster.ctl(['--endpoint', endpoint, 'status'], {}, 'viewer')).code).toBe(0);
    const saved = await cluster.ctl(['--endpoint', endpoint, '-o', 'json', 'save', '--name', 'both'], {}, 'admin');
    expect(saved.code, saved.stderr).toBe(0);
    const name = (JSON.parse(saved.stdout) as { name: string }).name;
    expect((await cluster.ctl(['--endpoint', endpoint, 'delete', name], {}, 'viewer')).code).toBe(4);
    const deleted = await cluster.ctl(['--endpoint', endpoint, 'delete', name], {}, 'admin');
    expect(deleted.code, deleted.stderr).toBe(0);
  });
});
