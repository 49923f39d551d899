import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { etcdArgs } from '../../src/etcd/args.js';

describe('etcd flags from the config', () => {
  it('derives every flag, and a restore can override the token, client URLs and bootstrap state for one start', async () => {
    const config = await loadConfig(['--grpc-plaintext-dev=true', '--name=node-1', '--data-dir=/d', '--listen-client-urls=http://127.0.0.1:2379', '--initial-cluster-token=old'], '0.0.0');
    const base = etcdArgs(config);
    expect(base).toContain('--name=node-1');
    expect(base).toContain('--initial-cluster-token=old');
    expect(base).toContain('--listen-client-urls=http://127.0.0.1:2379');
    const restored = etcdArgs(config, {
      initialClusterToken: 'new-token',
      listenClientUrls: ['http://127.0.0.1:12379'],
      advertiseClientUrls: ['http://127.0.0.1:12379'],
      initialClusterState: 'new',
    });
    expect(restored).toContain('--initial-cluster-token=new-token');
    expect(restored).toContain('--listen-client-urls=http://127.0.0.1:12379');
    expect(restored).toContain('--advertise-client-urls=http://127.0.0.1:12379');
    // Everything else stays the node's own.
    expect(restored.filter((a) => !/token|client-urls/.test(a))).toEqual(base.filter((a) => !/token|client-urls/.test(a)));
  });
});
