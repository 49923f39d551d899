import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect as http2Connect } from 'node:http2';
import { copyFile, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { connect, type PeerCertificate } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as grpcStatus } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { StewardError, exitCodeFor } from '../../src/errors/index.js';
import { StewardClient } from '../../src/rpc/client.js';
import { FLOW_CONTROL_WINDOW_BYTES } from '../../src/rpc/flow-window.js';
import { PeerPool } from '../../src/rpc/peer-pool.js';
import { RpcServer } from '../../src/rpc/server.js';
import type { StewardCtlHandlers, StewardPeerHandlers } from '../../src/rpc/types.js';
import { cnMatches, refusalOf } from '../../src/security/access.js';
import { ctlCredentials } from '../../src/security/ctl-tls.js';
import { DevCa, makeDevPki, type CertFiles, type DevPki } from '../../src/security/dev-pki.js';
import { TlsFiles } from '../../src/security/tls-files.js';
import { HealthProbe } from '../harness/grpc-health.js';
import { unusedPeerHandlers, statusOf } from '../harness/unused-handlers.js';
import { servedCertificate } from '../harness/tls-probe.js';

/** Real grpc-js servers with mTLS on 127.0.0.1, real certificates from the dev CA (openssl). */
const logger = pino({ level: 'silent' });
const MEMBERS = ['n1', 'n2', 'n3'];
let root: string;
let pki: DevPki;
let other: DevCa;
let extra: Record<'outsider' | 'expired' | 'foreignAdmin', CertFiles>;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'steward-mtls-'));
  pki = await makeDevPki(join(root, 'pki'), MEMBERS);
  const ca = await DevCa.open(join(root, 'pki'));
  other = await DevCa.open(join(root, 'other-ca'), 'another CA');
  extra = {
    outsider: await ca.issue('steward-n9', { cn: 'n9', san: ['IP:127.0.0.1'] }),
    expired: await ca.issue('admin-expired', { cn: 'etcd-steward-admin', startDate: '20200101000000Z', endDate: '20200201000000Z' }),
    foreignAdmin: await other.issue('admin', { cn: 'etcd-steward-admin' }),
  };
}, 60_000);
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const calls: string[] = [];
const ctlHandlers: StewardCtlHandlers = {
  status: async () => {
    calls.push('status');
    return statusOf({ isLeader: true, leader: 'n1' });
  },
  list: async () => {
    calls.push('list');
    return { snapshots: [], orphans: [], fallback: '' };
  },
  delete: async (names) => {
    calls.push(`delete:${names.join(',')}`);
    return { deleted: [], failed: [] };
  },
  save: async () => {
    calls.push('save');
    throw new Error('not reached in these tests');
  },
  prune: async () => ({ deleted: [], orphansRemoved: [], failed: [] }),
  specGet: async () => ({ specJson: '{}', generation: 1, location: 'x' }),
  specSet: async () => ({ specJson: '{}', generation: 1, location: 'x' }),
  init: async () => ({ specJson: '{}', generation: 1, location: 'x' }),
  restore: async () => {
    throw new Error('not used');
  },
  restoreStatus: async () => {
    throw new Error('not used');
  },
  restoreAbort: async () => {
    throw new Error('not used');
  },
  verify: async (name) => {
    calls.push(`verify:${name}`);
    throw new Error('not used');
  },
};
const peerHandlers: StewardPeerHandlers = {
  ...unusedPeerHandlers(),
  receiveSnapshot: async (_announce, data, ctx) => {
    let bytes = 0;
    for await (const chunk of data) bytes += chunk.length;
    calls.push(`receive ${bytes} from ${ctx.caller}`);
    return { bytes, sha256: '', revision: 0, totalKeys: 0, rawSha256: '', rawBytes: 0 };
  },
  listLocalSnapshots: async (ctx) => {
    calls.push(`listLocal from ${ctx.peer.caller} (cert ${ctx.caller})`);
    return { snapshots: [], orphans: [] };
  },
};

const stops: Array<() => unknown> = [];
afterEach(async () => {
  calls.length = 0;
  for (const stop of stops.splice(0).reverse()) await stop();
});

