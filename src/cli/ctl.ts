#!/usr/bin/env node
import { readFile } from 'node:fs/promises';
import { Command, CommanderError, Option } from 'commander';
import { InternalError, PreconditionError, StewardError, UsageError, asStewardError, exitCodeFor, renderError } from '../errors/index.js';
import { LIMITS, checkName, checkNames, checkSpecJson, parseDecimalInteger } from '../rpc/bounds.js';
import { StewardClient } from '../rpc/client.js';
import type { DeleteFailure, RestoreEvent, RestorePlan, RestoreSummary } from '../rpc/types.js';
import { STEWARD_VERSION } from '../steward/version.js';
import { validateName } from '../snapshot/names.js';
import {
  failuresText,
  fallbackNote,
  orphanJson,
  orphansText,
  recordJson,
  recordsText,
  saveJson,
  saveText,
  statusJson,
  statusText,
  verifyJson,
  verifyText,
} from './format.js';
import { SaveProgressView, restoreProgressView, type RestoreProgressView } from './progress.js';
import {
  abortText,
  notRolledBack,
  planText,
  restoreEventJson,
  restoreStatusJson,
  restoreStatusText,
  summaryText,
  type RestoreAsked,
} from './restore-output.js';
import { rootSignalFromProcess } from './signals.js';
import { ctlCredentials, type CtlTlsOptions } from '../security/ctl-tls.js';
import { quietIpServernameWarning } from './warnings.js';

type Output = 'text' | 'json';
interface GlobalOptions extends CtlTlsOptions {
  endpoint: string;
  output: Output;
}

/** Ctrl-C (or SIGTERM) cancels the call in flight: the steward sees the cancellation and stops its work. */
let interrupted: AbortSignal | undefined;
function callSignal(): AbortSignal {
  interrupted ??= rootSignalFromProcess();
  return interrupted;
}

