import { Writable } from 'node:stream';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { StewardError } from '../../src/errors/index.js';
import { createLogger } from '../../src/observability/logger.js';
import { S3ClientSource, createS3Client } from '../../src/store/s3-client.js';
import { S3Store } from '../../src/store/s3.js';
import { S3FaultProxy } from '../harness/s3-fault-proxy.js';
import { S3Server } from '../harness/s3.js';

const TOKEN = 'FwoGZXIvYXdzEXAMPLE-SESSION-TOKEN-must-never-be-logged';
const KEY_ID = 'AKIAEXAMPLEKEYID0001';
// What real S3 sends along with a SignatureDoesNotMatch: the request it signed, token included.
const SIGNATURE_EXTRA = `<AWSAccessKeyId>${KEY_ID}</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 x</StringToSign><CanonicalRequest>GET /bucket/key X-Amz-Security-Token=${TOKEN}</CanonicalRequest>`;

describe('S3 errors and clients (real s3rver behind a fault proxy)', () => {
  let s3: S3Server;
  let proxy: S3FaultProxy;
  let store: S3Store;
  const options = (timeoutMs = 10_000) => ({ ...s3.storeOptions('errors'), endpoint: proxy.endpoint, accessKey: KEY_ID, sessionToken: TOKEN, timeoutMs });

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'errors' });
    proxy = await S3FaultProxy.start(s3.port);
    proxy.validKeys.add(KEY_ID);
    store = new S3Store(options());
    await store.putSmall('hello.json', '{"hello":1}', AbortSignal.timeout(10_000));
  });
  afterAll(async () => {
    store?.close();
    await proxy?.stop();
    await s3?.stop();
  });

  it('an SDK exception carrying the signed request never reaches a log line: the cause is rebuilt without it', async () => {
    // First prove the raw SDK exception does carry the token, so the assertion below means something.
    const raw = createS3Client(options());
    proxy.failNext(1, { kind: 'status', status: 403, code: 'SignatureDoesNotMatch', extra: SIGNATURE_EXTRA });
    const rawError = await raw.send(new GetObjectCommand({ Bucket: s3.bucket, Key: 'errors/hello.json' })).catch((err: unknown) => err);
    raw.destroy();
    expect(JSON.stringify(rawError)).toContain(TOKEN);

    // Both the call and its one retry after a client rebuild are refused.
    proxy.failNext(2, { kind: 'status', status: 403, code: 'SignatureDoesNotMatch', extra: SIGNATURE_EXTRA });
    const err = await store.readSmall('hello.json', AbortSignal.timeout(10_000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StewardError);
    expect((err as StewardError).code).toBe('S3_ACCESS_DENIED');
    let logged = '';
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logged += chunk.toString();
        done();
      },
    });
    createLogger({ level: 'info', destination: sink }).error({ err }, 'S3 read failed');
    expect(logged).toContain('SignatureDoesNotMatch');
    expect(logged).toContain('"cause"');
    expect(logged).not.toContain(TOKEN);
    expect(logged).not.toContain('CanonicalRequest');
    expect((err as StewardError).describe()).not.toContain(TOKEN);
  });

  it("create-only writes send If-None-Match: * and S3's 412 becomes OBJECT_EXISTS, nothing overwritten (412 emulated by the proxy: s3rver lacks it)", async () => {
    const before = proxy.conditionalPuts;
    await store.putSmall('once.json', '{"first":true}', AbortSignal.timeout(10_000), { createOnly: true });
    const err = await store.putSmall('once.json', '{"second":true}', AbortSignal.timeout(10_000), { createOnly: true }).catch((e: unknown) => e);
    expect((err as StewardError).code).toBe('OBJECT_EXISTS');
    expect(proxy.conditionalPuts - before).toBe(2);
    expect((await store.readSmall('once.json', AbortSignal.timeout(10_000))).toString()).toBe('{"first":true}');
  });

  it('a small read that gets no answer fails within --etcd-s3-timeout, retries included', async () => {
    const bounded = new S3Store(options(1500));
    try {
      proxy.failNext(10, { kind: 'hang' });
      const started = Date.now();
      const err = await bounded.readSmall('hello.json', AbortSignal.timeout(60_000)).catch((e: unknown) => e);
      const ms = Date.now() - started;
      expect((err as StewardError).code).toBe('S3_UNREACHABLE');
      expect((err as StewardError).message).toMatch(/within --etcd-s3-timeout \(1500 ms\)/);
      expect(ms).toBeLessThan(4000);
    } finally {
      bounded.close();
      // Whatever hang faults are left must not leak into the next test.
      proxy.clearFaults();
    }
  });

  it('a replaced client is destroyed once no request can still use it, but never under a pinned download', async () => {
    const source = new S3ClientSource({ ...options(100) }, undefined);
    try {
      const first = source.current;
      const destroyFirst = vi.spyOn(first, 'destroy');
      const download = source.pin();
      expect(download.client).toBe(first);
      await source.rebuild();
      const second = source.current;
      expect(second).not.toBe(first);
      const destroySecond = vi.spyOn(second, 'destroy');
      await source.rebuild();
      // Past the retirement delay (timeout + 5 s): the idle one is gone, the pinned one is kept.
      await sleep(5_400);
      expect(destroySecond).toHaveBeenCalledTimes(1);
      expect(destroyFirst).not.toHaveBeenCalled();
      download.release();
      expect(destroyFirst).toHaveBeenCalledTimes(1);
      download.release();
      expect(destroyFirst).toHaveBeenCalledTimes(1);
    } finally {
      source.close();
    }
  });

  it('a download keeps its client pinned until its body closes', async () => {
    const original = S3ClientSource.prototype.pin;
    let pinned = 0;
    const pins = vi.spyOn(S3ClientSource.prototype, 'pin').mockImplementation(function (this: S3ClientSource) {
      const lease = original.call(this);
      pinned += 1;
      return { client: lease.client, release: () => ((pinned -= 1), lease.release()) };
    });
    try {
      const body = await store.read('hello.json', AbortSignal.timeout(10_000));
      expect(pinned).toBe(1);
      let text = '';
      for await (const chunk of body as AsyncIterable<Buffer>) text += chunk.toString();
      await new Promise((resolve) => setImmediate(resolve));
      expect(text).toBe('{"hello":1}');
      expect(pinned).toBe(0);
      // A failed GET releases its pin too.
      await store.read('missing.json', AbortSignal.timeout(10_000)).catch(() => undefined);
      expect(pins).toHaveBeenCalledTimes(2);
      expect(pinned).toBe(0);
    } finally {
      pins.mockRestore();
    }
  });

  it('credentials that expire in the middle of a multipart upload cost one retry on a rebuilt client, not the upload', async () => {
    const dir = await mkdtemp(join(tmpdir(), 's3-config-'));
    const file = join(dir, 'config.yaml');
    const [first, second] = ['AKIAROTATINGKEY00001', 'AKIAROTATINGKEY00002'];
    await writeFile(file, `etcd-s3-access-key: ${first}\netcd-s3-secret-key: s1\n`);
    proxy.validKeys.add(first);
    const rotating = new S3Store({ ...options(), accessKey: undefined, secretKey: undefined, sessionToken: undefined, configFile: file });
    try {
      const writer = await rotating.createWriter('rotating-upload', AbortSignal.timeout(30_000));
      const part = Buffer.alloc(8 * 1024 * 1024, 7);
      await writer.write(Buffer.from(part));
      // A secret sync writes the new key, then the old one expires while the upload still runs on it.
      await writeFile(file, `etcd-s3-access-key: ${second}\netcd-s3-secret-key: s2\n`);
      proxy.validKeys.add(second);
      const rejectedBefore = proxy.rejected;
      proxy.validKeys.delete(first);
      proxy.expiredKeys.add(first);
      await writer.write(Buffer.from(part));
      await writer.write(Buffer.alloc(1024 * 1024, 9));
      const { size } = await writer.commit();
      expect(size).toBe(17 * 1024 * 1024);
      expect(proxy.rejected).toBeGreaterThan(rejectedBefore);
      expect(proxy.seenKeys.has(second)).toBe(true);
      expect((await store.head('rotating-upload', AbortSignal.timeout(10_000)))?.size).toBe(17 * 1024 * 1024);
    } finally {
      rotating.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('an auth failure with a keyless config file still builds a fresh client (the default chain re-fetches)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 's3-config-'));
    try {
      const file = join(dir, 'config.yaml');
      await writeFile(file, '# keys come from the default chain\n');
      const source = new S3ClientSource({ ...options() }, file);
      await source.sync();
      const before = source.current;
      await source.rebuild();
      expect(source.current).not.toBe(before);
      source.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