/** A steward-like server for node n1 whose TLS files live in their own dir (so a test may replace them). */
async function startServer(): Promise<{ endpoint: string; files: TlsFiles; dir: string }> {
  const dir = await mkdtemp(join(root, 'server-'));
  const paths = { ca: join(dir, 'ca.pem'), cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') };
  await copyFile(pki.ca, paths.ca);
  await copyFile(pki.nodes.n1?.steward.cert ?? '', paths.cert);
  await copyFile(pki.nodes.n1?.steward.key ?? '', paths.key);
  const files = await TlsFiles.load(paths, logger);
  const polling = new AbortController();
  const run = files.run(polling.signal, 50);
  const server = await RpcServer.start({
    host: '127.0.0.1',
    port: 0,
    handlers: ctlHandlers,
    peer: peerHandlers,
    identity: { node: 'n1', clusterId: () => 'c1' },
    logger,
    tls: { files, policy: { adminCn: ['etcd-steward-admin', 'ops-*'], members: () => MEMBERS } },
  });
  stops.push(async () => {
    await server.stop();
    polling.abort();
    await run;
  });
  return { endpoint: `127.0.0.1:${server.port}`, files, dir };
}

async function ctl(endpoint: string, identity: Partial<CertFiles> & { cacert?: string }): Promise<StewardClient> {
  const client = new StewardClient(endpoint, 5000, await ctlCredentials({ cacert: identity.cacert ?? pki.ca, cert: identity.cert, key: identity.key }));
  stops.push(() => client.close());
  return client;
}

async function refusal(promise: Promise<unknown>): Promise<StewardError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StewardError);
  return err as StewardError;
}

/** Writes `from` over `to` the way a certificate manager should: a temp file, then an atomic rename. */
async function replaceFile(from: string, to: string): Promise<void> {
  await copyFile(from, `${to}.tmp`);
  await rename(`${to}.tmp`, to);
}

