import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StewardError } from '../../src/errors/index.js';
import { S3Store } from '../../src/store/s3.js';
import { S3FaultProxy } from '../harness/s3-fault-proxy.js';
import { S3Server } from '../harness/s3.js';

const MIB = 1024 * 1024;
// Two parts and a bit: a real multipart upload (CreateMultipartUpload, UploadPart×3, Complete), then the HEAD.
const DATA = randomBytes(11 * MIB);

async function upload(store: S3Store, key: string): Promise<{ size: number }> {
  const writer = await store.createWriter(key, AbortSignal.timeout(60_000));
  for (let offset = 0; offset < DATA.length; offset += MIB) await writer.write(DATA.subarray(offset, offset + MIB));
  return writer.commit();
}

describe('S3 read-back after CompleteMultipartUpload (real s3rver behind the fault proxy)', () => {
  let s3: S3Server;
  let proxy: S3FaultProxy;
  let store: S3Store;
  let direct: S3Store;

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'readback' });
    proxy = await S3FaultProxy.start(s3.port);
    proxy.validKeys.add(s3.accessKey);
    // One SDK attempt per request: each injected failure reaches the writer instead of the SDK's own retry.
    store = new S3Store({ ...s3.storeOptions('backups'), endpoint: proxy.endpoint, timeoutMs: 2000, partSizeBytes: 5 * MIB, maxAttempts: 1 });
    direct = new S3Store(s3.storeOptions('backups'));
  });
  afterAll(async () => {
    store?.close();
    direct?.close();
    await proxy?.stop();
    await s3?.stop();
  });

  it('transient HEAD failures after the upload completed are retried; the good object is kept and verified', async () => {
    proxy.failNext(2, { kind: 'status', status: 500, code: 'InternalError', method: 'HEAD' });
    proxy.failNext(1, { kind: 'drop', method: 'HEAD' });
    const { size } = await upload(store, 'flaky-head');
    expect(size).toBe(DATA.length);
    expect((await direct.head('flaky-head', AbortSignal.timeout(5000)))?.size).toBe(DATA.length);
    proxy.clearFaults();
  });

  it('a read-back that never gets an answer is reported as unverified and the object is never deleted', async () => {
    proxy.failNext(50, { kind: 'status', status: 503, code: 'SlowDown', method: 'HEAD' });
    const err = await upload(store, 'no-head').catch((e: unknown) => e);
    proxy.clearFaults();
    expect(err).toBeInstanceOf(StewardError);
    expect((err as StewardError).code).toBe('S3_COMMIT_UNVERIFIED');
    expect((await direct.head('no-head', AbortSignal.timeout(5000)))?.size).toBe(DATA.length);
  });
});
