import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { access, chmod, constants, lstat, mkdir, readdir, rename, rm } from 'node:fs/promises';
import { basename, delimiter, dirname, isAbsolute, join, resolve } from 'node:path';
import { InternalError, InvalidArgumentError, PreconditionError, StewardError, abortedError, errorText, prefixOf } from '../errors/index.js';
import { STATE_DIR_MODE, STATE_FILE_MODE, fsyncDir } from '../state/atomic.js';

export interface RestoreToolInfo {
  binary: string;
  kind: 'etcdutl' | 'etcdctl';
  version: string;
  /** The tool lists both `--bump-revision` and `--mark-compacted` in its own `snapshot restore --help`. */
  bumpsRevision: boolean;
}

export interface SnapshotFileStatus {
  revision: number;
  totalKeys: number;
  hash: number;
  totalSize: number;
}

export interface RestoreIntoOptions {
  snapshot: string;
  /** Must not exist: it appears, complete, only when the restore succeeded. */
  dataDir: string;
  name: string;
  initialCluster: { name: string; peerUrl: string }[];
  initialAdvertisePeerUrls: string[];
  clusterToken: string;
  bumpRevision?: number;
  signal: AbortSignal;
}

/** What a failure message quotes of the tool's output: enough for its error lines, never unbounded. */
const OUTPUT_TAIL_BYTES = 8192;
/** `version`, `--help` and `snapshot status` are instant; one that hangs is a broken binary. */
const PROBE_TIMEOUT_MS = 15_000;

interface ToolRun {
  code: number | null;
  exitSignal: NodeJS.Signals | null;
  stdout: string;
  /** Last OUTPUT_TAIL_BYTES of stdout and stderr interleaved as they came. */
  output: string;
}

/**
 * The snapshot tool of the etcd on this node: etcdutl where there is one (3.5+ moved the offline commands
 * there), else etcdctl. What it can do is read from the binary itself (its `--help`), never inferred from
 * its version: distributions backport flags, and a table of versions goes stale.
 */
export class RestoreTool {
  private constructor(readonly info: RestoreToolInfo) {}

  static async detect(options: { etcdutl?: string; etcdctl?: string; signal?: AbortSignal } = {}): Promise<RestoreTool> {
    const signal = options.signal ?? new AbortController().signal;
    if (signal.aborted) throw abortedError(signal, signal.reason);
    const found = await locate('etcdutl', options.etcdutl);
    const chosen = found ? { binary: found, kind: 'etcdutl' as const } : { binary: await locate('etcdctl', options.etcdctl), kind: 'etcdctl' as const };
    if (!chosen.binary) {
      throw new PreconditionError(
        'RESTORE_TOOL_MISSING',
        'neither etcdutl nor etcdctl was found on PATH, so no snapshot can be checked or restored on this node',
        {
          hint: 'install the etcd client tools of the etcd version this node runs (etcdutl for 3.5+, etcdctl for 3.4) or point the steward at them',
        },
      );
    }
    const binary = chosen.binary;
    const versionRun = await runTool(binary, chosen.kind, ['version'], probeSignal(signal));
    const version = new RegExp(`${chosen.kind} version:\\s*v?(\\S+)`).exec(versionRun.stdout)?.[1];
    if (versionRun.code !== 0 || version === undefined) {
      throw new PreconditionError('RESTORE_TOOL_BROKEN', `${binary} version did not report a ${chosen.kind} version: ${describeRun(versionRun)}`, {
        hint: `check that ${binary} is a working ${chosen.kind} binary`,
      });
    }
    const helpRun = await runTool(binary, chosen.kind, ['snapshot', 'restore', '--help'], probeSignal(signal));
    if (helpRun.code !== 0 || !helpRun.output.includes('--data-dir')) {
      throw new PreconditionError('RESTORE_TOOL_BROKEN', `${binary} has no usable 'snapshot restore' command: ${describeRun(helpRun)}`, {
        hint: `check that ${binary} is a working ${chosen.kind} binary`,
      });
    }
    const bumpsRevision = /--bump-revision\b/.test(helpRun.output) && /--mark-compacted\b/.test(helpRun.output);
    return new RestoreTool({ binary, kind: chosen.kind, version, bumpsRevision });
  }