describe('mTLS on the ctl API: who may do what', () => {
  it('admin may run a destructive verb; the viewer may read but not delete or save (exit 4 naming both identities)', async () => {
    const { endpoint } = await startServer();
    await (await ctl(endpoint, pki.admin)).delete(['a-n1-1700000000']);
    const viewer = await ctl(endpoint, pki.viewer);
    expect((await viewer.status()).node).toBe('n1');
    expect((await viewer.list()).snapshots).toEqual([]);
    const denied = await refusal(viewer.delete(['a-n1-1700000000']));
    expect(denied.code).toBe('NOT_ADMIN');
    expect(exitCodeFor(denied)).toBe(4);
    expect(denied.message).toContain('etcd-steward-viewer');
    expect(denied.message).toContain('etcd-steward-admin');
    expect((await refusal(viewer.save({ name: '', force: false }, () => undefined))).code).toBe('NOT_ADMIN');
    // A restore drill takes the node's disk and CPU and writes the inventory: admin only.
    expect((await refusal(viewer.verify('a-n1-1700000000'))).code).toBe('NOT_ADMIN');
    // Refused before the handler: only the admin's delete and the viewer's reads ran.
    expect(calls).toEqual(['delete:a-n1-1700000000', 'status', 'list']);
  });

  it.each([
    ['no certificate', {}, 'TLS_CLIENT_CERT_MISSING', 'no certificate'],
    ['a certificate of another CA', 'foreignAdmin', 'TLS_CLIENT_CERT_UNTRUSTED', 'not signed by the CA'],
    ['an expired certificate', 'expired', 'TLS_CLIENT_CERT_EXPIRED', 'expired on'],
  ] as const)('a ctl with %s is refused with exit 4 and the reason, even for status', async (_what, who, code, text) => {
    const { endpoint } = await startServer();
    const client = await ctl(endpoint, typeof who === 'string' ? extra[who as keyof typeof extra] : who);
    const err = await refusal(client.status());
    expect(err.code).toBe(code);
    expect(exitCodeFor(err)).toBe(4);
    expect(err.message).toContain(text);
    expect(calls).toEqual([]);
  });

  it('grpc.health.v1.Health: any certificate of the CA may ask (viewer, a non-member); another CA and none may not', async () => {
    const { endpoint } = await startServer();
    const probe = async (who: Partial<CertFiles>): Promise<string> => {
      const channel = await ctlCredentials({ cacert: pki.ca, cert: who.cert, key: who.key });
      const health = new HealthProbe(endpoint, channel);
      stops.push(() => health.close());
      return health.check('');
    };
    expect(await probe(pki.viewer)).toBe('SERVING');
    expect(await probe(extra.outsider)).toBe('SERVING');
    expect(await probe(pki.admin)).toBe('SERVING');
    expect(await probe(extra.foreignAdmin)).toBe(`error:${grpcStatus.PERMISSION_DENIED}`);
    // Without a certificate the handshake completes but every call is refused, health included.
    expect(await probe({})).toMatch(/^error:(7|14)$/);
    expect(calls).toEqual([]);
  });

  it('a plaintext ctl cannot talk to an mTLS steward (unreachable, exit 5, with a hint at the TLS flags)', async () => {
    const { endpoint } = await startServer();
    const client = new StewardClient(endpoint, 3000);
    stops.push(() => client.close());
    const err = await refusal(client.status());
    expect(exitCodeFor(err)).toBe(5);
    expect(err.hint).toContain('--cacert');
  });

  it('a TLS 1.2 client is refused at the handshake', async () => {
    const { endpoint } = await startServer();
    const [host, port] = endpoint.split(':');
    const err = await new Promise<Error>((resolve) => {
      const socket = connect({ host, port: Number(port), ca: readFileSync(pki.ca), servername: 'localhost', maxVersion: 'TLSv1.2' }, () =>
        resolve(new Error('connected')),
      );
      socket.on('error', resolve);
    });
    expect(err.message).toMatch(/protocol version/i);
  });

  it('the raised HTTP/2 flow-control window (rpc/flow-window.ts) applies to the TLS listener too', async () => {
    const { endpoint } = await startServer();
    const session = http2Connect(`https://${endpoint}`, {
      ca: readFileSync(pki.ca),
      cert: readFileSync(pki.admin.cert),
      key: readFileSync(pki.admin.key),
      servername: 'localhost',
    });
    try {
      await once(session, 'remoteSettings');
      expect(session.remoteSettings.initialWindowSize).toBe(FLOW_CONTROL_WINDOW_BYTES);
    } finally {
      session.destroy();
    }
  });

  it('a key file readable by group or others is refused before connecting', async () => {
    const loose = join(root, 'loose-key.pem');
    await writeFile(loose, await readFile(pki.admin.key), { mode: 0o644 });
    const err = await refusal(ctlCredentials({ cacert: pki.ca, cert: pki.admin.cert, key: loose }));
    expect(err.code).toBe('TLS_KEY_PERMISSIONS');
    expect(err.message).toContain('0644');
    expect(exitCodeFor(err)).toBe(2);
  });

  it('admin CN patterns: * matches any run of characters, nothing else is a wildcard', () => {
    expect(cnMatches('ops-alice', ['ops-*'])).toBe(true);
    expect(cnMatches('xops-alice', ['ops-*'])).toBe(false);
    expect(cnMatches('etcd-steward-adminX', ['etcd-steward-admin'])).toBe(false);
    expect(cnMatches('a.b', ['a?b', 'a.c'])).toBe(false);
  });

  it('the health service takes any verified certificate, even one without a CN; nothing else does', () => {
    const policy = { adminCn: ['etcd-steward-admin'], members: () => MEMBERS };
    const sansOnly = { subject: {} } as PeerCertificate;
    const viewer = { subject: { CN: 'etcd-steward-viewer' } } as PeerCertificate;
    for (const method of ['Check', 'Watch', 'List']) {
      expect(refusalOf(`/grpc.health.v1.Health/${method}`, sansOnly, policy)).toBeUndefined();
      expect(refusalOf(`/grpc.health.v1.Health/${method}`, viewer, policy)).toBeUndefined();
      // No verified certificate at all: refused like any call.
      expect(refusalOf(`/grpc.health.v1.Health/${method}`, undefined, policy)?.code).toBe('TLS_CLIENT_CERT_NO_CN');
    }
    expect(refusalOf('/etcdsteward.v1.StewardCtl/Status', sansOnly, policy)?.code).toBe('TLS_CLIENT_CERT_NO_CN');
    expect(refusalOf('/etcdsteward.v1.StewardCtl/Save', viewer, policy)?.code).toBe('NOT_ADMIN');
    expect(refusalOf('/grpc.health.v1.Healthy/Check', viewer, policy)?.code).toBe('UNKNOWN_SERVICE');
  });
});

function pool(files: TlsFiles, self: string): PeerPool {
  const p = new PeerPool({ list: async () => [] }, { node: self, clusterId: () => 'c1', fencingToken: () => '' }, 5000, files.channelCredentials());
  stops.push(() => p.close());
  return p;
}

