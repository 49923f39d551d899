import { assertBackendAvailable, describeBackend, selectedBackend } from './backend.js';

/** Runs once before any test file: says which backend runs, and stops the run if it cannot. */
export default async function setup(): Promise<void> {
  const backend = selectedBackend();
  await assertBackendAvailable(backend);
  process.stdout.write(`${describeBackend(backend)}\n`);
}
