import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Etcd3 } from '../etcd/client.js';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import { LeaderElection, type LeaderView } from '../election/election.js';
import { errorText } from '../errors/index.js';
import { etcdArgs, specEtcdArgs } from '../etcd/args.js';
import { createClusterClient } from '../etcd/client.js';
import { ClusterProbe, etcdIdHex } from '../etcd/health.js';
import { EtcdSupervisor } from '../etcd/supervisor.js';
import { ObservabilityServer, allReady } from '../observability/http.js';
import { StewardMetrics } from '../observability/metrics.js';
import { RpcServer } from '../rpc/server.js';
import type { SpecResponse, StatusResponse } from '../rpc/types.js';
import { ControlStore } from '../control/control-store.js';
import { SpecPeerDirectory } from '../control/peer-directory.js';
import { SpecService } from '../control/service.js';
import type { ClusterSpec } from '../control/spec.js';
import { LocalStore } from '../store/local.js';
import type { BackupStore } from '../store/store.js';
import { HealthMonitor } from './health-monitor.js';
import type { S3Store } from '../store/s3.js';
import { loadS3Store } from '../store/from-config.js';
import { SnapshotService } from './snapshots.js';
import { SnapshotHandlers } from './snapshot-handlers.js';
import { DrillService } from './drills.js';
import { runLeaderTerm } from './leader-loop.js';
import { StewardRegistry } from '../rpc/registry.js';
import { LayeredPeerDirectory } from '../rpc/layered-directory.js';
import { PeerPool } from '../rpc/peer-pool.js';
import type { PeerIdentity } from '../rpc/types.js';
import { createMemberClient } from '../etcd/client.js';
import { RESTORE_PHASES, restoreInProgress } from '../state/restore-phase.js';
import { STEWARD_VERSION } from './version.js';
import { LastRevisionFile } from '../state/last-revision.js';
import { RestoreMember } from '../restore/member.js';
import { RestoreTool } from '../restore/tool.js';
import { RestoreCoordinator } from '../restore/coordinator.js';
import { RestoreLock } from '../restore/lock.js';
import { restorePeerHandlers } from '../restore/handlers.js';
import { TlsFiles } from '../security/tls-files.js';
import { CertificateExpiry, certificateFilesOf } from '../security/cert-expiry.js';

/**
 * One steward: supervises the local etcd member, takes part in the election, serves the API.
 *
 * Lifecycle: `create()` builds the parts without I/O; `run(signal)` starts everything and settles only once
 * everything it started has stopped. Shutdown goes in stages so each part can still use the ones below
 * it: resign leadership (needs etcd) → stop the API → stop probing → stop etcd → close the HTTP listener.
 */
export class Steward {
  private readonly startedAt = Date.now();
  private readonly supervisor: EtcdSupervisor;
  private readonly client: Etcd3;
  private readonly probe: ClusterProbe;
  private readonly health: HealthMonitor;
  private readonly election: LeaderElection;
  private readonly log: Logger;
  private readonly snapshots: SnapshotService;
  private readonly snapshotHandlers: SnapshotHandlers;
  private readonly drills: DrillService;
  private readonly registry: StewardRegistry;
  private readonly peers: PeerPool;
  private readonly identity: PeerIdentity;
  private readonly memberClients = new Map<string, Etcd3>();
  private readonly leaderWork = new Set<Promise<void>>();
  private readonly spec: SpecService;
  private readonly control: ControlStore;
  /** Every member's steward address from the cluster spec, readable with etcd down (for the restore). */
  readonly peerDirectory: SpecPeerDirectory;
  private readonly controlClose: () => void;
  private rpc: RpcServer | undefined;
  private etcdRestarts = 0;
  private readonly restoreMember: RestoreMember;
  private readonly restoreCoordinator: RestoreCoordinator;
  /** Aborted when shutdown begins: a restore in flight stops where it is (its members resume it later). */
  private readonly stopping = new AbortController();
  private restoreTool: Promise<RestoreTool> | undefined;

