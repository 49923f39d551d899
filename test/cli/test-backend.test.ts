import { describe, expect, it } from 'vitest';
import { assertBackendAvailable, describeBackend, selectedBackend } from '../harness/backend.js';

describe('test backend selection', () => {
  it('defaults to the local binaries and refuses an unknown name', () => {
    expect(selectedBackend({})).toBe('local');
    expect(selectedBackend({ STEWARD_TEST_BACKEND: 'containers' })).toBe('containers');
    expect(() => selectedBackend({ STEWARD_TEST_BACKEND: 'docker' })).toThrow(/not a test backend/);
  });

  it('says which etcd and S3 server run', () => {
    expect(describeBackend('local')).toMatch(/^test backend: local — etcd 3\.\d+\.\d+ .*s3rver 3\.\d+\.\d+$/);
  });

  it('asking for containers without a reachable engine fails loudly instead of skipping', async () => {
    // This machine has a docker client but no engine; with an engine reachable this passes through instead.
    const saved = process.env.DOCKER_HOST;
    process.env.DOCKER_HOST = 'unix:///nonexistent/docker.sock';
    try {
      await expect(assertBackendAvailable('containers')).rejects.toThrow(/no container engine is reachable.*DOCKER_HOST=unix:\/\/\/nonexistent/);
    } finally {
      if (saved === undefined) delete process.env.DOCKER_HOST;
      else process.env.DOCKER_HOST = saved;
    }
  });
});
