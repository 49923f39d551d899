import { execFile, spawn } from 'node:child_process';
import { unusedPeerHandlers } from '../harness/unused-handlers.js';
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { InternalError, PreconditionError } from '../../src/errors/index.js';
import { RpcServer } from '../../src/rpc/server.js';
import type {
  CallContext,
  ListResponse,
  RestoreEventInput,
  RestoreMemberState,
  RestorePlanInput,
  RestoreRequest,
  RestoreStatusResponse,
  RestoreSummary,
  StewardCtlHandlers,
} from '../../src/rpc/types.js';
import { CTL_JS, assertBuilt, runCtl } from '../harness/steward-cluster.js';

/*
 * The ctl's restore verbs against a real gRPC server (src/rpc/server.ts) whose handlers are scripted the
 * way the steward behaves: the plan first, then progress, then the summary; refusals and failures as
 * errors after what was streamed. This tests the ctl only; the restore itself is tested elsewhere.
 */

const SNAPSHOT = 'etcd-snapshot-node-1-1700000000';
const GiB = 1024 ** 3;

function plan(overrides: Partial<RestorePlanInput> = {}): RestorePlanInput {
  return {
    restoreId: 'r-1700000100',
    snapshot: {
      name: SNAPSHOT,
      node: 'node-1',
      location: 'file:///var/lib/etcd-steward/snapshots',
      size: 2 * GiB + 12345,
      sha256: 'ab'.repeat(32),
      created: '2023-11-14T22:13:20.000Z',
      kind: 'scheduled',
      compressed: false,
    },
    revision: 48213,
    etcdVersion: '3.5.9',
    source: 's3://etcd-snapshots/backups/etcd-snapshot-node-1-1700000000',
    coordinator: 'node-1',
    quorum: true,
    ageSeconds: 3 * 3600 + 120,
    members: ['node-1', 'node-2', 'node-3'].map((node) => ({
      node,
      dataDir: `/var/lib/etcd/${node}`,
      oldDataDir: `/var/lib/etcd/${node}-old-1700000100`,
      freeBytes: 40 * GiB,
      neededBytes: 4 * GiB,
      etcdVersion: '3.5.9',
      restoreTool: 'etcdutl',
    })),
    bumpRevision: 1_000_000_000,
    bumpNote: '',
    blockers: [],
    warnings: ['node-3 runs etcd 3.5.8; the snapshot is from 3.5.9'],
    ...overrides,
  };
}

function member(node: string, overrides: Partial<RestoreMemberState> = {}): RestoreMemberState {
  return {
    node,
    restoreId: 'r-1700000100',
    snapshot: SNAPSHOT,
    phase: 'Finished',
    startedAt: '2023-11-15T01:15:00.000Z',
    updatedAt: '2023-11-15T01:16:03.000Z',
    oldDataDir: `/var/lib/etcd/${node}-old-1700000100`,
    error: '',
    nextStep: '',
    quarantineEndpoint: '',
    swapped: true,
    rolledBack: false,
    unreachable: '',
    ...overrides,
  };
}

function summary(overrides: Partial<RestoreSummary> = {}): RestoreSummary {
  return {
    restoreId: 'r-1700000100',
    snapshot: SNAPSHOT,
    phase: 'Finished',
    clusterId: '8e9e05c52164694d',
    members: ['node-1', 'node-2', 'node-3'].map((n) => member(n)),
    durationSeconds: 63.4,
    error: '',
    warnings: [],
    revision: 1_000_048_213,
    bytesDistributed: 3 * (2 * GiB + 12345),
    ...overrides,
  };
}

const at = (s: number): string => new Date(Date.UTC(2023, 10, 15, 1, 15, s)).toISOString();

/** What a successful restore streams after the plan. */
function progressEvents(): RestoreEventInput[] {
  const total = 2 * GiB + 12345;
  const events: RestoreEventInput[] = [{ progress: { member: '', phase: 'Started', at: at(0), message: 'lock taken' } }];
  for (const node of ['node-2', 'node-3']) {
    for (const bytes of [0, total / 2, total]) events.push({ progress: { member: node, phase: 'Distribute', bytes: Math.floor(bytes), total, at: at(1) } });
    events.push({ progress: { member: node, phase: 'Verify', message: 'sha256 matches', at: at(2) } });
  }
  for (const phase of ['Shutdown', 'Restore', 'RestartCluster', 'Finished']) events.push({ progress: { member: '', phase, at: at(3) } });
  return events;
}