  private constructor(
    private readonly config: Config,
    private readonly logger: Logger,
    private readonly metrics: StewardMetrics,
    s3Store: S3Store | undefined,
    controlStore: BackupStore,
    /** mTLS material of the gRPC API and of calls to peers; undefined with --grpc-plaintext-dev. */
    private readonly tls: TlsFiles | undefined,
  ) {
    this.log = logger.child({ component: 'steward' });
    this.supervisor = new EtcdSupervisor({
      binary: config.etcdBinary,
      args: etcdArgs(config),
      // The spec's flags as of each start: a changed spec reaches etcd on its next (re)start.
      specArgs: () => specEtcdArgs(this.spec.latest?.etcdFlags),
      stateDir: config.stateDir,
      dataDir: config.dataDir,
      stopGraceMs: config.etcdStopGrace,
      maxBackoffMs: config.etcdRestartMaxBackoff,
      logger,
      onRestart: () => {
        this.etcdRestarts += 1;
        this.metrics.etcdRestarts.inc();
      },
      onRunningChange: (running) => this.metrics.etcdUp.set(running ? 1 : 0),
      // An empty data dir (first start, or wiped under a running steward) is bootstrapped only when safe.
      beforeStart: (signal) => this.spec.waitUntilEtcdMayStart(signal),
    });
    this.client = createClusterClient(config.etcdEndpoints, { security: config });
    this.probe = new ClusterProbe(config.etcdEndpoints, Math.min(5000, config.healthInterval), config);
    this.health = new HealthMonitor(this.probe, {
      intervalMs: config.healthInterval,
      localMember: config.name,
      metrics: this.metrics,
      logger,
      // The highest revision seen here: with etcd down, a restore still bumps the revision above it.
      lastRevision: new LastRevisionFile(config.stateDir, {
        onError: (err) => this.log.warn({ err: errorText(err) }, 'cannot record the last revision seen'),
      }),
    });
    this.registry = new StewardRegistry(this.client);
    // Who this steward is in the peer headers: its name and the etcd cluster ID of the last probe.
    this.identity = { node: config.name, clusterId: () => etcdIdHex(this.health.lastHealth?.clusterId ?? '') };
    this.control = new ControlStore(controlStore, this.client);
    this.peerDirectory = new SpecPeerDirectory({ control: this.control, stateDir: config.stateDir, latest: () => this.spec.latest, logger });
    // The spec's addresses work with etcd down; the registry in etcd only fills gaps an older spec leaves.
    const directory = new LayeredPeerDirectory(this.peerDirectory, this.registry, logger);
    this.peers = new PeerPool(
      directory,
      { ...this.identity, fencingToken: () => this.election.currentTerm?.fencingToken ?? '' },
      undefined,
      tls?.channelCredentials(),
    );
    this.snapshots = new SnapshotService(
      {
        config,
        client: this.client,
        peers: this.peers,
        leader: async () => (this.election.currentTerm ? config.name : this.election.leader()),
        checkHealth: (signal) => this.health.check(signal),
        memberClient: (endpoint) => this.memberClient(endpoint),
        metrics: this.metrics,
        logger,
        currentTerm: () => this.election.currentTerm,
        clusterSpec: () => this.spec.latest,
      },
      s3Store,
    );
    this.snapshotHandlers = new SnapshotHandlers(this.snapshots);
    this.drills = new DrillService({ config, snapshots: this.snapshots, tool: () => this.tool(), metrics: this.metrics, logger });
    this.controlClose = () => (controlStore as Partial<Pick<S3Store, 'close'>>).close?.();
    this.spec = new SpecService({
      config,
      control: this.control,
      shared: controlStore.kind === 's3',
      backupStores: [new LocalStore(config.etcdSnapshotDir), ...(s3Store ? [s3Store] : [])],
      clusterHealth: () => this.health.check(),
      metrics: this.metrics,
      logger,
      currentTerm: () => this.election.currentTerm,
      stewardAddresses: () => this.registry.list(),
    });
    this.restoreMember = new RestoreMember({
      config,
      supervisor: this.supervisor,
      tool: () => this.tool(),
      logger,
      isRaftLeader: () => this.health.lastHealth?.members.find((m) => m.name === config.name)?.isRaftLeader === true,
      onPhase: (record) => {
        for (const phase of RESTORE_PHASES) this.metrics.restorePhase.set({ phase }, record && restoreInProgress(record) && record.phase === phase ? 1 : 0);
      },
    });
    this.restoreCoordinator = new RestoreCoordinator({
      config,
      logger,
      metrics: this.metrics,
      member: this.restoreMember,
      peers: this.peers,
      lock: new RestoreLock(controlStore),
      stores: () => this.snapshots.stores(),
      lastDrill: (name, signal) => this.drills.lastDrill(name, signal),
      clusterMembers: async () => (this.spec.latest?.members ?? config.initialCluster).map((m) => ({ name: m.name, peerUrl: m.peerUrl })),
      quorum: async (signal) => {
        const health = await this.health.check(signal).catch(() => undefined);
        const voters = health?.members.filter((m) => !m.learner) ?? [];
        return voters.filter((m) => m.healthy || m.sawLeader).length > voters.length / 2;
      },
      leadership: async () => this.leadership(),
      recordSpec: async (restored, endpoint, signal) => {
        const client = createMemberClient(endpoint, { callTimeoutMs: 10_000, security: config });
        try {
          await this.control.recordRestore(restored, client, signal);
        } finally {
          client.close();
        }
      },
      shutdown: this.stopping.signal,
    });
    this.election = new LeaderElection({
      client: this.client,
      node: config.name,
      ttlSeconds: config.electionTtl / 1000,
      logger,
      onTermStarted: (term) => {
        this.metrics.isLeader.set(1);
        this.metrics.leaderTerms.inc();
        const work = runLeaderTerm(this.snapshots, term, this.drills)
          .catch((err: unknown) => this.log.error({ err }, 'leader work failed'))
          .finally(() => this.leaderWork.delete(work));
        this.leaderWork.add(work);
      },
      onTermEnded: () => this.metrics.isLeader.set(0),
    });
  }

