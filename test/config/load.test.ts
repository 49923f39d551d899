import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HelpShown, loadConfig } from '../../src/config/load.js';
import { ConfigError, UsageError } from '../../src/errors/index.js';
import { parseDuration } from '../../src/config/values.js';
import { STEWARD_JS, assertBuilt } from '../harness/steward-cluster.js';

function runSteward(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  assertBuilt();
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [STEWARD_JS, ...args],
      { env: { ETCD_STEWARD_GRPC_PLAINTEXT_DEV: 'true', ...process.env, ...env }, timeout: 20_000 },
      (err, stdout, stderr) => {
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      },
    );
  });
}

describe('configuration', () => {
  it('applies flag over env over config file over default', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'steward-config-'));
    const file = join(dir, 'steward.yaml');
    await writeFile(file, 'name: from-file\nelection-ttl: 7s\nhealth-interval: 3\ngrpc-listen: 127.0.0.1:9999\n');
    const config = await loadConfig(['--grpc-plaintext-dev=true', '--config', file, '--grpc-listen', '127.0.0.1:7777'], '0.0.0');
    expect(config.name).toBe('from-file');
    expect(config.electionTtl).toBe(7000);
    expect(config.healthInterval).toBe(3000);
    expect(config.grpcListen).toEqual({ host: '127.0.0.1', port: 7777 });
    expect(config.etcdStopGrace).toBe(10_000);
    expect(config.advertiseClientUrls).toEqual(['http://127.0.0.1:2379']);
    expect(config.initialCluster).toEqual([{ name: 'from-file', peerUrl: 'http://127.0.0.1:2380' }]);

    process.env.ETCD_STEWARD_ELECTION_TTL = '12s';
    try {
      const fromEnv = await loadConfig(['--grpc-plaintext-dev=true', '--config', file], '0.0.0');
      expect(fromEnv.electionTtl).toBe(12_000);
      const fromFlag = await loadConfig(['--grpc-plaintext-dev=true', '--config', file, '--election-ttl', '4s'], '0.0.0');
      expect(fromFlag.electionTtl).toBe(4000);
    } finally {
      delete process.env.ETCD_STEWARD_ELECTION_TTL;
    }
  });

  it('parses Go-style durations as k3s users write them', () => {
    expect(parseDuration('5m0s')).toBe(300_000);
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('10')).toBe(10_000);
    expect(parseDuration('-5s')).toBeUndefined();
    expect(parseDuration('ten seconds')).toBeUndefined();
  });

  it('rejects bad values with the setting, the value and what is allowed', async () => {
    await expect(loadConfig(['--grpc-plaintext-dev=true', '--election-ttl', '-5s'], '0')).rejects.toThrow(
      /--election-ttl: "-5s" is not allowed: expected a duration/,
    );
    await expect(loadConfig(['--grpc-plaintext-dev=true', '--grpc-listen', '127.0.0.1:70000'], '0')).rejects.toBeInstanceOf(ConfigError);
    await expect(loadConfig(['--grpc-plaintext-dev=true', '--initial-cluster', 'a=http://127.0.0.1:2380', '--name', 'b'], '0')).rejects.toThrow(
      /not one of its members/,
    );
    await expect(loadConfig(['--grpc-plaintext-dev=true', '--no-such-flag'], '0')).rejects.toBeInstanceOf(UsageError);
    await expect(loadConfig(['--grpc-plaintext-dev=true', '--help'], '0')).rejects.toBeInstanceOf(HelpShown);
    process.env.ETCD_STEWARD_HEALTH_INTERVAL = 'often';
    try {
      await expect(loadConfig(['--grpc-plaintext-dev=true'], '0')).rejects.toThrow(/ETCD_STEWARD_HEALTH_INTERVAL: "often" is not allowed/);
    } finally {
      delete process.env.ETCD_STEWARD_HEALTH_INTERVAL;
    }
  });

  it('rejects unknown keys and malformed YAML in the config file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'steward-config-'));
    const unknown = join(dir, 'unknown.yaml');
    await writeFile(unknown, 'election-tll: 5s\n');
    await expect(loadConfig(['--grpc-plaintext-dev=true', '--config', unknown], '0')).rejects.toThrow(/unknown setting 'election-tll'/);
    const broken = join(dir, 'broken.yaml');
    await writeFile(broken, 'name: [unclosed\n');
    await expect(loadConfig(['--grpc-plaintext-dev=true', '--config', broken], '0')).rejects.toThrow(/is not valid YAML/);
    const badValue = join(dir, 'bad.yaml');
    await writeFile(badValue, 'grpc-listen: 127.0.0.1:http\n');
    await expect(loadConfig(['--grpc-plaintext-dev=true', '--config', badValue], '0')).rejects.toThrow(
      new RegExp(`grpc-listen in ${badValue}: "127.0.0.1:http" is not allowed`),
    );
  });

  it('the daemon exits 2 with one line naming the setting, and starts nothing', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--election-ttl=-5s'], /^error\[INVALID_CONFIG\]: --election-ttl: "-5s" is not allowed: .+ — fix --election-ttl; nothing was started\n$/],
      [['--bogus-flag'], /^error\[USAGE\]: unknown option '--bogus-flag' — run etcd-steward --help/],
      [['--http-listen', 'localhost:port'], /^error\[INVALID_CONFIG\]: --http-listen: "localhost:port" is not allowed: expected host:port/],
      [['--grpc-listen', '127.0.0.1:0'], /^error\[INVALID_CONFIG\]: --grpc-listen: "127.0.0.1:0" is not allowed/],
      [['--grpc-listen', '0.0.0.0:7401'], /^error\[INVALID_CONFIG\]: --grpc-listen: 0.0.0.0 is not a loopback address/],
      [
        ['--etcd-snapshot-schedule-cron', 'every day'],
        /^error\[INVALID_CONFIG\]: --etcd-snapshot-schedule-cron: "every day" is not allowed: expected a cron expression/,
      ],
      [['--etcd-snapshot-retention', '0'], /^error\[INVALID_CONFIG\]: --etcd-snapshot-retention: "0" is not allowed: expected a whole number from 1/],
      [['--etcd-snapshot-retention=-2'], /^error\[INVALID_CONFIG\]: --etcd-snapshot-retention: "-2" is not allowed/],
      [['--etcd-s3=true'], /^error\[INVALID_CONFIG\]: --etcd-s3-bucket: empty is not allowed when --etcd-s3 is true/],
      [
        ['--etcd-s3=true', '--etcd-s3-bucket=b', '--etcd-s3-folder=backups', '--control-s3-folder=backups/control'],
        /^error\[INVALID_CONFIG\]: --control-s3-folder: "backups\/control" is not allowed: it is inside the backups' prefix/,
      ],
      [
        ['--etcd-s3=true', '--etcd-s3-bucket=b', '--etcd-s3-folder=backups', '--control-s3-folder=backups'],
        /^error\[INVALID_CONFIG\]: --control-s3-folder: "backups" is not allowed/,
      ],
      [['--etcd-s3=true', '--etcd-s3-bucket=b'], /^error\[INVALID_CONFIG\]: --control-s3-folder: .* inside the backups, which are at the bucket root/],
      [['--etcd-s3=true', '--etcd-s3-bucket=b', '--etcd-s3-folder=x', '--etcd-s3-proxy=not a url'], /^error\[INVALID_CONFIG\]: --etcd-s3-proxy: /],
    ];
    for (const [args, message] of cases) {
      const result = await runSteward(args);
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr).toMatch(message);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stdout).toBe('');
    }
    const env = await runSteward([], { ETCD_STEWARD_ELECTION_TTL: '-1s' });
    expect(env.code).toBe(2);
    expect(env.stderr).toMatch(/ETCD_STEWARD_ELECTION_TTL: "-1s"/);
  });

  it('TLS settings come with what they need, and plaintext gRPC only when asked for, on loopback', async () => {
    const refused: Array<[string[], RegExp]> = [
      [['--etcd-cert-file=/c.pem'], /--etcd-key-file: empty is not allowed with --etcd-cert-file/],
      [['--etcd-peer-key-file=/k.pem'], /--etcd-peer-cert-file: empty is not allowed with --etcd-peer-key-file/],
      [['--etcd-cert=/c.pem'], /--etcd-key: empty is not allowed with --etcd-cert/],
      [['--etcd-client-cert-auth=true'], /--etcd-trusted-ca-file: empty is not allowed with --etcd-client-cert-auth/],
      [['--etcd-peer-client-cert-auth=true'], /--etcd-peer-trusted-ca-file: empty/],
      [['--etcd-cert-file=/c.pem', '--etcd-key-file=/k.pem'], /--listen-client-urls: http:\/\/127.0.0.1:2379 is not allowed with --etcd-cert-file/],
      [['--listen-peer-urls=https://127.0.0.1:2380'], /--listen-peer-urls: https:\/\/127.0.0.1:2380 is not allowed without --etcd-peer-cert-file/],
      [['--etcd-user=root'], /--etcd-password: empty is not allowed with --etcd-user/],
      [['--tls-cert=/c.pem'], /--tls-ca, --tls-cert and --tls-key: give all three or none/],
      [['--tls-ca=/a', '--tls-cert=/c', '--tls-key=/k'], /--grpc-plaintext-dev: true is not allowed with --tls-cert/],
      [['--etcd-arg=quota-backend-bytes=1'], /--etcd-arg: \["quota-backend-bytes=1"\] is not allowed: expected flags written --name=value/],
    ];
    for (const [args, message] of refused) {
      await expect(loadConfig(['--grpc-plaintext-dev=true', ...args], '0'), args.join(' ')).rejects.toThrow(message);
    }
    await expect(loadConfig([], '0')).rejects.toThrow(/the gRPC API needs mTLS \(--tls-ca, --tls-cert, --tls-key\)/);
    const tls = await loadConfig(
      ['--tls-ca=/a', '--tls-cert=/c', '--tls-key=/k', '--etcd-cert-file=/c', '--etcd-key-file=/k', '--listen-client-urls=https://127.0.0.1:2379'],
      '0',
    );
    expect(tls.tlsCert).toBe('/c');
    expect(tls.advertiseClientUrls).toEqual(['https://127.0.0.1:2379']);
    expect(tls.adminCn).toEqual(['etcd-steward-admin']);
  });

  it('--etcd-arg is repeatable on the command line, a list in the file and whitespace-separated in the env', async () => {
    const flags = await loadConfig(['--grpc-plaintext-dev=true', '--etcd-arg=--quota-backend-bytes=8589934592', '--etcd-arg=--snapshot-count=5000'], '0');
    expect(flags.etcdArg).toEqual(['--quota-backend-bytes=8589934592', '--snapshot-count=5000']);
    expect((await loadConfig(['--grpc-plaintext-dev=true'], '0')).etcdArg).toEqual([]);
    const dir = await mkdtemp(join(tmpdir(), 'steward-config-'));
    const file = join(dir, 'config.yaml');
    await writeFile(file, 'etcd-arg:\n  - --heartbeat-interval=250\n  - --election-timeout=2500\nadmin-cn: ops-*,break-glass\n');
    const fromFile = await loadConfig(['--grpc-plaintext-dev=true', '--config', file], '0');
    expect(fromFile.etcdArg).toEqual(['--heartbeat-interval=250', '--election-timeout=2500']);
    expect(fromFile.adminCn).toEqual(['ops-*', 'break-glass']);
    process.env.ETCD_STEWARD_ETCD_ARG = '--auto-compaction-retention=1  --quota-backend-bytes=1';
    try {
      expect((await loadConfig(['--grpc-plaintext-dev=true'], '0')).etcdArg).toEqual(['--auto-compaction-retention=1', '--quota-backend-bytes=1']);
    } finally {
      delete process.env.ETCD_STEWARD_ETCD_ARG;
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('--help lists every setting with its default and env variable', async () => {
    const result = await runSteward(['--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/--election-ttl <value>[\s\S]*default: "10s", env: ETCD_STEWARD_ELECTION_TTL/);
    expect(result.stdout).toContain('--config <file>');
  });
});
