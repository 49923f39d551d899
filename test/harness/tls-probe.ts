import { connect, type PeerCertificate } from 'node:tls';

/** The certificate a fresh TLS connection to `endpoint` is served (no client certificate: the handshake still completes). */
export function servedCertificate(endpoint: string, ca: Buffer | string): Promise<PeerCertificate> {
  const [host, port] = endpoint.split(':');
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port: Number(port), ca, servername: 'localhost' }, () => {
      resolve(socket.getPeerCertificate());
      socket.end();
    });
    socket.on('error', reject);
  });
}
