import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { InvalidArgumentError, UnavailableError } from '../../src/errors/index.js';
import { BootstrapGate, decideBootstrap, type BootstrapFacts, type GateContext, type Verdict } from '../../src/control/bootstrap.js';
import { ControlStore } from '../../src/control/control-store.js';
import type { ClusterSpec } from '../../src/control/spec.js';
import type { RestorePhaseRecord } from '../../src/state/restore-phase.js';
import { writeRestorePhase } from '../../src/state/restore-phase.js';
import { LocalStore } from '../../src/store/local.js';

const context: GateContext = {
  config: {
    name: 'node-2',
    dataDir: '/var/lib/etcd',
    stateDir: '/var/lib/etcd-steward',
    initialCluster: [
      { name: 'node-1', peerUrl: 'http://10.0.0.1:2380' },
      { name: 'node-2', peerUrl: 'http://10.0.0.2:2380' },
    ],
    initialClusterToken: 'tok',
    initialClusterState: 'new',
    initialAdvertisePeerUrls: ['http://10.0.0.2:2380'],
  },
  shared: true,
  controlLocation: 's3://bucket/control/cluster-spec.json',
};

const spec = (more: Partial<ClusterSpec> = {}): ClusterSpec => ({
  formatVersion: 1,
  generation: 3,
  members: context.config.initialCluster,
  etcdVersion: '3.4.23',
  clusterToken: 'tok',
  clusterId: '',
  etcdFlags: {},
  updatedAt: '2026-01-01T00:00:00Z',
  fencingToken: '7',
  ...more,
});

const restoring = (phase: RestorePhaseRecord['phase']): RestorePhaseRecord => ({
  restoreId: 'r-1',
  phase,
  snapshot: 'on-demand-node-1-1700000000',
  startedAt: '2026-01-01T00:00:00Z',
  oldDataDir: '/var/lib/etcd-old-1700000000',
});

const noPeers = { answered: [], thisMemberRan: false, thisMemberId: undefined };
const peersListingMe = { answered: ['http://10.0.0.1:2380'], thisMemberRan: true, thisMemberId: 'abc' };
const peersRunning = { answered: ['http://10.0.0.1:2380'], thisMemberRan: false, thisMemberId: undefined };

function decide(facts: BootstrapFacts, ctx: GateContext = context): Verdict {
  const answer = decideBootstrap(facts, ctx);
  if ('need' in answer) throw new Error(`still needs ${answer.need}`);
  return answer;
}