  private memberClient(endpoint: string): Etcd3 {
    let client = this.memberClients.get(endpoint);
    if (!client) {
      // Snapshots stream for minutes: no unary deadline applies to them, the snapshotter sets its own.
      client = createMemberClient(endpoint, { callTimeoutMs: 30_000, security: this.config });
      this.memberClients.set(endpoint, client);
    }
    return client;
  }

  static async create(config: Config, logger: Logger): Promise<Steward> {
    const metrics = new StewardMetrics();
    const s3 = await loadS3Store(config, metrics, { bucket: config.etcdS3Bucket, folder: config.etcdS3Folder });
    metrics.s3Enabled.set(s3 ? 1 : 0);
    const control =
      (await loadS3Store(config, metrics, { bucket: config.controlS3Bucket, folder: config.controlS3Folder })) ??
      new LocalStore(join(config.stateDir, 'control'));
    const tls = config.tlsCert ? await TlsFiles.load({ ca: config.tlsCa, cert: config.tlsCert, key: config.tlsKey }, logger) : undefined;
    return new Steward(config, logger, metrics, s3, control, tls);
  }

  async run(signal: AbortSignal): Promise<void> {
    const { config } = this;
    const etcdStop = new AbortController();
    const leadershipStop = new AbortController();
    const probingStop = new AbortController();
    // One condition for /readyz and the gRPC health service, so an HTTP probe and a gRPC probe never disagree.
    const readiness = allReady(
      { notReadyReason: () => (this.supervisor.running ? null : `etcd is not running under this steward (supervisor ${this.supervisor.state})`) },
      { notReadyReason: () => (this.rpc ? this.health.localProblem() : 'gRPC API not serving yet') },
    );
    const http = await ObservabilityServer.start({ ...config.httpListen, registry: this.metrics.registry, readiness, logger: this.logger });
    this.log.info({ version: STEWARD_VERSION, http: `${http.address.host}:${http.address.port}` }, 'steward starting');
    let fatal: unknown;
    // A restore this steward took part in when it stopped is finished or rolled back before etcd starts.
    await this.restoreMember.recover();
    const supervising = this.supervisor.run(etcdStop.signal).catch((err: unknown) => {
      fatal = err;
      this.log.fatal({ err }, 'cannot supervise etcd; shutting down');
      leadershipStop.abort();
    });
    const onStop = (): void => {
      this.stopping.abort();
      leadershipStop.abort();
    };
    signal.addEventListener('abort', onStop, { once: true });
    if (signal.aborted) onStop();
    try {
      await this.snapshots.removeLeftoverTempFiles();
      this.rpc = await RpcServer.start({
        ...config.grpcListen,
        handlers: {
          status: () => this.status(),
          // A save in progress stops as soon as shutdown begins, before the API itself stops.
          save: (request, emit, ctx) => this.snapshotHandlers.save(request, emit, { ...ctx, signal: AbortSignal.any([ctx.signal, leadershipStop.signal]) }),
          list: (request, ctx) => this.snapshotHandlers.list(request, ctx),
          delete: (names, ctx) => this.snapshotHandlers.delete(names, ctx),
          prune: (retention, ctx) => this.snapshotHandlers.prune(retention, ctx),
          specGet: async (ctx) => specResponse(await this.spec.get(callSignal(ctx.signal)), this.control.location),
          specSet: async (json, ctx, { force }) => specResponse(await this.spec.set(json, callSignal(ctx.signal), { force }), this.control.location),
          init: async (confirm, ctx) => specResponse(await this.spec.init(confirm, callSignal(ctx.signal)), this.control.location),
          restore: (request, emit, ctx) => this.restoreCoordinator.restore(request, emit, ctx.signal),
          restoreStatus: (ctx) => this.restoreCoordinator.status(callSignal(ctx.signal)),
          verify: (name, ctx) => this.drills.verify(name, AbortSignal.any([ctx.signal, leadershipStop.signal])),
          restoreAbort: (ctx) => this.restoreCoordinator.abort(AbortSignal.any([ctx.signal, AbortSignal.timeout(10 * 60_000)])),
        },
        peer: { ...this.snapshotHandlers.peer, ...restorePeerHandlers(this.restoreMember) },
        identity: this.identity,
        logger: this.logger,
        readiness,
        tls: this.tls && {
          files: this.tls,
          // Who may call the peer API: the spec's members (kept current by the spec watch), else --initial-cluster.
          policy: { adminCn: config.adminCn, members: () => (this.spec.latest?.members ?? config.initialCluster).map((m) => m.name) },
        },
      });
      // Each loop gets its handler the moment it starts: one that throws early (while the election below is
      // still running) must not become an unhandled rejection, nor die silently. A loop that fails is a bug:
      // the steward says so and shuts down, and the kubelet starts it afresh.
      const background = (name: string, loop: Promise<void>): Promise<void> =>
        loop.catch((err: unknown) => {
          if (fatal === undefined) fatal = err;
          this.log.fatal({ err: errorText(err), loop: name }, 'a background loop failed; shutting down so the steward is restarted');
          leadershipStop.abort();
        });
      const probing = background('health', this.health.run(probingStop.signal));
      const registering = background('registry', this.register(probingStop.signal));
      const canary = background('s3-canary', this.snapshots.runS3Canary(probingStop.signal));
      const specWatch = background('spec', this.spec.run(probingStop.signal));
      const tlsFiles = background('tls-files', this.tls?.run(probingStop.signal) ?? Promise.resolve());
      const expiry = new CertificateExpiry(certificateFilesOf(config), this.metrics.certificateExpiry, this.logger);
      const certificates = background('cert-expiry', expiry.run(probingStop.signal));
      await this.election.run(leadershipStop.signal);
      await Promise.all(this.leaderWork);
      this.log.info('shutting down: leadership released');
      await this.rpc.stop();
      probingStop.abort();
      await Promise.all([probing, registering, canary, specWatch, tlsFiles, certificates]);
    } finally {
      signal.removeEventListener('abort', onStop);
      probingStop.abort();
      etcdStop.abort();
      await supervising;
      this.probe.close();
      this.snapshots.close();
      this.peers.close();
      this.controlClose();
      for (const client of this.memberClients.values()) client.close();
      this.client.close();
      await http.close();
      this.log.info('steward stopped');
    }
    if (fatal !== undefined) throw fatal;
  }

