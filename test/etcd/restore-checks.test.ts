import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { readFile, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeadlineError, InvalidArgumentError } from '../../src/errors/index.js';
import { createMemberClient } from '../../src/etcd/client.js';
import { checkRestoredCluster, deleteKeysWithPrefix, waitForRestoredCluster, type RestoredClusterExpectation } from '../../src/etcd/restore-checks.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';
import { waitUntil } from '../harness/processes.js';

/**
 * A real 3-member cluster stands in for restored members on their quarantine endpoints: the checks only need
 * client URLs. Tests that break the cluster (an alarm, a killed member) repair it or run last.
 */
describe('checks of a restored cluster', () => {
  let cluster: EtcdCluster;
  let client: Etcd3;
  let endpoints: Record<string, string>;
  let expected: RestoredClusterExpectation;
  let restarted: ChildProcess | undefined;
  const signal = new AbortController().signal;

  beforeAll(async () => {
    cluster = await EtcdCluster.start(3);
    client = new Etcd3({ hosts: cluster.endpoints });
    for (let i = 0; i < 20; i++) await client.put(`/registry/pods/p-${i}`).value(`pod ${i}`);
    endpoints = Object.fromEntries(cluster.members.map((m) => [m.name, m.clientUrl]));
    expected = { members: cluster.members.map((m) => m.name), minRevision: 1 };
    // Followers apply the last put a moment after the leader acknowledged it.
    await waitForRestoredCluster(endpoints, expected, { timeoutMs: 10_000, intervalMs: 200, signal });
  });

  afterAll(async () => {
    client?.close();
    if (restarted && restarted.exitCode === null && restarted.signalCode === null) {
      const exited = once(restarted, 'exit');
      restarted.kill('SIGKILL');
      await exited;
    }
    await cluster?.stop();
  });

  async function currentRevision(): Promise<number> {
    return Number((await client.maintenance.status()).header.revision);
  }

  it('passes a healthy cluster: one leader named, equal hashes, revisions and key counts', async () => {
    const revision = await currentRevision();
    const report = await checkRestoredCluster(endpoints, { ...expected, minRevision: revision }, signal);
    expect(report.problems).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.revision).toBe(revision);
    expect(report.clusterId).toMatch(/^[0-9a-f]+$/);
    expect(cluster.members.map((m) => m.name)).toContain(report.leader);
    expect(report.members.map((m) => m.name)).toEqual(['etcd-1', 'etcd-2', 'etcd-3']);
    expect(report.members.filter((m) => m.isLeader).map((m) => m.name)).toEqual([report.leader]);
    const first = report.members[0]!;
    expect(first.hashKV).not.toBe(0);
    expect(first.keys).toBe(20);
    for (const member of report.members) {
      expect(member).toMatchObject({ ok: true, problem: '', revision, hashKV: first.hashKV, keys: 20, clusterId: report.clusterId });
      expect(member.endpoint).toBe(endpoints[member.name]);
    }
  });

  it('names every member that is below the expected minimum revision', async () => {
    const revision = await currentRevision();
    const report = await checkRestoredCluster(endpoints, { ...expected, minRevision: revision + 1000 }, signal);
    expect(report.ok).toBe(false);
    for (const name of ['etcd-1', 'etcd-2', 'etcd-3']) {
      expect(report.problems).toContain(`member ${name} (${endpoints[name]}) is at revision ${revision}, below the expected minimum ${revision + 1000}`);
    }
  });

  it('reports an expected member missing from the member list, and an unexpected one in it', async () => {
    const missing = await checkRestoredCluster(endpoints, { ...expected, members: [...expected.members, 'etcd-4'] }, signal);
    expect(missing.ok).toBe(false);
    expect(missing.problems).toContain('member etcd-4 is expected but no quarantine endpoint was given for it');
    expect(missing.problems).toContain('member etcd-4 is expected but not in the member list');

    const { 'etcd-3': _dropped, ...twoEndpoints } = endpoints;
    const extra = await checkRestoredCluster(twoEndpoints, { ...expected, members: ['etcd-1', 'etcd-2'] }, signal);
    expect(extra.ok).toBe(false);
    expect(extra.problems.some((p) => /^the member list has member etcd-3 \([0-9a-f]+\), which is not expected$/.test(p))).toBe(true);
  });

  it('catches a quarantine endpoint that reaches another member', async () => {
    const swapped = { ...endpoints, 'etcd-1': endpoints['etcd-2']!, 'etcd-2': endpoints['etcd-1']! };
    const report = await checkRestoredCluster(swapped, expected, signal);
    expect(report.ok).toBe(false);
    expect(report.problems.find((p) => p.startsWith(`member etcd-1 (${endpoints['etcd-2']}) answers at ${endpoints['etcd-2']} as etcd-2 (`))).toBeDefined();
    expect(report.problems.find((p) => p.startsWith(`member etcd-2 (${endpoints['etcd-1']}) answers at ${endpoints['etcd-1']} as etcd-1 (`))).toBeDefined();
  });

  it('reports an alarm on the member that raised it', async () => {
    const memberId = (await client.cluster.memberList({})).members.find((m) => m.name === 'etcd-2')!.ID;
    await client.maintenance.alarm({ action: 'Activate', alarm: 'Nospace', memberID: memberId });
    try {
      const report = await checkRestoredCluster(endpoints, expected, signal);
      expect(report.ok).toBe(false);
      expect(report.problems).toEqual([`member etcd-2 (${endpoints['etcd-2']}) has alarm Nospace`]);
      expect(report.members.find((m) => m.name === 'etcd-2')?.ok).toBe(false);
    } finally {
      await client.maintenance.alarm({ action: 'Deactivate', alarm: 'Nospace', memberID: memberId });
    }
    expect((await checkRestoredCluster(endpoints, expected, signal)).problems).toEqual([]);
  });

  it('leaves no connection behind after its rounds', async () => {
    const ports = cluster.members.map((m) => Number(new URL(m.clientUrl).port));
    const before = await connectionsTo(ports);
    // The count sees a client's connection: one more open client, one more connection. (A client with the
    // checks' channel options: grpc-js shares one connection between channels whose options are equal.)
    const probe = createMemberClient(endpoints['etcd-1']!, { callTimeoutMs: 2_000 });
    await probe.maintenance.status();
    expect(await connectionsTo(ports)).toBe(before + 1);
    probe.close();
    await waitUntil('the probe client to close', async () => (await connectionsTo(ports)) === before, 3_000, 50);
    for (let i = 0; i < 5; i++) expect((await checkRestoredCluster(endpoints, expected, signal)).ok).toBe(true);
    // etcd3 closes a channel that is still connecting up to a second later; the others close at once.
    await waitUntil('the round clients to close their connections', async () => (await connectionsTo(ports)) <= before, 3_000, 100);
  });

  it('rejects with the reason when aborted, without waiting for the calls', async () => {
    const controller = new AbortController();
    const round = checkRestoredCluster(endpoints, expected, controller.signal);
    controller.abort(new Error('stop now'));
    await expect(round).rejects.toThrow('stop now');
    await expect(checkRestoredCluster(endpoints, expected, controller.signal)).rejects.toThrow('stop now');
  });

  it('deleteKeysWithPrefix deletes exactly the keys under the prefix and returns their count', async () => {
    for (let i = 0; i < 5; i++) await client.put(`/etcd-steward/election/${i}`).value('stale');
    await client.put('/etcd-steward/elections-not-this').value('kept');
    await client.put('/etcd-steward/election').value('kept: the prefix itself ends with a slash');
    const before = Number((await client.kv.range({ key: Buffer.from([0]), range_end: Buffer.from([0]), count_only: true })).count);
    expect(await deleteKeysWithPrefix(endpoints['etcd-1']!, '/etcd-steward/election/', signal)).toBe(5);
    expect(await client.getAll().prefix('/etcd-steward/election/').keys()).toEqual([]);
    expect(await client.get('/etcd-steward/elections-not-this').string()).toBe('kept');
    expect(await client.get('/etcd-steward/election').string()).not.toBeNull();
    const after = Number((await client.kv.range({ key: Buffer.from([0]), range_end: Buffer.from([0]), count_only: true })).count);
    expect(after).toBe(before - 5);
    expect(await deleteKeysWithPrefix(endpoints['etcd-1']!, '/etcd-steward/election/', signal)).toBe(0);
    await expect(deleteKeysWithPrefix(endpoints['etcd-1']!, '', signal)).rejects.toBeInstanceOf(InvalidArgumentError);
    await client.delete().prefix('/etcd-steward/').exec();
    await waitForRestoredCluster(endpoints, expected, { timeoutMs: 10_000, intervalMs: 200, signal });
  });

  describe('with one member stopped', () => {
    beforeAll(async () => {
      const victim = cluster.members[2]!;
      const exited = once(victim.process, 'exit');
      victim.process.kill('SIGKILL');
      await exited;
    });

    it('names the stopped member within a bounded time', async () => {
      const started = Date.now();
      const report = await checkRestoredCluster(endpoints, expected, signal);
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(report.ok).toBe(false);
      const stopped = report.members.find((m) => m.name === 'etcd-3')!;
      expect(stopped.ok).toBe(false);
      expect(stopped.problem).toMatch(/^did not answer Status: /);
      expect(report.problems.find((p) => p.startsWith(`member etcd-3 (${endpoints['etcd-3']}) did not answer Status`))).toBeDefined();
      // The two that answer still form a quorum and agree.
      expect(report.members.filter((m) => m.ok).map((m) => m.name)).toEqual(['etcd-1', 'etcd-2']);
      expect(report.leader).not.toBe('');
    });

    it('waitForRestoredCluster gives up with RESTORE_CHECKS_TIMEOUT and the last problems', async () => {
      const seen: string[][] = [];
      const started = Date.now();
      const failure = await waitForRestoredCluster(endpoints, expected, {
        timeoutMs: 2_000,
        intervalMs: 300,
        signal,
        onProblem: (problems) => seen.push(problems),
      }).catch((err: unknown) => err);
      expect(Date.now() - started).toBeLessThan(4_000);
      expect(failure).toBeInstanceOf(DeadlineError);
      expect((failure as DeadlineError).code).toBe('RESTORE_CHECKS_TIMEOUT');
      expect((failure as DeadlineError).message).toContain(`member etcd-3 (${endpoints['etcd-3']}) did not answer Status`);
      expect(seen.length).toBeGreaterThanOrEqual(2);
      expect(seen.every((problems) => problems.some((p) => p.startsWith('member etcd-3 ')))).toBe(true);
    });

    it('waitForRestoredCluster returns ok once the member is started again', async () => {
      const member = cluster.members[2]!;
      const waiting = waitForRestoredCluster(endpoints, expected, { timeoutMs: 30_000, intervalMs: 200, signal });
      // Its data dir exists, so etcd rejoins with it and ignores the --initial-* flags.
      const log = openSync(join(cluster.root, `${member.name}.log`), 'a');
      restarted = spawn(
        'etcd',
        [
          `--name=${member.name}`,
          `--data-dir=${member.dataDir}`,
          `--listen-client-urls=${member.clientUrl}`,
          `--advertise-client-urls=${member.clientUrl}`,
          `--listen-peer-urls=${member.peerUrl}`,
          `--initial-advertise-peer-urls=${member.peerUrl}`,
          `--initial-cluster=${cluster.members.map((m) => `${m.name}=${m.peerUrl}`).join(',')}`,
        ],
        { stdio: ['ignore', log, log] },
      );
      closeSync(log);
      const report = await waiting;
      expect(report.ok).toBe(true);
      expect(report.members.map((m) => m.ok)).toEqual([true, true, true]);
    });

    it('a frozen member (SIGSTOP) is a problem after the call timeout, not a hang', async () => {
      const frozen = restarted!;
      frozen.kill('SIGSTOP');
      try {
        const started = Date.now();
        const report = await checkRestoredCluster(endpoints, expected, signal, { callTimeoutMs: 1_000 });
        expect(Date.now() - started).toBeLessThan(3_000);
        expect(report.members.find((m) => m.name === 'etcd-3')?.problem).toMatch(/^did not answer Status: /);
      } finally {
        frozen.kill('SIGCONT');
      }
      expect((await waitForRestoredCluster(endpoints, expected, { timeoutMs: 20_000, intervalMs: 200, signal })).ok).toBe(true);
    });
  });
});

/** Established TCP connections of this process to any of `ports` on loopback, read from /proc. */
async function connectionsTo(ports: number[]): Promise<number> {
  const inodes = new Set<string>();
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    if (inode) inodes.add(inode);
  }
  let count = 0;
  for (const table of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    const lines = (await readFile(table, 'utf8').catch(() => '')).split('\n').slice(1);
    for (const line of lines) {
      const fields = line.trim().split(/\s+/);
      const [remote, state, inode] = [fields[2], fields[3], fields[9]];
      if (!remote || state !== '01' || !inode || !inodes.has(inode)) continue;
      if (ports.includes(parseInt(remote.split(':')[1] ?? '', 16))) count++;
    }
  }
  return count;
}
