import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Metadata } from '@grpc/grpc-js';
import { ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, noop } from 'cockatiel';
import { Etcd3, isRecoverableError, type IOptions } from 'etcd3';
import type { Config } from '../config/settings.js';
import { ConfigError } from '../errors/index.js';

/**
 * The one door to etcd3 (microsoft/etcd3 1.1.2, unmaintained): the rest of src/ takes its types from here and
 * never imports 'etcd3' itself (lint enforces it), so every workaround for its traps (PITFALLS.md) lives in
 * src/etcd/: stale deadlines, the watch backoff timer, random host choice, the snapshot call's lost metadata.
 */
export type { Etcd3, IMember, Lease, Namespace } from 'etcd3';

/** Seconds left on a lease (0 or less once it expired); etcd3 wraps this call in no builder. */
export async function leaseSecondsLeft(client: Etcd3, leaseId: string): Promise<number> {
  const response = await client.leaseClient.leaseTimeToLive({ ID: leaseId });
  return Number(response.TTL);
}

/** How the steward proves itself to etcd, etcdctl-style: its CA, client certificate and key, and an etcd user. */
export type EtcdClientSecurity = Pick<Config, 'etcdCacert' | 'etcdCert' | 'etcdKey' | 'etcdUser' | 'etcdPassword'>;

export interface EtcdClientOptions {
  /** Deadline for every unary call; streams (watch, keepalive, snapshot) set their own. */
  callTimeoutMs?: number;
  /** TLS files and etcd auth; without them the client speaks plaintext (or TLS with the public CAs for https). */
  security?: EtcdClientSecurity;
}

/**
 * The steward's TLS files, read now: each new client reads them again, so a rotated certificate is used by the
 * next client without a restart. Only paths go into an error, never the contents.
 */
export function readClientTls(security: Partial<EtcdClientSecurity> | undefined): { ca?: Buffer; cert?: Buffer; key?: Buffer } {
  if (!security) return {};
  const read = (path: string | undefined, flag: string): Buffer | undefined => {
    if (!path) return undefined;
    try {
      return readFileSync(path);
    } catch (err) {
      throw new ConfigError(`--${flag}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, {
        hint: `make ${path} readable by the steward`,
        cause: err,
      });
    }
  };
  const ca = read(security.etcdCacert, 'etcd-cacert');
  const cert = read(security.etcdCert, 'etcd-cert');
  const key = read(security.etcdKey, 'etcd-key');
  return { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) };
}

function securityOptions(security: EtcdClientSecurity | undefined): Pick<IOptions, 'credentials' | 'auth'> {
  const out: Pick<IOptions, 'credentials' | 'auth'> = {};
  const tls = readClientTls(security);
  // etcd3 switches to TLS on its own for https hosts, with the public CAs; our own CA or a certificate needs this.
  if (tls.ca || tls.cert) {
    // etcd3 types rootCertificate as required, but grpc-js takes null as "the public bundle" (etcdctl without --cacert).
    out.credentials = { rootCertificate: tls.ca as Buffer, ...(tls.cert && tls.key ? { certChain: tls.cert, privateKey: tls.key } : {}) };
  }
  if (security?.etcdUser) out.auth = { username: security.etcdUser, password: security.etcdPassword };
  return out;
}

function baseOptions(hosts: string[], options: EtcdClientOptions): IOptions {
  const timeout = options.callTimeoutMs ?? 10_000;
  return {
    hosts,
    ...securityOptions(options.security),
    // A function, not an object: a plain object's deadline is computed once and goes stale.
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + timeout }),
    grpcOptions: { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000 },
  };
}

/** The steward's cluster client: any member may answer, with etcd3's retries and circuit breakers. */
export function createClusterClient(endpoints: string[], options: EtcdClientOptions = {}): Etcd3 {
  return withAuthOptional(
    new Etcd3({
      ...baseOptions(endpoints, options),
      // etcd3's default breaker stays open 5 s after three failures: at start-up, while the members are still
      // forming a quorum, that alone delayed the first election by seconds. 1 s is enough to shed load.
      faultHandling: {
        host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(3) }),
        // Every watch stream that ends (a cancelled campaign watch, an etcd restart) grows etcd3's reconnect
        // backoff, and its timer is neither unref'd nor cleared by close(): at 30 s it held a stopped steward
        // past its 28 s shutdown deadline. 2 s also makes a follower's watch come back quickly.
        watchBackoff: new ExponentialBackoff({ initialDelay: 200, maxDelay: 2000 }).next(),
      },
    }),
  );
}

/**
 * A client bound to exactly one member (etcd3 picks hosts at random otherwise). No retries and no
 * circuit breaker: a probe must report what that member does now, not what a retry hid.
 */
export function createMemberClient(endpoint: string, options: EtcdClientOptions = {}): Etcd3 {
  const base = baseOptions([endpoint], options);
  return withAuthOptional(
    new Etcd3({
      ...base,
      // HTTP/2's default 64 KiB window lets only two 32 KiB snapshot messages be in flight, so a snapshot
      // crawls at the round-trip rate (measured: 109 MB/s). 4 MiB doubled it (206 MB/s) and bounds what
      // the stream can buffer.
      grpcOptions: { ...base.grpcOptions, 'grpc-node.flow_control_window': SNAPSHOT_WINDOW_BYTES },
      faultHandling: { host: () => noop, global: noop },
    }),
  );
}

const SNAPSHOT_WINDOW_BYTES = 4 * 1024 * 1024;

// etcd3 bundles its own grpc-js: its calls take only that copy's Metadata.
const etcd3Grpc = createRequire(createRequire(import.meta.url).resolve('etcd3'))('@grpc/grpc-js') as { Metadata: new () => Metadata };

/** How long a client given a user goes without a token after etcd said auth is off, before it asks again. */
const AUTH_OFF_RECHECK_MS = 5_000;

interface Authenticator {
  getMetadata(): Promise<Metadata>;
  invalidateMetadata(): void;
}

/**
 * With a user given, etcd3 fails every call while etcd's auth is still off ("authentication is not enabled"),
 * so a steward given --etcd-user before `etcdctl auth enable` would stop working. etcd's own clientv3 goes on
 * without a token then; so does this, asking again every few seconds so the token is used once auth is on.
 * etcd reports the condition only as this status message (rpctypes.ErrGRPCAuthNotEnabled).
 */
function withAuthOptional(client: Etcd3): Etcd3 {
  // The pool and its authenticator are private in etcd3's typings; 1.1.2 is pinned and unmaintained.
  const authenticator = (client as unknown as { pool?: { authenticator?: Authenticator } }).pool?.authenticator;
  if (!authenticator) return client;
  const original = authenticator.getMetadata.bind(authenticator);
  let authOffUntil = 0;
  authenticator.getMetadata = async () => {
    if (Date.now() < authOffUntil) return new etcd3Grpc.Metadata();
    try {
      return await original();
    } catch (err) {
      if (!/authentication is not enabled/.test(String((err as Error | undefined)?.message))) throw err;
      authenticator.invalidateMetadata();
      authOffUntil = Date.now() + AUTH_OFF_RECHECK_MS;
      return new etcd3Grpc.Metadata();
    }
  };
  return client;
}
