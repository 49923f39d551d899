import { join } from 'node:path';
import type { Etcd3 } from '../etcd/client.js';
import type { Fence } from '../election/election.js';
import { NotFoundError, PreconditionError, StewardError, UnavailableError, errorText } from '../errors/index.js';
import { ensureStateDir, writeFileAtomic } from '../state/atomic.js';
import { LocalStore } from '../store/local.js';
import type { BackupStore } from '../store/store.js';
import { MAX_GENERATION, parseSpec, type ClusterSpec } from './spec.js';

export const SPEC_KEY = 'cluster-spec.json';
/** The spec as last written by a leader: the order of writes lives here, since S3 has no compare-and-set. */
export const SPEC_RECORD_KEY = 'etcd-steward/control/spec';

export interface RestoredClusterDraft {
  restoreId: string;
  snapshot: string;
  clusterToken: string;
  clusterId: string;
  members: { name: string; peerUrl: string }[];
  /** Members left out with --skip-member. */
  skipped?: string[];
  /** `restore --with-spec`: the flags and version the snapshot's spec had. */
  etcdFlags?: Record<string, string>;
  etcdVersion?: string;
}

export type SpecDraft = Omit<ClusterSpec, 'generation' | 'updatedAt' | 'fencingToken' | 'formatVersion'>;

/** How many times a writer re-copies etcd's record when another write overtook its own copy. */
const MAX_COPY_ROUNDS = 5;

/**
 * The cluster spec in its own durable store (an S3 prefix apart from the backups, or a local dir without
 * S3), with etcd as the arbiter of writes: a write is first committed to etcd in one transaction fenced by
 * the leader's campaign key and guarded on the previous record, then copied to the durable store until
 * that store holds what etcd holds. S3 cannot refuse a stale PUT, so the last copy must be of the newest
 * record, whoever makes it.
 */
export class ControlStore {
  constructor(
    readonly store: BackupStore,
    private readonly client: Etcd3,
  ) {}

  get location(): string {
    return this.store.urlFor(SPEC_KEY);
  }

