import { describe, expect, it } from 'vitest';
import { FALLBACK_BUMP, buildPlan, neededBytes, revisionBump, type PlanInput, type PlanMemberInput, type PrepareFacts } from '../../src/restore/plan.js';
import type { SnapshotMetadata } from '../../src/snapshot/metadata.js';

const MiB = 1024 * 1024;

const metadata: SnapshotMetadata = {
  formatVersion: 1,
  name: 'etcd-snapshot-node-1-1700000000',
  key: 'etcd-snapshot-node-1-1700000000',
  node: 'node-1',
  kind: 'on-demand',
  created: '2023-11-14T22:13:20.000Z',
  size: 100 * MiB,
  sha256: 'ab'.repeat(32),
  compressed: false,
  etcdVersion: '3.4.23',
  clusterId: 'c1',
  revision: 5000,
  fencingToken: '7',
};

function facts(overrides: Partial<PrepareFacts> = {}): PrepareFacts {
  return {
    dataDir: '/var/lib/etcd',
    dataDirExists: true,
    oldDataDir: '/var/lib/etcd-old-1700000100',
    stateFreeBytes: 10_000 * MiB,
    dataFreeBytes: 10_000 * MiB,
    etcdVersion: '3.4.23',
    lastRevision: 4000,
    restoreTool: 'etcdutl 3.5.17',
    toolBumpsRevision: true,
    peerUrls: ['http://10.0.0.1:2380'],
    state: null,
    stateDir: '/var/lib/etcd-steward',
    ...overrides,
  };
}

function plan(members: PlanMemberInput[], more: Partial<PlanInput> = {}): ReturnType<typeof buildPlan> {
  return buildPlan({
    restoreId: 'r-1',
    metadata,
    sourceUrl: 's3://bucket/etcd',
    coordinator: 'node-1',
    quorum: true,
    resume: false,
    members,
    problems: [],
    now: new Date('2023-11-15T01:15:20.000Z'),
    ...more,
  });
}

const answering = (node: string, f: Partial<PrepareFacts> = {}, skipped = false): PlanMemberInput => ({ node, facts: facts(f), skipped });