function program(): Command {
  const root = new Command('etcd-stewardctl')
    .description('Operate etcd-steward: status, snapshots and restores.')
    .version(STEWARD_VERSION)
    .exitOverride()
    .configureOutput({ outputError: () => undefined })
    .addOption(new Option('--endpoint <host:port>', 'steward gRPC address').env('ETCD_STEWARD_ENDPOINT').default(DEFAULT_ENDPOINT))
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    // mTLS: without any of these the ctl speaks plaintext (a steward started with --grpc-plaintext-dev).
    .addOption(new Option('--cacert <file>', 'CA that signed the steward certificates (PEM)').env('ETCD_STEWARD_CACERT'))
    .addOption(new Option('--cert <file>', 'your client certificate (PEM); its CN is your identity').env('ETCD_STEWARD_CERT'))
    .addOption(new Option('--key <file>', 'your private key (PEM, mode 0600)').env('ETCD_STEWARD_KEY'));

  root
    .command('status')
    .description("the steward's view: leader, every etcd member's health, db size and revision")
    .action(async (_options: unknown, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      await withClient(global, async (client) => {
        const status = await client.status(callSignal());
        print(global.output, statusJson(status), () => statusText(status));
      });
    });
  root
    .command('save')
    .description('take an on-demand snapshot now, on the addressed steward, to its local dir and S3')
    .option('--name <base>', 'name base instead of on-demand: <base>-<node>-<unix-ts>')
    .option('--force', 'snapshot even if the cluster is unhealthy (needs a member that still sees a raft leader)', false)
    .action(async (options: { name?: string; force: boolean }, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      if (options.name !== undefined) validateName(checkName(options.name, '--name'));
      await withClient(global, async (client) => {
        const progress = global.output === 'text' ? new SaveProgressView(process.stderr) : undefined;
        const info = await client
          .save({ name: options.name ?? '', force: options.force }, (event) => progress?.update(event), callSignal())
          .finally(() => progress?.done());
        print(global.output, saveJson(info), () => saveText(info));
        // Stored somewhere but not everywhere asked for (S3 down): what was stored where is printed above.
        if (info.failures.length > 0) {
          throw new InternalError(
            'SAVE_INCOMPLETE',
            `snapshot ${info.name} was stored at ${info.locations.length} location(s) but failed at ${info.failures.length}: ${info.failures.join('; ')}`,
            {
              hint: 'the copies listed as stored are complete; fix the failed location (see etcd-stewardctl status and the steward log) and save again',
            },
          );
        }
      });
    });

  root
    .command('ls')
    .aliases(['list', 'l'])
    .description('every snapshot in the cluster-wide inventory')
    .option('--all', 'also list orphaned data objects (a data file or object whose metadata was deleted)', false)
    .addHelpText(
      'after',
      [
        '',
        "When etcd's inventory cannot be read, the stewards list the stores themselves and say so in a",
        "'note:' line on stderr (with -o json too, so the shape on stdout never changes): -o json is an array",
        'of snapshots; with --all an object {snapshots, orphans, fallback} (fallback: "" or why the stores were listed).',
      ].join('\n'),
    )
    .action(async (options: { all: boolean }, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      await withClient(global, async (client) => {
        const { snapshots, orphans, fallback } = await client.list(options.all, callSignal());
        if (fallback) process.stderr.write(`${fallbackNote(fallback)}\n`);
        if (!options.all) print(global.output, snapshots.map(recordJson), () => recordsText(snapshots));
        else
          print(
            global.output,
            { snapshots: snapshots.map(recordJson), orphans: orphans.map(orphanJson), fallback },
            () => `${recordsText(snapshots)}\n\n${orphansText(orphans)}`,
          );
      });
    });

  root
    .command('delete')
    .argument('<name...>', 'snapshot names as ls shows them')
    .description('remove snapshots from every location and the inventory; an unknown name deletes nothing')
    .action(async (names: string[], _options: unknown, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      checkNames(names, 'delete');
      for (const name of names) validateName(name, 'name');
      await withClient(global, async (client) => {
        const { deleted, failed } = await client.delete(names, callSignal());
        print(global.output, deleted.map(recordJson), () => (deleted.length ? `deleted:\n${recordsText(deleted)}` : 'nothing deleted'));
        if (failed.length > 0) throw partial('PARTIAL_DELETE', 'delete', deleted.length, failed);
      });
    });

  root
    .command('prune')
    .description('apply retention now: keep the newest N scheduled and the newest N on-demand snapshots per location')
    .option('--snapshot-retention <n>', "snapshots to keep per location (default: the steward's --etcd-snapshot-retention)")
    .action(async (options: { snapshotRetention?: string }, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      // 0 on the wire means "the steward's configured retention", so an operator's value starts at 1.
      const retention =
        options.snapshotRetention === undefined ? 0 : parseDecimalInteger(options.snapshotRetention, '--snapshot-retention', 1, LIMITS.retentionMax);
      await withClient(global, async (client) => {
        const { deleted, orphansRemoved, failed } = await client.prune(retention, callSignal());
        print(global.output, deleted.map(recordJson), () =>
          [
            deleted.length ? `pruned:\n${recordsText(deleted)}` : 'nothing to prune',
            ...orphansRemoved.map((o) => `removed orphaned data object ${o.location}`),
          ].join('\n'),
        );
        if (failed.length > 0) throw partial('PARTIAL_PRUNE', 'prune', deleted.length + orphansRemoved.length, failed);
      });
    });
  const spec = root.command('spec').description('the cluster spec in the control store');
  spec
    .command('get')
    .description('print the cluster spec (JSON)')
    .action(async (_options: unknown, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      await withClient(global, async (client) => {
        const response = await client.specGet(callSignal());
        print(
          global.output,
          JSON.parse(response.specJson) as unknown,
          () => `# ${response.location} (generation ${response.generation})\n${response.specJson.trimEnd()}`,
        );
      });
    });
  spec
    .command('set')
    .argument('<file>', 'JSON spec, e.g. edited output of spec get -o json')
    .description('replace the cluster spec (on the leader; validated; must be based on the current generation)')
    .option('--force', 'accept a spec that drops a member that runs now (read the refusal first: that member stops being part of the cluster spec)', false)
    .action(async (file: string, options: { force: boolean }, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch (err) {
        throw new UsageError(`cannot read ${file}: ${err instanceof Error ? err.message : String(err)}`, { hint: 'pass the path of a JSON spec file' });
      }
      checkSpecJson(text);
      await withClient(global, async (client) => {
        const response = await client.specSet(text, callSignal(), options.force);
        print(global.output, JSON.parse(response.specJson) as unknown, () => `cluster spec set: generation ${response.generation} at ${response.location}`);
      });
    });

  root
    .command('init')
    .description('create the spec of a brand-new, empty cluster; refused if any data or snapshot exists')
    .option('--yes', 'confirm: yes, create a new cluster', false)
    .action(async (options: { yes: boolean }, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      await withClient(global, async (client) => {
        const response = await client.init(options.yes, callSignal());
        print(
          global.output,
          JSON.parse(response.specJson) as unknown,
          () => `initialised a new cluster spec (generation ${response.generation}) at ${response.location}`,
        );
      });
    });
  root
    .command('verify')
    .argument('<name>', 'snapshot name as ls shows it')
    .description('restore drill: restore the snapshot into a scratch dir on the addressed steward, serve it with a throwaway etcd and check it')
    .addHelpText(
      'after',
      [
        '',
        'The drill reads the copy a restore would read (own dir, S3, peers), checks its SHA-256 and etcd trailer,',
        "restores it with the node's etcdutl/etcdctl under <state-dir>/drill/, starts a throwaway etcd on free",
        'loopback ports and checks its revision and key count; the result is kept with the snapshot (ls, status).',
        'Exit 0: restorable. Exit 4: NOT restorable (error[SNAPSHOT_NOT_RESTORABLE]), or the drill was refused',
        '(e.g. DRILL_NO_SPACE, DRILL_BUSY). Exit 3: no such snapshot. Exit 1: the drill itself broke.',
      ].join('\n'),
    )
    .action(async (name: string, _options: unknown, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      validateName(checkName(name, 'name'), 'name');
      await withClient(global, async (client) => {
        const result = await client.verify(name, callSignal());
        print(global.output, verifyJson(result), () => verifyText(result));
        // A verdict, not a broken drill: exit 4 like a refusal, so a script tells it from a steward that failed (1).
        if (!result.passed) {
          throw new PreconditionError('SNAPSHOT_NOT_RESTORABLE', `snapshot ${name} did not pass its restore drill (${result.failure}): ${result.reason}`, {
            hint: 'do not rely on this snapshot: take a new one (etcd-stewardctl save) and verify it; check the copy at the source named above',
          });
        }
      });
    });
  restoreCommands(root);
  return root;
}

