import { fileURLToPath } from 'node:url';
import { loadPackageDefinition, type GrpcObject, type ServiceClientConstructor, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';

/** proto/ sits two levels above both src/rpc/ (tests) and dist/rpc/ (the built program). */
const PROTO_ROOT = fileURLToPath(new URL('../../proto/', import.meta.url));

// camelCase fields, int64 as JS numbers (sizes and revisions stay far below 2^53), every field present.
const LOADER_OPTIONS = { keepCase: false, longs: Number, enums: String, defaults: true, arrays: true, includeDirs: [PROTO_ROOT] };

function loadStewardPackage(): GrpcObject {
  const definition = loadSync(['steward/v1/ctl.proto', 'steward/v1/peer.proto'], LOADER_OPTIONS);
  const root = loadPackageDefinition(definition);
  return (root.etcdsteward as GrpcObject).v1 as GrpcObject;
}

const stewardPackage = loadStewardPackage();

export const StewardCtlClient = stewardPackage.StewardCtl as ServiceClientConstructor;
export const stewardCtlService: ServiceDefinition = StewardCtlClient.service;
export const StewardPeerClient = stewardPackage.StewardPeer as ServiceClientConstructor;
export const stewardPeerService: ServiceDefinition = StewardPeerClient.service;
