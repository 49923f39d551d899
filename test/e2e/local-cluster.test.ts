import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../harness/ports.js';
import { isAlive, killGroup, waitUntil } from '../harness/processes.js';
import { REPO_ROOT, runCtl } from '../harness/steward-cluster.js';
import type { StatusResponse } from '../../src/rpc/types.js';

const LOCAL_CLUSTER_JS = join(REPO_ROOT, 'dist/cli/local-cluster.js');
// make run's stewards use the default election TTL.
const TTL_MS = 10_000;
// When the killed steward's etcd member was etcd's raft leader, it goes down with the restart, and the new
// raft leader extends every lease to a full TTL (etcd's lessor Promote): the dead steward's lease can then
// outlive the kill by a raft election plus a whole TTL. CI's loaded cores add a few seconds on top.
const FAILOVER_BOUND_MS = 2 * TTL_MS + 3000;

/** The pid of the steward process for one node of this run (found by its command line, as an operator would with ps). */
function stewardPid(dir: string, name: string): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (
        args.some((a) => a.endsWith('dist/cli/steward.js')) &&
        args.includes(`--name=${name}`) &&
        args.includes(`--state-dir=${join(dir, name, 'steward')}`) &&
        isAlive(Number(entry))
      ) {
        return Number(entry);
      }
    } catch {
      // Exited while we looked.
    }
  }
  return undefined;
}

