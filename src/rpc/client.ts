import { credentials, type Client, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { fromGrpcError } from '../errors/index.js';
import { StewardCtlClient, StewardPeerClient } from './proto.js';
import type { SaveEvent, SaveRequest, SnapshotInfo, SnapshotRecord, SpecResponse, StatusResponse } from './types.js';

type UnaryMethod = (request: object, options: { deadline: number }, callback: (err: ServiceError | null, response: unknown) => void) => void;

/** Promise-returning unary calls with errors mapped to StewardError, shared by the ctl and peer clients. */
abstract class BaseClient {
  protected abstract readonly client: Client;

  constructor(
    readonly endpoint: string,
    protected readonly timeoutMs: number,
  ) {}

  close(): void {
    this.client.close();
  }

  protected unary<Res>(method: string, request: object, timeoutMs = this.timeoutMs): Promise<Res> {
    // grpc-js builds one method per RPC on the generated client; indexing by name keeps this class generic.
    const fn = (this.client as unknown as Record<string, UnaryMethod>)[method];
    if (!fn) throw new Error(`no RPC method ${method}`);
    return new Promise((resolve, reject) => {
      fn.call(this.client, request, { deadline: Date.now() + timeoutMs }, (err, response) => {
        if (err) reject(fromGrpcError(err, this.endpoint));
        else resolve(response as Res);
      });
    });
  }
}

/** The ctl's view of a steward. */
export class StewardClient extends BaseClient {
  protected readonly client: Client;

  constructor(endpoint: string, timeoutMs = 15_000) {
    super(endpoint, timeoutMs);
    // Keepalive: a save has no deadline, so a steward host that vanishes mid-save must still be noticed.
    this.client = new StewardCtlClient(endpoint, credentials.createInsecure(), { 'grpc.keepalive_time_ms': 20_000, 'grpc.keepalive_timeout_ms': 10_000 });
  }

  status(): Promise<StatusResponse> {
    return this.unary<StatusResponse>('status', {});
  }

  async list(): Promise<SnapshotRecord[]> {
    return (await this.unary<{ snapshots: SnapshotRecord[] }>('list', {})).snapshots;
  }

  async delete(names: string[]): Promise<SnapshotRecord[]> {
    return (await this.unary<{ deleted: SnapshotRecord[] }>('delete', { names }, 10 * 60_000)).deleted;
  }

  async prune(retention: number): Promise<SnapshotRecord[]> {
    return (await this.unary<{ deleted: SnapshotRecord[] }>('prune', { retention }, 10 * 60_000)).deleted;
  }

  specGet(): Promise<SpecResponse> {
    return this.unary<SpecResponse>('specGet', {});
  }

  specSet(specJson: string): Promise<SpecResponse> {
    return this.unary<SpecResponse>('specSet', { specJson });
  }

  init(confirm: boolean): Promise<SpecResponse> {
    return this.unary<SpecResponse>('init', { confirm });
  }

  /** Streams progress to `onProgress` and resolves with the stored snapshot. No deadline: a save may be long. */
  save(request: SaveRequest, onProgress: (bytes: number) => void): Promise<SnapshotInfo> {
    const call = (this.client as unknown as { save(req: SaveRequest): ClientReadableStream<SaveEvent> }).save(request);
    return new Promise((resolve, reject) => {
      let result: SnapshotInfo | undefined;
      call.on('data', (event: SaveEvent) => {
        if (event.result) result = event.result;
        else if (event.progress) onProgress(event.progress.bytes);
      });
      call.on('error', (err: ServiceError) => reject(fromGrpcError(err, this.endpoint)));
      call.on('end', () => (result ? resolve(result) : reject(new Error('the steward ended the save without a result'))));
    });
  }
}

/** One steward's view of another, for the peer API. */
export class PeerClient extends BaseClient {
  protected readonly client: Client;

  constructor(endpoint: string, timeoutMs = 30_000) {
    super(endpoint, timeoutMs);
    this.client = new StewardPeerClient(endpoint, credentials.createInsecure());
  }

  async listLocalSnapshots(): Promise<SnapshotRecord[]> {
    return (await this.unary<{ snapshots: SnapshotRecord[] }>('listLocalSnapshots', {})).snapshots;
  }

  async deleteLocalSnapshot(name: string, key: string): Promise<void> {
    await this.unary('deleteLocalSnapshot', { name, key });
  }
}
