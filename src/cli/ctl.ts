#!/usr/bin/env node
import { Command, CommanderError, Option } from 'commander';
import { StewardError, UsageError, exitCodeFor } from '../errors/index.js';
import { StewardClient } from '../rpc/client.js';
import { STEWARD_VERSION } from '../steward/version.js';
import { statusJson, statusText } from './format.js';

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