interface RestoreOptions {
  yes: boolean;
  force: boolean;
  skipMember: string[];
  withSpec: boolean;
}

const DEFAULT_ENDPOINT = '127.0.0.1:7401';

/**
 * `restore NAME`, `restore status`, `restore abort`: one command with an argument and two subcommands.
 * Commander dispatches a first word that names a subcommand to it, so `status` and `abort` always mean
 * the subcommands; no snapshot can carry either name (they are `<base>-<node>-<unix-ts>`).
 */
function restoreCommands(root: Command): void {
  const restore = root
    .command('restore')
    .argument('<name>', 'snapshot name as ls shows it')
    .description('restore every member to one snapshot: without --yes print the plan and change nothing')
    .option('--yes', 'confirm: run the restore the plan describes', false)
    .option(
      '--skip-member <node>',
      'restore without this member (repeatable): it is left out of the restored cluster and re-added afterwards with etcdctl member add',
      (value: string, previous: string[]) => [...previous, value],
      [] as string[],
    )
    .option('--with-spec', 'also put back the etcd flags and version of the spec the snapshot carries', false)
    .option('--force', 'restore a snapshot even though its last restore drill (etcd-stewardctl verify) failed', false)
    .helpCommand(false)
    .addHelpText(
      'after',
      [
        '',
        '`restore status` and `restore abort` are the subcommands above, never a snapshot of that name',
        '(snapshot names are <base>-<node>-<unix-ts>, so none is called just "status" or "abort").',
        'Without --yes: the plan on stdout, then error[RESTORE_NOT_CONFIRMED] (exit 4); nothing changes.',
        'With -o json: one JSON object per line on stdout per event ({"event":"plan"|"progress"|"result", ...}), the result last.',
        'Ctrl-C cancels the call; etcd-stewardctl restore status then shows where the restore stands.',
      ].join('\n'),
    )
    .action(async (name: string, options: RestoreOptions, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      validateName(checkName(name, 'name'), 'name');
      checkNames(options.skipMember, '--skip-member');
      for (const member of options.skipMember) {
        if (member.trim() === '' || member !== member.trim()) {
          throw new UsageError(`--skip-member: ${JSON.stringify(member)} is not a node name`, { hint: 'pass a member name as the plan lists it' });
        }
      }
      const asked: RestoreAsked = {
        name,
        yes: options.yes,
        skipMembers: options.skipMember,
        withSpec: options.withSpec,
        force: options.force,
        ...(global.endpoint === DEFAULT_ENDPOINT ? {} : { endpoint: global.endpoint }),
      };
      await withClient(global, async (client) => {
        try {
          await runRestore(client, global.output, asked);
        } catch (err) {
          // With quorum the leader coordinates: any steward may be addressed, the ctl follows it to the leader.
          if (!(err instanceof StewardError) || err.code !== 'NOT_LEADER') throw err;
          const status = await client.status(callSignal()).catch(() => undefined);
          if (!status?.leaderGrpc || status.leaderGrpc === global.endpoint) throw err;
          process.stderr.write(`note: ${status.node} does not lead; the leader ${status.leader} at ${status.leaderGrpc} coordinates the restore\n`);
          await withClient({ ...global, endpoint: status.leaderGrpc }, (leader) =>
            runRestore(leader, global.output, { ...asked, endpoint: status.leaderGrpc }),
          );
        }
      });
    });

  const refuseRestoreFlags = (command: Command): void => {
    const parent = command.parent?.opts<RestoreOptions>();
    if (parent && (parent.yes || parent.withSpec || parent.force || parent.skipMember.length > 0)) {
      throw new UsageError(`restore ${command.name()} takes no --yes, --skip-member, --with-spec or --force`, {
        hint: `run etcd-stewardctl restore ${command.name()} alone`,
      });
    }
  };
  restore
    .command('status')
    .description('the current or last restore as every reachable steward records it, the lock and the next step')
    .action(async (_options: unknown, command: Command) => {
      refuseRestoreFlags(command);
      const global = command.optsWithGlobals<GlobalOptions>();
      await withClient(global, async (client) => {
        const status = await client.restoreStatus(callSignal());
        print(global.output, restoreStatusJson(status), () => restoreStatusText(status));
      });
    });
  restore
    .command('abort')
    .description('end the current restore: before any swap only staging files go; after one, every member that can be is rolled back')
    .action(async (_options: unknown, command: Command) => {
      refuseRestoreFlags(command);
      const global = command.optsWithGlobals<GlobalOptions>();
      await withClient(global, async (client) => {
        const status = await client.restoreAbort(callSignal());
        print(global.output, restoreStatusJson(status), () => abortText(status));
        const left = notRolledBack(status);
        if (left.length > 0) {
          throw new InternalError(
            'PARTIAL_ABORT',
            `the abort could not roll back ${left.map((m) => m.node).join(', ')}: ${left.length === 1 ? 'it is' : 'they are'} unreachable or still on the restored data dir`,
            { hint: 'bring the steward(s) back and run etcd-stewardctl restore abort again; restore status shows each member' },
          );
        }
      });
    });
}