describe('make run behaves like a node: a steward that dies is restarted', () => {
  let dir: string;
  let run: ChildProcess;
  let output = '';
  const grpc: number[] = [];
  const client: number[] = [];
  const http: number[] = [];
  const peer: number[] = [];
  let s3Port = 0;
  let restoredClusterId = '';

  /** What `. .run/env` sets: the ctl's operator identity and etcdctl's client certificate. */
  const runEnv = (): Record<string, string> =>
    Object.fromEntries(
      readFileSync(join(dir, 'env'), 'utf8')
        .trim()
        .split('\n')
        .map((line) => /^export ([A-Z_0-9]+)=(.*)$/.exec(line)?.slice(1) as [string, string]),
    );
  const ctl = (args: string[], timeoutMs?: number): ReturnType<typeof runCtl> => runCtl(args, runEnv(), timeoutMs);
  /** An etcd client as etcdctl with `.run/env` would be: https and the operator's certificate. */
  const etcdClient = (): Etcd3 => {
    const env = runEnv();
    return new Etcd3({
      hosts: client.map((p) => `https://127.0.0.1:${p}`),
      credentials: {
        rootCertificate: readFileSync(env.ETCDCTL_CACERT as string),
        certChain: readFileSync(env.ETCDCTL_CERT as string),
        privateKey: readFileSync(env.ETCDCTL_KEY as string),
      },
    });
  };

  const status = async (i: number): Promise<StatusResponse> => {
    const result = await ctl(['--endpoint', `127.0.0.1:${grpc[i]}`, '-o', 'json', 'status']);
    if (result.code !== 0) throw new Error(result.stderr);
    return JSON.parse(result.stdout) as StatusResponse;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'steward-make-run-'));
    const ports = async (): Promise<number[]> => [await freePort(), await freePort(), await freePort()];
    grpc.push(...(await ports()));
    client.push(...(await ports()));
    http.push(...(await ports()));
    peer.push(...(await ports()));
    s3Port = await freePort();
    await startRun();
  });

  /** `make run` on this test's dir and ports; resolves once it prints that it is ready. */
  const startRun = async (): Promise<void> => {
    output = '';
    run = spawn(
      process.execPath,
      [
        LOCAL_CLUSTER_JS,
        `--dir=${dir}`,
        `--grpc-ports=${grpc.join(',')}`,
        `--http-ports=${http.join(',')}`,
        `--client-ports=${client.join(',')}`,
        `--peer-ports=${peer.join(',')}`,
        `--s3-port=${s3Port}`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
    );
    run.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    run.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    await waitUntil('make run to be ready', () => output.includes('Ready in'), 90_000, 250);
  };

  afterAll(async () => {
    if (run?.pid && run.exitCode === null) {
      run.kill('SIGTERM');
      await Promise.race([once(run, 'exit'), new Promise((r) => setTimeout(r, 45_000))]);
      killGroup(run.pid);
    }
    for (const name of ['node-1', 'node-2', 'node-3']) {
      const pid = stewardPid(dir, name);
      if (pid) killGroup(pid);
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('prints "Try" lines with the ports it really uses', () => {
    expect(output).toContain(`./bin/etcd-stewardctl --endpoint 127.0.0.1:${grpc[0]} status`);
    expect(output).toContain(`--endpoint 127.0.0.1:${grpc[1]}`);
    expect(output).not.toContain('127.0.0.1:7401');
    expect(output).not.toContain('127.0.0.1:7402');
  });

  it('speaks TLS only: `. .run/env` gives the ctl its operator identity and etcdctl its client certificate', async () => {
    expect(output).toContain(`export ETCD_STEWARD_CACERT=${join(dir, 'pki', 'ca.pem')}`);
    expect(output).toContain('export ETCDCTL_CERT=');
    const shell = (script: string, env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; out: string }> =>
      new Promise((resolve) =>
        execFile('sh', ['-c', script], { cwd: REPO_ROOT, env, timeout: 30_000 }, (err, stdout, stderr) =>
          resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: `${stdout}${stderr}` }),
        ),
      );
    const ctlStatus = await shell(`. ${join(dir, 'env')} && ./bin/etcd-stewardctl status`);
    expect(ctlStatus.code, ctlStatus.out).toBe(0);
    const health = await shell(`. ${join(dir, 'env')} && etcdctl endpoint health`);
    expect(health.code, health.out).toBe(0);
    // Without the certificates: the steward's API is not spoken to in plaintext, and etcd wants a client certificate.
    const bare = { PATH: process.env.PATH ?? '/usr/bin:/bin', ETCDCTL_API: '3' };
    expect((await shell(`./bin/etcd-stewardctl --endpoint 127.0.0.1:${grpc[0]} status`, bare)).code).toBe(5);
    const refused = await shell(
      `etcdctl --endpoints https://127.0.0.1:${client[0]} --cacert ${join(dir, 'pki', 'ca.pem')} --command-timeout=3s endpoint health`,
      bare,
    );
    expect(refused.code).not.toBe(0);
  });

  it('kill -9 of the leader: a new leader within 2×TTL + 3 s, the killed steward back and healthy within 30 s, no data lost', async () => {
    const etcd = etcdClient();
    try {
      await etcd.put('before-kill').value('kept');
      const first = await status(0);
      const leaderName = first.leader;
      const leaderIndex = Number(leaderName.replace('node-', '')) - 1;
      const victim = stewardPid(dir, leaderName);
      expect(victim).toBeGreaterThan(0);
      process.kill(victim as number, 'SIGKILL');
      const killedAt = Date.now();
      const other = (leaderIndex + 1) % 3;
      const problems: string[] = [];
      const next = await waitUntil(
        'a new leader',
        async () => {
          const s = await status(other);
          if (s.leaderProblem) problems.push(s.leaderProblem);
          return s.isLeader || (s.leader && s.leader !== leaderName) ? s.leader || s.node : undefined;
        },
        FAILOVER_BOUND_MS,
        200,
      );
      // Until its lease runs out, the dead leader's key is reported for what it is, not as the leader.
      expect(problems.some((p) => new RegExp(`^no leader yet \\(previous leader ${leaderName}'s lease expires in \\d+ s\\)$`).test(p))).toBe(true);
      const failoverMs = Date.now() - killedAt;
      console.log(`make run: ${leaderName} SIGKILLed, new leader ${next} after ${failoverMs} ms`);
      expect(next).not.toBe(leaderName);
      const back = await waitUntil(
        'the killed steward to be restarted and healthy',
        async () => {
          const s = await status(leaderIndex);
          return s.etcdRunning && s.members.length === 3 && s.members.every((m) => m.healthy) ? s : undefined;
        },
        30_000,
        500,
      );
      console.log(`make run: ${leaderName} back and healthy ${Date.now() - killedAt} ms after the kill`);
      expect(stewardPid(dir, leaderName)).not.toBe(victim);
      expect(back.node).toBe(leaderName);
      expect(output).toMatch(new RegExp(`restart: ${leaderName} was killed by SIGKILL .*restart 1`));
      expect(run.exitCode).toBeNull();
      expect(await etcd.get('before-kill').string()).toBe('kept');
    } finally {
      etcd.close();
    }
  });

  it('restore --yes brings back the snapshot on every member with a new cluster ID', async () => {
    const etcd = etcdClient();
    try {
      await etcd.put('restore/a').value('in the snapshot');
      const endpoint = `127.0.0.1:${grpc[0]}`;
      const saved = await ctl(['--endpoint', endpoint, '-o', 'json', 'save']);
      expect(saved.code, saved.stderr).toBe(0);
      const name = (JSON.parse(saved.stdout) as { name: string }).name;
      await etcd.put('restore/b').value('after the snapshot');
      const before = (await status(0)).clusterId;
      const restored = await ctl(['--endpoint', endpoint, 'restore', name, '--yes'], 180_000);
      expect(restored.code, `${restored.stdout}\n${restored.stderr}`).toBe(0);
      const after = await waitUntil(
        'every member healthy after the restore',
        async () => {
          const all = await Promise.all([0, 1, 2].map((i) => status(i)));
          return all.every((s) => s.members.length === 3 && s.members.every((m) => m.healthy) && s.specHealthy) ? all : undefined;
        },
        60_000,
        500,
      );
      restoredClusterId = after[0]?.clusterId ?? '';
      expect(restoredClusterId).not.toBe(before);
      expect(new Set(after.map((s) => s.clusterId))).toEqual(new Set([restoredClusterId]));
    } finally {
      etcd.close();
    }
  });

  it('only its own SIGTERM stops everything', async () => {
    const pids = ['node-1', 'node-2', 'node-3'].map((n) => stewardPid(dir, n));
    expect(pids.every((p) => p !== undefined)).toBe(true);
    run.kill('SIGTERM');
    const [code] = (await once(run, 'exit')) as [number | null];
    expect(code).toBe(0);
    expect(output).toContain('Stopped.');
    for (const pid of pids) expect(isAlive(pid as number)).toBe(false);
  });

  it('started again on the same dir, it resumes the restored cluster: same cluster ID, every member healthy, nobody held back', async () => {
    await startRun();
    expect(output).toContain('Resuming the local cluster');
    const all = await waitUntil(
      'the resumed cluster to be healthy',
      async () => {
        const statuses = await Promise.all([0, 1, 2].map((i) => status(i)));
        return statuses.every((s) => s.etcdRunning && s.members.length === 3 && s.members.every((m) => m.healthy)) ? statuses : undefined;
      },
      60_000,
      500,
    );
    for (const s of all) {
      expect(s.clusterId).toBe(restoredClusterId);
      expect(s.specHealthy, s.specProblem).toBe(true);
    }
    const etcd = etcdClient();
    try {
      expect(await etcd.get('restore/a').string()).toBe('in the snapshot');
      expect(await etcd.get('restore/b').string()).toBeNull();
    } finally {
      etcd.close();
    }
  });
});