  /** `snapshot status -w json` of a saved snapshot or a bolt db; the file is opened read-only by the tool. */
  async status(file: string, signal: AbortSignal): Promise<SnapshotFileStatus> {
    const run = await runTool(this.info.binary, this.info.kind, ['snapshot', 'status', file, '-w', 'json'], probeSignal(signal));
    if (run.code !== 0) {
      throw new InternalError('RESTORE_TOOL_FAILED', `${this.info.kind} snapshot status ${file} failed: ${describeRun(run)}`, {
        hint: `check that ${file} exists, is readable by the steward and is an etcd snapshot or bolt db`,
      });
    }
    return parseStatus(run.stdout, `${this.info.kind} snapshot status ${file}`);
  }

  /**
   * Restores `snapshot` into `dataDir`, which must not exist. The tool writes into a private temp dir beside
   * it, renamed to `dataDir` only once the tool succeeded: a failed or aborted restore leaves nothing (the
   * tool itself leaves a non-empty dir behind when its hash check fails, which a rerun would refuse).
   */
  async restoreInto(options: RestoreIntoOptions): Promise<void> {
    const { signal } = options;
    if (signal.aborted) throw abortedError(signal, signal.reason);
    const args = this.restoreArgs(options);
    const dataDir = resolve(options.dataDir);
    if (await exists(dataDir)) {
      throw new PreconditionError('RESTORE_TARGET_EXISTS', `cannot restore into ${dataDir}: it already exists`, {
        hint: 'restore into a fresh path beside the data dir and rename it into place; remove a leftover from an earlier attempt first',
      });
    }
    const parent = dirname(dataDir);
    await mkdir(parent, { recursive: true, mode: STATE_DIR_MODE }).catch((err: unknown) => {
      throw new InternalError('RESTORE_TARGET_FAILED', `cannot create ${parent} to restore into: ${errorText(err)}`, {
        hint: `check that ${parent} is writable by the steward`,
        cause: err,
      });
    });
    // Created here with a random name (0700), so whatever the cleanup removes is ours alone.
    const work = join(parent, `.${basename(dataDir)}.restoring-${randomBytes(6).toString('hex')}`);
    const target = join(work, 'data');
    try {
      await mkdir(work, { mode: STATE_DIR_MODE });
      const run = await runTool(this.info.binary, this.info.kind, ['snapshot', 'restore', options.snapshot, '--data-dir', target, ...args], signal);
      if (run.code !== 0) {
        const output = run.output.split(options.clusterToken).join('<cluster-token>').split(work).join('<temp-dir>');
        throw new InternalError('RESTORE_TOOL_FAILED', `${this.info.kind} snapshot restore of ${options.snapshot} failed: ${describeRun({ ...run, output })}`, {
          hint: `check that ${options.snapshot} is a complete snapshot saved by etcd (not a raw member/snap/db), that --initial-cluster names ${options.name}, and that ${parent} has room`,
        });
      }
      await tighten(target);
      signal.throwIfAborted();
      // rename(2) would quietly replace an empty dir that appeared meanwhile; a non-empty one makes it fail.
      if (await exists(dataDir))
        throw new PreconditionError('RESTORE_TARGET_EXISTS', `${dataDir} appeared while the restore ran`, {
          hint: 'only one restore may write a data dir at a time',
        });
      await rename(target, dataDir);
      await fsyncDir(parent);
    } catch (err) {
      if (signal.aborted) throw abortedError(signal, err);
      if (err instanceof StewardError) throw err;
      throw new InternalError('RESTORE_TOOL_FAILED', `restore of ${options.snapshot} into ${dataDir} failed: ${errorText(err)}`, {
        hint: `check that ${parent} is writable by the steward and has room`,
        cause: err,
      });
    } finally {
      await rm(work, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  private restoreArgs(options: RestoreIntoOptions): string[] {
    const { name, initialCluster, initialAdvertisePeerUrls, clusterToken, bumpRevision = 0 } = options;
    if (!options.snapshot || !options.dataDir) throw new InvalidArgumentError('a restore needs a snapshot file and a data dir');
    if (!isToken(name)) throw new InvalidArgumentError(`member name '${prefixOf(name, 64)}' is empty or holds ',', '=' or whitespace`);
    if (!isToken(clusterToken)) throw new InvalidArgumentError('the cluster token is empty or holds whitespace, commas or =');
    if (initialCluster.length === 0 || !initialCluster.some((m) => m.name === name)) {
      throw new InvalidArgumentError(`--initial-cluster must list the member being restored (${name})`);
    }
    for (const member of initialCluster) {
      if (!isToken(member.name) || !isUrl(member.peerUrl)) {
        throw new InvalidArgumentError(`initial cluster entry '${prefixOf(`${member.name}=${member.peerUrl}`, 200)}' is not name=http(s)://host:port`);
      }
    }
    if (initialAdvertisePeerUrls.length === 0 || !initialAdvertisePeerUrls.every(isUrl)) {
      throw new InvalidArgumentError('--initial-advertise-peer-urls must be one or more http(s) URLs');
    }
    if (!Number.isSafeInteger(bumpRevision) || bumpRevision < 0)
      throw new InvalidArgumentError(`bumpRevision must be a whole number >= 0, not ${bumpRevision}`);
    const args = [
      '--name',
      name,
      '--initial-cluster',
      initialCluster.map((m) => `${m.name}=${m.peerUrl}`).join(','),
      '--initial-cluster-token',
      clusterToken,
      '--initial-advertise-peer-urls',
      initialAdvertisePeerUrls.join(','),
    ];
    if (bumpRevision > 0) {
      if (!this.info.bumpsRevision) {
        throw new PreconditionError(
          'RESTORE_BUMP_UNSUPPORTED',
          `${this.info.binary} (${this.info.kind} ${this.info.version}) cannot bump the revision: its snapshot restore has no --bump-revision/--mark-compacted`,
          {
            hint: 'install etcdutl >= 3.5.10 (or etcdctl >= 3.4.27) on this node, or restore without a revision bump and restart every watcher (API servers, controllers) afterwards',
          },
        );
      }
      // The two only make sense together; etcdutl refuses one without the other.
      args.push('--bump-revision', String(bumpRevision), '--mark-compacted');
    }
    return args;
  }
}

async function locate(command: string, given: string | undefined): Promise<string | undefined> {
  // A bare name is looked up on PATH like the default; anything with a slash is taken as a path.
  if (given !== undefined && given.includes('/')) {
    const path = resolve(given);
    if (await executable(path)) return path;
    throw new PreconditionError('RESTORE_TOOL_MISSING', `the ${command} given (${given}) is not an executable file`, {
      hint: `point the steward at a working ${command}, or leave it unset to search PATH`,
    });
  }
  const name = given ?? command;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir || !isAbsolute(dir)) continue;
    const path = join(dir, name);
    if (await executable(path)) return path;
  }
  if (given !== undefined) {
    throw new PreconditionError('RESTORE_TOOL_MISSING', `the ${command} given (${given}) is not on PATH`, {
      hint: `point the steward at a working ${command}, or leave it unset to search PATH`,
    });
  }
  return undefined;
}

async function executable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return !(await lstat(path)).isDirectory();
  } catch {
    return false;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new InternalError('RESTORE_TARGET_FAILED', `cannot check ${path}: ${errorText(err)}`, {
      hint: `check the permissions of ${dirname(path)}`,
      cause: err,
    });
  }
}

