import { InvalidArgumentError, PermissionError, PreconditionError, UnavailableError } from '../errors/index.js';
import { checkHeaderField } from './bounds.js';
import type { PeerHeader, PeerIdentity, PeerReplyHeader } from './types.js';

/**
 * Every peer call names the node it means to reach and the cluster it belongs to, and every reply names
 * who answered. A steward whose registry entry points at another steward (or at itself: every static pod
 * advertising 127.0.0.1:7401) is then refused instead of being taken for the node it was meant to be.
 */

/**
 * Receiver side: refuses a request meant for another node or another etcd cluster, before any work.
 * With mTLS (`certCn` not null) the caller the header names must be the one its certificate names: a
 * member cannot act in another member's name (the fencing and restore checks trust `caller`).
 */
export function checkRequestHeader(header: PeerHeader | null | undefined, self: PeerIdentity, certCn: string | null = null): PeerHeader {
  if (!header) throw new InvalidArgumentError('peer request without a header', { hint: 'the caller is not a steward of this version; upgrade it' });
  for (const [what, value] of Object.entries(header)) if (typeof value === 'string') checkHeaderField(value, what);
  if (certCn !== null && header.caller !== certCn) {
    throw new PermissionError(
      'PEER_IDENTITY_MISMATCH',
      `the peer call claims to come from ${header.caller || '(no caller named)'} but its certificate names ${certCn || '(no CN)'}`,
      { hint: `a steward calls its peers with its own certificate (CN = its --name); check --tls-cert on ${certCn || 'the caller'}` },
    );
  }
  if (header.node !== self.node) {
    throw new PreconditionError('WRONG_PEER', `this is steward ${self.node}, not ${header.node || '(none named)'}: the caller reached the wrong steward`, {
      hint: `the address ${header.caller || 'the caller'} has for ${header.node} belongs to ${self.node}; fix --advertise-grpc on ${header.node}`,
    });
  }
  const own = self.clusterId();
  if (header.clusterId && own && header.clusterId !== own) {
    throw new PreconditionError('WRONG_CLUSTER', `steward ${self.node} belongs to etcd cluster ${own}, not ${header.clusterId}`, {
      hint: 'two clusters share steward addresses; check --advertise-grpc and the registry',
    });
  }
  return header;
}

export function replyHeader(self: PeerIdentity): PeerReplyHeader {
  return { node: self.node, clusterId: self.clusterId() };
}

/**
 * Caller side: refuses a reply from the wrong node or cluster. Typed as unavailable: the node the caller
 * meant was not reached, and nothing the reply says may change the caller's state.
 */
export function checkReplyHeader(reply: PeerReplyHeader | null | undefined, expected: { node: string; grpc: string; clusterId: string }): void {
  if (!reply || reply.node !== expected.node) {
    throw new UnavailableError(
      'WRONG_PEER',
      `cannot reach steward ${expected.node}: its address ${expected.grpc} answered as ${reply?.node || 'an unnamed steward'}`,
      {
        hint: `fix --advertise-grpc on ${expected.node} so it names that node's own gRPC address`,
        retryable: false,
      },
    );
  }
  if (reply.clusterId && expected.clusterId && reply.clusterId !== expected.clusterId) {
    throw new UnavailableError(
      'WRONG_CLUSTER',
      `cannot reach steward ${expected.node}: ${expected.grpc} answered from etcd cluster ${reply.clusterId}, not ${expected.clusterId}`,
      {
        hint: 'two clusters share steward addresses; check --advertise-grpc and the registry',
        retryable: false,
      },
    );
  }
}
