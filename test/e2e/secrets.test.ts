import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Server } from '../harness/s3.js';
import { StewardCluster } from '../harness/steward-cluster.js';

/** Every 64-character base64 line of every private key under `dir`: a leaked key would carry them. */
function keyLines(dir: string): string[] {
  return readdirSync(dir)
    .filter((file) => file.endsWith('-key.pem'))
    .flatMap((file) =>
      readFileSync(join(dir, file), 'utf8')
        .split('\n')
        .filter((line) => line.length >= 40 && !line.startsWith('-----')),
    );
}

/** The steward logs of the cluster, whole. */
function allLogs(root: string): string {
  return readdirSync(root)
    .filter((file) => file.endsWith('.log'))
    .map((file) => readFileSync(join(root, file), 'utf8'))
    .join('\n');
}

describe('no secret in any log line, error message or metric of a whole run (3 stewards, etcd TLS, mTLS, S3)', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  const secret = `s3-secret-${randomBytes(12).toString('hex')}`;
  const token = `s3-token-${randomBytes(16).toString('hex')}`;
  const password = `etcd-pw-${randomBytes(12).toString('hex')}`;
  const wrongSecret = `s3-wrong-${randomBytes(12).toString('hex')}`;
  let credentials = '';
  const outputs: string[] = [];

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'secrets' });
    const root = await import('node:os').then((os) => os.tmpdir());
    credentials = join(root, `steward-secrets-${randomBytes(4).toString('hex')}.yaml`);
    // s3rver checks the key id, not the signature: the secret and token are used to sign every request.
    writeFileSync(credentials, `etcd-s3-access-key: ${s3.accessKey}\netcd-s3-secret-key: ${secret}\netcd-s3-session-token: ${token}\n`, { mode: 0o600 });
    cluster = await StewardCluster.create({
      size: 3,
      etcdTls: true,
      grpcTls: true,
      // etcd auth stays off: the steward still tries its user and password, as clientv3 does, on every client.
      extraArgs: [...s3.stewardArgs({ keys: false }), `--etcd-s3-config-file=${credentials}`, '--etcd-user=steward', `--etcd-password=${password}`],
    });
    await cluster.startAll();
  });
  afterAll(async () => {
    await cluster?.destroy();
    await s3?.stop();
  });

  it('saves, lists, fails on bad credentials, deletes and restores; then greps every output for every secret', async () => {
    const { leader } = await cluster.waitForStableLeader(60_000);
    const endpoint = cluster.node(leader).grpc;
    const run = async (args: string[], identity: 'admin' | 'viewer' = 'admin'): Promise<number> => {
      const result = await cluster.ctl(['--endpoint', endpoint, ...args], {}, identity);
      outputs.push(result.stdout, result.stderr);
      return result.code;
    };
    expect(await run(['save', '--name', 'secrets'])).toBe(0);
    expect(await run(['ls', '-o', 'json'], 'viewer')).toBe(0);
    expect(await run(['status', '-o', 'json'], 'viewer')).toBe(0);
    expect(await run(['delete', 'nothing-by-this-name-node-1-1700000000'], 'viewer')).toBe(4);
    // A key id s3rver does not know: every S3 call fails, signed with a secret that must not show either.
    writeFileSync(credentials, `etcd-s3-access-key: AKIAUNKNOWN0000000000\netcd-s3-secret-key: ${wrongSecret}\netcd-s3-session-token: ${token}\n`);
    expect(await run(['save', '--name', 'secrets-bad-keys'])).not.toBe(0);
    writeFileSync(credentials, `etcd-s3-access-key: ${s3.accessKey}\netcd-s3-secret-key: ${secret}\netcd-s3-session-token: ${token}\n`);
    const listed = await cluster.ctl(['--endpoint', endpoint, '-o', 'json', 'ls'], {}, 'viewer');
    const name = (JSON.parse(listed.stdout) as Array<{ name: string }>).find((s) => s.name.startsWith('secrets-'))?.name;
    expect(name).toBeDefined();
    // A restore drill: its throwaway etcd's log lines and the drill's own land in the steward logs grepped below.
    expect(await run(['verify', name as string, '-o', 'json'])).toBe(0);
    expect(await run(['verify', name as string], 'viewer')).toBe(4);
    expect(await run(['restore', name as string, '--yes'])).toBe(0);
    await cluster.waitForStableLeader(60_000);
    for (const node of cluster.nodes) outputs.push(await (await fetch(`http://${node.http}/metrics`)).text());

    const haystack = `${allLogs(cluster.root)}\n${outputs.join('\n')}`;
    expect(haystack.length).toBeGreaterThan(10_000);
    // The bad keys really were used and refused: the failure is in the output, the secret is not.
    expect(haystack).toMatch(/InvalidAccessKeyId|S3_ACCESS_DENIED/);
    const pki = cluster.pki?.dir as string;
    const secrets = { secret, token, password, wrongSecret, ...Object.fromEntries(keyLines(pki).map((line, i) => [`key line ${i}`, line])) };
    expect(Object.keys(secrets).length).toBeGreaterThan(10);
    for (const [what, value] of Object.entries(secrets)) expect(haystack.includes(value), `${what} appears in a log, an output or a metric`).toBe(false);
  });
});