/** etcd writes its v2 `.snap` file 0644; everything the steward leaves on disk is owner-only. */
async function tighten(dir: string): Promise<void> {
  await chmod(dir, STATE_DIR_MODE);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await tighten(path);
    else if (entry.isFile()) await chmod(path, STATE_FILE_MODE);
  }
}

const isToken = (value: string): boolean => value.length > 0 && value.length <= 255 && !/[\s,=]/.test(value);
const isUrl = (value: string): boolean => /^https?:\/\/[^\s,]+$/.test(value);

function probeSignal(signal: AbortSignal): AbortSignal {
  return AbortSignal.any([signal, AbortSignal.timeout(PROBE_TIMEOUT_MS)]);
}

/**
 * The tool's environment: ours without ETCDCTL_ and ETCDUTL_ variables, which the tools read as flags
 * (an operator's exported ETCDCTL_ENDPOINTS or ETCDCTL_WAL_DIR must not change what we restore).
 */
function toolEnv(kind: RestoreToolInfo['kind']): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!/^ETCD(CTL|UTL)_/.test(key)) env[key] = value;
  // etcdctl 3.4 defaults to v3 already; older ones fall back to v2, which has no snapshot commands.
  if (kind === 'etcdctl') env.ETCDCTL_API = '3';
  return env;
}