  private async leadership(): Promise<{ isLeader: boolean; leader: string; leaderGrpc: string }> {
    if (this.election.currentTerm) return { isLeader: true, leader: this.config.name, leaderGrpc: '' };
    const view = await this.election.leaderView().catch(() => ({ leader: undefined }));
    const leader = view.leader ?? '';
    return { isLeader: false, leader, leaderGrpc: leader ? await this.grpcOf(leader) : '' };
  }

  /**
   * A steward's gRPC address: the spec in memory, else the registry in etcd, read without a deadline that
   * would cancel it (status is polled; a cancelled etcd3 call resets its channels, and connections churn).
   */
  private async grpcOf(node: string): Promise<string> {
    const fromSpec = this.spec.latest?.members.find((m) => m.name === node)?.grpc;
    if (fromSpec) return fromSpec;
    return (await this.registry.list().catch(() => [])).find((e) => e.node === node)?.grpc ?? '';
  }

  /** Publishes this steward's gRPC address for its peers; retried until etcd answers, then refreshed. */
  private async register(signal: AbortSignal): Promise<void> {
    const { host, port } = this.config.advertiseGrpc;
    let registered = false;
    while (!signal.aborted) {
      try {
        await this.registry.register({ node: this.config.name, grpc: `${host}:${port}`, version: STEWARD_VERSION });
        if (!registered) this.log.info({ grpc: `${host}:${port}` }, 'registered with the other stewards');
        registered = true;
      } catch (err) {
        this.log.debug({ err }, 'cannot register yet; retrying');
      }
      await sleep(registered ? 60_000 : 1000, undefined, { signal }).catch(() => undefined);
    }
  }

