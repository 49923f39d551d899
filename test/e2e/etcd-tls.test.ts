import { execFile } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Server } from '../harness/s3.js';
import { waitUntil } from '../harness/processes.js';
import { StewardCluster, runCtl } from '../harness/steward-cluster.js';

const QUOTA = '3221225472';

/** etcdctl v3 against one member; `cert` false leaves the client certificate out (the CA is always given). */
function etcdctl(cluster: StewardCluster, endpoint: string, args: string[], cert = true): Promise<{ code: number; stdout: string; stderr: string }> {
  const pki = cluster.pki;
  if (!pki) throw new Error('the cluster has no dev PKI');
  const tls = [`--cacert=${pki.ca}`, ...(cert ? [`--cert=${pki.admin.cert}`, `--key=${pki.admin.key}`] : [])];
  return new Promise((resolve) => {
    execFile(
      'etcdctl',
      [`--endpoints=${endpoint}`, '--dial-timeout=3s', '--command-timeout=5s', ...tls, ...args],
      // An operator's ETCDCTL_* variables must not change what the test asks.
      { env: { PATH: process.env.PATH ?? '', ETCDCTL_API: '3' }, timeout: 20_000 },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

/** A TLS etcd client with the admin certificate, to write and read the test's keys. */
function adminClient(cluster: StewardCluster, hosts = cluster.nodes.map((n) => n.clientUrl)): Etcd3 {
  const pki = cluster.pki;
  if (!pki) throw new Error('the cluster has no dev PKI');
  return new Etcd3({
    hosts,
    credentials: { rootCertificate: readFileSync(pki.ca), certChain: readFileSync(pki.admin.cert), privateKey: readFileSync(pki.admin.key) },
  });
}

async function userKeys(cluster: StewardCluster, clientUrl: string): Promise<Record<string, string>> {
  const client = adminClient(cluster, [clientUrl]);
  try {
    const all = await client.getAll().strings();
    return Object.fromEntries(Object.entries(all).filter(([key]) => !key.startsWith('etcd-steward')));
  } finally {
    client.close();
  }
}

async function save(cluster: StewardCluster, index: number): Promise<{ name: string; locations: string[] }> {
  const result = await runCtl(['--endpoint', cluster.node(index).grpc, '-o', 'json', 'save'], {}, 120_000);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as { name: string; locations: string[] };
}

describe('etcd with TLS both ways: 3 stewards, client and peer certificates required (real etcd 3.4, real s3rver)', () => {
  let s3: S3Server;
  let cluster: StewardCluster;
  let leader = 0;
  const a = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`/a/${i}`, `value-a-${i}`]));

  beforeAll(async () => {
    s3 = await S3Server.start({ bucket: 'snapshots' });
    cluster = await StewardCluster.create({
      size: 3,
      etcdTls: true,
      extraArgs: [...s3.stewardArgs(), '--etcd-disable-snapshots=true', '--restore-checks-timeout=90s', `--etcd-arg=--quota-backend-bytes=${QUOTA}`],
    });
    await cluster.startAll();
    ({ leader } = await cluster.waitForStableLeader(60_000));
  });
  afterAll(async () => {
    await cluster?.destroy();
    await s3?.stop();
  });

  it('forms over https with one leader; every etcd runs with TLS both ways and the --etcd-arg value', async () => {
    for (const node of cluster.nodes) {
      expect(node.clientUrl).toMatch(/^https:/);
      const pid = cluster.etcdPid(node.index);
      expect(pid, node.name).toBeDefined();
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      for (const flag of ['--client-cert-auth=true', '--peer-client-cert-auth=true', `--quota-backend-bytes=${QUOTA}`])
        expect(cmdline, node.name).toContain(flag);
    }
    const status = await cluster.status(leader);
    expect(status.isLeader).toBe(true);
    expect(status.members.map((m) => m.healthy)).toEqual([true, true, true]);
  });

  it('etcdctl without a client certificate is refused; with one it works', async () => {
    const endpoint = cluster.node(0).clientUrl;
    const refused = await etcdctl(cluster, endpoint, ['put', '/probe', 'x'], false);
    expect(refused.code, refused.stdout).not.toBe(0);
    expect(refused.stderr).toMatch(/certificate|deadline|handshake|context/i);
    const put = await etcdctl(cluster, endpoint, ['put', '/probe', 'x']);
    expect(put.code, put.stderr).toBe(0);
    const got = await etcdctl(cluster, endpoint, ['get', '/probe', '--print-value-only']);
    expect(got.stdout.trim()).toBe('x');
    // The peer port wants a peer certificate too: etcd's /members answers only with one.
    const peer = cluster.node(1).peerUrl;
    const plain = await fetch(new URL('/members', peer)).then(
      () => 'answered',
      () => 'refused',
    );
    expect(plain).toBe('refused');
    const client = adminClient(cluster);
    try {
      await client.delete().key('/probe');
    } finally {
      client.close();
    }
  });

  it('save stores the snapshot locally and in S3; restore brings the saved keys back on every member', async () => {
    const client = adminClient(cluster);
    try {
      for (const [key, value] of Object.entries(a)) await client.put(key).value(value);
      const saved = await save(cluster, leader);
      const local = join(cluster.node(leader).stateDir, 'snapshots', saved.name);
      expect(saved.locations).toEqual(expect.arrayContaining([`file://${local}`, `s3://snapshots/backups/${saved.name}`]));
      expect(existsSync(local)).toBe(true);
      expect(existsSync(join(s3.dir, 'snapshots', 'backups', `${saved.name}._S3rver_object`))).toBe(true);
      await client.put('/b/1').value('after the snapshot');
      await client.delete().key('/a/0');
      const result = await runCtl(['--endpoint', cluster.node(leader).grpc, 'restore', saved.name, '--yes'], {}, 240_000);
      expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
      expect(result.stdout).toContain('Finished');
    } finally {
      client.close();
    }
    ({ leader } = await cluster.waitForStableLeader(60_000));
    for (const node of cluster.nodes) expect(await userKeys(cluster, node.clientUrl), node.name).toEqual(a);
  });

  it('a full restart of every steward passes the bootstrap gate and comes back with the data', async () => {
    await cluster.stopAll();
    for (const node of cluster.nodes) expect(cluster.etcdPid(node.index), node.name).toBeUndefined();
    await cluster.startAll();
    ({ leader } = await cluster.waitForStableLeader(60_000));
    for (const node of cluster.nodes) expect(await userKeys(cluster, node.clientUrl), node.name).toEqual(a);
    // Every etcd is a new process, started with the same flags.
    await waitUntil('every etcd to run', async () => (cluster.nodes.every((n) => cluster.etcdPid(n.index) !== undefined) ? true : undefined), 10_000);
  });

  it("the spec's etcdFlags reach etcd at its next restart; the node's --etcd-arg keeps its own value; an owned flag is refused", async () => {
    // spec set is leader work: a follower answers NOT_LEADER.
    ({ leader } = await cluster.waitForStableLeader(60_000));
    const grpc = cluster.node(leader).grpc;
    const spec = JSON.parse((await runCtl(['--endpoint', grpc, '-o', 'json', 'spec', 'get'])).stdout) as Record<string, unknown>;
    const file = join(cluster.root, 'spec.json');
    writeFileSync(file, JSON.stringify({ ...spec, etcdFlags: { 'data-dir': '/elsewhere' } }));
    const refused = await runCtl(['--endpoint', grpc, 'spec', 'set', file]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('--data-dir is set by the steward itself (use --data-dir)');
    writeFileSync(file, JSON.stringify({ ...spec, etcdFlags: { 'snapshot-count': '4321', 'quota-backend-bytes': '1073741824' } }));
    const set = await runCtl(['--endpoint', grpc, 'spec', 'set', file]);
    expect(set.code, set.stderr).toBe(0);
    // The steward that wrote the spec holds it now; the others see it at their next re-read (--control-spec-ttl).
    const writer = leader;
    // Until etcd restarts, status says what the spec asks of it that it does not run with.
    const pending = await cluster.status(writer);
    expect(pending.etcdFlagsPending).toMatch(/changed since etcd started \(new: .*--snapshot-count=4321.*\); they apply at etcd's next restart/);
    const before = cluster.etcdPid(writer) as number;
    process.kill(before, 'SIGKILL');
    const after = await waitUntil(
      'the writer to run a new etcd',
      async () => {
        const pid = cluster.etcdPid(writer);
        return pid !== undefined && pid !== before ? pid : undefined;
      },
      20_000,
    );
    const cmdline = readFileSync(`/proc/${after}/cmdline`, 'utf8').split('\0');
    expect(cmdline).toContain('--snapshot-count=4321');
    await waitUntil('status to show no pending etcd flags', async () => ((await cluster.status(writer)).etcdFlagsPending === '' ? true : undefined), 20_000);
    expect(cmdline.filter((a) => a.startsWith('--quota-backend-bytes'))).toEqual([`--quota-backend-bytes=${QUOTA}`]);
    ({ leader } = await cluster.waitForStableLeader(60_000));
  });

  it('with etcd auth on, stewards given --etcd-user/--etcd-password keep working (save included); the password is never logged', async () => {
    const password = `pw-${Math.random().toString(36).slice(2)}`;
    const endpoint = cluster.node(leader).clientUrl;
    for (const args of [
      ['role', 'add', 'root'],
      ['user', 'add', `root:${password}`, '--interactive=false'],
      ['user', 'grant-role', 'root', 'root'],
    ]) {
      const done = await etcdctl(cluster, endpoint, args);
      expect(done.code, `${args.join(' ')}: ${done.stderr}`).toBe(0);
    }
    // The user is given first, with auth still off: the stewards run on without a token, as etcdctl would.
    for (const node of cluster.nodes) cluster.setNodeArgs(node.index, ['--etcd-user=root', `--etcd-password=${password}`]);
    await cluster.stopAll();
    await cluster.startAll();
    ({ leader } = await cluster.waitForStableLeader(60_000));
    const enabled = await etcdctl(cluster, cluster.node(leader).clientUrl, ['auth', 'enable']);
    expect(enabled.code, enabled.stderr).toBe(0);
    // Without a user the admin certificate's CN is the etcd user, and no such user exists.
    const anonymous = await etcdctl(cluster, cluster.node(0).clientUrl, ['get', '/a/1']);
    expect(anonymous.code).not.toBe(0);
    const asRoot = await etcdctl(cluster, cluster.node(0).clientUrl, ['get', '/a/1', '--print-value-only', `--user=root:${password}`]);
    expect(asRoot.stdout.trim()).toBe('value-a-1');
    // The running stewards take a token from now on; the snapshot stream passes it too (PITFALLS: etcd3 drops it).
    ({ leader } = await cluster.waitForStableLeader(60_000));
    expect((await save(cluster, leader)).locations).toHaveLength(2);
    // And a cold start with auth on: election, probes, bootstrap gate and snapshot all run as the user.
    await cluster.stopAll();
    await cluster.startAll();
    ({ leader } = await cluster.waitForStableLeader(60_000));
    const saved = await save(cluster, leader);
    expect(saved.locations).toContain(`s3://snapshots/backups/${saved.name}`);
    for (const node of cluster.nodes) expect(cluster.logs(node.index), node.name).not.toContain(password);
  });
});
