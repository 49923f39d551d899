import { defineConfig } from 'vitest/config';

// Tests start real etcd clusters and steward processes; on 2 cores running files in parallel only makes
// every election and health check flakier, so files run one at a time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Prints which backend runs (local binaries or containers) and fails the run if it cannot.
    globalSetup: ['./test/harness/global-setup.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default', './test/harness/summary-reporter.ts'],
  },
});
