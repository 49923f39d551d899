#!/usr/bin/env node
import { HelpShown, loadConfig } from '../config/load.js';
import { StewardError, exitCodeFor, renderError } from '../errors/index.js';
import { createLogger } from '../observability/logger.js';
import { Steward } from '../steward/steward.js';
import { STEWARD_VERSION } from '../steward/version.js';
import { rootSignalFromProcess } from './signals.js';
import { quietIpServernameWarning } from './warnings.js';

/** Shutdown must finish well inside the kubelet's 30 s grace period; past this the process exits anyway. */
const SHUTDOWN_DEADLINE_MS = 28_000;

async function main(): Promise<number> {
  // Peer calls over TLS to IP addresses: the same warning the ctl keeps off stderr, not a log line.
  quietIpServernameWarning();
  let config;
  try {
    config = await loadConfig(process.argv.slice(2), STEWARD_VERSION);
  } catch (err) {
    if (err instanceof HelpShown) return 0;
    if (err instanceof StewardError) {
      process.stderr.write(`${renderError(err)}\n`);
      return exitCodeFor(err);
    }
    throw err;
  }
  const logger = createLogger({ level: config.logLevel, node: config.name });
  const signal = rootSignalFromProcess((received) => {
    logger.info({ component: 'steward', signal: received }, 'shutdown requested');
    setTimeout(() => {
      logger.error(
        { component: 'steward', activeResources: process.getActiveResourcesInfo() },
        `shutdown did not finish within ${SHUTDOWN_DEADLINE_MS}ms; exiting`,
      );
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS).unref();
  });
  try {
    await (await Steward.create(config, logger)).run(signal);
    return 0;
  } catch (err) {
    logger.fatal({ component: 'steward', err }, err instanceof StewardError ? err.describe() : 'steward failed');
    return exitCodeFor(err);
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`error[INTERNAL]: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
