const REPEAT_WINDOW_MS = 1000;

/**
 * The only place that listens to process signals: the first SIGTERM/SIGINT aborts the root signal (an
 * orderly shutdown), a later one exits at once with status 1 (after `onForcedExit`).
 */
export function rootSignalFromProcess(onFirst?: (signal: NodeJS.Signals) => void, onForcedExit?: () => void): AbortSignal {
  const controller = new AbortController();
  let firstAt = 0;
  const handle = (signal: NodeJS.Signals): void => {
    if (controller.signal.aborted) {
      // make, timeout and terminals often deliver one request twice within a moment; only a later one forces.
      if (Date.now() - firstAt < REPEAT_WINDOW_MS) return;
      process.stderr.write(`second ${signal}: exiting immediately\n`);
      onForcedExit?.();
      process.exit(1);
    }
    firstAt = Date.now();
    onFirst?.(signal);
    controller.abort(new Error(`received ${signal}`));
  };
  process.on('SIGTERM', handle);
  process.on('SIGINT', handle);
  return controller.signal;
}