/**
 * One restore call: the plan on stdout, progress on stderr (bars on a terminal, lines elsewhere), the
 * summary on stdout at the end, also when the restore failed (its Failed summary arrives before the
 * error). With -o json every event is one line on stdout instead.
 */
async function runRestore(client: StewardClient, output: Output, asked: RestoreAsked): Promise<void> {
  let plan: RestorePlan | undefined;
  let result: RestoreSummary | undefined;
  let view: RestoreProgressView | undefined;
  const onEvent = (event: RestoreEvent): void => {
    if (output === 'json') {
      const line = restoreEventJson(event);
      if (line) process.stdout.write(`${JSON.stringify(line)}\n`);
    }
    if (event.plan) {
      plan = event.plan;
      if (output === 'text') {
        process.stdout.write(`${planText(plan, asked)}\n`);
        view ??= restoreProgressView(
          process.stderr,
          plan.members.map((m) => m.node),
        );
      }
    } else if (event.progress) {
      view ??= output === 'text' ? restoreProgressView(process.stderr, []) : undefined;
      view?.progress(event.progress);
    } else if (event.result) result = event.result;
  };
  const request = { name: asked.name, yes: asked.yes, skipMembers: asked.skipMembers, withSpec: asked.withSpec, force: asked.force ?? false };
  let summary: RestoreSummary;
  try {
    summary = await client.restore(request, onEvent, callSignal());
  } catch (err) {
    view?.close();
    if (result && output === 'text') process.stdout.write(`\n${summaryText(result, plan)}\n`);
    if (asked.yes && asStewardError(err).family === 'cancelled') {
      process.stderr.write('note: the restore may have stopped part-way; etcd-stewardctl restore status shows where it stands\n');
    }
    throw err;
  }
  view?.close();
  if (output === 'text') process.stdout.write(`\n${summaryText(summary, plan)}\n`);
  // A steward must end a failed restore with an error; should one not, the exit code still says it failed.
  if (summary.phase !== 'Finished') {
    throw new InternalError('RESTORE_FAILED', `restore ${summary.restoreId} ended in phase ${summary.phase || '?'}: ${summary.error || 'no error given'}`, {
      hint: 'etcd-stewardctl restore status shows every member',
    });
  }
}

