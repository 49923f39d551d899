import { credentials, type Client, type ServiceError } from '@grpc/grpc-js';
import { fromGrpcError } from '../errors/index.js';
import { StewardCtlClient } from './proto.js';
import type { StatusResponse } from './types.js';

type UnaryMethod = (request: object, options: { deadline: number }, callback: (err: ServiceError | null, response: unknown) => void) => void;

/** The ctl's view of a steward: promise-returning calls, errors already mapped to StewardError. */
export class StewardClient {
  private readonly client: Client;

  constructor(
    readonly endpoint: string,
    private readonly timeoutMs = 15_000,
  ) {
    this.client = new StewardCtlClient(endpoint, credentials.createInsecure());
  }

  status(): Promise<StatusResponse> {
    return this.unary<StatusResponse>('status', {});
  }

  close(): void {
    this.client.close();
  }

  private unary<Res>(method: string, request: object): Promise<Res> {
    // grpc-js builds one method per RPC on the generated client; indexing by name keeps this class generic.
    const fn = (this.client as unknown as Record<string, UnaryMethod>)[method];
    if (!fn) throw new Error(`no RPC method ${method}`);
    return new Promise((resolve, reject) => {
      fn.call(this.client, request, { deadline: Date.now() + this.timeoutMs }, (err, response) => {
        if (err) reject(fromGrpcError(err, this.endpoint));
        else resolve(response as Res);
      });
    });
  }
}
