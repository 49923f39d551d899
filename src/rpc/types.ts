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
}

/** The handlers a steward implements; rpc/server.ts adapts them to grpc-js. */
export interface StewardCtlHandlers {
  status(): Promise<StatusResponse>;
}