let hung = false;
let stoppedBy: unknown;

type Script = (request: RestoreRequest, emit: (event: RestoreEventInput) => void, ctx: CallContext) => Promise<RestoreSummary>;

const notConfirmed = (): PreconditionError =>
  new PreconditionError('RESTORE_NOT_CONFIRMED', 'the restore was not confirmed; nothing has changed', {
    hint: `add --yes to run it: etcd-stewardctl restore ${SNAPSHOT} --yes`,
  });

/** The steward's behaviour, by snapshot name. */
const scripts: Record<string, Script> = {
  [SNAPSHOT]: async (request, emit) => {
    emit({ plan: plan() });
    if (!request.yes) throw notConfirmed();
    for (const event of progressEvents()) emit(event);
    return summary();
  },
  'blocked-node-1-1700000000': async (request, emit) => {
    emit({ plan: plan({ blockers: ['node-2: 1.0 GiB free where 4.0 GiB are needed'] }) });
    throw new PreconditionError('RESTORE_BLOCKED', 'the plan has 1 blocker; nothing has changed', { hint: 'resolve it and run the restore again' });
  },
  'nobump-node-1-1700000000': async (request, emit) => {
    emit({ plan: plan({ bumpRevision: 0, bumpNote: 'etcdctl 3.4 snapshot restore has no --bump-revision' }) });
    if (!request.yes) throw notConfirmed();
    return summary();
  },
  'verify-fails-node-1-1700000000': async (_request, emit) => {
    emit({ plan: plan() });
    emit({ progress: { member: '', phase: 'Started', at: at(0) } });
    emit({ progress: { member: 'node-2', phase: 'Distribute', bytes: 100, total: 100, at: at(1) } });
    emit({ progress: { member: 'node-2', phase: 'Failed', message: 'sha256 mismatch', at: at(2) } });
    emit({
      result: summary({
        phase: 'Failed',
        clusterId: '',
        error: 'node-2: the received snapshot does not match its sha256',
        members: [
          member('node-1', { phase: 'Distribute', swapped: false, oldDataDir: '' }),
          member('node-2', { phase: 'Failed', swapped: false, error: 'sha256 mismatch' }),
        ],
      }),
    });
    throw new PreconditionError('RESTORE_VERIFY_FAILED', 'node-2: the received snapshot does not match its sha256', {
      hint: 'nothing was swapped; check node-2 disk and run the restore again',
    });
  },
  'hangs-node-1-1700000000': async (_request, emit, ctx) => {
    emit({ plan: plan() });
    emit({ progress: { member: 'node-2', phase: 'Distribute', bytes: 10, total: 100, at: at(1) } });
    hung = true;
    await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve(), { once: true }));
    stoppedBy = ctx.signal.reason;
    throw ctx.signal.reason;
  },
  'internal-fails-node-1-1700000000': async (_request, emit) => {
    emit({ plan: plan() });
    emit({ result: summary({ phase: 'Failed', error: 'node-3: etcd did not start', members: [member('node-3', { phase: 'Failed', rolledBack: true })] }) });
    throw new InternalError('RESTORE_FAILED', 'node-3: etcd did not start after the swap; every member was rolled back', { hint: 'see node-3 log' });
  },
};

const statusResponse: RestoreStatusResponse = {
  restoreId: 'r-1700000100',
  snapshot: SNAPSHOT,
  lockHolder: 'node-1',
  lockTakenAt: '2023-11-15T01:15:00.000Z',
  members: [
    member('node-1', { phase: 'Restore' }),
    member('node-2', { phase: 'Failed', error: 'etcdutl exited 1', nextStep: 'run etcd-stewardctl restore abort' }),
    member('node-3', { unreachable: 'connect ECONNREFUSED 127.0.0.1:7403' }),
  ],
  nextStep: 'node-3 cannot be asked: bring its steward back, then run etcd-stewardctl restore abort or resume the restore',
};

