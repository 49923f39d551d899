import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import type { LeaderTerm } from '../../src/election/election.js';
import { ClusterProbe } from '../../src/etcd/health.js';
import { StewardError } from '../../src/errors/index.js';
import { StewardMetrics } from '../../src/observability/metrics.js';
import { ControlStore, SPEC_KEY, SPEC_RECORD_KEY, render } from '../../src/control/control-store.js';
import { SpecService } from '../../src/control/service.js';
import type { ClusterSpec } from '../../src/control/spec.js';
import { LocalStore } from '../../src/store/local.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';

const signal = (): AbortSignal => AbortSignal.timeout(10_000);

describe('spec set and the recovery copy refuse what the flags would refuse (real etcd)', () => {
  let etcd: EtcdCluster;
  let client: Etcd3;
  let probe: ClusterProbe;
  let root: string;
  let run = 0;
  let store: LocalStore;
  let service: SpecService;
  let term: LeaderTerm;
  let stateDir: string;

  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
    client = new Etcd3({ hosts: etcd.endpoints });
    probe = new ClusterProbe(etcd.endpoints, 2000);
    root = await mkdtemp(join(tmpdir(), 'spec-service-'));
  });
  beforeEach(async () => {
    run += 1;
    await client.delete().key(SPEC_RECORD_KEY);
    stateDir = join(root, `state-${run}`);
    store = new LocalStore(join(root, `control-${run}`));
    const control = new ControlStore(store, client);
    const campaignKey = `etcd-steward/election/leader/test-${run}`;
    const put = await client.put(campaignKey).value('node-1').exec();
    term = { campaignKey, fencingToken: put.header.revision, signal: new AbortController().signal, startedAt: new Date() };
    const running = etcd.members[0];
    if (!running) throw new Error('no member');
    const config = await loadConfig(
      [
        '--grpc-plaintext-dev=true',
        '--name=etcd-1',
        `--state-dir=${stateDir}`,
        `--data-dir=${join(root, `data-${run}`)}`,
        `--initial-cluster=etcd-1=${running.peerUrl},node-2=http://127.0.0.1:1`,
      ],
      '0.0.0',
    );
    service = new SpecService({
      config,
      control,
      shared: true,
      backupStores: [],
      clusterHealth: () => probe.probe(),
      metrics: new StewardMetrics(),
      logger: pino({ level: 'silent' }),
      currentTerm: () => term,
    });
    await control.initialise({ members: config.initialCluster, etcdVersion: '3.4.23', clusterToken: 'etcd-steward', clusterId: '', etcdFlags: {} }, signal());
  });
  afterAll(async () => {
    probe?.close();
    client?.close();
    await etcd?.stop();
    await rm(root, { recursive: true, force: true });
  });

  const current = async (): Promise<ClusterSpec> => JSON.parse((await store.readSmall(SPEC_KEY, signal())).toString()) as ClusterSpec;
  const codeOf = async (promise: Promise<unknown>): Promise<string> =>
    (
      (await promise.then(
        () => undefined,
        (e: unknown) => e,
      )) as StewardError | undefined
    )?.code ?? 'accepted';

  it('the generation moves by exactly one: 9007199254740990 and a jump are refused and change nothing', async () => {
    const spec = await current();
    expect(await codeOf(service.set(JSON.stringify({ ...spec, generation: 9007199254740990 }), signal()))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(service.set(JSON.stringify({ ...spec, generation: spec.generation + 5 }), signal()))).toBe('GENERATION_SKIP');
    expect(await current()).toEqual(spec);
    expect((await service.set(JSON.stringify(spec), signal())).generation).toBe(spec.generation + 1);
    expect(await codeOf(service.set(JSON.stringify(spec), signal()))).toBe('STALE_GENERATION');
  });

  it('a NUL byte in the token and a javascript: peer URL are refused', async () => {
    const spec = await current();
    expect(await codeOf(service.set(JSON.stringify({ ...spec, clusterToken: 'etcd\u0000steward' }), signal()))).toBe('INVALID_ARGUMENT');
    const members = spec.members.map((m) => (m.name === 'node-2' ? { ...m, peerUrl: 'javascript:alert(1)' } : m));
    expect(await codeOf(service.set(JSON.stringify({ ...spec, members }), signal()))).toBe('INVALID_ARGUMENT');
    expect(await current()).toEqual(spec);
  });

  it('a member that runs now cannot vanish without force; one that does not run can', async () => {
    const spec = await current();
    const withoutRunning = { ...spec, members: spec.members.filter((m) => m.name !== 'etcd-1') };
    const err = await service.set(JSON.stringify(withoutRunning), signal()).catch((e: unknown) => e);
    expect((err as StewardError).code).toBe('RUNNING_MEMBER_DROPPED');
    expect((err as StewardError).describe()).toMatch(/drops member\(s\) etcd-1, which run in the cluster now — remove the member from etcd first .* --force/);
    expect(await current()).toEqual(spec);
    const forced = await service.set(JSON.stringify(withoutRunning), signal(), { force: true });
    expect(forced.members.map((m) => m.name)).toEqual(['node-2']);
    const next = await current();
    const back = await service.set(JSON.stringify({ ...next, members: spec.members }), signal());
    const withoutIdle = { ...back, members: back.members.filter((m) => m.name !== 'node-2') };
    expect((await service.set(JSON.stringify(withoutIdle), signal())).members.map((m) => m.name)).toEqual(['etcd-1']);
  });

  it('the recovery copy last-cluster-spec.json (0600) is never replaced by a stored spec that fails validation', async () => {
    await service.check(signal());
    const copyPath = join(stateDir, 'last-cluster-spec.json');
    const kept = await readFile(copyPath, 'utf8');
    expect((await stat(copyPath)).mode & 0o777).toBe(0o600);
    expect((await stat(stateDir)).mode & 0o777).toBe(0o700);
    const spec = await current();
    const hostile = [
      { ...spec, generation: spec.generation + 1, members: spec.members.map((m) => ({ ...m, peerUrl: 'javascript:alert(1)' })) },
      { ...spec, generation: spec.generation + 1, clusterToken: 'a\u0000b' },
      { ...spec, generation: 9007199254740990 },
    ];
    for (const bad of hostile) {
      // Written straight into the control store, as a careless operator or a broken tool would.
      await store.putSmall(SPEC_KEY, render(bad), signal());
      await service.check(signal());
      expect(service.state.healthy).toBe(false);
      expect(service.state.problem).toMatch(/not a valid cluster spec/);
      expect(await readFile(copyPath, 'utf8')).toBe(kept);
    }
  });
});