describe('mTLS on the peer API: members only, in their own name', () => {
  async function peerFiles(cert: CertFiles, ca = pki.ca): Promise<TlsFiles> {
    return TlsFiles.load({ ca, cert: cert.cert, key: cert.key }, logger);
  }

  it('a member calls in its own name; a non-member, an admin, and a member claiming another name are refused', async () => {
    const { endpoint } = await startServer();
    const n2 = await peerFiles(pki.nodes.n2?.steward as CertFiles);
    await pool(n2, 'n2').peer({ node: 'n1', grpc: endpoint }).listLocal(AbortSignal.timeout(5000));
    expect(calls).toEqual(['listLocal from n2 (cert n2)']);

    const outsider = await refusal(
      pool(await peerFiles(extra.outsider), 'n9')
        .peer({ node: 'n1', grpc: endpoint })
        .listLocal(AbortSignal.timeout(5000)),
    );
    expect(outsider.code).toBe('NOT_A_MEMBER');
    expect(outsider.message).toContain('n9');
    const admin = await refusal(
      pool(await peerFiles(pki.admin), 'n2')
        .peer({ node: 'n1', grpc: endpoint })
        .listLocal(AbortSignal.timeout(5000)),
    );
    expect(admin.code).toBe('NOT_A_MEMBER');

    const impostor = await refusal(pool(n2, 'n3').peer({ node: 'n1', grpc: endpoint }).listLocal(AbortSignal.timeout(5000)));
    expect(impostor.code).toBe('PEER_IDENTITY_MISMATCH');
    expect(impostor.message).toContain('claims to come from n3');
    expect(impostor.message).toContain('certificate names n2');
    expect(calls).toHaveLength(1);
  });

  it('a client stream (a snapshot sent to a member) passes the access check and arrives whole', async () => {
    const { endpoint } = await startServer();
    const n3 = await peerFiles(pki.nodes.n3?.steward as CertFiles);
    async function* source(): AsyncGenerator<Buffer> {
      for (let i = 0; i < 8; i++) yield Buffer.alloc(256 * 1024, i);
    }
    const reply = await pool(n3, 'n3')
      .peer({ node: 'n1', grpc: endpoint })
      .sendSnapshot('r1', { snapshot: 's', size: 8 * 256 * 1024, sha256: '', compressed: false }, source(), AbortSignal.timeout(10_000));
    expect(reply.bytes).toBe(8 * 256 * 1024);
    expect(calls).toEqual([`receive ${8 * 256 * 1024} from n3`]);
  });
});

