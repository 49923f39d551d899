import { readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Server } from '../harness/s3.js';
import { S3FaultProxy } from '../harness/s3-fault-proxy.js';
import { StewardCluster } from '../harness/steward-cluster.js';
import { waitUntil } from '../harness/processes.js';

interface Saved {
  name: string;
  locations: string[];
  failures: string[];
}

const OLD = { key: 'AKIAOLDKEY0000000001', secret: 'old-secret-value-must-never-be-logged' };
const NEW = { key: 'AKIANEWKEY0000000002', secret: 'new-secret-value-must-never-be-logged' };

describe('S3 that keeps working: rotated credentials, transient faults, outages (real s3rver behind a fault proxy)', () => {
  let s3: S3Server;
  let proxy: S3FaultProxy;
  let cluster: StewardCluster;
  let credentialsFile: string;
  let lastSave = 0;
  const save = async (): Promise<Saved> => {
    // Snapshot names carry whole seconds; a second save within the same second is refused by design.
    const wait = 1000 - (Date.now() - lastSave);
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const result = await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'save']);
    // From when the save ended: its name was taken before that, so the next one lands in a later second.
    lastSave = Date.now();
    const saved = JSON.parse(result.stdout) as Saved;
    // A save whose S3 copy failed exits 1, having printed what was stored where.
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

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'snapshots' });
    proxy = await S3FaultProxy.start(s3.port);
    proxy.validKeys.add(OLD.key);
    cluster = await StewardCluster.create({ size: 1 });
    credentialsFile = join(cluster.root, 's3-credentials.yaml');
    await writeFile(credentialsFile, `etcd-s3-access-key: ${OLD.key}\netcd-s3-secret-key: ${OLD.secret}\n`);
    cluster.setNodeArgs(0, [
      ...s3.stewardArgs({ endpoint: proxy.endpoint, keys: false }),
      `--etcd-s3-config-file=${credentialsFile}`,
      '--etcd-s3-timeout=3s',
      '--etcd-disable-snapshots=true',
      '--etcd-snapshot-reconcile-interval=1h',
    ]);
    await cluster.startAll();
    await cluster.waitForStableLeader(20_000);
  });
  afterAll(async () => {
    await cluster?.destroy();
    await proxy?.stop();
    await s3?.stop();
  });

  it('a key rotated in the config file is used by the next snapshot, without a restart', async () => {
    expect((await save()).locations).toHaveLength(2);
    expect(proxy.seenKeys.has(OLD.key)).toBe(true);

    // The old key expires (as IAM-role credentials do hours after start-up) ...
    proxy.validKeys.delete(OLD.key);
    proxy.expiredKeys.add(OLD.key);
    const failed = await save();
    expect(failed.locations).toHaveLength(1);
    expect(failed.failures[0]).toMatch(/^s3: .*ExpiredToken/);
    expect(await metric(/^etcd_steward_s3_errors_total\{.*code="S3_ACCESS_DENIED"/)).toBeGreaterThan(0);
    expect(await metric(/^etcd_steward_snapshot_failures_total\{reason="location_s3"\}/)).toBe(1);

    // ... and the operator (or a secret sync) rewrites the file with the new key.
    proxy.validKeys.add(NEW.key);
    await writeFile(credentialsFile, `etcd-s3-access-key: ${NEW.key}\netcd-s3-secret-key: ${NEW.secret}\n`);
    const recovered = await save();
    expect(recovered.locations).toHaveLength(2);
    expect(recovered.failures).toEqual([]);
    expect(proxy.seenKeys.has(NEW.key)).toBe(true);
  });

  it('transient 500s and dropped connections are retried until the upload succeeds', async () => {
    proxy.failNext(2, { kind: 'status', status: 500, code: 'InternalError' });
    proxy.failNext(1, { kind: 'drop' });
    proxy.failNext(1, { kind: 'status', status: 503, code: 'SlowDown' });
    const rejectedBefore = proxy.rejected;
    const saved = await save();
    expect(proxy.rejected - rejectedBefore).toBe(4);
    expect(saved.locations).toHaveLength(2);
    expect(saved.failures).toEqual([]);
  });

  it('an outage longer than the retries keeps the snapshot locally, counts the failure, and the next run succeeds', async () => {
    const failuresBefore = await metric(/^etcd_steward_snapshot_failures_total\{reason="location_s3"\}/);
    proxy.outage(60_000);
    const during = await save();
    expect(during.locations).toEqual([expect.stringMatching(/^file:\/\//)]);
    expect(during.failures[0]).toMatch(/^s3: /);
    expect(readdirSync(join(cluster.node(0).stateDir, 'snapshots'))).toContain(during.name);
    expect(await metric(/^etcd_steward_snapshot_failures_total\{reason="location_s3"\}/)).toBe(failuresBefore + 1);
    proxy.outage(0);
    expect((await save()).locations).toHaveLength(2);
  });

  it('a malformed config file fails the S3 copy with an error naming the file, and the local snapshot stays', async () => {
    await writeFile(credentialsFile, 'etcd-s3-access-key: [unclosed\n');
    const broken = await save();
    expect(broken.locations).toEqual([expect.stringMatching(/^file:\/\//)]);
    expect(broken.failures[0]).toContain(`cannot read the S3 config file ${credentialsFile}`);
    await writeFile(credentialsFile, `etcd-s3-access-key: ${NEW.key}\netcd-s3-secret-key: ${NEW.secret}\n`);
    expect((await save()).locations).toHaveLength(2);
  });

  it('no secret ever appears in a log line or a metric', async () => {
    const logs = readFileSync(cluster.node(0).logFile, 'utf8');
    const metrics = await (await fetch(`http://${cluster.node(0).http}/metrics`)).text();
    for (const secret of [OLD.secret, NEW.secret]) {
      expect(logs).not.toContain(secret);
      expect(metrics).not.toContain(secret);
    }
    expect(logs.split('\n').filter(Boolean).length).toBeGreaterThan(20);
  });
});

describe("the SDK's default credential chain (env), with an expiry it can report", () => {
  it('uses AWS_* credentials from the environment and exports their expiry', async () => {
    const s3 = await S3Server.start({ bucket: 'snapshots' });
    const expiry = new Date(Date.now() + 3_600_000);
    expiry.setMilliseconds(0);
    const cluster = await StewardCluster.create({
      size: 1,
      extraArgs: [...s3.stewardArgs({ keys: false }), '--etcd-disable-snapshots=true'],
      env: {
        AWS_ACCESS_KEY_ID: s3.accessKey,
        AWS_SECRET_ACCESS_KEY: 'env-secret',
        AWS_SESSION_TOKEN: 'env-token',
        AWS_CREDENTIAL_EXPIRATION: expiry.toISOString(),
      },
    });
    try {
      await cluster.startAll();
      await cluster.waitForStableLeader(30_000);
      const metrics = await waitUntil(
        'the canary to report',
        async () => {
          const body = await (await fetch(`http://${cluster.node(0).http}/metrics`)).text();
          return /^etcd_steward_s3_healthy 1$/m.test(body) ? body : undefined;
        },
        15_000,
        200,
      );
      expect(metrics).toContain(`etcd_steward_s3_credentials_expiry_timestamp_seconds ${expiry.getTime() / 1000}`);
      const saved = await cluster.ctl(['--endpoint', cluster.node(0).grpc, '-o', 'json', 'save']);
      expect(saved.code, saved.stderr).toBe(0);
      expect((JSON.parse(saved.stdout) as Saved).locations).toHaveLength(2);
    } finally {
      await cluster.destroy();
      await s3.stop();
    }
  });
});
