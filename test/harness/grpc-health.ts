import { credentials, makeClientConstructor, type ChannelCredentials, type Client, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { service } from 'grpc-health-check';

type HealthStub = Client & {
  check(request: { service: string }, options: { deadline: number }, callback: (err: ServiceError | null, response?: { status: string }) => void): void;
  watch(request: { service: string }): ClientReadableStream<{ status: string }>;
};

/**
 * A plain grpc.health.v1.Health client from the service definition grpc-health-check ships: what a
 * Kubernetes gRPC probe or grpc_health_probe sends (Check with a service name), nothing steward-specific.
 */
export class HealthProbe {
  private readonly stub: HealthStub;

  constructor(endpoint: string, channel: ChannelCredentials = credentials.createInsecure()) {
    const Health = makeClientConstructor(service as Parameters<typeof makeClientConstructor>[0], 'Health');
    this.stub = new Health(endpoint, channel) as unknown as HealthStub;
  }

  /** The status name (SERVING, NOT_SERVING), or `error:<grpc code>` when the call fails. */
  check(name = ''): Promise<string> {
    return new Promise((resolve) => {
      this.stub.check({ service: name }, { deadline: Date.now() + 2000 }, (err, response) => resolve(err ? `error:${err.code}` : (response?.status ?? '')));
    });
  }

  watch(name = ''): ClientReadableStream<{ status: string }> {
    return this.stub.watch({ service: name });
  }

  close(): void {
    this.stub.close();
  }
}
