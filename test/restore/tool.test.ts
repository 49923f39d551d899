import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { createHash } from 'node:crypto';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CancelledError, InternalError, PreconditionError } from '../../src/errors/index.js';
import { RestoreTool, type RestoreIntoOptions } from '../../src/restore/tool.js';
import { stageSnapshot } from '../../src/restore/staging.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';
import { freePort } from '../harness/ports.js';
import { isAlive, waitUntil } from '../harness/processes.js';

const run = (command: string, args: string[]): Promise<string> =>
  new Promise((resolve, reject) =>
    execFile(command, args, { env: { ...process.env, ETCDCTL_API: '3' } }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );

interface ToolStatus {
  hash: number;
  revision: number;
  totalKey: number;
  totalSize: number;
}
const etcdctlStatus = async (file: string): Promise<ToolStatus> => JSON.parse(await run('etcdctl', ['snapshot', 'status', file, '-w', 'json'])) as ToolStatus;

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (err: unknown) => err,
  );
}

/** A stand-in restore tool: a shell script whose `--help` says what it supports and which records its argv. */
async function writeShim(dir: string, name: string, body: { kind: 'etcdutl' | 'etcdctl'; help: string[]; restore: string }): Promise<string> {
  const path = join(dir, name);
  const script = `#!/bin/sh
if [ "$1" = version ]; then echo "${body.kind} version: 3.9.1"; echo "API version: 3.9"; echo "env ETCDCTL_API=$ETCDCTL_API ETCDCTL_ENDPOINTS=$ETCDCTL_ENDPOINTS" > "${path}.env"; exit 0; fi
if [ "$2" = restore ] && [ "$3" = --help ]; then
${body.help.map((line) => `  echo '      ${line}'`).join('\n')}
  exit 0
fi
if [ "$2" = restore ]; then
  printf '%s\\n' "$@" > "${path}.args"
  dir=""; prev=""
  for a in "$@"; do [ "$prev" = --data-dir ] && dir="$a"; prev="$a"; done
  ${body.restore}
fi
exit 9
`;
  await writeFile(path, script);
  await chmod(path, 0o755);
  return path;
}