describe('bootstrap gate verdicts (pure)', () => {
  it('reads the restore phase first, then the data dir; for a data dir with a member only the spec, and nothing else', () => {
    expect(decideBootstrap({}, context)).toEqual({ need: 'restore' });
    expect(decideBootstrap({ restore: null }, context)).toEqual({ need: 'hasData' });
    expect(decideBootstrap({ restore: null, hasData: true }, context)).toEqual({ need: 'spec' });
    expect(decide({ restore: null, hasData: true, spec: null })).toMatchObject({ allowed: true, kind: 'resume' });
    // A spec that cannot be read never holds back a member with data.
    expect(decide({ restore: null, hasData: true, spec: new Error('S3 down') })).toMatchObject({ allowed: true, kind: 'resume' });
    expect(decideBootstrap({ restore: null, hasData: false }, context)).toEqual({ need: 'peers' });
    expect(decideBootstrap({ restore: null, hasData: false, peers: noPeers }, context)).toEqual({ need: 'spec' });
    expect(decideBootstrap({ restore: null, hasData: false, peers: noPeers, spec: null }, context)).toEqual({ need: 'snapshots' });
  });

  it('a data dir moved aside by a restore in progress is never a lost member, whatever the peers and the spec say', () => {
    const everythingSaysLost: BootstrapFacts = { restore: restoring('Restore'), hasData: false, peers: peersListingMe, spec: spec({ clusterId: 'c1' }) };
    const verdict = decide(everythingSaysLost);
    expect(verdict).toMatchObject({ allowed: false, kind: 'restore-in-progress', level: 'warn' });
    if (verdict.allowed) throw new Error('allowed');
    expect(verdict.reason).toContain('restore r-1 of on-demand-node-1-1700000000');
    expect(verdict.reason).toContain('phase Restore');
    expect(verdict.reason).toContain('/var/lib/etcd-old-1700000000');
    expect(verdict.reason).not.toMatch(/lost its data/);
    // It is decided before any peer is asked.
    expect(decideBootstrap({ restore: restoring('Shutdown'), hasData: false }, context)).toMatchObject({ kind: 'restore-in-progress' });
  });

  it('a restore that put its data dir in place lets etcd start; a finished or failed one no longer holds anything back', () => {
    expect(decide({ restore: restoring('RestartCluster'), hasData: true, spec: null })).toMatchObject({ allowed: true, kind: 'resume' });
    for (const phase of ['Finished', 'Failed'] as const) {
      expect(decide({ restore: restoring(phase), hasData: false, peers: peersListingMe })).toMatchObject({ allowed: false, kind: 'lost-member' });
    }
  });

  it('a member a restore left out (--skip-member) is held back with its data until it is re-added; once it has run again it resumes', () => {
    const lastRestore = { restoreId: 'r-9', snapshot: 'on-demand-node-1-1700000000', at: '2026-01-01T00:00:00Z', skipped: [context.config.name] };
    const left = decide({ restore: null, hasData: true, spec: spec({ clusterId: 'c2', startedMembers: ['node-1'], lastRestore }) });
    expect(left).toMatchObject({ allowed: false, kind: 'skipped-by-restore', level: 'error' });
    if (left.allowed) throw new Error('allowed');
    expect(left.reason).toContain('restore r-9');
    expect(left.fix).toContain('etcdctl member add');
    expect(left.fix).toContain('--initial-cluster-state=existing');
    const readded = decide({ restore: null, hasData: true, spec: spec({ clusterId: 'c2', startedMembers: ['node-1', context.config.name], lastRestore }) });
    expect(readded).toMatchObject({ allowed: true, kind: 'resume' });
  });

  it('an unreadable restore phase or data dir holds etcd back, never passes for "none"', () => {
    const damaged = new UnavailableError('RESTORE_PHASE_UNREADABLE', 'phase.json is not valid JSON', { hint: 'inspect it' });
    expect(decide({ restore: damaged, hasData: true })).toMatchObject({ allowed: false, kind: 'restore-phase-unreadable', fix: 'inspect it' });
    const unreadable = new UnavailableError('DATA_DIR_UNREADABLE', 'cannot read /var/lib/etcd/member/wal', { hint: 'fix the permissions' });
    expect(decide({ restore: null, hasData: unreadable })).toMatchObject({ allowed: false, kind: 'data-dir-unreadable', fix: 'fix the permissions' });
  });

  it('--initial-cluster-state=existing joins without asking anyone', () => {
    const ctx = { ...context, config: { ...context.config, initialClusterState: 'existing' as const } };
    expect(decide({ restore: null, hasData: false }, ctx)).toMatchObject({ allowed: true, kind: 'join-existing' });
  });

  it('a member the running members list as started lost its data: held back with the member ID to remove', () => {
    const verdict = decide({ restore: null, hasData: false, peers: peersListingMe });
    expect(verdict).toMatchObject({ allowed: false, kind: 'lost-member', level: 'error' });
    if (verdict.allowed) throw new Error('allowed');
    expect(verdict.fix).toContain('etcdctl member remove abc, etcdctl member add node-2 --peer-urls=http://10.0.0.2:2380');
  });

  it('the spec: damaged, drifted, recording this member as run, or formed without it', () => {
    const damaged = decide({ restore: null, hasData: false, peers: noPeers, spec: new InvalidArgumentError('not JSON') });
    expect(damaged).toMatchObject({ allowed: false, kind: 'spec-unreadable' });
    if (damaged.allowed) throw new Error('allowed');
    expect(damaged.fix).toContain('the spec file is damaged');
    expect(decide({ restore: null, hasData: false, peers: noPeers, spec: spec({ clusterToken: 'other' }) })).toMatchObject({
      allowed: false,
      kind: 'spec-drift',
    });
    const recorded = decide({ restore: null, hasData: false, peers: noPeers, spec: spec({ clusterId: 'c1', startedMembers: ['node-1', 'node-2'] }) });
    expect(recorded).toMatchObject({ allowed: false, kind: 'lost-member' });
    const formedWithout = spec({ clusterId: 'c1', startedMembers: ['node-1'] });
    expect(decide({ restore: null, hasData: false, peers: peersRunning, spec: formedWithout })).toMatchObject({ allowed: true, kind: 'join-formed' });
    expect(decide({ restore: null, hasData: false, peers: noPeers, spec: formedWithout })).toMatchObject({ allowed: false, kind: 'no-member-answers' });
    expect(decide({ restore: null, hasData: false, peers: peersRunning, spec: spec() })).toMatchObject({ allowed: true, kind: 'join-forming' });
  });

  it('before formation: snapshots forbid a new cluster, an unlisted store holds back, a shared store waits for init', () => {
    const base: BootstrapFacts = { restore: null, hasData: false, peers: noPeers };
    expect(decide({ ...base, spec: spec(), snapshots: new Error('S3 down') })).toMatchObject({ allowed: false, kind: 'snapshots-unlisted' });
    expect(decide({ ...base, spec: null, snapshots: 2 })).toMatchObject({ allowed: false, kind: 'snapshots-exist' });
    expect(decide({ ...base, spec: null, snapshots: 0 })).toMatchObject({ allowed: false, kind: 'waiting-for-init', level: 'warn' });
    expect(decide({ ...base, spec: null, snapshots: 0 }, { ...context, shared: false })).toMatchObject({ allowed: true, kind: 'bootstrap' });
    expect(decide({ ...base, spec: spec(), snapshots: 0 })).toMatchObject({ allowed: true, kind: 'bootstrap' });
  });
});

describe('BootstrapGate reads the persisted restore phase from the state dir', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'gate-test-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('an empty data dir during a restore gets restore-in-progress, without asking any peer (they are unreachable here)', async () => {
    const stateDir = join(root, 'state');
    const config = await loadConfig(
      [
        '--grpc-plaintext-dev=true',
        '--name=node-1',
        `--data-dir=${join(root, 'data')}`,
        `--state-dir=${stateDir}`,
        '--initial-cluster=node-1=http://127.0.0.1:2380,node-2=http://127.0.0.1:1',
      ],
      '0.0.0',
    );
    await writeRestorePhase(stateDir, restoring('Restore'));
    const client = new Etcd3({ hosts: 'http://127.0.0.1:1' });
    try {
      const gate = new BootstrapGate({
        config,
        control: new ControlStore(new LocalStore(join(stateDir, 'control')), client),
        shared: false,
        backupStores: [],
        logger: pino({ level: 'silent' }),
      });
      const started = Date.now();
      const verdict = await gate.verdict(AbortSignal.timeout(10_000));
      expect(verdict).toMatchObject({ allowed: false, kind: 'restore-in-progress' });
      // The peer check has a 2 s timeout; deciding first means it never ran.
      expect(Date.now() - started).toBeLessThan(1000);
    } finally {
      client.close();
    }
  });
});
