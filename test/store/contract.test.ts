import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, readFile, readdir, rm, stat, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError, StewardError, UnavailableError } from '../../src/errors/index.js';
import { LocalStore } from '../../src/store/local.js';
import { S3Store } from '../../src/store/s3.js';
import type { BackupStore } from '../../src/store/store.js';
import { freePort } from '../harness/ports.js';
import { S3Server } from '../harness/s3.js';

const MIB = 1024 * 1024;
const CHUNK = 64 * 1024;
const BIG = randomBytes(20 * MIB);
const BIG_SHA = sha256(BIG);

interface Subject {
  store: BackupStore;
  /** Every file the backend holds whose name contains `fragment`, committed or not (temp files, s3rver's own files). */
  filesContaining(fragment: string): Promise<string[]>;
  close(): Promise<void>;
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function streamSha256(stream: Readable): Promise<{ sha: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { sha: hash.digest('hex'), size };
}

async function writeChunks(writer: { write(chunk: Buffer): Promise<void> }, data: Buffer, upTo = data.length): Promise<void> {
  for (let offset = 0; offset < upTo; offset += CHUNK) await writer.write(data.subarray(offset, Math.min(offset + CHUNK, upTo)));
}

async function walk(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

async function inParallel<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}

const never = (): AbortSignal => new AbortController().signal;

function contract(name: string, makeStore: () => Promise<Subject>): void {
  describe(`${name} store contract`, () => {
    let subject: Subject;
    let store: BackupStore;
    beforeAll(async () => {
      subject = await makeStore();
      store = subject.store;
    });
    afterAll(async () => subject?.close());

    it('streams 20 MiB in 64 KiB chunks, shows nothing before commit, and reads back byte-identical', async () => {
      const writer = await store.createWriter('big-1', never());
      await writeChunks(writer, BIG, 12 * MIB);
      expect(await store.head('big-1', never())).toBeUndefined();
      expect(await store.list('big-', never())).toEqual([]);
      await writeChunks(writer, BIG.subarray(12 * MIB));
      expect(await writer.commit()).toEqual({ size: BIG.length });

      const info = await store.head('big-1', never());
      expect(info?.size).toBe(BIG.length);
      expect((await store.list('big-', never())).map((o) => [o.key, o.size])).toEqual([['big-1', BIG.length]]);
      expect(await streamSha256(await store.read('big-1', never()))).toEqual({ sha: BIG_SHA, size: BIG.length });
      expect(store.urlFor('big-1')).toBe(`${store.location}/big-1`);
    });

    it('commits a stream smaller than one part', async () => {
      const data = BIG.subarray(0, 100 * 1024 + 7);
      const writer = await store.createWriter('small-stream', never());
      await writeChunks(writer, data);
      expect(await writer.commit()).toEqual({ size: data.length });
      expect(sha256(await store.readSmall('small-stream', never()))).toBe(sha256(data));
    });

    it('abort leaves nothing behind', async () => {
      const writer = await store.createWriter('aborted-1', never());
      await writeChunks(writer, BIG, 18 * MIB);
      await writer.abort(new Error('test abort'));
      await writer.abort(); // idempotent
      await expect(writer.write(BIG.subarray(0, CHUNK))).rejects.toMatchObject({ code: 'STORE_WRITER_CLOSED' });
      await expect(writer.commit()).rejects.toMatchObject({ code: 'STORE_WRITER_CLOSED' });
      expect(await store.head('aborted-1', never())).toBeUndefined();
      expect(await store.list('aborted-', never())).toEqual([]);
      expect(await subject.filesContaining('aborted-1')).toEqual([]);
    });

    it('an AbortSignal fired mid-write rejects write and commit and leaves nothing', async () => {
      const controller = new AbortController();
      const writer = await store.createWriter('signalled-1', controller.signal);
      await writeChunks(writer, BIG, 10 * MIB);
      const reason = new Error('leadership lost');
      controller.abort(reason);
      await expect(writer.write(BIG.subarray(0, CHUNK))).rejects.toBe(reason);
      await expect(writer.commit()).rejects.toBe(reason);
      await writer.abort(); // waits for the cleanup the signal started
      expect(await store.head('signalled-1', never())).toBeUndefined();
      expect(await store.list('signalled-', never())).toEqual([]);
      expect(await subject.filesContaining('signalled-1')).toEqual([]);
      await expect(store.createWriter('signalled-2', controller.signal)).rejects.toBe(reason);
      await expect(store.putSmall('signalled-3', 'x', controller.signal)).rejects.toBe(reason);
    });

    it('putSmall and readSmall round-trip, and putSmall replaces', async () => {
      await store.putSmall('meta-1.metadata.json', '{"a":1}', never());
      expect((await store.readSmall('meta-1.metadata.json', never())).toString()).toBe('{"a":1}');
      await store.putSmall('meta-1.metadata.json', Buffer.from('{"a":2}'), never());
      expect((await store.readSmall('meta-1.metadata.json', never())).toString()).toBe('{"a":2}');
      const info = await store.head('meta-1.metadata.json', never());
      expect(info).toMatchObject({ key: 'meta-1.metadata.json', size: 7 });
      expect(Math.abs((info?.lastModified.getTime() ?? 0) - Date.now())).toBeLessThan(60_000);
    });

    it('readSmall refuses an object over 1 MiB', async () => {
      await expect(store.readSmall('big-1', never())).rejects.toBeInstanceOf(InvalidArgumentError);
    });

    it('a missing key is NotFoundError for reads and undefined for head', async () => {
      await expect(store.readSmall('missing-1', never())).rejects.toBeInstanceOf(NotFoundError);
      await expect(store.read('missing-1', never())).rejects.toBeInstanceOf(NotFoundError);
      expect(await store.head('missing-1', never())).toBeUndefined();
    });

    it('delete is idempotent', async () => {
      await store.putSmall('doomed-1', 'x', never());
      await store.delete('doomed-1', never());
      await store.delete('doomed-1', never());
      await store.delete('never-existed', never());
      expect(await store.head('doomed-1', never())).toBeUndefined();
    });

    it('lists by prefix', async () => {
      for (const key of ['pfx-a-2', 'pfx-a-1', 'pfx-b-1']) await store.putSmall(key, key, never());
      const listed = await store.list('pfx-a-', never());
      expect(listed.map((o) => [o.key, o.size])).toEqual([
        ['pfx-a-1', 7],
        ['pfx-a-2', 7],
      ]);
      expect(listed.every((o) => o.lastModified instanceof Date)).toBe(true);
      expect((await store.list('pfx-', never())).map((o) => o.key)).toEqual(['pfx-a-1', 'pfx-a-2', 'pfx-b-1']);
    });

    it('lists more than 1000 objects across pages', async () => {
      const keys = Array.from({ length: 1005 }, (_, i) => `page-${String(i).padStart(4, '0')}`);
      await inParallel(keys, 20, (key) => store.putSmall(key, 'x', never()));
      expect((await store.list('page-', never())).map((o) => o.key)).toEqual(keys);
    });

    it.each(['../x', 'a/b', '.hidden', '', 'x/../../etc'])('rejects the key %j', async (key) => {
      await expect(store.createWriter(key, never())).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(store.putSmall(key, 'x', never())).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(store.readSmall(key, never())).rejects.toBeInstanceOf(InvalidArgumentError);
      expect(() => store.urlFor(key)).toThrow(InvalidArgumentError);
    });
  });
}

contract('local', async () => {
  const root = await mkdtemp(join(tmpdir(), 'steward-local-store-'));
  const dir = join(root, 'snapshots');
  return {
    store: new LocalStore(dir),
    filesContaining: async (fragment) => (await readdir(dir).catch(() => [])).filter((name) => name.includes(fragment)),
    close: async () => {
      if (!process.env.KEEP_TEST_DIRS) await rm(root, { recursive: true, force: true });
    },
  };
});

let s3: S3Server;
beforeAll(async () => {
  s3 = await S3Server.start({ bucket: 'steward-test' });
});
afterAll(async () => s3?.stop());

contract('s3', async () => {
  const store = new S3Store(s3.storeOptions('backups'));
  return {
    store,
    // s3rver keeps an object as `<key>._S3rver_object` plus `.md5` and `.metadata.json` files.
    filesContaining: async (fragment) => (await walk(join(s3.dir, s3.bucket, 'backups'))).filter((path) => path.includes(fragment)),
    close: async () => store.close(),
  };
});

describe('local store', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'steward-local-'));
  });
  afterAll(async () => {
    if (!process.env.KEEP_TEST_DIRS) await rm(root, { recursive: true, force: true });
  });

  it('creates its directory 0700 on the first write and names locations as file URLs', async () => {
    const store = new LocalStore(join(root, 'a', 'snapshots'));
    expect(store.location).toBe(`file://${join(root, 'a', 'snapshots')}`);
    expect(await store.list('', never())).toEqual([]);
    await store.putSmall('one', '1', never());
    expect((await stat(join(root, 'a', 'snapshots'))).mode & 0o777).toBe(0o700);
    expect(store.urlFor('one')).toBe(`file://${join(root, 'a', 'snapshots', 'one')}`);
  });

  it('hides a temp file left by a crash and cleans it up once stale', async () => {
    const dir = join(root, 'crash');
    const store = new LocalStore(dir);
    const writer = await store.createWriter('crashed', never());
    await writer.write(Buffer.from('half a snapshot'));
    // The process "dies" here: the writer is never committed or aborted.
    const [temp] = await readdir(dir);
    expect(temp).toMatch(/^\.crashed\.tmp-[0-9a-f]+$/);
    expect(await store.list('', never())).toEqual([]);
    expect(await store.cleanupTempFiles(60_000)).toEqual([]);
    const old = new Date(Date.now() - 120_000);
    await utimes(join(dir, temp as string), old, old);
    expect(await store.cleanupTempFiles(60_000)).toEqual([temp]);
    expect(await readdir(dir)).toEqual([]);
    await writer.abort(); // only to close the file handle the "crashed" writer still holds
  });
});