describe('RestoreTool (real etcdctl 3.4)', () => {
  let etcd: EtcdCluster;
  let root: string;
  let snapshotFile: string;
  let tool: RestoreTool;
  const started: ChildProcess[] = [];

  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
    root = await mkdtemp(join(tmpdir(), 'restore-tool-'));
    const client = new Etcd3({ hosts: etcd.endpoints });
    try {
      for (let i = 0; i < 40; i++) await client.put(`/restore/key-${String(i).padStart(2, '0')}`).value(`value-${i}`);
      await client.delete().key('/restore/key-00');
      await client.put('/restore/key-01').value('overwritten');
    } finally {
      client.close();
    }
    snapshotFile = join(root, 'saved.db');
    await run('etcdctl', ['--endpoints', etcd.endpoints[0] as string, 'snapshot', 'save', snapshotFile]);
    tool = await RestoreTool.detect();
  });

  afterAll(async () => {
    for (const child of started) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }
    await etcd?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  const restoreOptions = async (dataDir: string, overrides: Partial<RestoreIntoOptions> = {}): Promise<RestoreIntoOptions & { peerUrl: string }> => {
    const peerUrl = `http://127.0.0.1:${await freePort()}`;
    return {
      snapshot: snapshotFile,
      dataDir,
      name: 'restored-1',
      initialCluster: [{ name: 'restored-1', peerUrl }],
      initialAdvertisePeerUrls: [peerUrl],
      clusterToken: `token-${Math.random().toString(16).slice(2)}`,
      signal: new AbortController().signal,
      peerUrl,
      ...overrides,
    };
  };

  it('detects the etcdctl on PATH, its version from `etcdctl version`, and no revision bump in 3.4.23', async () => {
    const expected = /etcdctl version: (\S+)/.exec(await run('etcdctl', ['version']))?.[1];
    expect(tool.info.kind).toBe('etcdctl');
    expect(tool.info.binary).toMatch(/\/etcdctl$/);
    expect(tool.info.version).toBe(expected);
    if (tool.info.version === '3.4.23') expect(tool.info.bumpsRevision).toBe(false);
    // The same answer when the binary is named explicitly.
    expect((await RestoreTool.detect({ etcdctl: tool.info.binary })).info).toEqual(tool.info);
  });

  it('reports the same status as `etcdctl snapshot status`', async () => {
    const expected = await etcdctlStatus(snapshotFile);
    expect(await tool.status(snapshotFile, AbortSignal.timeout(10_000))).toEqual({
      revision: expected.revision,
      totalKeys: expected.totalKey,
      hash: expected.hash,
      totalSize: expected.totalSize,
    });
    const err = await rejection(tool.status(join(root, 'missing.db'), AbortSignal.timeout(10_000)));
    expect(err).toBeInstanceOf(InternalError);
    expect((err as InternalError).code).toBe('RESTORE_TOOL_FAILED');
    expect((err as InternalError).message).toContain('no such file');
  });

  it('restores a staged (gzip) snapshot into a fresh dir that a real etcd serves, with every key', async () => {
    // Staged from a compressed stream first, as a member receives it, then restored from the staged file.
    const gz = join(root, 'saved.db.gz');
    await pipeline(createReadStream(snapshotFile), createGzip(), createWriteStream(gz));
    const gzBytes = await readFile(gz);
    const staged = await stageSnapshot(
      createReadStream(gz, { highWaterMark: 1000 }),
      { snapshot: 'saved.db.gz', size: gzBytes.length, sha256: createHash('sha256').update(gzBytes).digest('hex'), compressed: true },
      join(root, 'staging', 'snapshot.db'),
      tool,
      AbortSignal.timeout(30_000),
    );
    const fileStatus = await etcdctlStatus(snapshotFile);
    expect(staged.revision).toBe(fileStatus.revision);

    const dataDir = join(root, 'restored', 'member-1');
    const options = await restoreOptions(dataDir, { snapshot: staged.path });
    await tool.restoreInto(options);
    expect((await stat(dataDir)).mode & 0o777).toBe(0o700);
    expect((await stat(join(dataDir, 'member', 'snap', 'db'))).mode & 0o777).toBe(0o600);
    // Nothing but the data dir itself is left beside it.
    expect(await readdir(join(root, 'restored'))).toEqual(['member-1']);

    // What the restored db reports, read before etcd opens it (see the report: same revision and key count in 3.4).
    const restoredStatus = await etcdctlStatus(join(dataDir, 'member', 'snap', 'db'));
    expect(restoredStatus.revision).toBe(fileStatus.revision);
    expect(restoredStatus.totalKey).toBe(fileStatus.totalKey);

    const clientUrl = `http://127.0.0.1:${await freePort()}`;
    const child = spawn(
      'etcd',
      [
        '--name=restored-1',
        `--data-dir=${dataDir}`,
        `--listen-client-urls=${clientUrl}`,
        `--advertise-client-urls=${clientUrl}`,
        `--listen-peer-urls=${options.peerUrl}`,
        `--initial-advertise-peer-urls=${options.peerUrl}`,
      ],
      { stdio: 'ignore' },
    );
    started.push(child);
    const client = new Etcd3({ hosts: [clientUrl] });
    try {
      await waitUntil('the restored etcd to answer', async () => (await client.maintenance.status()) !== undefined, 20_000);
      const keys = await client.getAll().prefix('/restore/').strings();
      expect(Object.keys(keys)).toHaveLength(39);
      expect(keys['/restore/key-00']).toBeUndefined();
      expect(keys['/restore/key-01']).toBe('overwritten');
      expect(keys['/restore/key-39']).toBe('value-39');
      const status = await client.maintenance.status();
      expect(Number(status.header.revision)).toBe(fileStatus.revision);
    } finally {
      client.close();
    }
  });

  it('refuses a data dir that exists and leaves it as it was', async () => {
    const dataDir = join(root, 'existing');
    await mkdir(dataDir);
    await writeFile(join(dataDir, 'keep-me'), 'x');
    const err = await rejection(tool.restoreInto(await restoreOptions(dataDir)));
    expect(err).toBeInstanceOf(PreconditionError);
    expect((err as PreconditionError).code).toBe('RESTORE_TARGET_EXISTS');
    expect(await readdir(dataDir)).toEqual(['keep-me']);
  });

  it('fails a corrupt snapshot with the tool output in the message and leaves nothing behind', async () => {
    const bytes = await readFile(snapshotFile);
    const at = Math.floor(bytes.length / 3);
    bytes[at] = (bytes[at] as number) ^ 0xff;
    const corrupt = join(root, 'corrupt.db');
    await writeFile(corrupt, bytes);
    const parent = join(root, 'corrupt-restore');
    await mkdir(parent);
    const options = await restoreOptions(join(parent, 'data'), { snapshot: corrupt });
    const err = await rejection(tool.restoreInto(options));
    expect(err).toBeInstanceOf(InternalError);
    expect((err as InternalError).code).toBe('RESTORE_TOOL_FAILED');
    expect((err as InternalError).message).toMatch(/exit code 1; its output ended with: .*(hash mismatch|expected sha256)/s);
    expect((err as InternalError).hint).toContain('complete snapshot');
    expect((err as InternalError).message).not.toContain(options.clusterToken);
    expect(await readdir(parent)).toEqual([]);
  });

  it('refuses a revision bump with a tool that cannot, before writing anything', async () => {
    if (tool.info.bumpsRevision) return;
    const parent = join(root, 'no-bump');
    await mkdir(parent);
    const err = await rejection(tool.restoreInto(await restoreOptions(join(parent, 'data'), { bumpRevision: 1_000_000 })));
    expect(err).toBeInstanceOf(PreconditionError);
    expect((err as PreconditionError).code).toBe('RESTORE_BUMP_UNSUPPORTED');
    expect((err as PreconditionError).hint).toMatch(/etcdutl >= 3\.5\.10/);
    expect(await readdir(parent)).toEqual([]);
  });

  it('passes --bump-revision N --mark-compacted to a tool whose --help lists both, and only when asked', async () => {
    const shims = join(root, 'shims-bump');
    await mkdir(shims);
    const shim = await writeShim(shims, 'etcdutl', {
      kind: 'etcdutl',
      help: ['--data-dir string', '--bump-revision uint    How much to increase the latest revision', '--mark-compacted    Mark the latest revision compacted'],
      restore: 'mkdir -p "$dir/member/snap" && echo db > "$dir/member/snap/db" && exit 0',
    });
    const shimTool = await RestoreTool.detect({ etcdutl: shim });
    expect(shimTool.info).toEqual({ binary: shim, kind: 'etcdutl', version: '3.9.1', bumpsRevision: true });

    const options = await restoreOptions(join(root, 'bumped'), { bumpRevision: 1_000_000 });
    await shimTool.restoreInto(options);
    const args = (await readFile(`${shim}.args`, 'utf8')).trim().split('\n');
    expect(args.slice(0, 3)).toEqual(['snapshot', 'restore', snapshotFile]);
    expect(args).toContain('--data-dir');
    const flag = (name: string): string | undefined => args[args.indexOf(name) + 1];
    expect(flag('--name')).toBe('restored-1');
    expect(flag('--initial-cluster')).toBe(`restored-1=${options.peerUrl}`);
    expect(flag('--initial-cluster-token')).toBe(options.clusterToken);
    expect(flag('--initial-advertise-peer-urls')).toBe(options.peerUrl);
    expect(flag('--bump-revision')).toBe('1000000');
    expect(args).toContain('--mark-compacted');
    expect(await readFile(join(root, 'bumped', 'member', 'snap', 'db'), 'utf8')).toBe('db\n');

    await shimTool.restoreInto(await restoreOptions(join(root, 'not-bumped')));
    const plain = await readFile(`${shim}.args`, 'utf8');
    expect(plain).not.toContain('--bump-revision');
    expect(plain).not.toContain('--mark-compacted');
  });

  it('reads no bump support from a --help that lists only one of the two flags, and runs etcdctl with ETCDCTL_API=3 only', async () => {
    const shims = join(root, 'shims-half');
    await mkdir(shims);
    const shim = await writeShim(shims, 'etcdctl', { kind: 'etcdctl', help: ['--data-dir string', '--bump-revision uint'], restore: 'exit 0' });
    const before = process.env.ETCDCTL_ENDPOINTS;
    process.env.ETCDCTL_ENDPOINTS = 'http://10.255.255.1:2379';
    try {
      const half = await RestoreTool.detect({ etcdutl: join(shims, 'no-such-etcdutl'), etcdctl: shim }).catch((err: unknown) => err);
      // An etcdutl that was named but is missing is an error, not a quiet fallback.
      expect((half as PreconditionError).code).toBe('RESTORE_TOOL_MISSING');
      const savedPath = process.env.PATH;
      process.env.PATH = join(shims, 'empty');
      await mkdir(join(shims, 'empty'));
      try {
        const halfTool = await RestoreTool.detect({ etcdutl: undefined, etcdctl: shim });
        expect(halfTool.info).toEqual({ binary: shim, kind: 'etcdctl', version: '3.9.1', bumpsRevision: false });
        // Neither tool on PATH: a clear refusal.
        const none = await rejection(RestoreTool.detect());
        expect((none as PreconditionError).code).toBe('RESTORE_TOOL_MISSING');
        expect((none as PreconditionError).message).toContain('neither etcdutl nor etcdctl');
      } finally {
        process.env.PATH = savedPath;
      }
      expect(await readFile(`${shim}.env`, 'utf8')).toBe('env ETCDCTL_API=3 ETCDCTL_ENDPOINTS=\n');
    } finally {
      if (before === undefined) delete process.env.ETCDCTL_ENDPOINTS;
      else process.env.ETCDCTL_ENDPOINTS = before;
    }
  });

  it('keeps only the end of a failing tool output, and removes what it wrote', async () => {
    const shims = join(root, 'shims-fail');
    await mkdir(shims);
    const shim = await writeShim(shims, 'etcdutl', {
      kind: 'etcdutl',
      help: ['--data-dir string'],
      restore: `mkdir -p "$dir/member/snap"; head -c 200000 /dev/zero | tr '\\0' 'x' >&2; echo; echo "FINAL LINE for $dir" >&2; exit 3`,
    });
    const shimTool = await RestoreTool.detect({ etcdutl: shim });
    const parent = join(root, 'fail-restore');
    await mkdir(parent);
    const err = await rejection(shimTool.restoreInto(await restoreOptions(join(parent, 'data'))));
    expect((err as InternalError).code).toBe('RESTORE_TOOL_FAILED');
    expect((err as InternalError).message).toContain('exit code 3');
    expect((err as InternalError).message).toContain('FINAL LINE for <temp-dir>/data');
    expect((err as InternalError).message.length).toBeLessThan(8192 + 400);
    expect(await readdir(parent)).toEqual([]);
  });

  it('kills the tool on abort and leaves nothing half-written', async () => {
    const shims = join(root, 'shims-slow');
    await mkdir(shims);
    const shim = await writeShim(shims, 'etcdutl', {
      kind: 'etcdutl',
      help: ['--data-dir string'],
      restore: `mkdir -p "$dir/member/snap" && echo partial > "$dir/member/snap/db" && echo $$ > "${join(shims, 'pid')}" && exec sleep 60`,
    });
    const shimTool = await RestoreTool.detect({ etcdutl: shim });
    const parent = join(root, 'abort-restore');
    await mkdir(parent);
    const controller = new AbortController();
    const pending = shimTool.restoreInto(await restoreOptions(join(parent, 'data'), { signal: controller.signal }));
    const pid = await waitUntil(
      'the shim to start',
      async () => Number((await readFile(join(shims, 'pid'), 'utf8').catch(() => '')).trim()) || undefined,
      10_000,
    );
    const abortedAt = Date.now();
    controller.abort();
    const err = await rejection(pending);
    expect(err).toBeInstanceOf(CancelledError);
    expect(Date.now() - abortedAt).toBeLessThan(2000);
    expect(isAlive(pid)).toBe(false);
    expect(await readdir(parent)).toEqual([]);
  });
});
