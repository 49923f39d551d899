import type { TLSSocket } from 'node:tls';
import type { PeerCertificate } from 'node:tls';
import { ServerInterceptingCall, type Server, type ServerInterceptingCallInterface, type ServerInterceptor, type StatusObject } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { PermissionError, toGrpcStatus } from '../errors/index.js';
import { http2Listeners } from '../rpc/flow-window.js';

/**
 * Who may call what on the gRPC API, decided per call from the client certificate's subject CN (SANs
 * are not used: a CN is what kubeadm's and cert-manager's client certificates carry as the identity).
 *
 * - StewardPeer: only a member of the cluster (the CN is a member's node name). The node a peer claims
 *   in its request header is checked against the same CN by the peer adapters (rpc/peer-header.ts).
 * - StewardCtl: read-only verbs for any certificate of the CA; every other verb (and any verb added
 *   later, until it is listed here) only for a CN matching --admin-cn.
 * - grpc.health.v1.Health (Check, Watch, List): any certificate of the CA. It tells only SERVING or not,
 *   what /readyz tells anyone on the HTTP port; a probe or a mesh has a certificate but no admin CN.
 */
export interface AccessPolicy {
  /** CN glob patterns (`*` = any characters) of the operators that may change things. */
  adminCn: string[];
  /** Node names that may call the peer service: the cluster spec's members, else --initial-cluster. */
  members(): string[];
}

const CTL_SERVICE = '/etcdsteward.v1.StewardCtl/';
const PEER_SERVICE = '/etcdsteward.v1.StewardPeer/';
const HEALTH_SERVICE = '/grpc.health.v1.Health/';

/**
 * Verbs a viewer may call: they change nothing. Save is not among them: it writes to every store, a
 * later prune keeps only the newest on-demand snapshots (so saves can push older ones out), and
 * `--force` passes the health gate. Nor is Verify: a restore drill takes the node's disk and CPU for a
 * throwaway etcd and writes its verdict into the inventory, which restore and retention act on.
 */
const READ_ONLY_CTL = new Set(['Status', 'List', 'SpecGet', 'RestoreStatus']);

export function needsAdmin(method: string): boolean {
  return !READ_ONLY_CTL.has(method);
}

export function cnMatches(cn: string, patterns: readonly string[]): boolean {
  return patterns.some((pattern) => new RegExp(`^${pattern.split('*').map(escapeRegExp).join('.*')}$`, 's').test(cn));
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The CN of a verified client certificate; undefined without one, or with several CNs (ambiguous). */
export function certificateCn(cert: PeerCertificate | undefined): string | undefined {
  const cn: unknown = cert?.subject?.CN;
  return typeof cn === 'string' && cn !== '' ? cn : undefined;
}

/** Why the TLS layer did not verify a connection's client certificate, by the connection's remote address. */
export class TlsRefusals {
  private readonly reasons = new Map<string, PermissionError>();

  /** Watches the server's TLS listeners (grpc-js private state, as rpc/flow-window.ts does). */
  static watch(server: Server, log: Logger): TlsRefusals {
    const refusals = new TlsRefusals();
    const listeners = http2Listeners(server);
    if (!listeners) log.warn('cannot watch TLS connections (grpc-js internals changed): refused calls will not say why their certificate was refused');
    for (const listener of listeners ?? []) {
      listener.on('secureConnection', (socket: TLSSocket) => {
        if (socket.authorized) return;
        const key = `${socket.remoteAddress}:${socket.remotePort}`;
        refusals.reasons.set(key, unverified(socket));
        socket.once('close', () => refusals.reasons.delete(key));
      });
    }
    return refusals;
  }

  reasonFor(call: ServerInterceptingCallInterface): PermissionError {
    const info = call.getConnectionInfo();
    return (
      this.reasons.get(`${info.remoteAddress}:${info.remotePort}`) ??
      new PermissionError('TLS_CLIENT_CERT_INVALID', 'the client certificate was not verified (none sent, expired, or not signed by --tls-ca)', {
        hint: HINT_FILES,
      })
    );
  }
}

const HINT_FILES =
  'pass --cacert, --cert and --key (or ETCD_STEWARD_CACERT, _CERT, _KEY) with a current certificate signed by the CA the steward trusts (--tls-ca)';

function unverified(socket: TLSSocket): PermissionError {
  const cert = socket.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) {
    return new PermissionError('TLS_CLIENT_CERT_MISSING', 'the client sent no certificate: the steward accepts only mTLS clients', { hint: HINT_FILES });
  }
  const who = `the client certificate CN=${certificateCn(cert) ?? '(none)'}`;
  const raw = socket.authorizationError as unknown;
  const code = typeof raw === 'string' ? raw : raw instanceof Error ? ((raw as { code?: string }).code ?? raw.message) : String(raw);
  switch (code) {
    case 'CERT_HAS_EXPIRED':
      return new PermissionError('TLS_CLIENT_CERT_EXPIRED', `${who} expired on ${cert.valid_to}`, { hint: 'renew the certificate and pass the new one' });
    case 'CERT_NOT_YET_VALID':
      return new PermissionError('TLS_CLIENT_CERT_NOT_YET_VALID', `${who} is not valid before ${cert.valid_from}`, {
        hint: "check this host's clock and the certificate's dates",
      });
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'CERT_SIGNATURE_FAILURE':
      return new PermissionError(
        'TLS_CLIENT_CERT_UNTRUSTED',
        `${who} (issuer CN=${certificateCn({ subject: cert.issuer } as PeerCertificate) ?? '?'}) is not signed by the CA the steward trusts (--tls-ca)`,
        {
          hint: 'use a certificate issued by the cluster CA the steward is configured with',
        },
      );
    default:
      return new PermissionError('TLS_CLIENT_CERT_INVALID', `${who} was refused: ${code}`, { hint: HINT_FILES });
  }
}

