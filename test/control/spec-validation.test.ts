import { describe, expect, it } from 'vitest';
import { StewardError } from '../../src/errors/index.js';
import { MAX_GENERATION, MAX_SPEC_BYTES, parseSpec } from '../../src/control/spec.js';

const good = {
  formatVersion: 1,
  generation: 4,
  members: [
    { name: 'node-1', peerUrl: 'http://10.0.0.1:2380' },
    { name: 'node-2', peerUrl: 'https://10.0.0.2:2380' },
  ],
  etcdVersion: '3.4.23',
  clusterToken: 'etcd-steward',
  clusterId: 'cdf818194e3a8c32',
  startedMembers: ['node-1', 'node-2'],
  etcdFlags: { 'snapshot-count': '5000' },
  updatedAt: '2026-01-01T00:00:00.000Z',
  fencingToken: '42',
};

function refusal(value: unknown): string {
  try {
    parseSpec(JSON.stringify(value), 'the spec file');
  } catch (err) {
    expect(err).toBeInstanceOf(StewardError);
    expect((err as StewardError).code).toBe('INVALID_ARGUMENT');
    return (err as StewardError).message;
  }
  throw new Error('accepted');
}

describe('a cluster spec is validated as strictly as the flags', () => {
  it('accepts a spec as spec get prints it', () => {
    expect(parseSpec(JSON.stringify(good), 'x')).toMatchObject({ generation: 4, members: good.members });
  });

  it('refuses a generation that is not a small safe integer (9007199254740990 once wedged every write)', () => {
    expect(refusal({ ...good, generation: 9007199254740990 })).toMatch(/generation/);
    expect(refusal({ ...good, generation: MAX_GENERATION + 1 })).toMatch(/generation/);
    expect(refusal({ ...good, generation: 1.5 })).toMatch(/generation/);
    expect(refusal({ ...good, generation: 0 })).toMatch(/generation/);
    expect(refusal({ ...good, generation: '5' })).toMatch(/generation/);
    expect(parseSpec(JSON.stringify({ ...good, generation: MAX_GENERATION }), 'x').generation).toBe(MAX_GENERATION);
  });

  it('refuses peer URLs the --initial-cluster flag refuses: javascript:, no port, a path, NUL bytes, spaces', () => {
    for (const peerUrl of [
      'javascript:alert(1)',
      'file:///etc/passwd',
      'ftp://10.0.0.1:21',
      'http://10.0.0.1',
      'http://10.0.0.1:2380/x',
      'http://10.0.0.1:2380\u0000',
      'http://10.0\u0000.0.1:2380',
      ' http://10.0.0.1:2380',
    ]) {
      expect(refusal({ ...good, startedMembers: ['node-1'], members: [{ name: 'node-1', peerUrl }] }), JSON.stringify(peerUrl)).toMatch(/members\.0\.peerUrl/);
    }
  });

  it('refuses member names the flag refuses and duplicate names or peer URLs', () => {
    expect(refusal({ ...good, startedMembers: [], members: [{ name: 'node 1', peerUrl: 'http://10.0.0.1:2380' }] })).toMatch(/members\.0\.name/);
    expect(refusal({ ...good, startedMembers: [], members: [{ name: '-x', peerUrl: 'http://10.0.0.1:2380' }] })).toMatch(/members\.0\.name/);
    expect(refusal({ ...good, members: [good.members[0], { ...good.members[0], peerUrl: 'http://10.0.0.9:2380' }] })).toMatch(/unique/);
    expect(refusal({ ...good, members: [good.members[0], { name: 'node-3', peerUrl: 'http://10.0.0.1:2380/' }] })).toMatch(/peer URLs must be unique/);
  });

  it('refuses a cluster token with a NUL byte or other control characters, empty, padded or too long', () => {
    for (const clusterToken of ['a\u0000b', 'tab\there', 'line\nbreak', 'zero\u200bwidth', '', ' padded', 'x'.repeat(256)]) {
      expect(refusal({ ...good, clusterToken }), JSON.stringify(clusterToken)).toMatch(/clusterToken/);
    }
  });

  it('refuses bad flags, cluster IDs, fencing tokens and startedMembers outside the members', () => {
    expect(refusal({ ...good, etcdFlags: { '--data-dir': '/x' } })).toMatch(/etcdFlags/);
    expect(refusal({ ...good, etcdFlags: { 'snapshot-count': '1\u0000' } })).toMatch(/etcdFlags/);
    expect(refusal({ ...good, clusterId: 'XYZ' })).toMatch(/clusterId/);
    expect(refusal({ ...good, fencingToken: 'abc' })).toMatch(/fencingToken/);
    expect(refusal({ ...good, startedMembers: ['node-9'] })).toMatch(/startedMembers/);
  });

  it("keeps each member's steward gRPC address when it is one a peer can dial; older specs without it stay valid", () => {
    const withGrpc = (grpc: string): unknown => ({ ...good, members: [{ ...good.members[0], grpc }, good.members[1]] });
    for (const grpc of ['10.0.0.1:7401', 'node-1.cluster.local:7401', '[fd00::1]:7401']) {
      expect(parseSpec(JSON.stringify(withGrpc(grpc)), 'x').members[0]?.grpc, grpc).toBe(grpc);
    }
    for (const grpc of [
      'javascript:alert(1)',
      '0.0.0.0:7401',
      ':7401',
      '10.0.0.1',
      '10.0.0.1:0',
      '10.0.0.1:65536',
      '10.0.0.1:7401\u0000',
      'http://10.0.0.1:7401',
    ]) {
      expect(refusal(withGrpc(grpc)), JSON.stringify(grpc)).toMatch(/members\.0\.grpc/);
    }
    expect(parseSpec(JSON.stringify(good), 'x').members[0]).not.toHaveProperty('grpc');
  });

  it('refuses a spec over 1 MiB before parsing it', () => {
    const text = JSON.stringify({ ...good, etcdVersion: 'x'.repeat(MAX_SPEC_BYTES) });
    expect(() => parseSpec(text, 'the spec file')).toThrow(/more than the 1048576 a cluster spec may be/);
  });
});
