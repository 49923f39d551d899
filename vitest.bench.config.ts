import { defineConfig } from 'vitest/config';

// Benchmarks print numbers and are run by `make bench`, never by `make test`.
export default defineConfig({
  test: {
    include: ['test/bench/**/*.bench.ts'],
    fileParallelism: false,
    testTimeout: 3 * 60 * 60_000,
    hookTimeout: 60 * 60_000,
    reporters: ['default'],
  },
});