/** The refusal of one call, or undefined if it may go on. Exported for the unit tests of the policy. */
export function refusalOf(path: string, cert: PeerCertificate | undefined, policy: AccessPolicy): PermissionError | undefined {
  // Any certificate the TLS layer verified, CN or not: a probe's certificate may carry only SANs.
  if (path.startsWith(HEALTH_SERVICE) && cert) return undefined;
  const cn = certificateCn(cert);
  if (cn === undefined) {
    return new PermissionError('TLS_CLIENT_CERT_NO_CN', 'the client certificate names no single subject CN: the steward cannot tell who is asking', {
      hint: 'issue the certificate with exactly one CN (a node name for stewards, an operator identity for the ctl)',
    });
  }
  if (path.startsWith(PEER_SERVICE)) {
    const members = policy.members();
    if (members.includes(cn)) return undefined;
    return new PermissionError('NOT_A_MEMBER', `${cn} may not call the steward peer API: only the cluster's members may (${members.join(', ')})`, {
      hint: "a steward's certificate must carry its node name as CN; a node not in the cluster spec (or --initial-cluster) is refused",
    });
  }
  if (path.startsWith(CTL_SERVICE)) {
    const method = path.slice(CTL_SERVICE.length);
    if (!needsAdmin(method) || cnMatches(cn, policy.adminCn)) return undefined;
    return new PermissionError('NOT_ADMIN', `${cn} may not call ${method}: it needs an admin certificate (CN matching ${policy.adminCn.join(', ')})`, {
      hint: 'use an admin identity for verbs that change snapshots, the spec or the cluster; a viewer may run status, ls, spec get and restore status',
    });
  }
  return new PermissionError('UNKNOWN_SERVICE', `${cn} called ${path}, which no access rule covers`, { hint: 'upgrade the caller and the steward together' });
}

/**
 * Runs before every call's handler (it refuses on the call's metadata, before any request message is
 * read): no verified client certificate, or a certificate the policy refuses → PERMISSION_DENIED.
 */
export function accessInterceptor(policy: AccessPolicy, refusals: () => TlsRefusals | undefined, log: Logger): ServerInterceptor {
  return (method, call) =>
    new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, proceed) => {
            const cert = call.getAuthContext().sslPeerCertificate;
            const refusal = cert
              ? refusalOf(method.path, cert, policy)
              : (refusals()?.reasonFor(call) ?? new PermissionError('TLS_CLIENT_CERT_INVALID', 'no verified client certificate', { hint: HINT_FILES }));
            if (!refusal) {
              proceed(metadata);
              return;
            }
            log.warn({ method: method.path, peer: call.getPeer(), identity: certificateCn(cert) ?? '', code: refusal.code }, 'call refused');
            call.sendStatus(toGrpcStatus(refusal) as StatusObject);
          },
        }),
    });
}
