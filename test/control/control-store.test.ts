import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Fence } from '../../src/election/election.js';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NotFoundError, StewardError } from '../../src/errors/index.js';
import { LocalStore } from '../../src/store/local.js';
import { ControlStore, SPEC_KEY, SPEC_RECORD_KEY, type SpecDraft } from '../../src/control/control-store.js';
import { S3Store } from '../../src/store/s3.js';
import type { BackupStore } from '../../src/store/store.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';
import { S3Server } from '../harness/s3.js';

const DRAFT: SpecDraft = {
  members: [{ name: 'node-1', peerUrl: 'http://127.0.0.1:2380' }],
  etcdVersion: '3.4.23',
  clusterToken: 'test',
  clusterId: '',
  etcdFlags: {},
};
const signal = (): AbortSignal => AbortSignal.timeout(10_000);

async function waitFor(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('condition not met within 5 s');
}

describe("ControlStore: etcd orders and fences spec writes, the control store gets etcd's newest record (real etcd, real s3rver)", () => {
  let etcd: EtcdCluster;
  let s3: S3Server;
  let client: Etcd3;
  let s3Store: S3Store;
  let control: ControlStore;
  let fence: Fence;
  let run = 0;

  beforeAll(async () => {
    [etcd, s3] = await Promise.all([EtcdCluster.start(1), S3Server.start({ bucket: 'control' })]);
    client = new Etcd3({ hosts: etcd.endpoints });
  });
  beforeEach(async () => {
    run += 1;
    await client.delete().key(SPEC_RECORD_KEY);
    s3Store?.close();
    s3Store = new S3Store(s3.storeOptions(`control-${run}`));
    control = new ControlStore(s3Store, client);
    // A campaign key as the election writes it: the fencing token is its create revision.
    const campaignKey = `etcd-steward/election/leader/test-${run}`;
    const put = await client.put(campaignKey).value('node-1').exec();
    fence = { campaignKey, fencingToken: put.header.revision };
  });
  afterAll(async () => {
    s3Store?.close();
    client?.close();
    await Promise.all([etcd?.stop(), s3?.stop()]);
  });

  const stored = async (): Promise<{ generation: number; clusterId: string }> =>
    JSON.parse((await s3Store.readSmall(SPEC_KEY, signal())).toString()) as { generation: number; clusterId: string };

  it("a write lands in etcd and in S3 with the next generation and the leader's token", async () => {
    await control.initialise(DRAFT, signal());
    const written = await control.write({ ...DRAFT, clusterId: 'abc123' }, 1, fence, signal());
    expect(written).toMatchObject({ generation: 2, clusterId: 'abc123', fencingToken: fence.fencingToken });
    expect(await stored()).toMatchObject({ generation: 2, clusterId: 'abc123' });
    expect((await control.readRecord())?.spec.generation).toBe(2);
  });

  it('a stale leader is refused and nothing changes', async () => {
    await control.initialise(DRAFT, signal());
    // A newer campaign key takes the same name: the old token no longer matches its create revision.
    await client.delete().key(fence.campaignKey);
    await client.put(fence.campaignKey).value('node-2');
    const err = await control.write(DRAFT, 1, fence, signal()).catch((e: unknown) => e);
    expect((err as StewardError).code).toBe('STALE_LEADER');
    expect(await control.readRecord()).toBeUndefined();
    expect((await stored()).generation).toBe(1);
  });

  it("a stale generation is refused, counting etcd's record even when S3 lags behind it", async () => {
    await control.initialise(DRAFT, signal());
    await control.write(DRAFT, 1, fence, signal());
    // A leader died after etcd took generation 3 but before S3 got it.
    const record = await control.readRecord();
    await client.put(SPEC_RECORD_KEY).value(JSON.stringify({ ...record?.spec, generation: 3 }));
    expect((await stored()).generation).toBe(2);
    const err = await control.write(DRAFT, 2, fence, signal()).catch((e: unknown) => e);
    expect((err as StewardError).code).toBe('STALE_GENERATION');
    // The next leader finishes the interrupted write ...
    await control.copyRecord(signal());
    expect((await stored()).generation).toBe(3);
    // ... and the next write follows it.
    expect((await control.write(DRAFT, 3, fence, signal())).generation).toBe(4);
  });

  it('a control store that cannot be read fails the write instead of passing for "no spec", and etcd is untouched', async () => {
    const broken = new S3Store({ ...s3.storeOptions('control'), bucket: 'no-such-bucket' });
    try {
      const err = await new ControlStore(broken, client).write(DRAFT, 0, fence, signal()).catch((e: unknown) => e);
      expect((err as StewardError).code).toBe('S3_NO_SUCH_BUCKET');
      expect(await control.readRecord()).toBeUndefined();
    } finally {
      broken.close();
    }
  });

  it('a spec deleted from S3 is written back by the next spec set, after every generation seen', async () => {
    await control.initialise(DRAFT, signal());
    await control.write(DRAFT, 1, fence, signal());
    await s3Store.delete(SPEC_KEY, signal());
    expect(await control.read(signal())).toBeUndefined();
    // The operator sets the copy a steward kept (generation 2): etcd's record keeps the order.
    expect((await control.write(DRAFT, 2, fence, signal())).generation).toBe(3);
    expect((await stored()).generation).toBe(3);
  });

  it('two writes whose copies overtake each other still leave the newest generation in S3', async () => {
    await control.initialise(DRAFT, signal());
    // Writer A's copy to S3 is held up until writer B has written and copied a newer generation.
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    let holdNext = true;
    const slowStore: BackupStore = Object.assign(Object.create(s3Store) as S3Store, {
      putSmall: async (key: string, body: string | Buffer, sig: AbortSignal): Promise<void> => {
        if (holdNext) {
          holdNext = false;
          await held;
        }
        return s3Store.putSmall(key, body, sig);
      },
    });
    const writerA = new ControlStore(slowStore, client);
    const a = writerA.write({ ...DRAFT, etcdVersion: 'from-a' }, 1, fence, signal());
    await waitFor(async () => (await control.readRecord())?.spec.generation === 2);
    const b = await control.write({ ...DRAFT, etcdVersion: 'from-b' }, 2, fence, signal());
    expect(b.generation).toBe(3);
    expect(await stored()).toMatchObject({ generation: 3 });
    // A's stale copy lands now, then A sees etcd moved on and copies the newest record over it.
    release();
    await a;
    expect(await stored()).toMatchObject({ generation: 3, etcdVersion: 'from-b' });
  });

  it('a write that reached etcd but not the control store says so with its own code', async () => {
    await control.initialise(DRAFT, signal());
    const failing: BackupStore = Object.assign(Object.create(s3Store) as S3Store, {
      putSmall: async (): Promise<void> => {
        throw new Error('PutObject refused by the test');
      },
    });
    const err = await new ControlStore(failing, client).write(DRAFT, 1, fence, signal()).catch((e: unknown) => e);
    expect((err as StewardError).code).toBe('SPEC_COPY_PENDING');
    expect((err as StewardError).describe()).toMatch(
      /generation 2 is recorded in etcd, but copying it to s3:\/\/control\/control-\d+\/cluster-spec\.json failed: PutObject refused by the test/,
    );
    expect((await control.readRecord())?.spec.generation).toBe(2);
    // The leader's upkeep finishes it once the store works again.
    expect((await control.copyRecord(signal()))?.generation).toBe(2);
    expect((await stored()).generation).toBe(2);
  });

  it('an init that read "no spec" just before another one wrote it is refused by the store itself (local dir: link(2))', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'control-local-'));
    try {
      const local = new LocalStore(dir);
      // The second init read "no spec" just before the first one wrote it.
      const blind: BackupStore = Object.assign(Object.create(local) as LocalStore, {
        readSmall: async (): Promise<Buffer> => {
          throw new NotFoundError('not there yet');
        },
      });
      await new ControlStore(local, client).initialise({ ...DRAFT, clusterToken: 'first' }, signal());
      const err = await new ControlStore(blind, client).initialise({ ...DRAFT, clusterToken: 'second' }, signal()).catch((e: unknown) => e);
      expect((err as StewardError).code).toBe('SPEC_EXISTS');
      expect((await new ControlStore(local, client).read(signal()))?.clusterToken).toBe('first');
      expect((await readdir(dir)).sort()).toEqual([SPEC_KEY]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('init refuses to overwrite an existing spec', async () => {
    await control.initialise(DRAFT, signal());
    const err = await control.initialise(DRAFT, signal()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StewardError);
    expect((err as StewardError).code).toBe('SPEC_EXISTS');
  });
});