  /** The durable spec, or undefined only if it is missing; any other failure throws. */
  async read(signal: AbortSignal): Promise<ClusterSpec | undefined> {
    let text: string;
    try {
      text = (await this.store.readSmall(SPEC_KEY, signal)).toString('utf8');
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
    return parseSpec(text, this.location);
  }

  /** etcd's record of the last write, with its mod revision; undefined if no leader ever wrote one. */
  async readRecord(client: Etcd3 = this.client): Promise<{ spec: ClusterSpec; modRevision: string } | undefined> {
    const response = await client.get(SPEC_RECORD_KEY).exec();
    const kv = response.kvs[0];
    if (!kv) return undefined;
    return { spec: parseSpec(kv.value.toString('utf8'), `etcd key ${SPEC_RECORD_KEY}`), modRevision: kv.mod_revision };
  }

  /**
   * Replaces the spec as the leader, with the next generation after every one seen: the durable spec's,
   * etcd's record and `basedOn` (the generation the operator edited, which may be the only trace left when
   * the durable spec vanished). Refused for a stale generation or a leader whose term has ended.
   */
  async write(next: SpecDraft, basedOn: number, fence: Fence, signal: AbortSignal): Promise<ClusterSpec> {
    const stored = await this.read(signal);
    const record = await this.readRecord();
    const current = Math.max(stored?.generation ?? 0, record?.spec.generation ?? 0);
    if (basedOn < current) {
      throw new PreconditionError('STALE_GENERATION', `the spec you sent has generation ${basedOn}, older than the current ${current}`, {
        hint: 'someone changed the spec since you read it: run etcd-stewardctl spec get again, edit that, and set it',
      });
    }
    // Only grows by one: a jump (once to 9007199254740990) would skip generations nobody wrote and could
    // push the next one past what a number holds exactly. Only when nothing is recorded anywhere (the spec
    // and etcd's record both lost) does the edited generation itself say where to go on from.
    if (current > 0 && basedOn > current) {
      throw new PreconditionError(
        'GENERATION_SKIP',
        `the spec you sent has generation ${basedOn}, but the current one is ${current}: each write moves it by exactly one`,
        {
          hint: `send the spec with "generation": ${current} (start from etcd-stewardctl spec get -o json)`,
        },
      );
    }
    const generation = Math.max(current, basedOn) + 1;
    if (!Number.isSafeInteger(generation) || generation > MAX_GENERATION) {
      throw new PreconditionError('GENERATION_EXHAUSTED', `the next generation ${generation} would be above the highest a spec may carry (${MAX_GENERATION})`, {
        hint: 'a generation this high is not from real writes: send the spec with a small generation after removing the stored spec and its etcd record',
      });
    }
    const spec: ClusterSpec = { ...next, formatVersion: 1, generation, updatedAt: new Date().toISOString(), fencingToken: fence.fencingToken };
    // The whole spec is checked as strictly as any operator input before etcd or a store sees it.
    parseSpec(JSON.stringify(spec), 'the spec to write');
    const fenced = this.client.if(fence.campaignKey, 'Create', '==', fence.fencingToken);
    const guarded = record === undefined ? fenced.and(SPEC_RECORD_KEY, 'Create', '==', 0) : fenced.and(SPEC_RECORD_KEY, 'Mod', '==', record.modRevision);
    const result = await guarded.then(this.client.put(SPEC_RECORD_KEY).value(JSON.stringify(spec))).commit();
    if (!result.succeeded) {
      throw new PreconditionError('STALE_LEADER', 'the spec write was refused: this steward lost leadership or another write came first', {
        hint: 'run etcd-stewardctl spec get and try again against the current leader',
      });
    }
    try {
      await this.copyRecord(signal);
    } catch (err) {
      // The write itself stands (etcd has it); only the copy is behind. Say so, or a retry of the same file reads as stale.
      throw new UnavailableError(
        'SPEC_COPY_PENDING',
        `generation ${spec.generation} is recorded in etcd, but copying it to ${this.location} failed: ${errorText(err)}`,
        {
          cause: err,
          hint: `fix access to the control store; the leader finishes the copy within one --control-spec-ttl while an older spec is there, and if none is, run spec set again with "generation": ${spec.generation}`,
        },
      );
    }
    return spec;
  }

  /**
   * Makes the durable store hold etcd's newest record: copy, then look again, until no write overtook the
   * copy. Finishes a write whose leader died between etcd and the store.
   */
  async copyRecord(signal: AbortSignal): Promise<ClusterSpec | undefined> {
    let record = await this.readRecord();
    for (let round = 0; record && round < MAX_COPY_ROUNDS; round += 1) {
      await this.store.putSmall(SPEC_KEY, render(record.spec), signal);
      const after = await this.readRecord();
      if (after?.modRevision === record.modRevision) return record.spec;
      record = after;
    }
    if (record)
      throw new PreconditionError('SPEC_CONTENDED', 'the spec kept changing while it was being copied to the control store', {
        hint: 'retry once the other writer is done',
      });
    return undefined;
  }

  /**
   * Records a restored cluster: its new token, cluster ID and members, as the next generation after every one
   * seen. Written into the restored etcd (reached on its quarantined endpoint, where no other writer can be:
   * the restore lock is the fence) and then to the durable store, so every steward's gate and spec checks
   * accept the restored cluster, after any restart.
   */
  async recordRestore(restored: RestoredClusterDraft, client: Etcd3, signal: AbortSignal): Promise<ClusterSpec> {
    const stored = await this.read(signal).catch(() => undefined);
    const record = await this.readRecord(client).catch(() => undefined);
    const base = [stored, record?.spec].filter((s): s is ClusterSpec => s !== undefined).sort((a, b) => b.generation - a.generation)[0];
    const generation = Math.max(stored?.generation ?? 0, record?.spec.generation ?? 0) + 1;
    const members = restored.members.map((m) => ({
      ...m,
      ...(base?.members.find((b) => b.name === m.name)?.grpc ? { grpc: base.members.find((b) => b.name === m.name)?.grpc } : {}),
    }));
    const spec: ClusterSpec = {
      formatVersion: 1,
      etcdVersion: base?.etcdVersion ?? '',
      etcdFlags: base?.etcdFlags ?? {},
      ...(base ?? {}),
      members: base ? [...members, ...base.members.filter((b) => !members.some((m) => m.name === b.name))] : members,
      generation,
      ...(restored.etcdFlags ? { etcdFlags: restored.etcdFlags } : {}),
      ...(restored.etcdVersion ? { etcdVersion: restored.etcdVersion } : {}),
      clusterToken: restored.clusterToken,
      clusterId: restored.clusterId,
      startedMembers: restored.members.map((m) => m.name).sort(),
      lastRestore: {
        restoreId: restored.restoreId,
        snapshot: restored.snapshot,
        at: new Date().toISOString(),
        ...(restored.skipped && restored.skipped.length > 0 ? { skipped: restored.skipped } : {}),
      },
      updatedAt: new Date().toISOString(),
      fencingToken: '',
    };
    parseSpec(JSON.stringify(spec), 'the restored cluster spec');
    await client.put(SPEC_RECORD_KEY).value(JSON.stringify(spec));
    await this.store.putSmall(SPEC_KEY, render(spec), signal);
    return spec;
  }

  /** Writes the first spec of a brand-new cluster; the caller has checked there is no data and no running etcd. */
  async initialise(draft: SpecDraft, signal: AbortSignal): Promise<ClusterSpec> {
    if (await this.read(signal)) {
      throw new PreconditionError('SPEC_EXISTS', `a cluster spec already exists at ${this.location}`, {
        hint: 'nothing to initialise: the cluster exists; etcd-stewardctl spec get shows it',
      });
    }
    const first: ClusterSpec = { ...draft, formatVersion: 1, generation: 1, updatedAt: new Date().toISOString(), fencingToken: '' };
    parseSpec(JSON.stringify(first), 'the first cluster spec');
    try {
      // Two inits racing (two operators, two nodes): the store lets exactly one create the spec.
      await this.store.putSmall(SPEC_KEY, render(first), signal, { createOnly: true });
    } catch (err) {
      if (err instanceof StewardError && err.code === 'OBJECT_EXISTS') {
        throw new PreconditionError('SPEC_EXISTS', `a cluster spec was created at ${this.location} while this init ran`, {
          hint: 'the cluster exists: etcd-stewardctl spec get shows it',
        });
      }
      throw err;
    }
    return first;
  }

  /** Keeps a node-local copy equal to etcd's record (the control store without S3 is one dir per node). */
  async mirror(record: ClusterSpec, stored: ClusterSpec | undefined, signal: AbortSignal): Promise<void> {
    if (stored && render(stored) === render(record)) return;
    // Without S3 the mirror is a state file of this node: written like every other one (src/state).
    if (this.store instanceof LocalStore) {
      await ensureStateDir(this.store.dir);
      await writeFileAtomic(join(this.store.dir, SPEC_KEY), render(record), signal);
      return;
    }
    await this.store.putSmall(SPEC_KEY, render(record), signal);
  }
}

export function render(spec: ClusterSpec): string {
  return `${JSON.stringify(spec, null, 2)}\n`;
}
