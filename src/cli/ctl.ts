#!/usr/bin/env node
import { readFile } from 'node:fs/promises';
import { Command, CommanderError, Option } from 'commander';
import { StewardError, UsageError, exitCodeFor } from '../errors/index.js';
import { StewardClient } from '../rpc/client.js';
import { STEWARD_VERSION } from '../steward/version.js';
import { validateName } from '../snapshot/names.js';
import { recordJson, recordsText, saveJson, saveText, statusJson, statusText } from './format.js';
import { ByteProgress } from './progress.js';

type Output = 'text' | 'json';
interface GlobalOptions {
  endpoint: string;
  output: Output;
}

function program(): Command {
  const root = new Command('etcd-stewardctl')
    .description('Operate etcd-steward: status now; snapshots and restores as they land.')
    .version(STEWARD_VERSION)
    .exitOverride()
    .configureOutput({ outputError: () => undefined })
    .addOption(new Option('--endpoint <host:port>', 'steward gRPC address').env('ETCD_STEWARD_ENDPOINT').default('127.0.0.1:7401'))
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'));

  root
    .command('status')
    .description("the steward's view: leader, every etcd member's health, db size and revision")
    .action(async (_options: unknown, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      await withClient(global, async (client) => {
        const status = await client.status();
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
      if (options.name !== undefined) validateName(options.name);
      await withClient(global, async (client) => {
        const progress = global.output === 'text' ? new ByteProgress(process.stderr) : undefined;
        const info = await client.save({ name: options.name ?? '', force: options.force }, (bytes) => progress?.update(bytes));
        progress?.done();
        print(global.output, saveJson(info), () => saveText(info));
      });
    });

  root
    .command('ls')
    .aliases(['list', 'l'])
    .description('every snapshot in the cluster-wide inventory')
    .action(async (_options: unknown, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      await withClient(global, async (client) => {
        const records = await client.list();
        print(global.output, records.map(recordJson), () => recordsText(records));
      });
    });

  root
    .command('delete')
    .argument('<name...>', 'snapshot names as ls shows them')
    .description('remove snapshots from every location and the inventory; an unknown name deletes nothing')
    .action(async (names: string[], _options: unknown, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      for (const name of names) validateName(name, 'name');
      await withClient(global, async (client) => {
        const deleted = await client.delete(names);
        print(global.output, deleted.map(recordJson), () => (deleted.length ? `deleted:\n${recordsText(deleted)}` : 'nothing deleted'));
      });
    });

  root
    .command('prune')
    .description('apply retention now: keep the newest N scheduled and the newest N on-demand snapshots per location')
    .option('--snapshot-retention <n>', 'snapshots to keep per location (default: the steward\'s --etcd-snapshot-retention)')
    .action(async (options: { snapshotRetention?: string }, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      const retention = options.snapshotRetention === undefined ? 0 : Number(options.snapshotRetention);
      if (!Number.isInteger(retention) || (options.snapshotRetention !== undefined && retention < 1)) {
        throw new UsageError(`--snapshot-retention: '${options.snapshotRetention}' is not allowed: expected a whole number of at least 1`, {
          hint: 'pass how many scheduled snapshots to keep per location',
        });
      }
      await withClient(global, async (client) => {
        const deleted = await client.prune(retention);
        print(global.output, deleted.map(recordJson), () => (deleted.length ? `pruned:\n${recordsText(deleted)}` : 'nothing to prune'));
      });
    });
  const spec = root.command('spec').description('the cluster spec in the control store');
  spec
    .command('get')
    .description('print the cluster spec (JSON)')
    .action(async (_options: unknown, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      await withClient(global, async (client) => {
        const response = await client.specGet();
        print(global.output, JSON.parse(response.specJson) as unknown, () => `# ${response.location} (generation ${response.generation})\n${response.specJson.trimEnd()}`);
      });
    });
  spec
    .command('set')
    .argument('<file>', 'JSON spec, e.g. edited output of spec get -o json')
    .description('replace the cluster spec (on the leader; validated; must be based on the current generation)')
    .action(async (file: string, _options: unknown, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch (err) {
        throw new UsageError(`cannot read ${file}: ${err instanceof Error ? err.message : String(err)}`, { hint: 'pass the path of a JSON spec file' });
      }
      await withClient(global, async (client) => {
        const response = await client.specSet(text);
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
        const response = await client.init(options.yes);
        print(global.output, JSON.parse(response.specJson) as unknown, () => `initialised a new cluster spec (generation ${response.generation}) at ${response.location}`);
      });
    });
  return root;
}

async function withClient(global: GlobalOptions, fn: (client: StewardClient) => Promise<void>): Promise<void> {
  if (!/^[^\s:]+:\d{1,5}$/.test(global.endpoint) && !/^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(global.endpoint)) {
    throw new UsageError(`--endpoint: '${global.endpoint}' is not host:port`, { hint: 'pass e.g. --endpoint 127.0.0.1:7401' });
  }
  const client = new StewardClient(global.endpoint);
  try {
    await fn(client);
  } finally {
    client.close();
  }
}

function print(output: Output, json: unknown, text: () => string): void {
  process.stdout.write(output === 'json' ? `${JSON.stringify(json, null, 2)}\n` : `${text()}\n`);
}

async function main(argv: string[]): Promise<number> {
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
      process.stderr.write(`error[${usage.code}]: ${usage.describe()}\n`);
      return 2;
    }
    if (err instanceof StewardError) {
      process.stderr.write(`error[${err.code}]: ${err.describe()}\n`);
      return exitCodeFor(err);
    }
    process.stderr.write(`error[INTERNAL]: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
