/**
 * The only place that listens to process signals: the first SIGTERM/SIGINT aborts the root signal (an
 * orderly shutdown), a second one exits at once with status 1.
 */
export function rootSignalFromProcess(onFirst?: (signal: NodeJS.Signals) => void): AbortSignal {
  const controller = new AbortController();
  const handle = (signal: NodeJS.Signals): void => {
    if (controller.signal.aborted) {
      process.stderr.write(`second ${signal}: exiting immediately\n`);
      process.exit(1);
    }
    onFirst?.(signal);
    controller.abort(new Error(`received ${signal}`));
  };
  process.on('SIGTERM', handle);
  process.on('SIGINT', handle);
  return controller.signal;
}
