import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RadosGateway, type S3Key } from '../harness/radosgw.js';
import { StewardCluster } from '../harness/steward-cluster.js';
import { waitUntil } from '../harness/processes.js';

interface Saved {
  name: string;
  locations: string[];
  failures: string[];
}

/**
 * The credential tests of test/fault/s3-credentials.test.ts against an S3 that verifies signatures: Ceph's
 * radosgw (one mon, one memstore OSD, on loopback) instead of s3rver and a proxy that only plays the errors.
 * Keys are made and revoked with radosgw-admin, as an operator would.
 */
describe('S3 credentials against a signature-checking S3 (Ceph radosgw)', () => {
  let rgw: RadosGateway;
  let cluster: StewardCluster;
  let credentialsFile: string;
  let lastSave = 0;
  const writeKey = (key: S3Key, secret = key.secretKey): Promise<void> =>
    writeFile(credentialsFile, `etcd-s3-access-key: ${key.accessKey}\netcd-s3-secret-key: ${secret}\n`);
  const save = async (): Promise<Saved> => {
    // Snapshot names carry whole seconds; a second save within the same second is refused by design.
    const wait = 1000 - (Date.now() - lastSave);
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const result = await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'save']);
    lastSave = Date.now();
    const saved = JSON.parse(result.stdout) as Saved;
    expect(result.code, result.stderr).toBe(saved.failures.length > 0 ? 1 : 0);
    if (saved.failures.length > 0) expect(result.stderr).toMatch(/^error\[SAVE_INCOMPLETE\]: snapshot .* was stored at 1 location\(s\) but failed at 1: s3: /);
    return saved;
  };
  const metric = async (pattern: RegExp): Promise<number> => {
    const body = await (await fetch(`http://${cluster.node(0).http}/metrics`)).text();
    return body
      .split('\n')
      .filter((line) => pattern.test(line))
      .reduce((sum, line) => sum + Number(line.split(' ').pop()), 0);
  };
  const accessDenied = (): Promise<number> => metric(/^etcd_steward_s3_errors_total\{.*code="S3_ACCESS_DENIED"/);
  const s3Failures = (): Promise<number> => metric(/^etcd_steward_snapshot_failures_total\{reason="location_s3"\}/);
  const s3Healthy = (): Promise<number> => metric(/^etcd_steward_s3_healthy /);
  const objectsInBucket = async (key: S3Key): Promise<string[]> => {
    const client = rgw.client(key);
    try {
      const listed = await client.send(new ListObjectsV2Command({ Bucket: rgw.bucket, Prefix: 'backups/' }));
      return (listed.Contents ?? []).map((object) => object.Key ?? '');
    } finally {
      client.destroy();
    }
  };
  const putWith = async (key: S3Key): Promise<string> => {
    const client = rgw.client(key);
    try {
      await client.send(new PutObjectCommand({ Bucket: rgw.bucket, Key: 'probe', Body: 'probe' }));
      return 'ok';
    } catch (err) {
      return (err as Error).name;
    } finally {
      client.destroy();
    }
  };

  beforeAll(async () => {
    rgw = await RadosGateway.start({ bucket: 'snapshots' });
    process.stdout.write(`radosgw: first S3 write ${rgw.startMs} ms after the start of a fresh Ceph (mon + memstore OSD + radosgw)\n`);
    cluster = await StewardCluster.create({ size: 1 });
    credentialsFile = join(cluster.root, 's3-credentials.yaml');
    await writeKey(rgw.key);
    cluster.setNodeArgs(0, [
      ...rgw.stewardArgs({ keys: false }),
      `--etcd-s3-config-file=${credentialsFile}`,
      '--etcd-s3-timeout=3s',
      '--etcd-disable-snapshots=true',
      // Also the canary's interval: etcd_steward_s3_healthy follows a revoked key within seconds.
      '--etcd-snapshot-reconcile-interval=2s',
    ]);
    await cluster.startAll();
    await cluster.waitForStableLeader(30_000);
  }, 110_000);
  afterAll(async () => {
    await cluster?.destroy();
    await rgw?.stop();
  });

  it('checks signatures: a wrong secret or an unknown key id is refused, the right key is accepted', async () => {
    expect(await putWith(rgw.key)).toBe('ok');
    expect(await putWith({ accessKey: rgw.key.accessKey, secretKey: `${rgw.key.secretKey}x` })).toBe('SignatureDoesNotMatch');
    expect(await putWith({ accessKey: 'STEWARDUNKNOWNKEY0', secretKey: rgw.key.secretKey })).toBe('InvalidAccessKeyId');
  });

  it('a snapshot reaches radosgw; a wrong secret in the config file fails the S3 copy with SignatureDoesNotMatch, counted', async () => {
    const first = await save();
    expect(first.locations).toHaveLength(2);
    expect(first.failures).toEqual([]);
    expect((await objectsInBucket(rgw.key)).some((key) => key.includes(first.name))).toBe(true);

    const deniedBefore = await accessDenied();
    await writeKey(rgw.key, `${rgw.key.secretKey}-wrong`);
    const wrong = await save();
    expect(wrong.locations).toEqual([expect.stringMatching(/^file:\/\//)]);
    expect(wrong.failures[0]).toMatch(/^s3: .*SignatureDoesNotMatch/);
    expect(await accessDenied()).toBeGreaterThan(deniedBefore);
    expect(await s3Failures()).toBe(1);

    await writeKey(rgw.key);
    expect((await save()).locations).toHaveLength(2);
  });

  it('a key revoked with radosgw-admin fails the next save loudly and alerts; a new key in the file works without a restart', async () => {
    const pid = cluster.node(0).process?.pid;
    await waitUntil('the canary to report healthy', async () => (await s3Healthy()) === 1, 15_000, 200);
    const deniedBefore = await accessDenied();
    const failuresBefore = await s3Failures();

    await rgw.revokeKey(rgw.key.accessKey);
    expect(await rgw.keys()).not.toContain(rgw.key.accessKey);
    const revoked = await save();
    expect(revoked.locations).toEqual([expect.stringMatching(/^file:\/\//)]);
    expect(revoked.failures[0]).toMatch(/^s3: .*InvalidAccessKeyId/);
    expect(await accessDenied()).toBeGreaterThan(deniedBefore);
    expect(await s3Failures()).toBe(failuresBefore + 1);
    // The canary (every reconcile interval, 2 s here) turns the health gauge to 0: what an alert watches.
    await waitUntil('etcd_steward_s3_healthy to drop to 0', async () => (await s3Healthy()) === 0, 15_000, 200);
    expect(cluster.logs(0)).toMatch(/S3 canary failed/);

    const fresh = await rgw.newKey();
    await writeKey(fresh);
    const recovered = await save();
    expect(recovered.locations).toHaveLength(2);
    expect(recovered.failures).toEqual([]);
    expect((await objectsInBucket(fresh)).some((key) => key.includes(recovered.name))).toBe(true);
    await waitUntil('etcd_steward_s3_healthy back to 1', async () => (await s3Healthy()) === 1, 15_000, 200);
    // The same steward process throughout: no restart picked the new key up.
    expect(cluster.node(0).process?.pid).toBe(pid);
    expect(cluster.node(0).process?.exitCode).toBeNull();
  });

  it('no secret appears in a log line or a metric', async () => {
    const logs = readFileSync(cluster.node(0).logFile, 'utf8');
    const metrics = await (await fetch(`http://${cluster.node(0).http}/metrics`)).text();
    expect(logs).not.toContain(rgw.key.secretKey);
    expect(metrics).not.toContain(rgw.key.secretKey);
  });
});
