import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { Writable } from 'node:stream';

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/** Checks etcd's own trailer (last 32 bytes = SHA-256 of the rest) of a raw or gzipped snapshot file, streaming. */
export async function etcdTrailerOk(path: string, gzipped = false): Promise<boolean> {
  const hash = createHash('sha256');
  let tail = Buffer.alloc(0);
  const sink = new Writable({
    write(chunk: Buffer, _enc, callback) {
      const joined = Buffer.concat([tail, chunk]);
      const keep = Math.min(32, joined.length);
      hash.update(joined.subarray(0, joined.length - keep));
      tail = Buffer.from(joined.subarray(joined.length - keep));
      callback();
    },
  });
  if (gzipped) await pipeline(createReadStream(path), createGunzip(), sink);
  else await pipeline(createReadStream(path), sink);
  return tail.length === 32 && hash.digest().equals(tail);
}

/** Runs the real `etcdctl snapshot restore` (etcdutl where it exists) into a fresh dir; resolves with its exit code. */
export async function restoreWithEtcdctl(snapshotPath: string): Promise<{ code: number; output: string; dataDir: string }> {
  const dataDir = join(await mkdtemp(join(tmpdir(), 'restore-check-')), 'data');
  const tool = (await which('etcdutl')) ? 'etcdutl' : 'etcdctl';
  return new Promise((resolve) => {
    execFile(tool, ['snapshot', 'restore', snapshotPath, '--data-dir', dataDir], { env: { ...process.env, ETCDCTL_API: '3' } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, output: stdout + stderr, dataDir });
    });
  });
}

async function which(command: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (
      await stat(join(dir, command)).then(
        () => true,
        () => false,
      )
    )
      return true;
  }
  return false;
}

export async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, 'utf8')) as T;
}