describe('s3 store failures', () => {
  function options(overrides: Partial<ReturnType<S3Server['storeOptions']>>) {
    return { ...s3.storeOptions('backups'), ...overrides };
  }

  it('stores exactly the bytes written, without aws-chunked framing', async () => {
    const store = new S3Store(s3.storeOptions('backups'));
    const writer = await store.createWriter('exact-1', never());
    await writeChunks(writer, BIG, 9 * MIB + 123);
    await writer.commit();
    await store.putSmall('exact-2', '{"small":true}', never());
    const onDisk = (key: string) => readFile(join(s3.dir, s3.bucket, 'backups', `${key}._S3rver_object`));
    expect(sha256(await onDisk('exact-1'))).toBe(sha256(BIG.subarray(0, 9 * MIB + 123)));
    expect((await onDisk('exact-2')).toString()).toBe('{"small":true}');
    store.close();
  });

  it('names a missing bucket and how to fix it', async () => {
    const store = new S3Store(options({ bucket: 'no-such-bucket' }));
    for (const attempt of [
      () => store.list('', never()),
      () => store.putSmall('x', 'x', never()),
      async () => {
        const writer = await store.createWriter('y', never());
        await writer.write(Buffer.from('data'));
        return writer.commit();
      },
    ]) {
      const err = await attempt().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StewardError);
      expect(err).toMatchObject({
        family: 'invalid',
        code: 'S3_NO_SUCH_BUCKET',
        hint: 'create the bucket, or fix --etcd-s3-bucket (backups) or --control-s3-bucket (the cluster spec)',
      });
      expect((err as StewardError).message).toMatch(/NoSuchBucket, HTTP 404/);
    }
    store.close();
  });

  it('reports bad credentials as S3_ACCESS_DENIED without echoing the secret', async () => {
    const store = new S3Store(options({ accessKey: 'NOT-A-KEY', secretKey: 'very-secret-value' }));
    for (const attempt of [() => store.list('', never()), () => store.head('x', never()), () => store.putSmall('x', 'x', never())]) {
      const err = await attempt().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(UnavailableError);
      expect(err).toMatchObject({ code: 'S3_ACCESS_DENIED' });
      expect((err as StewardError).describe()).toMatch(/HTTP 403/);
      expect((err as StewardError).describe()).not.toMatch(/very-secret-value|NOT-A-KEY/);
    }
    store.close();
  });

  it('reports a closed port as S3_UNREACHABLE within the timeout', async () => {
    const port = await freePort();
    const store = new S3Store(options({ endpoint: `127.0.0.1:${port}`, timeoutMs: 2000 }));
    const started = Date.now();
    const err = await store.list('', never()).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(Date.now() - started).toBeLessThan(2000);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err).toMatchObject({ code: 'S3_UNREACHABLE', retryable: true });
    expect((err as StewardError).message).toContain(`http://127.0.0.1:${port}`);
    store.close();
  });

  it('gives up on a server that accepts but never answers, within the retries × timeout', async () => {
    const sockets = new Set<Socket>();
    const silent: Server = createServer((socket) => sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const address = silent.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    const store = new S3Store(options({ endpoint: `http://127.0.0.1:${port}`, timeoutMs: 1000 }));
    try {
      const started = Date.now();
      const err = await store.head('x', never()).then(
        () => undefined,
        (e: unknown) => e,
      );
      const elapsed = Date.now() - started;
      expect(err).toMatchObject({ code: 'S3_UNREACHABLE' });
      // The SDK makes 3 attempts, each bounded by the timeout, with short backoff between them.
      expect(elapsed).toBeGreaterThanOrEqual(1000);
      expect(elapsed).toBeLessThan(8000);
    } finally {
      store.close();
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });
});