describe('certificate rotation without a restart', () => {
  it('a renewed server certificate (same CA) is served to the next connection', async () => {
    const { endpoint, files, dir } = await startServer();
    const before = await servedCertificate(endpoint, await readFile(pki.ca));
    const ca = await DevCa.open(join(root, 'pki'));
    const renewed = await ca.issue('steward-n1-renewed', { cn: 'n1', san: ['IP:127.0.0.1', 'DNS:localhost'] });
    // Key first, then certificate: in between the pair does not match and the old one stays in use.
    await replaceFile(renewed.key, join(dir, 'key.pem'));
    await replaceFile(renewed.cert, join(dir, 'cert.pem'));
    const renewedPem = await readFile(renewed.cert);
    await expect.poll(() => files.current.cert.equals(renewedPem), { timeout: 5000 }).toBe(true);
    const after = await servedCertificate(endpoint, await readFile(pki.ca));
    expect(after.serialNumber).not.toBe(before.serialNumber);
    expect((await (await ctl(endpoint, pki.admin)).status()).node).toBe('n1');
  });

  it('a new CA rolled out (bundle, then new certificates, then the old CA dropped) on server and peer client', async () => {
    const { endpoint, files: server, dir } = await startServer();
    const clientDir = await mkdtemp(join(root, 'client-'));
    const client = { ca: join(clientDir, 'ca.pem'), cert: join(clientDir, 'cert.pem'), key: join(clientDir, 'key.pem') };
    await copyFile(pki.ca, client.ca);
    await copyFile(pki.nodes.n2?.steward.cert ?? '', client.cert);
    await copyFile(pki.nodes.n2?.steward.key ?? '', client.key);
    const n2 = await TlsFiles.load(client, logger);
    const polling = new AbortController();
    const run = n2.run(polling.signal, 50);
    stops.push(async () => {
      polling.abort();
      await run;
    });
    const call = async (): Promise<void> => {
      // A pool of its own, closed after the call: the next call needs a new connection (a new TLS handshake).
      const p = pool(n2, 'n2');
      try {
        await p.peer({ node: 'n1', grpc: endpoint }).listLocal(AbortSignal.timeout(5000));
      } finally {
        p.close();
      }
    };
    await call();

    const newCa = await DevCa.open(join(root, 'new-ca'), 'new CA');
    const bundle = join(root, 'bundle.pem');
    await writeFile(bundle, Buffer.concat([await readFile(pki.ca), await readFile(newCa.ca)]));
    const n1New = await newCa.issue('steward-n1', { cn: 'n1', san: ['IP:127.0.0.1'] });
    const n2New = await newCa.issue('steward-n2', { cn: 'n2', san: ['IP:127.0.0.1'] });
    // 1. Both sides trust both CAs.
    await replaceFile(bundle, join(dir, 'ca.pem'));
    await replaceFile(bundle, client.ca);
    const bundlePem = await readFile(bundle);
    await expect.poll(() => server.current.ca.equals(bundlePem) && n2.current.ca.equals(bundlePem), { timeout: 5000 }).toBe(true);
    // 2. New certificates (the client's first: the server still has its old one, trusted through the bundle).
    await replaceFile(n2New.key, client.key);
    await replaceFile(n2New.cert, client.cert);
    await replaceFile(n1New.key, join(dir, 'key.pem'));
    await replaceFile(n1New.cert, join(dir, 'cert.pem'));
    const [n1Pem, n2Pem] = [await readFile(n1New.cert), await readFile(n2New.cert)];
    await expect.poll(() => server.current.cert.equals(n1Pem) && n2.current.cert.equals(n2Pem), { timeout: 5000 }).toBe(true);
    await call();
    // 3. The old CA is dropped: only the new certificates work now.
    await replaceFile(newCa.ca, join(dir, 'ca.pem'));
    await replaceFile(newCa.ca, client.ca);
    const newCaPem = await readFile(newCa.ca);
    await expect.poll(() => server.current.ca.equals(newCaPem) && n2.current.ca.equals(newCaPem), { timeout: 5000 }).toBe(true);
    await call();
    expect(calls).toEqual(['listLocal from n2 (cert n2)', 'listLocal from n2 (cert n2)', 'listLocal from n2 (cert n2)']);
    // A peer still holding the old certificate is refused on a new connection.
    const stale = pool(await TlsFiles.load({ ca: newCa.ca, cert: pki.nodes.n2?.steward.cert ?? '', key: pki.nodes.n2?.steward.key ?? '' }, logger), 'n2');
    expect((await refusal(stale.peer({ node: 'n1', grpc: endpoint }).listLocal(AbortSignal.timeout(5000)))).code).toBe('TLS_CLIENT_CERT_UNTRUSTED');
    const oldAdmin = await refusal((await ctl(endpoint, { ...pki.admin, cacert: newCa.ca })).status());
    expect(oldAdmin.code).toBe('TLS_CLIENT_CERT_UNTRUSTED');
  });
});

describe('without TLS (--grpc-plaintext-dev)', () => {
  it('everything is allowed, and the server warns again and again until it stops', async () => {
    const warnings: string[] = [];
    const server = await RpcServer.start({
      host: '127.0.0.1',
      port: 0,
      handlers: ctlHandlers,
      peer: peerHandlers,
      identity: { node: 'n1', clusterId: () => 'c1' },
      logger: pino({ level: 'warn' }, { write: (line: string) => warnings.push(line) }),
      plaintextWarningMs: 50,
    });
    const plaintext = (): number => warnings.filter((w) => w.includes('PLAINTEXT')).length;
    const client = new StewardClient(`127.0.0.1:${server.port}`, 5000);
    try {
      await client.delete(['a-n1-1700000000']);
      await expect.poll(plaintext, { timeout: 2000 }).toBeGreaterThanOrEqual(3);
    } finally {
      client.close();
      await server.stop();
    }
    const atStop = plaintext();
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(plaintext()).toBe(atStop);
    expect(calls).toEqual(['delete:a-n1-1700000000']);
  });
});