describe('buildPlan', () => {
  it('a healthy three-member plan has no blockers, bumps the revision and says what each member keeps', () => {
    const result = plan([answering('node-1'), answering('node-2'), answering('node-3', { lastRevision: 9000 })]);
    expect(result.blockers).toEqual([]);
    expect(result.warnings).toEqual([]);
    expect(result.bumpRevision).toBe(Math.ceil(9000 * 1.2));
    expect(result.bumpNote).toContain(`--bump-revision ${Math.ceil(9000 * 1.2)} --mark-compacted`);
    expect(result.members.map((m) => [m.node, m.oldDataDir, m.neededBytes, m.problem])).toEqual([
      ['node-1', '/var/lib/etcd-old-1700000100', 200 * MiB, ''],
      ['node-2', '/var/lib/etcd-old-1700000100', 200 * MiB, ''],
      ['node-3', '/var/lib/etcd-old-1700000100', 200 * MiB, ''],
    ]);
    expect(result.ageSeconds).toBe(3 * 3600 + 2 * 60);
  });

  it('an unreachable member blocks the restore and names --skip-member; skipped, it is a warning instead', () => {
    const down: PlanMemberInput = { node: 'node-3', facts: new Error('connect ECONNREFUSED 10.0.0.3:7401'), skipped: false };
    const blocked = plan([answering('node-1'), answering('node-2'), down]);
    expect(blocked.blockers).toEqual([
      'member node-3: its steward does not answer: connect ECONNREFUSED 10.0.0.3:7401 — bring it back, or pass --skip-member node-3 to restore without it',
    ]);
    expect(blocked.members[2]?.problem).toBe('its steward does not answer: connect ECONNREFUSED 10.0.0.3:7401');

    const skipped = plan([answering('node-1'), answering('node-2'), { ...down, skipped: true }]);
    expect(skipped.blockers).toEqual([]);
    expect(skipped.warnings).toEqual([
      'member node-3 is skipped (--skip-member): left out of the restored cluster (its old data cannot rejoin: the cluster ID changed); move its data dir aside and re-add it with etcdctl member add',
    ]);
    expect(skipped.members[2]?.skipped).toBe(true);
  });

  it('not enough disk on either volume blocks, with both numbers in the message', () => {
    const needed = neededBytes(metadata);
    expect(needed).toBe(2 * metadata.size);
    const result = plan([answering('node-1'), answering('node-2', { dataFreeBytes: 150 * MiB }), answering('node-3', { stateFreeBytes: needed - 1 })]);
    expect(result.blockers).toEqual([
      `member node-2: not enough disk: ${150 * MiB} bytes free on the state dir or the data dir's volume, ${needed} needed (staging file and restored data dir)`,
      `member node-3: not enough disk: ${needed - 1} bytes free on the state dir or the data dir's volume, ${needed} needed (staging file and restored data dir)`,
    ]);
    expect(result.members[1]?.freeBytes).toBe(150 * MiB);
    // Exactly enough is enough.
    expect(plan([answering('node-1', { stateFreeBytes: needed, dataFreeBytes: needed })]).blockers).toEqual([]);
  });

  it('a gzip snapshot budgets six times its stored size, twice, plus the staging of the stored bytes', () => {
    const gz = { ...metadata, compressed: true, size: 10 * MiB };
    expect(neededBytes(gz)).toBe(10 * MiB + 2 * 60 * MiB);
    const result = plan([answering('node-1', { dataFreeBytes: 100 * MiB })], { metadata: gz });
    expect(result.blockers).toEqual([expect.stringContaining(`${100 * MiB} bytes free on the state dir or the data dir's volume, ${130 * MiB} needed`)]);
  });

  it('a snapshot of a newer etcd minor than a member runs blocks that member; a newer patch does not', () => {
    const result = plan([answering('node-1', { etcdVersion: '3.5.17' }), answering('node-2', { etcdVersion: '3.4.23' })], {
      metadata: { ...metadata, etcdVersion: '3.5.9' },
    });
    expect(result.blockers).toEqual([
      'member node-2: the snapshot is from etcd 3.5.9, newer than the etcd 3.4.23 this member runs (etcd refuses a data dir of a newer version)',
    ]);
    expect(plan([answering('node-1', { etcdVersion: '3.4.20' })], { metadata: { ...metadata, etcdVersion: '3.4.23' } }).blockers).toEqual([]);
    // A version nobody recorded is no reason to refuse.
    expect(plan([answering('node-1', { etcdVersion: '' })], { metadata: { ...metadata, etcdVersion: '3.6.0' } }).blockers).toEqual([]);
  });

  it('a member with both problems gets both in its problem line and two blockers', () => {
    const result = plan([answering('node-1', { etcdVersion: '3.4.23', dataFreeBytes: 1 })], { metadata: { ...metadata, etcdVersion: '3.5.0' } });
    expect(result.blockers).toHaveLength(2);
    expect(result.members[0]?.problem).toMatch(/^not enough disk: 1 bytes free .*; the snapshot is from etcd 3.5.0, newer than the etcd 3.4.23/);
  });

  it('any restored member whose tool cannot bump: bump 0, a loud note naming the tools, and a warning to restart watchers', () => {
    const result = plan([answering('node-1'), answering('node-2', { restoreTool: 'etcdctl 3.4.23', toolBumpsRevision: false })]);
    expect(result.blockers).toEqual([]);
    expect(result.bumpRevision).toBe(0);
    expect(result.bumpNote).toContain('the restore tool here cannot bump the revision (etcdutl 3.5.17, etcdctl 3.4.23');
    expect(result.bumpNote).toContain(`the revision goes back to ${metadata.revision}`);
    expect(result.bumpNote).toContain('restart every kube-apiserver, controller manager and scheduler after the restore');
    expect(result.warnings).toContain('revision not bumped: restart every kube-apiserver, controller manager and scheduler after the restore');
  });

  it("a skipped member's tool does not decide the bump, but its last revision still raises it", () => {
    const result = plan([answering('node-1'), answering('node-2', { toolBumpsRevision: false, restoreTool: 'etcdctl 3.4.23', lastRevision: 20_000 }, true)]);
    expect(result.bumpRevision).toBe(24_000);
  });

  it('a resumed restore keeps the bump it started with', () => {
    expect(plan([answering('node-1', { lastRevision: 99_999 })], { bumpRevision: 1234, resume: true }).bumpRevision).toBe(1234);
  });

  it('every member skipped blocks: nothing to restore', () => {
    expect(plan([answering('node-1', {}, true)]).blockers).toEqual(['every member is skipped: nothing to restore']);
  });

  it('problems found before the plan are carried as warnings', () => {
    expect(plan([answering('node-1')], { problems: ['the spec could not be read'] }).warnings).toEqual(['the spec could not be read']);
  });
});

describe('revisionBump', () => {
  it('is ceil(max(last revision, snapshot revision) × 1.2)', () => {
    expect(revisionBump([facts({ lastRevision: 1000 }), facts({ lastRevision: 3000 })], 2000)).toBe(3600);
    expect(revisionBump([facts({ lastRevision: 10 })], 5000)).toBe(6000);
    expect(revisionBump([facts({ lastRevision: 7 })], 0)).toBe(9); // 8.4 rounds up
    expect(revisionBump([], 101)).toBe(122); // 121.2 rounds up
  });

  it('falls back to 1e9 when nothing is known', () => {
    expect(FALLBACK_BUMP).toBe(1_000_000_000);
    expect(revisionBump([], 0)).toBe(FALLBACK_BUMP);
    expect(revisionBump([facts({ lastRevision: 0 }), facts({ lastRevision: 0 })], 0)).toBe(FALLBACK_BUMP);
  });
});
