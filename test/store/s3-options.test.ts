import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { loadS3Store } from '../../src/store/from-config.js';
import type { S3Store } from '../../src/store/s3.js';
import { S3Server } from '../harness/s3.js';
import { ForwardProxy } from '../harness/s3-fault-proxy.js';
import { makeTestCa, type TestCa } from '../harness/tls.js';

/** Builds the store exactly as the daemon does, from its flags. */
async function storeFromFlags(flags: string[]): Promise<S3Store> {
  const config = await loadConfig(
    [
      '--grpc-plaintext-dev=true',
      '--etcd-s3=true',
      '--etcd-s3-bucket=snapshots',
      '--etcd-s3-access-key=S3RVER',
      '--etcd-s3-secret-key=S3RVER',
      '--etcd-s3-timeout=3s',
      '--etcd-s3-folder=backups',
      ...flags,
    ],
    '0',
  );
  const store = await loadS3Store(config, new StewardMetrics(), { bucket: config.etcdS3Bucket, folder: config.etcdS3Folder });
  if (!store) throw new Error('S3 store not built');
  return store;
}

async function roundTrip(store: S3Store): Promise<string> {
  try {
    await store.putSmall('probe', 'hello', AbortSignal.timeout(10_000));
    return (await store.readSmall('probe', AbortSignal.timeout(10_000))).toString();
  } finally {
    store.close();
  }
}

describe('S3 options against real s3rver servers', () => {
  let ca: TestCa;
  let tlsServer: S3Server;
  let plainServer: S3Server;
  let forward: ForwardProxy;
  beforeAll(async () => {
    ca = await makeTestCa(await mkdtemp(join(tmpdir(), 'steward-ca-')));
    tlsServer = await S3Server.start({ bucket: 'snapshots', tls: { key: ca.serverKey, cert: ca.serverCert } });
    plainServer = await S3Server.start({ bucket: 'snapshots' });
    forward = await ForwardProxy.start();
  });
  afterAll(async () => {
    await tlsServer?.stop();
    await plainServer?.stop();
    await forward?.stop();
  });

  it('TLS with a private CA works with --etcd-s3-endpoint-ca', async () => {
    const store = await storeFromFlags([`--etcd-s3-endpoint=127.0.0.1:${tlsServer.port}`, `--etcd-s3-endpoint-ca=${ca.caCert}`]);
    expect(await roundTrip(store)).toBe('hello');
  });

  it('without the CA it fails with a clear certificate error', async () => {
    const store = await storeFromFlags([`--etcd-s3-endpoint=127.0.0.1:${tlsServer.port}`]);
    const failure = roundTrip(store);
    await expect(failure).rejects.toMatchObject({ code: 'S3_TLS' });
    await expect(failure).rejects.toThrow(/TLS certificate of https:\/\/127\.0\.0\.1:\d+ was not accepted/);
  });

  it('--etcd-s3-skip-ssl-verify accepts the unknown certificate', async () => {
    const store = await storeFromFlags([`--etcd-s3-endpoint=127.0.0.1:${tlsServer.port}`, '--etcd-s3-skip-ssl-verify=true']);
    expect(await roundTrip(store)).toBe('hello');
  });

  it('--etcd-s3-proxy sends the traffic through the proxy', async () => {
    const before = forward.requests;
    const store = await storeFromFlags([
      `--etcd-s3-endpoint=127.0.0.1:${plainServer.port}`,
      '--etcd-s3-insecure=true',
      `--etcd-s3-proxy=http://127.0.0.1:${forward.port}`,
    ]);
    expect(await roundTrip(store)).toBe('hello');
    expect(forward.requests - before).toBeGreaterThanOrEqual(2);
    expect(forward.targets.has(`127.0.0.1:${plainServer.port}`)).toBe(true);
  });

  it('a missing bucket and an unreachable endpoint are named in the error', async () => {
    const missing = await storeFromFlags([`--etcd-s3-endpoint=127.0.0.1:${plainServer.port}`, '--etcd-s3-insecure=true', '--etcd-s3-bucket=no-such-bucket']);
    await expect(roundTrip(missing)).rejects.toMatchObject({ code: 'S3_NO_SUCH_BUCKET' });
    const closed = await storeFromFlags(['--etcd-s3-endpoint=127.0.0.1:1', '--etcd-s3-insecure=true']);
    await expect(roundTrip(closed)).rejects.toMatchObject({ code: 'S3_UNREACHABLE' });
  });
});
