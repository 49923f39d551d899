import { describe, expect, it } from 'vitest';
import { freePort } from '../harness/ports.js';
import { assertBuilt, runCtl } from '../harness/steward-cluster.js';

describe('etcd-stewardctl without a steward', () => {
  it('exits 5 with a clear message when the endpoint is dead', async () => {
    assertBuilt();
    const port = await freePort();
    const result = await runCtl(['--endpoint', `127.0.0.1:${port}`, 'status']);
    expect(result.code).toBe(5);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(new RegExp(`^error\\[STEWARD_UNREACHABLE\\]: cannot reach the steward at 127.0.0.1:${port} .* — check that etcd-steward is running there`));
  });

  it('reads the endpoint from ETCD_STEWARD_ENDPOINT', async () => {
    const port = await freePort();
    const result = await runCtl(['status'], { ETCD_STEWARD_ENDPOINT: `127.0.0.1:${port}` });
    expect(result.code).toBe(5);
    expect(result.stderr).toContain(`127.0.0.1:${port}`);
  });

  it('exits 2 on usage errors', async () => {
    for (const args of [['status', '--bogus'], ['-o', 'yaml', 'status'], ['no-such-verb'], [], ['--endpoint', 'not an endpoint', 'status']]) {
      const result = await runCtl(args);
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr, args.join(' ')).toMatch(/error\[USAGE\]: .+ — /);
    }
  });

  it('--help exits 0', async () => {
    const result = await runCtl(['--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('status');
  });
});