async function withClient(global: GlobalOptions, fn: (client: StewardClient) => Promise<void>): Promise<void> {
  if (!/^[^\s:]+:\d{1,5}$/.test(global.endpoint) && !/^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(global.endpoint)) {
    throw new UsageError(`--endpoint: '${global.endpoint}' is not host:port`, { hint: 'pass e.g. --endpoint 127.0.0.1:7401' });
  }
  const client = new StewardClient(global.endpoint, undefined, await ctlCredentials(global));
  try {
    await fn(client);
  } finally {
    client.close();
  }
}

/** A delete or prune that removed some copies but not all: exit 1, with every copy still stored named on stderr. */
function partial(code: string, verb: string, removed: number, failed: DeleteFailure[]): InternalError {
  process.stderr.write(`${failuresText(failed)}\n`);
  return new InternalError(
    code,
    `${verb} removed ${removed} cop${removed === 1 ? 'y' : 'ies'} but could not remove ${failed.length}; their records stay in the inventory`,
    {
      hint: 'fix what the NOT removed lines say (a node down, a wrong --advertise-grpc) and run it again',
    },
  );
}

function print(output: Output, json: unknown, text: () => string): void {
  process.stdout.write(output === 'json' ? `${JSON.stringify(json, null, 2)}\n` : `${text()}\n`);
}

async function main(argv: string[]): Promise<number> {
  quietIpServernameWarning();
  try {
    await program().parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return 0;
      // Help shown because no command was given: a usage error, not a success.
      if (err.code === 'commander.help') {
        process.stderr.write('error[USAGE]: no command given — pick one of the commands above\n');
        return 2;
      }
      const usage = new UsageError(err.message.replace(/^error: /, ''), { hint: 'run etcd-stewardctl --help' });
      process.stderr.write(`${renderError(usage)}\n`);
      return 2;
    }
    process.stderr.write(`${renderError(err)}\n`);
    return exitCodeFor(err);
  }
}

// main() catches every error itself; this catch is the last line of defence against a bug in it.
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${renderError(err)}\n`);
    process.exitCode = 1;
  },
);
