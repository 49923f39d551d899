/** Chunks a reader may be ahead of the slowest consumer, per consumer. */
const MAX_QUEUED = 2;

interface Consumer {
  queue: Buffer[];
  done: boolean;
  /** Wakes the consumer waiting for a chunk. */
  wake?: () => void;
}

/**
 * One read of `source` handed to `count` consumers, each as its own async iterable: the snapshot is read
 * once (S3 is paid once) and the slowest member paces the read, so at most a couple of chunks per member are
 * held. A consumer that stops early is dropped; a source that fails fails every consumer still reading.
 */
export function broadcast(source: AsyncIterable<Buffer>, count: number, signal: AbortSignal): AsyncIterable<Buffer>[] {
  const consumers: Consumer[] = Array.from({ length: count }, () => ({ queue: [], done: false }));
  let ended = false;
  let failure: unknown;
  let started = false;
  let producerWake: (() => void) | undefined;
  const wakeProducer = (): void => {
    const wake = producerWake;
    producerWake = undefined;
    wake?.();
  };
  const wakeAll = (): void => {
    for (const c of consumers) {
      const wake = c.wake;
      c.wake = undefined;
      wake?.();
    }
  };
  const room = (): boolean => consumers.every((c) => c.done || c.queue.length < MAX_QUEUED);
  const produce = async (): Promise<void> => {
    try {
      for await (const chunk of source) {
        signal.throwIfAborted();
        if (consumers.every((c) => c.done)) break;
        for (const c of consumers) if (!c.done) c.queue.push(chunk);
        wakeAll();
        while (!room()) await new Promise<void>((resolve) => (producerWake = resolve));
      }
    } catch (err) {
      failure = err;
    } finally {
      ended = true;
      wakeAll();
    }
  };
  const abort = (): void => {
    failure ??= signal.reason;
    wakeAll();
    wakeProducer();
  };
  signal.addEventListener('abort', abort, { once: true });
  return consumers.map((consumer) => ({
    [Symbol.asyncIterator]: async function* (): AsyncGenerator<Buffer> {
      if (!started) {
        started = true;
        void produce().finally(() => signal.removeEventListener('abort', abort));
      }
      try {
        for (;;) {
          const chunk = consumer.queue.shift();
          if (chunk) {
            wakeProducer();
            yield chunk;
            continue;
          }
          if (failure !== undefined) throw failure;
          if (ended) return;
          await new Promise<void>((resolve) => (consumer.wake = resolve));
        }
      } finally {
        consumer.done = true;
        consumer.queue = [];
        wakeProducer();
      }
    },
  }));
}
