import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/settings.js';
import { clusterSpecSchema } from '../../src/control/spec.js';
import { ConfigError } from '../../src/errors/index.js';
import { etcdArgs, specEtcdArgs, withSpecFlags } from '../../src/etcd/args.js';
import { createMemberClient } from '../../src/etcd/client.js';
import { ClusterProbe } from '../../src/etcd/health.js';
import { askPeers } from '../../src/etcd/peers.js';
import { devTlsFlags, makeDevPki, type DevPki } from '../../src/security/dev-pki.js';
import { freePort } from '../harness/ports.js';
import { waitUntil } from '../harness/processes.js';

const BASE = ['--grpc-plaintext-dev=true', '--name=node-1', '--data-dir=/d'];

describe('etcd flags from the config', () => {
  it('derives every flag, and a restore can override the token, client URLs and bootstrap state for one start', async () => {
    const config = await loadConfig([...BASE, '--listen-client-urls=http://127.0.0.1:2379', '--initial-cluster-token=old'], '0.0.0');
    const base = etcdArgs(config);
    expect(base).toContain('--name=node-1');
    expect(base).toContain('--initial-cluster-token=old');
    expect(base).toContain('--listen-client-urls=http://127.0.0.1:2379');
    expect(base.filter((a) => /cert|key-file|ca-file/.test(a))).toEqual([]);
    const restored = etcdArgs(config, {
      initialClusterToken: 'new-token',
      listenClientUrls: ['http://127.0.0.1:12379'],
      advertiseClientUrls: ['http://127.0.0.1:12379'],
      initialClusterState: 'new',
    });
    expect(restored).toContain('--initial-cluster-token=new-token');
    expect(restored).toContain('--listen-client-urls=http://127.0.0.1:12379');
    expect(restored).toContain('--advertise-client-urls=http://127.0.0.1:12379');
    // Everything else stays the node's own.
    expect(restored.filter((a) => !/token|client-urls/.test(a))).toEqual(base.filter((a) => !/token|client-urls/.test(a)));
  });

  it('maps the server and peer TLS settings to etcd flags and passes --etcd-arg values last, in order', async () => {
    const config = await loadConfig(
      [
        ...BASE,
        '--listen-client-urls=https://127.0.0.1:2379',
        '--listen-peer-urls=https://127.0.0.1:2380',
        '--etcd-cert-file=/pki/etcd.pem',
        '--etcd-key-file=/pki/etcd-key.pem',
        '--etcd-trusted-ca-file=/pki/ca.pem',
        '--etcd-client-cert-auth=true',
        '--etcd-peer-cert-file=/pki/peer.pem',
        '--etcd-peer-key-file=/pki/peer-key.pem',
        '--etcd-peer-trusted-ca-file=/pki/peer-ca.pem',
        '--etcd-peer-client-cert-auth=true',
        '--etcd-arg=--quota-backend-bytes=4294967296',
        '--etcd-arg=--auto-compaction-retention=1h',
      ],
      '0.0.0',
    );
    const args = etcdArgs(config);
    for (const flag of [
      '--cert-file=/pki/etcd.pem',
      '--key-file=/pki/etcd-key.pem',
      '--trusted-ca-file=/pki/ca.pem',
      '--client-cert-auth=true',
      '--peer-cert-file=/pki/peer.pem',
      '--peer-key-file=/pki/peer-key.pem',
      '--peer-trusted-ca-file=/pki/peer-ca.pem',
      '--peer-client-cert-auth=true',
      '--advertise-client-urls=https://127.0.0.1:2379',
      '--initial-advertise-peer-urls=https://127.0.0.1:2380',
    ])
      expect(args).toContain(flag);
    expect(args.slice(-2)).toEqual(['--quota-backend-bytes=4294967296', '--auto-compaction-retention=1h']);
  });

  it.each([
    ['--data-dir=/elsewhere', '--data-dir'],
    ['--name=other', '--name'],
    ['--initial-cluster=a=http://x:1', '--initial-cluster'],
    ['--initial-cluster-state=existing', '--initial-cluster-state'],
    ['--listen-client-urls=http://0.0.0.0:2379', '--listen-client-urls'],
    ['--cert-file=/x.pem', '--etcd-cert-file'],
    ['--trusted-ca-file=/x.pem', '--etcd-trusted-ca-file'],
    ['--client-cert-auth', '--etcd-client-cert-auth'],
    ['--peer-key-file=/x.pem', '--etcd-peer-key-file'],
    ['--peer-cert-allowed-cn=etcd', '--etcd-peer-'],
    ['--auto-tls=true', '--etcd-cert-file'],
    ['--force-new-cluster', 'etcd-stewardctl restore'],
    ['--wal-dir=/wal', '--data-dir'],
    ['--discovery-srv=example.com', '--initial-cluster'],
    ['--log-outputs=/tmp/etcd.log', "etcd's JSON log"],
  ])('refuses --etcd-arg=%s at start-up, naming the flag and %s instead', async (arg, instead) => {
    const config = await loadConfig([...BASE, `--etcd-arg=${arg}`], '0.0.0');
    let thrown: unknown;
    try {
      etcdArgs(config);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(ConfigError);
    const err = thrown as ConfigError;
    expect(err.code).toBe('INVALID_CONFIG');
    expect(err.message).toContain(`--etcd-arg: --${arg.replace(/^--/, '').split('=')[0]} is set by the steward itself`);
    expect(err.hint).toContain(instead);
  });

  it("takes the spec's etcdFlags in name order, the node's --etcd-arg beating the spec for the same flag; the spec refuses owned flags", async () => {
    const config = await loadConfig([...BASE, '--etcd-arg=--quota-backend-bytes=8589934592'], '0.0.0');
    const spec = specEtcdArgs({ 'snapshot-count': '5000', 'quota-backend-bytes': '1073741824' });
    expect(spec).toEqual(['--quota-backend-bytes=1073741824', '--snapshot-count=5000']);
    const args = withSpecFlags(etcdArgs(config), spec);
    expect(args.filter((a) => a.startsWith('--quota-backend-bytes'))).toEqual(['--quota-backend-bytes=8589934592']);
    expect(args).toContain('--snapshot-count=5000');
    expect(() => specEtcdArgs({ 'data-dir': '/x' })).toThrow(ConfigError);
    const result = clusterSpecSchema.safeParse({
      formatVersion: 1,
      generation: 1,
      members: [{ name: 'node-1', peerUrl: 'http://127.0.0.1:2380' }],
      etcdVersion: '',
      clusterToken: 't',
      etcdFlags: { 'peer-cert-file': '/x.pem', 'snapshot-count': '1' },
      updatedAt: '',
      fencingToken: '',
    });
    expect(result.success).toBe(false);
    expect(JSON.stringify(result.error?.issues)).toContain('--peer-cert-file is set by the steward itself (use --etcd-peer-cert-file)');
  });
});

/** One real etcd started with exactly the args the steward derives, TLS both ways, from the dev PKI. */
describe('etcd under the TLS flags, and the steward clients with its certificate (real etcd 3.4)', () => {
  let root = '';
  let pki: DevPki;
  let config: Config;
  let etcd: ChildProcess | undefined;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'etcd-args-tls-'));
    pki = await makeDevPki(join(root, 'pki'), ['node-1']);
    const own = pki.nodes['node-1'];
    if (!own) throw new Error('no node-1 certificates');
    const client = `https://127.0.0.1:${await freePort()}`;
    const peer = `https://127.0.0.1:${await freePort()}`;
    config = await loadConfig(
      [
        ...BASE.filter((a) => !a.startsWith('--data-dir')),
        `--data-dir=${join(root, 'etcd')}`,
        `--listen-client-urls=${client}`,
        `--listen-peer-urls=${peer}`,
        ...devTlsFlags(pki, 'node-1', { etcd: true, grpc: false }),
        '--etcd-arg=--quota-backend-bytes=123456789',
      ],
      '0.0.0',
    );
    const log = openSync(join(root, 'etcd.log'), 'a');
    etcd = spawn('etcd', etcdArgs(config), { stdio: ['ignore', log, log] });
    closeSync(log);
    const probe = createMemberClient(client, { security: config, callTimeoutMs: 2000 });
    try {
      await waitUntil('etcd to answer over TLS', async () => (await probe.maintenance.status().catch(() => undefined)) !== undefined, 20_000);
    } finally {
      probe.close();
    }
  });
  afterAll(async () => {
    if (etcd && etcd.exitCode === null && etcd.signalCode === null) {
      const exited = once(etcd, 'exit');
      etcd.kill('SIGKILL');
      await exited;
    }
    if (root && !process.env.KEEP_TEST_DIRS) await rm(root, { recursive: true, force: true });
  });

  it('serves the steward client with its certificate, refuses a client without one, and runs with the --etcd-arg value', async () => {
    const endpoint = config.etcdEndpoints[0] as string;
    const withCert = createMemberClient(endpoint, { security: config, callTimeoutMs: 3000 });
    const withoutCert = createMemberClient(endpoint, { security: { ...config, etcdCert: '', etcdKey: '' }, callTimeoutMs: 3000 });
    try {
      await withCert.put('/tls/k').value('v');
      expect(await withCert.get('/tls/k').string()).toBe('v');
      await expect(withoutCert.get('/tls/k').string()).rejects.toThrow();
    } finally {
      withCert.close();
      withoutCert.close();
    }
    const cmdline = readFileSync(`/proc/${etcd?.pid}/cmdline`, 'utf8').split('\0');
    expect(cmdline).toContain('--quota-backend-bytes=123456789');
    expect(cmdline).toContain('--client-cert-auth=true');
  });

  it('the health probe reports the member healthy over TLS', async () => {
    const probe = new ClusterProbe(config.etcdEndpoints, 3000, config);
    try {
      const health = await probe.probe(AbortSignal.timeout(10_000));
      expect(health.members.map((m) => [m.name, m.healthy, m.problem])).toEqual([['node-1', true, '']]);
    } finally {
      probe.close();
    }
  });

  it('askPeers reads /members over peer TLS with the steward certificate, and gets no answer without it', async () => {
    const peerUrl = config.initialAdvertisePeerUrls[0] as string;
    const asker = {
      name: 'node-2',
      initialAdvertisePeerUrls: ['https://127.0.0.1:1'],
      initialCluster: [
        { name: 'node-1', peerUrl },
        { name: 'node-2', peerUrl: 'https://127.0.0.1:1' },
      ],
    };
    const withCert = await askPeers({ ...asker, etcdCacert: pki.ca, etcdCert: config.etcdCert, etcdKey: config.etcdKey }, 5000, AbortSignal.timeout(10_000));
    expect(withCert.answered).toEqual([peerUrl]);
    const withoutCert = await askPeers({ ...asker, etcdCacert: pki.ca }, 5000, AbortSignal.timeout(10_000));
    expect(withoutCert.answered).toEqual([]);
  });
});
