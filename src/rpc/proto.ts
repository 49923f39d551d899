import { fileURLToPath } from 'node:url';
import { loadPackageDefinition, type GrpcObject, type ServiceClientConstructor } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { StewardCtlDefinition } from './generated/etcdsteward/v1/StewardCtl.js';
import type { StewardPeerDefinition } from './generated/etcdsteward/v1/StewardPeer.js';

/** proto/ sits two levels above both src/rpc/ (tests) and dist/rpc/ (the built program). */
const PROTO_ROOT = fileURLToPath(new URL('../../proto/', import.meta.url));

// The same options `make proto-types` generates the types with (see Makefile): camelCase fields, int64 as
// JS numbers (sizes and revisions stay far below 2^53; ranges are checked in rpc/bounds.ts), every field
// present, a virtual field naming the set member of each oneof.
const LOADER_OPTIONS = { keepCase: false, longs: Number, enums: String, defaults: true, arrays: true, oneofs: true, includeDirs: [PROTO_ROOT] };

function loadStewardPackage(): GrpcObject {
  const definition = loadSync(['steward/v1/ctl.proto', 'steward/v1/peer.proto'], LOADER_OPTIONS);
  const root = loadPackageDefinition(definition);
  return (root.etcdsteward as GrpcObject).v1 as GrpcObject;
}

const stewardPackage = loadStewardPackage();

export const StewardCtlClient = stewardPackage.StewardCtl as ServiceClientConstructor;
export const stewardCtlService = StewardCtlClient.service as StewardCtlDefinition;
export const StewardPeerClient = stewardPackage.StewardPeer as ServiceClientConstructor;
export const stewardPeerService = StewardPeerClient.service as StewardPeerDefinition;
