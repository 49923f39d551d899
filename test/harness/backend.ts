import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';

/**
 * Which real parts the tests run against, chosen explicitly with STEWARD_TEST_BACKEND:
 * - `local` (the default): etcd/etcdctl binaries on PATH (Debian's 3.4 here) and s3rver in a child process.
 * - `containers`: S3 is a MinIO container (it checks signatures and honours conditional writes, which s3rver
 *   does not) through testcontainers, where a container engine is reachable. Asking for containers without
 *   an engine fails the run: it never quietly falls back to `local`.
 * Stewards always supervise an etcd binary as a child process (that is what they do on a node), so the
 * etcd under a steward is the local binary on both backends; etcd 3.5/3.6 images with `etcdutl` join this
 * backend with the restore work, where the restore tool's version matters.
 */
export type TestBackend = 'local' | 'containers';

export const MINIO_IMAGE = process.env.STEWARD_TEST_MINIO_IMAGE ?? 'minio/minio:RELEASE.2025-04-22T22-12-26Z';

export function selectedBackend(env: NodeJS.ProcessEnv = process.env): TestBackend {
  const value = env.STEWARD_TEST_BACKEND ?? 'local';
  if (value === 'local' || value === 'containers') return value;
  throw new Error(`STEWARD_TEST_BACKEND='${value}' is not a test backend: use 'local' (the default) or 'containers'`);
}

/** Throws, naming what is missing, unless the chosen backend can run here. */
export async function assertBackendAvailable(backend: TestBackend): Promise<void> {
  if (backend === 'local') {
    for (const tool of ['etcd', 'etcdctl']) {
      try {
        execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
      } catch {
        throw new Error(`the local test backend needs '${tool}' on PATH: 'make test' installs Debian's etcd-server and etcd-client`);
      }
    }
    return;
  }
  const { getContainerRuntimeClient } = await import('testcontainers');
  try {
    await getContainerRuntimeClient();
  } catch (err) {
    throw new Error(
      `STEWARD_TEST_BACKEND=containers, but no container engine is reachable (DOCKER_HOST=${process.env.DOCKER_HOST ?? 'unset'}): ${err instanceof Error ? err.message : String(err)}. ` +
        'Start a Docker or Podman engine, or run without STEWARD_TEST_BACKEND for the local binaries.',
    );
  }
}

function etcdVersion(): string {
  try {
    const out = execFileSync('etcd', ['--version'], { encoding: 'utf8' });
    return /etcd Version: (\S+)/.exec(out)?.[1] ?? 'unknown';
  } catch {
    return 'not installed';
  }
}

function s3rverVersion(): string {
  try {
    const require = createRequire(import.meta.url);
    return (require('s3rver/package.json') as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

/** One line for the start of `make test`: what the tests really ran against. */
export function describeBackend(backend: TestBackend): string {
  const etcd = `etcd ${etcdVersion()} (binary on PATH, supervised by the stewards)`;
  return backend === 'local' ? `test backend: local — ${etcd}, s3rver ${s3rverVersion()}` : `test backend: containers — ${etcd}, S3 = ${MINIO_IMAGE}`;
}
