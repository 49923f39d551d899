import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMemberClient } from '../../src/etcd/client.js';
import { openSnapshotStream, snapshotBytes } from '../../src/etcd/snapshot-stream.js';
import { EtcdIntegrityCheck } from '../../src/snapshot/integrity.js';
import { EtcdCluster, fillEtcd } from '../harness/etcd-cluster.js';
import { sha256File } from '../harness/snapshot-checks.js';
import { execFile } from 'node:child_process';
import { join } from 'node:path';

const discard = (): Writable => new Writable({ write: (_c, _e, cb) => cb() });

describe('etcd snapshot integrity check (real etcd)', () => {
  let etcd: EtcdCluster;
  let snapshot: Buffer;
  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
    await fillEtcd(etcd.endpoints, 4);
    const path = join(etcd.root, 'reference.db');
    await new Promise<void>((resolve, reject) =>
      execFile('etcdctl', ['--endpoints', etcd.endpoints[0] as string, 'snapshot', 'save', path], { env: { ...process.env, ETCDCTL_API: '3' } }, (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    snapshot = await readFile(path);
  });
  afterAll(async () => {
    await etcd?.stop();
  });

  it('accepts a real snapshot and yields the file SHA-256 in the same pass', async () => {
    const check = new EtcdIntegrityCheck();
    await pipeline(createReadStream(join(etcd.root, 'reference.db'), { highWaterMark: 7777 }), check, discard());
    expect(check.size).toBe(snapshot.length);
    expect(check.fileSha256).toBe(await sha256File(join(etcd.root, 'reference.db')));
  });

  it('accepts the stream read straight from Maintenance.Snapshot', async () => {
    const client = createMemberClient(etcd.endpoints[0] as string);
    try {
      const check = new EtcdIntegrityCheck();
      await pipeline(snapshotBytes(await openSnapshotStream(client, Date.now() + 60_000)), check, discard());
      expect(check.size).toBeGreaterThan(4 * 1024 * 1024);
    } finally {
      client.close();
    }
  });

  it("knows the snapshot's whole size from etcd's first message (remaining_bytes), and it is what arrives", async () => {
    const client = createMemberClient(etcd.endpoints[0] as string);
    try {
      const seen: { bytes: number; total: number }[] = [];
      const check = new EtcdIntegrityCheck();
      await pipeline(
        snapshotBytes(await openSnapshotStream(client, Date.now() + 60_000), (progress) => seen.push(progress)),
        check,
        discard(),
      );
      // 32 KiB messages: many of them, each saying the same total, which is the db plus its sha256 trailer.
      expect(seen.length).toBeGreaterThan(100);
      expect(new Set(seen.map((p) => p.total))).toEqual(new Set([check.size]));
      expect(seen.at(-1)?.bytes).toBe(check.size);
      expect(seen.every((p, i) => i === 0 || p.bytes >= (seen[i - 1]?.bytes ?? 0))).toBe(true);
    } finally {
      client.close();
    }
  });

  it('rejects a stream cut short', async () => {
    for (const cut of [snapshot.length - 1, snapshot.length - 33, Math.floor(snapshot.length / 2), 10]) {
      await expect(pipeline(Readable.from([snapshot.subarray(0, cut)]), new EtcdIntegrityCheck(), discard())).rejects.toThrow(
        /SNAPSHOT_CORRUPT|too short|integrity/,
      );
    }
  });

  it('rejects a flipped byte and a wrong trailer', async () => {
    const flipped = Buffer.from(snapshot);
    flipped[1000] = (flipped[1000] ?? 0) ^ 0xff;
    await expect(pipeline(Readable.from([flipped]), new EtcdIntegrityCheck(), discard())).rejects.toThrow(/integrity check/);
    const wrongTrailer = Buffer.from(snapshot);
    wrongTrailer[wrongTrailer.length - 1] = (wrongTrailer[wrongTrailer.length - 1] ?? 0) ^ 1;
    await expect(pipeline(Readable.from([wrongTrailer]), new EtcdIntegrityCheck(), discard())).rejects.toThrow(/integrity check/);
  });
});