/** Runs the tool to its end; an abort kills it and resolves only once it has exited, so nothing writes after. */
async function runTool(binary: string, kind: RestoreToolInfo['kind'], args: string[], signal: AbortSignal): Promise<ToolRun> {
  if (signal.aborted) throw abortedError(signal, signal.reason);
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], env: toolEnv(kind) });
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  // 'close' also waits for the pipes to drain, so the output is complete; a failed spawn rejects 'exit' instead.
  const closed = once(child, 'close').catch(() => undefined);
  const output = new Tail(OUTPUT_TAIL_BYTES);
  const stdout = new Tail(64 * 1024);
  child.stdout.on('data', (chunk: Buffer) => {
    output.push(chunk);
    stdout.push(chunk);
  });
  child.stderr.on('data', (chunk: Buffer) => output.push(chunk));
  const kill = (): void => {
    child.kill('SIGKILL');
  };
  signal.addEventListener('abort', kill, { once: true });
  try {
    const [code, exitSignal] = await exited;
    if (signal.aborted) throw abortedError(signal, new Error(`${kind} was stopped`));
    await closed;
    return { code, exitSignal, stdout: stdout.text(), output: output.text() };
  } catch (err) {
    if (signal.aborted) throw abortedError(signal, err);
    throw new PreconditionError('RESTORE_TOOL_MISSING', `cannot run ${binary}: ${errorText(err)}`, {
      hint: `check that ${binary} is an executable ${kind}`,
      cause: err,
    });
  } finally {
    signal.removeEventListener('abort', kill);
  }
}

function describeRun(run: ToolRun): string {
  const how = run.exitSignal ? `killed by ${run.exitSignal}` : `exit code ${run.code}`;
  const output = run.output.trim();
  return output ? `${how}; its output ended with: ${output}` : `${how}, no output`;
}

function parseStatus(stdout: string, what: string): SnapshotFileStatus {
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout.trim());
  } catch {
    parsed = undefined;
  }
  const record = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  const fields = { revision: record.revision, totalKeys: record.totalKey, hash: record.hash, totalSize: record.totalSize };
  for (const [key, value] of Object.entries(fields)) {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
      throw new InternalError('RESTORE_TOOL_OUTPUT', `${what} printed no usable ${key}: ${prefixOf(stdout.trim(), 300)}`, {
        hint: 'the tool printed something this steward does not understand; check that it is etcdutl/etcdctl 3.4 or newer',
      });
    }
  }
  return fields as SnapshotFileStatus;
}

/** Keeps only the last `max` bytes pushed into it. */
class Tail {
  private chunks: Buffer[] = [];
  private bytes = 0;

  constructor(private readonly max: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk.length > this.max ? Buffer.from(chunk.subarray(chunk.length - this.max)) : chunk);
    this.bytes += Math.min(chunk.length, this.max);
    while (this.chunks.length > 1 && this.bytes - (this.chunks[0] as Buffer).length >= this.max) this.bytes -= (this.chunks.shift() as Buffer).length;
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.max)).toString('utf8');
  }
}
