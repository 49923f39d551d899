/** TypeScript shapes of the messages in proto/steward/v1/ctl.proto, as proto-loader decodes them. */

export interface MemberStatus {
  name: string;
  id: string;
  endpoint: string;
  healthy: boolean;
  isRaftLeader: boolean;
  dbSizeBytes: number;
  revision: number;
  alarms: string[];
  version: string;
  problem: string;
}

export interface StatusResponse {
  node: string;
  isLeader: boolean;
  leader: string;
  version: string;
  uptimeSeconds: number;
  members: MemberStatus[];
  clusterId: string;
  fencingToken: string;
  etcdRunning: boolean;
  etcdRestarts: number;
  specHealthy: boolean;
  specGeneration: number;
  specProblem: string;
}

export interface SpecResponse {
  specJson: string;
  generation: number;
  location: string;
}

export interface SaveRequest {
  name: string;
  force: boolean;
}

export interface SnapshotInfo {
  name: string;
  size: number;
  sha256: string;
  locations: string[];
  failures: string[];
  revision: number;
}

export type SaveEvent = { progress: { bytes: number }; result?: undefined } | { result: SnapshotInfo; progress?: undefined };

export interface SnapshotRecord {
  name: string;
  node: string;
  location: string;
  size: number;
  sha256: string;
  created: string;
  kind: string;
  compressed: boolean;
  locationId: string;
  key: string;
}

/** The handlers a steward implements; rpc/server.ts adapts them to grpc-js. */
export interface StewardCtlHandlers {
  status(): Promise<StatusResponse>;
  save(request: SaveRequest, emit: (event: SaveEvent) => void, signal: AbortSignal): Promise<SnapshotInfo>;
  list(): Promise<SnapshotRecord[]>;
  delete(names: string[]): Promise<SnapshotRecord[]>;
  prune(retention: number): Promise<SnapshotRecord[]>;
  specGet(): Promise<SpecResponse>;
  specSet(specJson: string): Promise<SpecResponse>;
  init(confirm: boolean): Promise<SpecResponse>;
}

export interface StewardPeerHandlers {
  listLocalSnapshots(): Promise<SnapshotRecord[]>;
  deleteLocalSnapshot(name: string, key: string): Promise<void>;
}
