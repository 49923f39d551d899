import { execFile } from 'node:child_process';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A certificate and its key as files. */
export interface CertFiles {
  cert: string;
  key: string;
}

export interface IssueOptions {
  /** Subject common name: the identity the steward checks (a node name, an operator). */
  cn: string;
  /** subjectAltName entries, e.g. ['IP:127.0.0.1', 'DNS:localhost']. */
  san?: string[];
  /** Valid from/to as openssl's YYYYMMDDHHMMSSZ; default: from now, for `days`. */
  startDate?: string;
  endDate?: string;
  days?: number;
}

/**
 * A throwaway certificate authority made with `openssl`, for `make run` and the tests only: keys are
 * P-256 (quick to make), kept 0600 in a 0700 dir. Production certificates come from the cluster's own CA
 * (kubeadm's etcd CA, cert-manager); nothing here is meant for a real node.
 */
export class DevCa {
  private constructor(
    readonly dir: string,
    readonly ca: string,
    private readonly caKey: string,
    private readonly config: string,
  ) {}

  /** Makes a new CA in `dir` (created 0700), or opens the one already there. */
  static async open(dir: string, subject = 'etcd-steward dev CA'): Promise<DevCa> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    const ca = join(dir, 'ca.pem');
    const caKey = join(dir, 'ca-key.pem');
    const config = join(dir, 'openssl-ca.cnf');
    const db = join(dir, 'ca-db');
    await mkdir(db, { recursive: true, mode: 0o700 });
    if (!(await exists(ca))) {
      await newKey(caKey);
      await run('openssl', [
        'req',
        '-x509',
        '-new',
        '-key',
        caKey,
        '-sha256',
        '-days',
        '3650',
        '-subj',
        `/CN=${subject}`,
        '-out',
        ca,
        '-addext',
        'basicConstraints=critical,CA:TRUE',
        '-addext',
        'keyUsage=critical,keyCertSign,cRLSign',
      ]);
      await writeFile(join(db, 'index.txt'), '');
      await writeFile(join(db, 'serial'), '1000\n');
      await writeFile(config, caConfig(db), { mode: 0o600 });
    }
    return new DevCa(dir, ca, caKey, config);
  }

  /** Issues `<name>.pem` and `<name>-key.pem` for both TLS server and client use. */
  async issue(name: string, options: IssueOptions): Promise<CertFiles> {
    const key = join(this.dir, `${name}-key.pem`);
    const cert = join(this.dir, `${name}.pem`);
    const csr = join(this.dir, `${name}.csr`);
    const ext = join(this.dir, `${name}.ext`);
    await newKey(key);
    await run('openssl', ['req', '-new', '-key', key, '-subj', `/CN=${options.cn}`, '-out', csr]);
    const lines = ['basicConstraints=CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment', 'extendedKeyUsage=serverAuth,clientAuth'];
    if (options.san && options.san.length > 0) lines.push(`subjectAltName=${options.san.join(',')}`);
    await writeFile(ext, `${lines.join('\n')}\n`);
    const validity =
      options.startDate || options.endDate
        ? ['-startdate', options.startDate ?? nowStamp(), '-enddate', options.endDate ?? nowStamp(365)]
        : ['-days', String(options.days ?? 365)];
    await run('openssl', [
      'ca',
      '-batch',
      '-notext',
      '-config',
      this.config,
      '-cert',
      this.ca,
      '-keyfile',
      this.caKey,
      '-in',
      csr,
      '-out',
      cert,
      '-extfile',
      ext,
      ...validity,
    ]);
    await rm(csr, { force: true });
    await rm(ext, { force: true });
    return { cert, key };
  }
}

/** Everything `make run` and the TLS tests need for a cluster of `nodes` on loopback. */
export interface DevPki {
  dir: string;
  ca: string;
  /** Per node: etcd's certificate for clients and peers, and the steward's own (gRPC and etcd client). */
  nodes: Record<string, { etcd: CertFiles; steward: CertFiles }>;
  /** CN etcd-steward-admin: every verb. */
  admin: CertFiles;
  /** CN etcd-steward-viewer: read-only verbs. */
  viewer: CertFiles;
}

export const DEV_ADMIN_CN = 'etcd-steward-admin';
export const DEV_VIEWER_CN = 'etcd-steward-viewer';
const LOOPBACK_SAN = ['IP:127.0.0.1', 'DNS:localhost'];

/** Makes (or completes) the dev PKI in `dir`; certificates already there are kept. */
export async function makeDevPki(dir: string, nodeNames: string[]): Promise<DevPki> {
  const ca = await DevCa.open(dir);
  const ensure = async (name: string, options: IssueOptions): Promise<CertFiles> => {
    const files = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}-key.pem`) };
    return (await exists(files.cert)) && (await exists(files.key)) ? files : ca.issue(name, options);
  };
  const nodes: DevPki['nodes'] = {};
  for (const node of nodeNames) {
    nodes[node] = {
      etcd: await ensure(`etcd-${node}`, { cn: node, san: LOOPBACK_SAN }),
      steward: await ensure(`steward-${node}`, { cn: node, san: LOOPBACK_SAN }),
    };
  }
  return {
    dir,
    ca: ca.ca,
    nodes,
    admin: await ensure('admin', { cn: DEV_ADMIN_CN }),
    viewer: await ensure('viewer', { cn: DEV_VIEWER_CN }),
  };
}

async function newKey(path: string): Promise<void> {
  await run('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', path]);
  await chmod(path, 0o600);
}

function caConfig(db: string): string {
  return [
    '[ca]',
    'default_ca = dev',
    '[dev]',
    `database = ${join(db, 'index.txt')}`,
    `serial = ${join(db, 'serial')}`,
    `new_certs_dir = ${db}`,
    'default_md = sha256',
    'policy = any',
    'unique_subject = no',
    'copy_extensions = none',
    '[any]',
    'commonName = supplied',
    '',
  ].join('\n');
}

/** openssl ca's date format, `days` from now. */
export function nowStamp(days = 0): string {
  return `${new Date(Date.now() + days * 86_400_000).toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await readFile(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The steward flags that put one node of a dev PKI on TLS: etcd's client and peer TLS with certificates
 * required both ways and the steward's own etcd client (`etcd`), and the steward's gRPC mTLS (`grpc`).
 */
export function devTlsFlags(pki: DevPki, node: string, parts: { etcd: boolean; grpc: boolean }): string[] {
  const own = pki.nodes[node];
  if (!own) throw new Error(`the dev PKI in ${pki.dir} has no certificates for ${node}`);
  const etcd = [
    `--etcd-cert-file=${own.etcd.cert}`,
    `--etcd-key-file=${own.etcd.key}`,
    `--etcd-trusted-ca-file=${pki.ca}`,
    '--etcd-client-cert-auth=true',
    `--etcd-peer-cert-file=${own.etcd.cert}`,
    `--etcd-peer-key-file=${own.etcd.key}`,
    `--etcd-peer-trusted-ca-file=${pki.ca}`,
    '--etcd-peer-client-cert-auth=true',
    `--etcd-cacert=${pki.ca}`,
    `--etcd-cert=${own.steward.cert}`,
    `--etcd-key=${own.steward.key}`,
  ];
  const grpc = [`--tls-ca=${pki.ca}`, `--tls-cert=${own.steward.cert}`, `--tls-key=${own.steward.key}`];
  return [...(parts.etcd ? etcd : []), ...(parts.grpc ? grpc : [])];
}