  /** The node's restore tool, detected once (again after a failed detection: it may be installed meanwhile). */
  private tool(): Promise<RestoreTool> {
    return (this.restoreTool ??= RestoreTool.detect().catch((err: unknown) => {
      this.restoreTool = undefined;
      throw err;
    }));
  }

  private async status(): Promise<StatusResponse> {
    const term = this.election.currentTerm;
    const [health, view, verified] = await Promise.all([
      this.health.check(),
      this.election.leaderView().catch((err: unknown): LeaderView & { problem: string } => {
        this.log.warn({ err: errorText(err) }, 'could not read the election leader for status');
        return { leader: undefined, problem: `cannot read the election from etcd: ${errorText(err)}` };
      }),
      this.drills.lastVerified(AbortSignal.timeout(5_000)),
    ]);
    const leader = term ? this.config.name : view.leader;
    return {
      node: this.config.name,
      isLeader: term !== undefined,
      leader: leader ?? '',
      version: STEWARD_VERSION,
      uptimeSeconds: (Date.now() - this.startedAt) / 1000,
      clusterId: etcdIdHex(health.clusterId),
      fencingToken: term?.fencingToken ?? '',
      etcdRunning: this.supervisor.pid !== undefined,
      etcdRestarts: this.etcdRestarts,
      specHealthy: this.spec.state.healthy,
      specGeneration: this.spec.state.generation,
      specProblem: this.spec.state.problem,
      leaderProblem: leader ? '' : leaderProblem(view),
      leaderGrpc: leader && leader !== this.config.name ? await this.grpcOf(leader) : '',
      restore: this.restoreMember.record ? this.restoreMember.state() : null,
      etcdFlagsPending: this.supervisor.pendingArgs,
      lastVerified: verified?.name ?? '',
      lastVerifiedAt: verified?.at ?? '',
      members: health.members.map((m) => ({ ...m, id: etcdIdHex(m.id) })),
    };
  }
}

/** In words, why status names no leader: a dead leader's key is not a leader, and how long it still blocks. */
function leaderProblem(view: LeaderView & { problem?: string }): string {
  if (view.problem) return view.problem;
  if (view.stale) return `no leader yet (previous leader ${view.stale.node}'s lease expires in ${view.stale.expiresInSeconds} s)`;
  return 'no leader yet (no steward is campaigning: is etcd up with quorum?)';
}

/** A call's own signal, bounded to a minute: spec calls are small. */
function callSignal(signal: AbortSignal): AbortSignal {
  return AbortSignal.any([signal, AbortSignal.timeout(60_000)]);
}

function specResponse(spec: ClusterSpec, location: string): SpecResponse {
  return { specJson: `${JSON.stringify(spec, null, 2)}\n`, generation: spec.generation, location };
}
