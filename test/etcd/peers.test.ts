import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_MEMBERS_BODY_BYTES, askPeers } from '../../src/etcd/peers.js';
import { EtcdCluster } from '../harness/etcd-cluster.js';
import { freePort } from '../harness/ports.js';

/** A peer URL that answers /members the way a broken or hostile endpoint might. */
async function peerServer(handler: Parameters<typeof createServer>[1]): Promise<{ url: string; server: Server }> {
  const server = createServer(handler);
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${port}`, server };
}

describe('askPeers reads /members bounded (real etcd and misbehaving endpoints)', () => {
  let etcd: EtcdCluster;
  const servers: Server[] = [];
  let endless = 0;

  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
  });
  afterAll(async () => {
    for (const server of servers) server.closeAllConnections();
    for (const server of servers) server.close();
    await etcd?.stop();
  });

  it('a real member answers; an oversized body and a body that never ends count as no answer, without waiting for the timeout', async () => {
    const member = etcd.members[0];
    if (!member) throw new Error('no member');
    const huge = await peerServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`[${'{"id":1,"name":"x"},'.repeat(Math.ceil((2 * MAX_MEMBERS_BODY_BYTES) / 20))}{"id":2}]`);
    });
    const forever = await peerServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      const pump = (): void => {
        while (!res.destroyed) {
          const more = res.write(chunk);
          endless += chunk.length;
          if (!more) {
            res.once('drain', pump);
            return;
          }
        }
      };
      res.write('[');
      pump();
    });
    servers.push(huge.server, forever.server);
    const started = Date.now();
    const view = await askPeers(
      {
        name: 'newcomer',
        initialAdvertisePeerUrls: ['http://127.0.0.1:1'],
        initialCluster: [
          { name: member.name, peerUrl: member.peerUrl },
          { name: 'huge', peerUrl: huge.url },
          { name: 'forever', peerUrl: forever.url },
          { name: 'newcomer', peerUrl: 'http://127.0.0.1:1' },
        ],
      },
      10_000,
      AbortSignal.timeout(15_000),
    );
    const ms = Date.now() - started;
    console.log(
      `askPeers with an oversized and an endless /members body: ${ms} ms; the endless one sent ${(endless / 1024 / 1024).toFixed(1)} MiB before the read stopped`,
    );
    expect(view.answered).toEqual([member.peerUrl]);
    expect(view.thisMemberRan).toBe(false);
    expect(ms).toBeLessThan(5000);
    // The reader stopped near the limit (plus what the sockets buffer), not after the 10 s timeout.
    expect(endless).toBeLessThan(64 * MAX_MEMBERS_BODY_BYTES);
  });
});