describe('etcd-stewardctl restore against a scripted steward', () => {
  let server: RpcServer;
  let endpoint: string;
  const calls: RestoreRequest[] = [];
  let listResponse: ListResponse;
  let abortResponse: RestoreStatusResponse;

  beforeAll(async () => {
    assertBuilt();
    const unused = async (): Promise<never> => {
      throw new Error('not used');
    };
    const handlers: StewardCtlHandlers = {
      status: unused,
      save: unused,
      list: async () => listResponse,
      delete: unused,
      prune: unused,
      specGet: unused,
      specSet: unused,
      init: unused,
      restore: async (request, emit, ctx) => {
        calls.push(request);
        const script = scripts[request.name];
        if (!script) throw new Error(`no script for ${request.name}`);
        return script(request, emit, ctx);
      },
      restoreStatus: async () => statusResponse,
      restoreAbort: async () => abortResponse,
      verify: unused,
    };
    server = await RpcServer.start({
      host: '127.0.0.1',
      port: 0,
      handlers,
      peer: unusedPeerHandlers(),
      identity: { node: 'node-1', clusterId: () => '' },
      logger: pino({ level: 'silent' }),
    });
    endpoint = `127.0.0.1:${server.port}`;
  });
  afterAll(async () => {
    await server?.stop();
  });
  beforeEach(() => {
    calls.length = 0;
  });

  const ctl = (...args: string[]): ReturnType<typeof runCtl> => runCtl(['--endpoint', endpoint, ...args]);

  it('without --yes prints the whole plan, ends with how to run it, and exits 4 with the error after it', async () => {
    const result = await ctl('restore', SNAPSHOT, '--skip-member', 'node-3', '--with-spec');
    expect(result.code, result.stderr).toBe(4);
    expect(calls).toEqual([{ name: SNAPSHOT, yes: false, skipMembers: ['node-3'], withSpec: true, force: false }]);
    const out = result.stdout;
    expect(out).toMatch(/^restore plan r-1700000100/);
    expect(out).toContain(`snapshot:     ${SNAPSHOT}`);
    expect(out).toContain(`2.0 GiB (${2 * GiB + 12345} bytes)`);
    expect(out).toContain('ab'.repeat(32));
    expect(out).toMatch(/revision:\s+48213/);
    expect(out).toMatch(/taken:\s+3h 2m ago \(2023-11-14T22:13:20.000Z on node-1\)/);
    expect(out).toMatch(/etcd:\s+3\.5\.9/);
    expect(out).toContain('s3://etcd-snapshots/backups/etcd-snapshot-node-1-1700000000');
    expect(out).toMatch(/coordinator:\s+node-1/);
    expect(out).toMatch(/quorum:\s+yes/);
    for (const node of ['node-1', 'node-2', 'node-3']) {
      expect(out).toMatch(
        new RegExp(`${node}\\s+/var/lib/etcd/${node} → /var/lib/etcd/${node}-old-1700000100\\s+40\\.0 GiB\\s+4\\.0 GiB\\s+3\\.5\\.9\\s+etcdutl`),
      );
    }
    expect(out).toMatch(/revision:\s+bumped by 1000000000/);
    expect(out).toContain('warnings:\n  - node-3 runs etcd 3.5.8');
    const lines = out.trimEnd().split('\n');
    expect(lines.at(-1)).toBe(
      `nothing has changed; to restore, run: etcd-stewardctl --endpoint ${endpoint} restore ${SNAPSHOT} --yes --skip-member node-3 --with-spec`,
    );
    expect(result.stderr).toBe(
      `error[RESTORE_NOT_CONFIRMED]: the restore was not confirmed; nothing has changed — add --yes to run it: etcd-stewardctl restore ${SNAPSHOT} --yes\n`,
    );
  });

  it('says loudly when the revision cannot be bumped: restart every API server, controller manager and scheduler', async () => {
    const result = await ctl('restore', 'nobump-node-1-1700000000');
    expect(result.code).toBe(4);
    expect(result.stdout).toContain('!!! REVISION NOT BUMPED: etcdctl 3.4 snapshot restore has no --bump-revision');
    expect(result.stdout).toMatch(/!!! restart EVERY kube-apiserver, kube-controller-manager and kube-scheduler/);
    // ... and says it again in the summary of a restore that ran.
    const ran = await ctl('restore', 'nobump-node-1-1700000000', '--yes');
    expect(ran.code, ran.stderr).toBe(0);
    expect(ran.stdout.slice(ran.stdout.indexOf('restore finished'))).toMatch(/warnings:\n {2}- the revision was not bumped: restart EVERY kube-apiserver/);
  });

  it('a plan with blockers and --yes: the plan with its blockers, then exit 4', async () => {
    const result = await ctl('restore', 'blocked-node-1-1700000000', '--yes');
    expect(result.code).toBe(4);
    expect(result.stdout).toContain('BLOCKERS (the restore cannot run while any is here):\n  - node-2: 1.0 GiB free where 4.0 GiB are needed');
    expect(result.stdout.trimEnd().split('\n').at(-1)).toMatch(
      /^blocked: resolve the blockers above, then run: etcd-stewardctl .* restore blocked-node-1-1700000000 --yes$/,
    );
    expect(result.stderr).toMatch(/^error\[RESTORE_BLOCKED\]: /);
    expect(result.stdout).not.toContain('restore finished');
  });

  it('--yes: progress lines on a non-terminal stderr, one per phase and member, and the summary; exit 0', async () => {
    const result = await ctl('restore', SNAPSHOT, '--yes');
    expect(result.code, result.stderr).toBe(0);
    expect(calls[0]?.yes).toBe(true);
    const progress = result.stderr.trimEnd().split('\n');
    expect(progress.map((l) => l.replace(/^\d\d:\d\d:\d\d /, ''))).toEqual([
      'restore: Started — lock taken',
      'node-2: Distribute 0 B of 2.0 GiB',
      'node-2: Distribute 2.0 GiB of 2.0 GiB',
      'node-2: Verify — sha256 matches',
      'node-3: Distribute 0 B of 2.0 GiB',
      'node-3: Distribute 2.0 GiB of 2.0 GiB',
      'node-3: Verify — sha256 matches',
      'restore: Shutdown',
      'restore: Restore',
      'restore: RestartCluster',
      'restore: Finished',
    ]);
    expect(result.stderr).not.toContain('\r');
    const out = result.stdout;
    expect(out).toContain('confirmed with --yes: restoring now');
    const summaryPart = out.slice(out.indexOf('restore finished'));
    expect(summaryPart).toMatch(/^restore finished: Finished, restore r-1700000100/);
    expect(summaryPart).toMatch(/snapshot:\s+etcd-snapshot-node-1-1700000000 \(revision 1000048213\)/);
    expect(summaryPart).toMatch(/cluster ID:\s+8e9e05c52164694d \(new\)/);
    expect(summaryPart).toMatch(/duration:\s+1m 3s/);
    expect(summaryPart).toContain(`distributed:  6.0 GiB (${3 * (2 * GiB + 12345)} bytes)`);
    expect(summaryPart).toMatch(/node-2\s+Finished\s+swapped\s+\/var\/lib\/etcd\/node-2-old-1700000100/);
  });

  it('a restore that fails after its Failed summary: the summary, then the error with its exit code (4, 1)', async () => {
    const verify = await ctl('restore', 'verify-fails-node-1-1700000000', '--yes');
    expect(verify.code).toBe(4);
    const out = verify.stdout.slice(verify.stdout.indexOf('\nrestore FAILED'));
    expect(out).toMatch(/restore FAILED: Failed, restore r-1700000100/);
    expect(out).toMatch(/cluster ID:\s+unchanged/);
    expect(out).toMatch(/error:\s+node-2: the received snapshot does not match its sha256/);
    expect(out).toMatch(/node-2\s+Failed\s+not swapped\s+\S+\s+sha256 mismatch/);
    expect(verify.stderr.trimEnd().split('\n').at(-1)).toBe(
      'error[RESTORE_VERIFY_FAILED]: node-2: the received snapshot does not match its sha256 — nothing was swapped; check node-2 disk and run the restore again',
    );
    expect(verify.stderr).toMatch(/node-2: Failed — sha256 mismatch/);

    const internal = await ctl('restore', 'internal-fails-node-1-1700000000', '--yes');
    expect(internal.code).toBe(1);
    expect(internal.stdout).toMatch(/node-3\s+Failed\s+rolled back/);
    expect(internal.stderr).toMatch(/^error\[RESTORE_FAILED\]: node-3: etcd did not start/m);
  });

  it('-o json: one JSON object per line per event, plan first and the result last', async () => {
    const result = await ctl('-o', 'json', 'restore', SNAPSHOT, '--yes');
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toBe('');
    const lines = result.stdout.trimEnd().split('\n');
    const events = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events.map((e) => e.event)).toEqual(['plan', ...progressEvents().map(() => 'progress'), 'result']);
    expect(events[0]).toMatchObject({ event: 'plan', restoreId: 'r-1700000100', revision: 48213, quorum: true, snapshot: { name: SNAPSHOT } });
    expect(Object.keys(events[1] ?? {})).toEqual(['event', 'member', 'phase', 'bytes', 'total', 'message', 'at']);
    expect(events[2]).toEqual({ event: 'progress', member: 'node-2', phase: 'Distribute', bytes: 0, total: 2 * GiB + 12345, message: '', at: at(1) });
    expect(events.at(-1)).toMatchObject({ event: 'result', phase: 'Finished', clusterId: '8e9e05c52164694d', bytesDistributed: 3 * (2 * GiB + 12345) });

    // A failure: the plan and the Failed result as lines, then the error on stderr.
    const failed = await ctl('-o', 'json', 'restore', 'verify-fails-node-1-1700000000', '--yes');
    expect(failed.code).toBe(4);
    const failedEvents = failed.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(failedEvents.at(-1)).toMatchObject({ event: 'result', phase: 'Failed', error: 'node-2: the received snapshot does not match its sha256' });
    expect(failed.stderr).toMatch(/^error\[RESTORE_VERIFY_FAILED\]/);

    const unconfirmed = await ctl('-o', 'json', 'restore', SNAPSHOT);
    expect(unconfirmed.code).toBe(4);
    expect(
      unconfirmed.stdout
        .trimEnd()
        .split('\n')
        .map((l) => (JSON.parse(l) as { event: string }).event),
    ).toEqual(['plan']);
  });

  it('a malformed name or a stray flag exits 2 before any call', async () => {
    for (const args of [
      ['restore', 'Bad/Name'],
      ['restore', '../etc'],
      ['restore', 'x'.repeat(300)],
      ['restore', SNAPSHOT, '--skip-member', ''],
      ['restore', 'status', '--yes'],
      ['restore', 'abort', '--skip-member', 'node-2'],
      ['restore'],
    ]) {
      const result = await ctl(...args);
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr, args.join(' ')).toMatch(/^error\[(INVALID_ARGUMENT|USAGE)\]: .+ — /);
      expect(result.stdout).toBe('');
    }
    expect(calls).toEqual([]);
  });

  it('restore status: every node with its phase, error or why it was unreachable, the lock and the next step', async () => {
    const result = await ctl('restore', 'status');
    expect(result.code, result.stderr).toBe(0);
    const out = result.stdout;
    expect(out).toMatch(/^restore r-1700000100 of snapshot etcd-snapshot-node-1-1700000000\n/);
    expect(out).toMatch(/lock:\s+held by node-1 since 2023-11-15T01:15:00.000Z/);
    expect(out).toMatch(
      /node-1\s+r-1700000100\s+etcd-snapshot-node-1-1700000000\s+Restore\s+2023-11-15T01:15:00.000Z\s+2023-11-15T01:16:03.000Z\s+swapped\s+\/var\/lib\/etcd\/node-1-old/,
    );
    expect(out).toMatch(/node-2\s+.*Failed.*etcdutl exited 1/);
    expect(out).toMatch(/node-3\s+UNREACHABLE: connect ECONNREFUSED 127.0.0.1:7403/);
    expect(out).toContain('node-2: next step: run etcd-stewardctl restore abort');
    expect(out.trimEnd().split('\n').at(-1)).toBe(`next step: ${statusResponse.nextStep}`);

    const json = await ctl('-o', 'json', 'restore', 'status');
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as { lockHolder: string; members: Array<Record<string, unknown>>; nextStep: string };
    expect(parsed.lockHolder).toBe('node-1');
    expect(parsed.nextStep).toBe(statusResponse.nextStep);
    expect(parsed.members[2]).toMatchObject({ node: 'node-3', unreachable: 'connect ECONNREFUSED 127.0.0.1:7403' });
    expect(Object.keys(parsed.members[0] ?? {})).toEqual([
      'node',
      'restoreId',
      'snapshot',
      'phase',
      'startedAt',
      'updatedAt',
      'oldDataDir',
      'swapped',
      'rolledBack',
      'error',
      'nextStep',
      'quarantineEndpoint',
      'unreachable',
    ]);
  });

  it('restore abort: the resulting status and which members were rolled back; exit 1 when one could not be', async () => {
    abortResponse = {
      ...statusResponse,
      lockHolder: '',
      lockTakenAt: '',
      nextStep: 'the cluster runs on its old data again',
      members: [
        member('node-1', { phase: 'Failed', rolledBack: true }),
        member('node-2', { phase: 'Failed', rolledBack: true }),
        member('node-3', { swapped: false }),
      ],
    };
    const result = await ctl('restore', 'abort');
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/lock:\s+free/);
    expect(result.stdout).toContain('rolled back to their old data dir: node-1, node-2');
    expect(result.stdout).not.toContain('NOT rolled back');

    abortResponse = { ...abortResponse, members: [member('node-1', { rolledBack: true }), member('node-2', { unreachable: 'deadline exceeded' })] };
    const partial = await ctl('restore', 'abort');
    expect(partial.code).toBe(1);
    expect(partial.stdout).toContain('NOT rolled back: node-2: unreachable (deadline exceeded); its state is unknown');
    expect(partial.stderr).toMatch(/^error\[PARTIAL_ABORT\]: the abort could not roll back node-2/);
  });

  it('ls: a fallback listing is noted on stderr; -o json keeps its array, --all -o json carries `fallback`', async () => {
    const record = {
      name: SNAPSHOT,
      node: 'node-1',
      location: 'file:///snapshots',
      size: 10,
      sha256: 'cd'.repeat(32),
      created: at(0),
      kind: 'scheduled',
      compressed: false,
    };
    listResponse = {
      snapshots: [{ ...record, locationId: 'local', key: SNAPSHOT, verification: null }],
      orphans: [],
      fallback: 'etcd is unavailable (no quorum); S3 could not be listed either',
    };
    const text = await ctl('ls');
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(SNAPSHOT);
    expect(text.stderr).toBe(
      'note: the inventory in etcd could not be read, so this listing comes from the stores themselves: etcd is unavailable (no quorum); S3 could not be listed either\n',
    );
    const json = await ctl('-o', 'json', 'ls');
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual([{ ...record, verified: null }]);
    expect(json.stderr).toMatch(/^note: /);
    const all = await ctl('-o', 'json', 'ls', '--all');
    expect(JSON.parse(all.stdout)).toEqual({ snapshots: [{ ...record, verified: null }], orphans: [], fallback: listResponse.fallback });

    listResponse = { ...listResponse, fallback: '' };
    const plain = await ctl('-o', 'json', 'ls');
    expect(plain.stderr).toBe('');
    expect(JSON.parse(plain.stdout)).toEqual([{ ...record, verified: null }]);
    expect((JSON.parse((await ctl('-o', 'json', 'ls', '--all')).stdout) as { fallback: string }).fallback).toBe('');
  });

  it('Ctrl-C cancels the restore call: the steward-side work stops, exit 130, and a pointer to restore status', async () => {
    const child = spawn(process.execPath, [CTL_JS, '--endpoint', endpoint, 'restore', 'hangs-node-1-1700000000', '--yes'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await expect.poll(() => hung, { timeout: 10_000 }).toBe(true);
    await expect.poll(() => stderr, { timeout: 10_000 }).toContain('node-2: Distribute');
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(stdout).toContain('restore plan r-1700000100');
    expect(stderr).toContain('note: the restore may have stopped part-way; etcd-stewardctl restore status shows where it stands');
    expect(stderr.trimEnd().split('\n').at(-1)).toMatch(/^error\[CANCELLED\]: /);
    await expect.poll(() => (stoppedBy as { code?: string } | undefined)?.code).toBe('CANCELLED');
  });

  // A real pseudo-terminal (util-linux `script`, in Debian's essential bsdutils) so stderr is a TTY: cli-progress
  // draws one bar per member. Without `script` this fails rather than passing unseen.
  it('on a terminal: a progress bar per member, "verified" after Distribute, phase lines above', async () => {
    const command = [process.execPath, CTL_JS, '--endpoint', endpoint, 'restore', SNAPSHOT, '--yes'].map((a) => `'${a}'`).join(' ');
    const output = await new Promise<{ code: number; out: string }>((resolve) => {
      execFile('/usr/bin/script', ['-qec', command, '/dev/null'], { timeout: 30_000, env: { ...process.env, COLUMNS: '160' } }, (err, stdout) => {
        const code = err && typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : err ? 1 : 0;
        resolve({ code, out: stdout });
      });
    });
    expect(output.code, output.out).toBe(0);
    // The final redraw: both bars full and verified.
    expect(output.out).toMatch(/node-2\s+\[=+\] 100% 2\.0 GiB \/ 2\.0 GiB\s+verified/);
    expect(output.out).toMatch(/node-3\s+\[=+\] 100% 2\.0 GiB \/ 2\.0 GiB\s+verified/);
    expect(output.out).toMatch(/restore: RestartCluster/);
    expect(output.out).toContain('restore finished: Finished');
  });
});
