import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { dirname, join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/settings.js';
import { InvalidArgumentError, type StewardError } from '../../src/errors/index.js';
import { RestoreMember, checkRestoreId } from '../../src/restore/member.js';
import { RestoreTool } from '../../src/restore/tool.js';
import type { RestoreSwapRequest, SnapshotAnnounce } from '../../src/rpc/types.js';
import { readRestorePhase, restorePhasePath, writeRestorePhase, type RestorePhaseRecord } from '../../src/state/restore-phase.js';
import { EtcdCluster, fillEtcd } from '../harness/etcd-cluster.js';
import { freePort } from '../harness/ports.js';

/*
 * RestoreMember against the real restore tool (Debian's etcdctl 3.4.23), a real snapshot saved from a real
 * etcd, and real dirs. The member's own etcd is not run: the supervisor is an injected seam
 * (Pick<EtcdSupervisor, 'pause' | 'resume'>), so a recording one stands in for it and the tests assert
 * what etcd would have been told — whether it was stopped, and which args it would start with.
 */

const run = (command: string, args: string[]): Promise<string> =>
  new Promise((resolve, reject) =>
    execFile(command, args, { env: { ...process.env, ETCDCTL_API: '3' } }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
const sha256 = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');
const signal = (): AbortSignal => AbortSignal.timeout(60_000);
const OLD_MARKER = 'the data this member had before the restore';

async function* chunked(bytes: Buffer, size = 64 * 1024): AsyncGenerator<Buffer> {
  for (let offset = 0; offset < bytes.length; offset += size) yield bytes.subarray(offset, offset + size);
}

/** A transfer that stops after `at` bytes until `open()`; `reached` resolves once it stopped there. */
function gated(bytes: Buffer, at: number): { stream: AsyncIterable<Buffer>; reached: Promise<void>; open: () => void } {
  let open!: () => void;
  let reachedResolve!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const reached = new Promise<void>((resolve) => (reachedResolve = resolve));
  const stream = (async function* (): AsyncGenerator<Buffer> {
    yield* chunked(bytes.subarray(0, at));
    reachedResolve();
    await gate;
    yield* chunked(bytes.subarray(at));
  })();
  return { stream, reached, open };
}

async function rejection(promise: () => Promise<unknown>): Promise<StewardError> {
  return promise().then(
    () => {
      throw new Error('expected a rejection');
    },
    (err: unknown) => err as StewardError,
  );
}

type Call = { op: 'pause'; phase: string | undefined } | { op: 'resume'; args: string[] | undefined; phase: string | undefined };

/**
 * Stands in for EtcdSupervisor: records each call with the phase persisted at that moment. Like the real one
 * it starts unpaused with the normal args, and resume(args) replaces the args etcd starts with next.
 */
class RecordingSupervisor {
  readonly calls: Call[] = [];
  paused = false;
  private args: string[];

  constructor(
    private readonly stateDir: string,
    normalArgs: string[],
  ) {
    this.args = normalArgs;
  }

  async pause(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    this.paused = true;
    this.calls.push({ op: 'pause', phase: this.phase() });
    await Promise.resolve();
  }

  resume(args?: string[]): void {
    if (args) this.args = [...args];
    this.paused = false;
    this.calls.push({ op: 'resume', args, phase: this.phase() });
  }

  /** What etcd runs with now (or starts with, once supervision begins); undefined while paused. */
  get runningArgs(): string[] | undefined {
    return this.paused ? undefined : this.args;
  }

  private phase(): string | undefined {
    const path = restorePhasePath(this.stateDir);
    return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as RestorePhaseRecord).phase : undefined;
  }
}

interface Node {
  dir: string;
  /** <dir>/var/etcd: its parent holds only the data dir and what restores put beside it. */
  dataDir: string;
  stateDir: string;
  clientUrl: string;
  peerUrl: string;
  config: Config;
  supervisor: RecordingSupervisor;
  member: RestoreMember;
  normalArgs: string[];
}

describe('RestoreMember (real etcdctl 3.4.23, real snapshot, real dirs; recording supervisor)', () => {
  let root: string;
  let tool: RestoreTool;
  let raw: Buffer;
  let snapshotRevision: number;
  let snapshotKeys: number;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'restore-member-'));
    const etcd = await EtcdCluster.start(1);
    try {
      await fillEtcd(etcd.endpoints, 1);
      const client = new Etcd3({ hosts: etcd.endpoints });
      try {
        for (let i = 0; i < 20; i++) await client.put(`/registry/test/${i}`).value(`v${i}`);
      } finally {
        client.close();
      }
      const file = join(root, 'saved.db');
      await run('etcdctl', ['--endpoints', etcd.endpoints[0] as string, 'snapshot', 'save', file]);
      raw = await readFile(file);
      tool = await RestoreTool.detect();
      const status = await tool.status(file, signal());
      snapshotRevision = status.revision;
      snapshotKeys = status.totalKeys;
    } finally {
      await etcd.stop();
    }
  });

  afterAll(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  afterEach(() => {
    vi.useRealTimers();
  });

  async function node(options: { retention?: number; data?: boolean } = {}): Promise<Node> {
    const dir = await mkdtemp(join(root, 'node-'));
    const dataDir = join(dir, 'var', 'etcd');
    const stateDir = join(dir, 'steward');
    const clientUrl = `http://127.0.0.1:${await freePort()}`;
    const peerUrl = `http://127.0.0.1:${await freePort()}`;
    const config = await loadConfig(
      [
        '--grpc-plaintext-dev=true',
        ...['--name', 'm1', '--data-dir', dataDir, '--state-dir', stateDir],
        ...['--listen-client-urls', clientUrl, '--listen-peer-urls', peerUrl],
        ...['--etcd-old-data-retention', String(options.retention ?? 2)],
      ],
      '0.0.0',
    );
    await mkdir(dirname(dataDir), { recursive: true });
    if (options.data ?? true) {
      await mkdir(join(dataDir, 'member', 'snap'), { recursive: true });
      await writeFile(join(dataDir, 'member', 'old-marker'), OLD_MARKER);
    }
    const probe = new RestoreMember({
      config,
      supervisor: { pause: async () => {}, resume: () => {} },
      tool: async () => tool,
      logger: pino({ level: 'silent' }),
    });
    const normalArgs = probe.normalArgs();
    const supervisor = new RecordingSupervisor(stateDir, normalArgs);
    // No etcd behind the recording supervisor: finish does not wait for one to listen.
    const member = new RestoreMember({ config, supervisor, tool: async () => tool, logger: pino({ level: 'silent' }), clientReadyTimeoutMs: 0 });
    return { dir, dataDir, stateDir, clientUrl, peerUrl, config, supervisor, member, normalArgs };
  }

  const announceOf = (bytes: Buffer): SnapshotAnnounce => ({
    snapshot: 'etcd-snapshot-node-2-1700000000',
    size: bytes.length,
    sha256: sha256(bytes),
    compressed: false,
  });
  const receive = (n: Node, restoreId: string, data: AsyncIterable<Buffer> = chunked(raw), announce = announceOf(raw)): ReturnType<RestoreMember['receive']> =>
    n.member.receive(restoreId, 'node-2', announce, data, signal());
  const swapRequest = (n: Node, restoreId: string, sha = sha256(raw)): RestoreSwapRequest => ({
    snapshot: 'etcd-snapshot-node-2-1700000000',
    initialCluster: [{ name: 'm1', peerUrl: n.peerUrl }],
    clusterToken: `token-${restoreId}`,
    bumpRevision: 0,
    sha256: sha,
    header: null,
  });
  const beside = async (n: Node): Promise<string[]> => (await readdir(dirname(n.dataDir))).sort();
  const stagingEntries = async (n: Node): Promise<string[]> => (await readdir(join(n.stateDir, 'restore')).catch(() => [] as string[])).sort();
  const holdsOldData = async (dir: string): Promise<boolean> =>
    (await readFile(join(dir, 'member', 'old-marker'), 'utf8').catch(() => undefined)) === OLD_MARKER;
  /** A data dir the restore tool wrote from our snapshot: its bolt db has the snapshot's revision. */
  const holdsRestoredData = async (dir: string): Promise<boolean> => {
    const db = join(dir, 'member', 'snap', 'db');
    if (!existsSync(db) || existsSync(join(dir, 'member', 'old-marker'))) return false;
    return (await tool.status(db, signal())).revision === snapshotRevision;
  };
  const quarantineEndpointOf = (args: string[] | undefined): string | undefined =>
    /^--listen-client-urls=(http:\/\/127\.0\.0\.1:\d+)$/.exec(args?.find((a) => a.startsWith('--listen-client-urls=')) ?? '')?.[1];
  const expectQuarantined = (n: Node, args: string[] | undefined, endpoint: string): void => {
    expect(endpoint).not.toBe(n.clientUrl);
    expect(args).toContain(`--listen-client-urls=${endpoint}`);
    expect(args).toContain(`--advertise-client-urls=${endpoint}`);
    expect(args).toContain(`--data-dir=${n.dataDir}`);
    expect(args?.join(' ')).not.toContain(n.clientUrl);
  };
  /** Restores `restoreId` end to end (receive, swap, finish) at the wall-clock second `at`. */
  const fullRestore = async (n: Node, restoreId: string, at: number): Promise<void> => {
    vi.setSystemTime(at * 1000);
    await receive(n, restoreId);
    await n.member.swap(restoreId, swapRequest(n, restoreId), signal());
    await n.member.finish(restoreId, signal());
  };

  describe('receive, swap, finish', () => {
    it('swaps the restored dir in (old one kept as -old-<ts>), starts etcd quarantined, then finishes on the normal client URLs', async () => {
      const n = await node();
      const staged = await receive(n, 'r-1');
      expect(staged).toMatchObject({ sha256: sha256(raw), bytes: raw.length, revision: snapshotRevision });
      expect((await readRestorePhase(n.stateDir))?.phase).toBe('Verify');
      expect(n.supervisor.calls).toEqual([]); // receiving never touches etcd
      expect(await stagingEntries(n)).toEqual(['phase.json', 'r-1.db']);

      const before = Math.floor(Date.now() / 1000);
      const swapped = await n.member.swap('r-1', swapRequest(n, 'r-1'), signal());
      const after = Math.floor(Date.now() / 1000);
      expect(swapped.restoredTotalKeys).toBe(snapshotKeys);

      // On disk: the restored dir in place, the old one beside it, nothing else (no temp dir of the tool).
      const entries = await beside(n);
      expect(entries).toHaveLength(2);
      const old = entries.find((e) => e.startsWith('etcd-old-')) as string;
      expect(entries).toEqual(['etcd', old]);
      expect(Number(old.slice('etcd-old-'.length))).toBeGreaterThanOrEqual(before);
      expect(Number(old.slice('etcd-old-'.length))).toBeLessThanOrEqual(after);
      expect(await holdsRestoredData(n.dataDir)).toBe(true);
      expect(await holdsOldData(join(dirname(n.dataDir), old))).toBe(true);

      const record = await readRestorePhase(n.stateDir);
      expect(record).toMatchObject({
        restoreId: 'r-1',
        phase: 'RestartCluster',
        swapped: true,
        restoredReady: true,
        oldDataDir: join(dirname(n.dataDir), old),
      });
      // etcd was stopped only once Shutdown was recorded, and started again only once the swap was.
      expect(n.supervisor.calls.map((c) => [c.op, c.phase])).toEqual([
        ['pause', 'Shutdown'],
        ['resume', 'RestartCluster'],
      ]);
      const endpoint = quarantineEndpointOf(n.supervisor.runningArgs) as string;
      expect(record?.quarantineEndpoint).toBe(endpoint);
      expectQuarantined(n, n.supervisor.runningArgs, endpoint);
      expect(n.member.state()).toMatchObject({ phase: 'RestartCluster', swapped: true, quarantineEndpoint: endpoint, oldDataDir: record?.oldDataDir });

      // A coordinator that resumes asks again: the answer, not a second swap.
      expect((await n.member.swap('r-1', swapRequest(n, 'r-1'), signal())).state?.phase).toBe('RestartCluster');
      expect(n.supervisor.calls).toHaveLength(2);

      const finished = await n.member.finish('r-1', signal());
      expect(finished).toMatchObject({ phase: 'Finished', swapped: true, quarantineEndpoint: '', nextStep: '' });
      expect((await readRestorePhase(n.stateDir))?.phase).toBe('Finished');
      expect(n.supervisor.calls.slice(2).map((c) => c.op)).toEqual(['pause', 'resume']);
      expect(n.supervisor.runningArgs).toEqual(n.normalArgs);
      expect(n.normalArgs).toContain(`--listen-client-urls=${n.clientUrl}`);
      expect(await stagingEntries(n)).toEqual(['phase.json']);
      // Retention 2: the one old dir stays.
      expect(await beside(n)).toEqual(['etcd', old]);
      // Finish again is an answer too.
      expect((await n.member.finish('r-1', signal())).phase).toBe('Finished');
      expect(n.supervisor.calls).toHaveLength(4);
    });

    it('a member without a data dir gets the restored one; nothing is kept aside', async () => {
      const n = await node({ data: false });
      await receive(n, 'r-1');
      await n.member.swap('r-1', swapRequest(n, 'r-1'), signal());
      expect(await beside(n)).toEqual(['etcd']);
      expect(await holdsRestoredData(n.dataDir)).toBe(true);
      expect((await readRestorePhase(n.stateDir))?.oldDataDir).toBeUndefined();
    });

    it('restores past --etcd-old-data-retention trim the dirs kept aside to the newest N, and nothing else', async () => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const n = await node({ retention: 2 });
      const parent = dirname(n.dataDir);
      // Not ours: a copy an operator made, and a name that only looks like ours.
      await mkdir(join(parent, 'etcd-backup-by-hand'));
      await mkdir(join(parent, 'etcd-old-yesterday'));
      const t = 1_800_000_000;
      await fullRestore(n, 'r-1', t);
      await fullRestore(n, 'r-2', t + 100);
      expect(await beside(n)).toEqual(['etcd', 'etcd-backup-by-hand', `etcd-old-${t}`, `etcd-old-${t + 100}`, 'etcd-old-yesterday']);
      await fullRestore(n, 'r-3', t + 200);
      expect(await beside(n)).toEqual(['etcd', 'etcd-backup-by-hand', `etcd-old-${t + 100}`, `etcd-old-${t + 200}`, 'etcd-old-yesterday']);
      // The one before the first restore went first; what is kept is the data of the restores before.
      expect(await holdsRestoredData(join(parent, `etcd-old-${t + 200}`))).toBe(true);

      // A rolled-back fourth restore keeps its restored dir aside (abort trims nothing)...
      vi.setSystemTime((t + 300) * 1000);
      await receive(n, 'r-4');
      await n.member.swap('r-4', swapRequest(n, 'r-4'), signal());
      await n.member.abort('r-4', signal());
      expect(await beside(n)).toEqual([
        'etcd',
        'etcd-backup-by-hand',
        `etcd-old-${t + 100}`,
        `etcd-old-${t + 200}`,
        'etcd-old-yesterday',
        `etcd-restored-${t + 300}`,
      ]);
      // ...and the fifth, finished, counts it among the kept dirs.
      await fullRestore(n, 'r-5', t + 400);
      expect(await beside(n)).toEqual(['etcd', 'etcd-backup-by-hand', `etcd-old-${t + 400}`, 'etcd-old-yesterday', `etcd-restored-${t + 300}`]);
    });

    it('retention 1 keeps only the data dir the last restore replaced', async () => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const n = await node({ retention: 1 });
      const t = 1_800_000_000;
      await fullRestore(n, 'r-1', t);
      await fullRestore(n, 'r-2', t + 10);
      await fullRestore(n, 'r-3', t + 20);
      expect(await beside(n)).toEqual(['etcd', `etcd-old-${t + 20}`]);
    });

    it('restores within one second never land on a dir kept aside: each replaced or rolled-back dir keeps its own name', async () => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const n = await node({ retention: 10 });
      const parent = dirname(n.dataDir);
      const t = 1_800_000_000;
      await fullRestore(n, 'r-1', t);
      // The same wall-clock second (a fast retry, or a clock set back): r-2 is swapped in, r-3 and r-4 rolled back.
      vi.setSystemTime(t * 1000 + 500);
      await receive(n, 'r-2');
      await n.member.swap('r-2', swapRequest(n, 'r-2'), signal());
      await n.member.finish('r-2', signal());
      expect(await holdsOldData(join(parent, `etcd-old-${t}`))).toBe(true);
      for (const id of ['r-3', 'r-4']) {
        await receive(n, id);
        await n.member.swap(id, swapRequest(n, id), signal());
        expect((await n.member.abort(id, signal())).rolledBack).toBe(true);
      }
      const entries = await beside(n);
      expect(entries.filter((e) => e.startsWith('etcd-old-'))).toHaveLength(2);
      expect(entries.filter((e) => e.startsWith('etcd-restored-'))).toHaveLength(2);
      // The data before any restore is still kept; in place is what r-2 restored, not an older generation.
      expect(await holdsOldData(join(parent, `etcd-old-${t}`))).toBe(true);
      expect(await holdsRestoredData(n.dataDir)).toBe(true);
      expect((await readRestorePhase(n.stateDir))?.oldDataDir).not.toBe(join(parent, `etcd-old-${t}`));
    });
  });

  describe('hostile input', () => {
    const cases: [string, () => { data: AsyncIterable<Buffer>; announce: SnapshotAnnounce }, RegExp][] = [
      [
        'longer than announced',
        () => ({ data: chunked(Buffer.concat([raw, Buffer.from('trailing garbage')])), announce: announceOf(raw) }),
        /longer than announced/,
      ],
      ['shorter than announced', () => ({ data: chunked(raw.subarray(0, raw.length - 4096)), announce: announceOf(raw) }), /ended short/],
      [
        'not the announced SHA-256',
        () => {
          const other = Buffer.from(raw);
          other[1000] = (other[1000] as number) ^ 0xff;
          return { data: chunked(raw), announce: announceOf(other) };
        },
        /does not match its announced SHA-256/,
      ],
    ];
    for (const [what, input, message] of cases) {
      it(`a stream ${what} is refused with RESTORE_VERIFY_FAILED: phase Failed, no staging file, data dir untouched`, async () => {
        const n = await node();
        const { data, announce } = input();
        const err = await rejection(() => n.member.receive('r-1', 'node-2', announce, data, signal()));
        expect(err.code).toBe('RESTORE_VERIFY_FAILED');
        expect(err.message).toMatch(message);
        const record = await readRestorePhase(n.stateDir);
        expect(record).toMatchObject({ restoreId: 'r-1', phase: 'Failed' });
        expect(record?.error).toMatch(message);
        expect(n.member.state().nextStep).toContain('is untouched');
        expect(await stagingEntries(n)).toEqual(['phase.json']);
        expect(await beside(n)).toEqual(['etcd']);
        expect(await holdsOldData(n.dataDir)).toBe(true);
        expect(n.supervisor.calls).toEqual([]);
        // A refused transfer does not wedge the member: the next restore is received.
        expect((await receive(n, 'r-2')).sha256).toBe(sha256(raw));
      });
    }

    it('calls for another restore ID while one is in progress are refused with RESTORE_BUSY; the one in progress is unharmed', async () => {
      const n = await node();
      await receive(n, 'r-1');
      const staging = join(n.stateDir, 'restore', 'r-1.db');
      const calls: [string, () => Promise<unknown>][] = [
        ['receive', () => receive(n, 'r-2')],
        ['swap', () => n.member.swap('r-2', swapRequest(n, 'r-2'), signal())],
        ['finish', () => n.member.finish('r-2', signal())],
        ['prepare', () => n.member.prepare('r-2', raw.length)],
      ];
      for (const [name, call] of calls) {
        const err = await rejection(call);
        expect(err.code, name).toBe('RESTORE_BUSY');
        expect(err.message, name).toBe('member m1 takes part in restore r-1 (phase Verify), not r-2');
      }
      // An abort of another restore ends nothing here.
      expect((await n.member.abort('r-2', signal())).restoreId).toBe('r-1');
      expect((await readRestorePhase(n.stateDir))?.phase).toBe('Verify');
      expect(sha256(await readFile(staging))).toBe(sha256(raw));
      expect(n.supervisor.calls).toEqual([]);
    });

    it('an abort naming another restore does not cut the transfer of the one in progress', async () => {
      const n = await node();
      const transfer = gated(raw, 256 * 1024);
      const receiving = receive(n, 'r-1', transfer.stream);
      await transfer.reached;
      // Calls run one at a time: the stale abort is answered once the transfer ended, and must not end it.
      const aborting = n.member.abort('r-stale', signal());
      await sleep(50);
      transfer.open();
      expect((await receiving).sha256).toBe(sha256(raw));
      expect(await aborting).toMatchObject({ restoreId: 'r-1', phase: 'Verify' });
      expect((await readRestorePhase(n.stateDir))?.phase).toBe('Verify');
    });

    it('an abort of the restore being received cuts its transfer and leaves no staging file', async () => {
      const n = await node();
      const transfer = gated(raw, 256 * 1024);
      const receiving = rejection(() => receive(n, 'r-1', transfer.stream));
      await transfer.reached;
      expect((await n.member.abort('r-1', signal())).phase).toBe('Failed');
      const err = await receiving;
      expect(err.code).toBe('RESTORE_ABORTED');
      expect(await stagingEntries(n)).toEqual(['phase.json']);
      expect(await holdsOldData(n.dataDir)).toBe(true);
    });

    it('a malformed restore ID is refused with InvalidArgument by every call, before anything is written', async () => {
      const n = await node();
      for (const id of ['../x', '', '..', 'a/b', 'R-1', '-r', 'r'.repeat(64), 'r 1']) {
        expect(() => checkRestoreId(id), id).toThrow(InvalidArgumentError);
        const calls: [string, () => Promise<unknown>][] = [
          ['receive', async () => receive(n, id)],
          ['swap', async () => n.member.swap(id, swapRequest(n, 'r-1'), signal())],
          ['finish', async () => n.member.finish(id, signal())],
          ['abort', async () => n.member.abort(id, signal())],
          ['prepare', async () => n.member.prepare(id, raw.length)],
        ];
        for (const [name, call] of calls) {
          const err = await rejection(call);
          expect(err, `${name}(${JSON.stringify(id)})`).toBeInstanceOf(InvalidArgumentError);
          expect(err.message).toMatch(/restore ID .* is malformed/);
        }
      }
      expect(checkRestoreId('r-1700000000-ab12')).toBe('r-1700000000-ab12');
      // Nothing was written anywhere: no state dir, nothing beside the data dir, etcd never touched.
      expect(existsSync(n.stateDir)).toBe(false);
      expect(await beside(n)).toEqual(['etcd']);
      expect(n.supervisor.calls).toEqual([]);
    });

    it('a stream without an announce is refused with InvalidArgument', async () => {
      const n = await node();
      const err = await rejection(async () => n.member.receive('r-1', 'node-2', null, chunked(raw), signal()));
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect(existsSync(n.stateDir)).toBe(false);
    });

    it('swap before a verified snapshot is refused and moves nothing', async () => {
      const n = await node();
      // No restore at all here.
      expect((await rejection(() => n.member.swap('r-1', swapRequest(n, 'r-1'), signal()))).code).toBe('RESTORE_UNKNOWN');
      // A swap that arrives while the snapshot is still coming waits for it, and is refused when it fails.
      const transfer = gated(Buffer.concat([raw, Buffer.from('x')]), 256 * 1024);
      const receiving = rejection(() => receive(n, 'r-1', transfer.stream));
      await transfer.reached;
      const swapping = rejection(() => n.member.swap('r-1', swapRequest(n, 'r-1'), signal()));
      transfer.open();
      expect((await receiving).code).toBe('RESTORE_VERIFY_FAILED');
      expect((await swapping).code).toBe('RESTORE_UNKNOWN');
      // Verified, but not what the coordinator means to restore.
      await receive(n, 'r-2');
      const mismatch = await rejection(() => n.member.swap('r-2', swapRequest(n, 'r-2', 'ef'.repeat(32)), signal()));
      expect(mismatch.code).toBe('RESTORE_DIGEST_MISMATCH');
      expect((await readRestorePhase(n.stateDir))?.phase).toBe('Verify');
      expect(await beside(n)).toEqual(['etcd']);
      expect(await holdsOldData(n.dataDir)).toBe(true);
      expect(n.supervisor.calls).toEqual([]);
    });

    it('a swap the tool refuses leaves the data dir in place; a second swap is RESTORE_NOT_VERIFIED; abort restarts the old etcd', async () => {
      const n = await node();
      await receive(n, 'r-1');
      const bad = { ...swapRequest(n, 'r-1'), initialCluster: [{ name: 'someone-else', peerUrl: n.peerUrl }] };
      const err = await rejection(() => n.member.swap('r-1', bad, signal()));
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect(err.message).toContain('--initial-cluster must list the member being restored (m1)');
      expect((await readRestorePhase(n.stateDir))?.phase).toBe('Restore');
      expect(await beside(n)).toEqual(['etcd']);
      expect(await holdsOldData(n.dataDir)).toBe(true);
      expect((await rejection(() => n.member.swap('r-1', swapRequest(n, 'r-1'), signal()))).code).toBe('RESTORE_NOT_VERIFIED');
      expect(await beside(n)).toEqual(['etcd']);

      const state = await n.member.abort('r-1', signal());
      expect(state).toMatchObject({ phase: 'Failed', rolledBack: false, swapped: false });
      expect(n.supervisor.runningArgs).toEqual(n.normalArgs);
      expect(await beside(n)).toEqual(['etcd']);
      expect(await holdsOldData(n.dataDir)).toBe(true);
      expect(await stagingEntries(n)).toEqual(['phase.json']);
    });
  });

  describe('abort', () => {
    it('after the swap: the restored dir is kept as -restored-<ts>, the old one is back in place, etcd restarts on its normal args', async () => {
      const n = await node();
      await receive(n, 'r-1');
      await n.member.swap('r-1', swapRequest(n, 'r-1'), signal());
      const before = Math.floor(Date.now() / 1000);
      const state = await n.member.abort('r-1', signal());
      expect(state).toMatchObject({ phase: 'Failed', rolledBack: true, swapped: false });
      expect(state.nextStep).toContain('rolled back');
      const entries = await beside(n);
      expect(entries).toHaveLength(2);
      const kept = entries.find((e) => e.startsWith('etcd-restored-')) as string;
      expect(entries).toEqual(['etcd', kept]);
      expect(Number(kept.slice('etcd-restored-'.length))).toBeGreaterThanOrEqual(before);
      expect(await holdsOldData(n.dataDir)).toBe(true);
      expect(await holdsRestoredData(join(dirname(n.dataDir), kept))).toBe(true);
      const record = await readRestorePhase(n.stateDir);
      expect(record).toMatchObject({ phase: 'Failed', rolledBack: true, abandonedDataDir: join(dirname(n.dataDir), kept) });
      expect(await stagingEntries(n)).toEqual(['phase.json']);
      expect(n.supervisor.calls.map((c) => c.op)).toEqual(['pause', 'resume', 'pause', 'resume']);
      expect(n.supervisor.runningArgs).toEqual(n.normalArgs);
      // Aborting again changes nothing.
      await n.member.abort('r-1', signal());
      expect(await beside(n)).toEqual(['etcd', kept]);
      expect(n.supervisor.calls).toHaveLength(4);
    });

    it('before the swap: only the staging file goes; nothing is moved and etcd is never stopped', async () => {
      const n = await node();
      await receive(n, 'r-1');
      const state = await n.member.abort('r-1', signal());
      expect(state).toMatchObject({ phase: 'Failed', rolledBack: false, swapped: false });
      expect(state.nextStep).toContain('is untouched');
      expect(await beside(n)).toEqual(['etcd']);
      expect(await holdsOldData(n.dataDir)).toBe(true);
      expect(await stagingEntries(n)).toEqual(['phase.json']);
      expect(n.supervisor.calls).toEqual([]);
    });
  });

  describe('recover() from where a killed steward stopped', () => {
    const restoreId = 'r-9';
    const base = (n: Node): RestorePhaseRecord => ({
      restoreId,
      phase: 'Distribute',
      snapshot: 'etcd-snapshot-node-2-1700000000',
      startedAt: '2026-01-01T00:00:00.000Z',
      coordinator: 'node-2',
      stagingFile: join(n.stateDir, 'restore', `${restoreId}.db`),
    });
    const paths = (n: Node): { staging: string; newDir: string; oldDir: string; abandoned: string } => ({
      staging: join(n.stateDir, 'restore', `${restoreId}.db`),
      newDir: `${n.dataDir}.restore-${restoreId}`,
      oldDir: `${n.dataDir}-old-1700000000`,
      abandoned: `${n.dataDir}-restored-1700000100`,
    });
    /** What the restore tool leaves at newDataDir once it finished: a real restored data dir. */
    const restoredDirAt = async (n: Node, dir: string): Promise<void> => {
      await writeFile(join(n.dir, 'snapshot.db'), raw);
      await tool.restoreInto({
        snapshot: join(n.dir, 'snapshot.db'),
        dataDir: dir,
        name: 'm1',
        initialCluster: [{ name: 'm1', peerUrl: n.peerUrl }],
        initialAdvertisePeerUrls: [n.peerUrl],
        clusterToken: `token-${restoreId}`,
        signal: signal(),
      });
    };
    const stagedAt = async (n: Node, complete: boolean): Promise<void> => {
      const { staging } = paths(n);
      await mkdir(dirname(staging), { recursive: true });
      if (complete) await writeFile(staging, raw);
      else await writeFile(`${staging}.part`, raw.subarray(0, 100_000));
    };
    const recovered = async (n: Node): Promise<RestorePhaseRecord> => {
      await n.member.recover();
      // The invariant a restart keeps whatever it found: the member has a data dir to start etcd on.
      expect(existsSync(n.dataDir)).toBe(true);
      const record = (await readRestorePhase(n.stateDir)) as RestorePhaseRecord;
      expect(n.member.record).toEqual(record);
      return record;
    };
    const expectRolledBackOrUntouched = async (n: Node, record: RestorePhaseRecord, rolledBack: boolean): Promise<void> => {
      expect(record.phase).toBe('Failed');
      expect(record.rolledBack === true).toBe(rolledBack);
      expect(await holdsOldData(n.dataDir)).toBe(true);
      expect(await stagingEntries(n)).toEqual(['phase.json']);
      expect(n.supervisor.runningArgs).toEqual(n.normalArgs);
    };
    const expectStartedQuarantined = async (n: Node, record: RestorePhaseRecord): Promise<void> => {
      expect(record).toMatchObject({ phase: 'RestartCluster', swapped: true });
      expect(await holdsRestoredData(n.dataDir)).toBe(true);
      expectQuarantined(n, n.supervisor.runningArgs, record.quarantineEndpoint as string);
      // Still to be finished (or aborted) by the coordinator: the staging file stays until then.
      expect(await stagingEntries(n)).toEqual(['phase.json', `${restoreId}.db`]);
    };

    it('no record, or a finished or failed one: nothing to do, etcd starts normally', async () => {
      const n = await node();
      await n.member.recover();
      expect(n.member.record).toBeUndefined();
      await writeRestorePhase(n.stateDir, { ...base(n), phase: 'Finished' });
      await n.member.recover();
      expect(n.member.record?.phase).toBe('Finished');
      expect(n.supervisor.calls).toEqual([]);
      expect(await holdsOldData(n.dataDir)).toBe(true);
    });

    it('killed during Distribute: the partial staging file is dropped, Failed, the old etcd starts', async () => {
      const n = await node();
      await stagedAt(n, false);
      await writeRestorePhase(n.stateDir, base(n));
      const record = await recovered(n);
      await expectRolledBackOrUntouched(n, record, false);
      expect(record.error).toBe('the steward restarted during Distribute, before any data dir was touched');
      expect(await beside(n)).toEqual(['etcd']);
    });

    it('killed in Verify: the verified staging file is dropped, Failed, the old etcd starts', async () => {
      const n = await node();
      await stagedAt(n, true);
      await writeRestorePhase(n.stateDir, { ...base(n), phase: 'Verify', sha256: sha256(raw) });
      await expectRolledBackOrUntouched(n, await recovered(n), false);
      expect(await beside(n)).toEqual(['etcd']);
    });

    it('killed in Shutdown or while the tool ran: its output dir is removed, Failed, the old etcd starts', async () => {
      for (const ready of [false, true]) {
        const n = await node();
        const { newDir, oldDir } = paths(n);
        await stagedAt(n, true);
        await restoredDirAt(n, newDir);
        // ready: the tool had finished and the old dir's name was recorded, but nothing was renamed yet.
        await writeRestorePhase(n.stateDir, {
          ...base(n),
          phase: 'Restore',
          sha256: sha256(raw),
          newDataDir: newDir,
          ...(ready ? { restoredReady: true, oldDataDir: oldDir } : {}),
        });
        await expectRolledBackOrUntouched(n, await recovered(n), false);
        expect(await beside(n)).toEqual(['etcd']);
      }
      const n = await node();
      await stagedAt(n, true);
      await writeRestorePhase(n.stateDir, { ...base(n), phase: 'Shutdown', sha256: sha256(raw) });
      await expectRolledBackOrUntouched(n, await recovered(n), false);
    });

    it('killed in Restore with the old dir moved and the restored dir ready beside it: the swap is completed, etcd starts quarantined', async () => {
      const n = await node();
      const { newDir, oldDir } = paths(n);
      await stagedAt(n, true);
      await restoredDirAt(n, newDir);
      await rename(n.dataDir, oldDir);
      await writeRestorePhase(n.stateDir, { ...base(n), phase: 'Restore', sha256: sha256(raw), newDataDir: newDir, restoredReady: true, oldDataDir: oldDir });
      const record = await recovered(n);
      await expectStartedQuarantined(n, record);
      expect(await holdsOldData(oldDir)).toBe(true);
      expect(await beside(n)).toEqual(['etcd', 'etcd-old-1700000000']);
      // And the coordinator can finish it as usual.
      await n.member.finish(restoreId, signal());
      expect(n.supervisor.runningArgs).toEqual(n.normalArgs);
    });

    it('killed in Restore after both renames, before swapped was recorded: etcd starts quarantined', async () => {
      const n = await node();
      const { newDir, oldDir } = paths(n);
      await stagedAt(n, true);
      await restoredDirAt(n, newDir);
      await rename(n.dataDir, oldDir);
      await rename(newDir, n.dataDir);
      await writeRestorePhase(n.stateDir, { ...base(n), phase: 'Restore', sha256: sha256(raw), newDataDir: newDir, restoredReady: true, oldDataDir: oldDir });
      await expectStartedQuarantined(n, await recovered(n));
      expect(await beside(n)).toEqual(['etcd', 'etcd-old-1700000000']);
    });

    it('killed in Restore with the old dir moved but no restored dir ready: the old dir is moved back, rolled back, Failed', async () => {
      for (const layout of ['not ready', 'ready but its dir is gone'] as const) {
        const n = await node();
        const { newDir, oldDir } = paths(n);
        await stagedAt(n, true);
        await rename(n.dataDir, oldDir);
        await writeRestorePhase(n.stateDir, {
          ...base(n),
          phase: 'Restore',
          sha256: sha256(raw),
          newDataDir: newDir,
          oldDataDir: oldDir,
          ...(layout === 'not ready' ? {} : { restoredReady: true }),
        });
        const record = await recovered(n);
        await expectRolledBackOrUntouched(n, record, true);
        expect(record.error).toBe('the steward restarted during Restore before the swap completed; rolled back');
        expect(await beside(n)).toEqual(['etcd']);
      }
    });

    it('killed in RestartCluster: etcd starts quarantined again, on the recorded endpoint while it is free', async () => {
      const n = await node();
      const { oldDir } = paths(n);
      await stagedAt(n, true);
      await rename(n.dataDir, oldDir);
      await restoredDirAt(n, n.dataDir);
      const endpoint = `http://127.0.0.1:${await freePort()}`;
      const record: RestorePhaseRecord = {
        ...base(n),
        phase: 'RestartCluster',
        sha256: sha256(raw),
        restoredReady: true,
        swapped: true,
        oldDataDir: oldDir,
        quarantineEndpoint: endpoint,
      };
      await writeRestorePhase(n.stateDir, record);
      const first = await recovered(n);
      await expectStartedQuarantined(n, first);
      expect(first.quarantineEndpoint).toBe(endpoint);

      // Restarted again with something else on that port: another loopback port is picked.
      const n2 = await node();
      await stagedAt(n2, true);
      await rename(n2.dataDir, paths(n2).oldDir);
      await restoredDirAt(n2, n2.dataDir);
      const taken: Server = createServer();
      await new Promise<void>((resolve) => taken.listen(Number(new URL(endpoint).port), '127.0.0.1', resolve));
      try {
        await writeRestorePhase(n2.stateDir, { ...record, stagingFile: paths(n2).staging, oldDataDir: paths(n2).oldDir });
        const second = await recovered(n2);
        await expectStartedQuarantined(n2, second);
        expect(second.quarantineEndpoint).not.toBe(endpoint);
      } finally {
        await new Promise<void>((resolve) => taken.close(() => resolve()));
      }
    });

    it('killed after a fresh member (no data dir before) got the restored dir, before swapped was recorded: etcd starts quarantined', async () => {
      const n = await node({ data: false });
      const { newDir } = paths(n);
      await stagedAt(n, true);
      await restoredDirAt(n, newDir);
      await rename(newDir, n.dataDir);
      await writeRestorePhase(n.stateDir, { ...base(n), phase: 'Restore', sha256: sha256(raw), newDataDir: newDir, restoredReady: true });
      await expectStartedQuarantined(n, await recovered(n));
      expect(await beside(n)).toEqual(['etcd']);
    });

    it('a fresh member killed before the restored dir was renamed into place: its output is dropped, Failed, as it was', async () => {
      const n = await node({ data: false });
      const { newDir } = paths(n);
      await stagedAt(n, true);
      await restoredDirAt(n, newDir);
      await writeRestorePhase(n.stateDir, { ...base(n), phase: 'Restore', sha256: sha256(raw), newDataDir: newDir, restoredReady: true });
      await n.member.recover();
      expect((await readRestorePhase(n.stateDir))?.phase).toBe('Failed');
      expect(await beside(n)).toEqual([]);
      expect(n.supervisor.runningArgs).toEqual(n.normalArgs);
    });

    describe('killed while an abort rolled a swapped member back', () => {
      const swappedRecord = (n: Node): RestorePhaseRecord => ({
        ...base(n),
        phase: 'RestartCluster',
        sha256: sha256(raw),
        restoredReady: true,
        swapped: true,
        oldDataDir: paths(n).oldDir,
        abandonedDataDir: paths(n).abandoned,
      });

      it('after the name was recorded, before either rename: the rollback is done in full', async () => {
        const n = await node();
        const { oldDir, abandoned } = paths(n);
        await stagedAt(n, true);
        await rename(n.dataDir, oldDir);
        await restoredDirAt(n, n.dataDir);
        await writeRestorePhase(n.stateDir, swappedRecord(n));
        await expectRolledBackOrUntouched(n, await recovered(n), true);
        expect(await holdsRestoredData(abandoned)).toBe(true);
        expect(await beside(n)).toEqual(['etcd', 'etcd-restored-1700000100']);
      });

      it('after the restored dir was moved aside, before the old one was back: the rollback is completed', async () => {
        const n = await node();
        const { oldDir, abandoned } = paths(n);
        await stagedAt(n, true);
        await rename(n.dataDir, oldDir);
        await restoredDirAt(n, abandoned);
        await writeRestorePhase(n.stateDir, swappedRecord(n));
        const record = await recovered(n);
        await expectRolledBackOrUntouched(n, record, true);
        expect(await holdsRestoredData(abandoned)).toBe(true);
        expect(await beside(n)).toEqual(['etcd', 'etcd-restored-1700000100']);
      });

      it('after the old dir was back, before Failed was recorded: the old data is not started as if it were the restored one', async () => {
        const n = await node();
        const { abandoned } = paths(n);
        await stagedAt(n, true);
        await restoredDirAt(n, abandoned);
        await writeRestorePhase(n.stateDir, swappedRecord(n));
        const record = await recovered(n);
        await expectRolledBackOrUntouched(n, record, true);
        expect(await beside(n)).toEqual(['etcd', 'etcd-restored-1700000100']);
      });
    });
  });

  it('stat sanity: the restored data dir is owner-only', async () => {
    const n = await node();
    await receive(n, 'r-1');
    await n.member.swap('r-1', swapRequest(n, 'r-1'), signal());
    expect((await stat(n.dataDir)).mode & 0o777).toBe(0o700);
    expect((await stat(join(n.dataDir, 'member', 'snap', 'db'))).mode & 0o777).toBe(0o600);
  });
});
