/**
 * V8 flags the daemon runs with. A 1 MiB young generation makes V8 scavenge often enough that the Buffers
 * of a streaming snapshot are freed promptly: peak RSS of a 570 MB snapshot fell from 143 MB to 107 MB
 * and it ran faster (3.7 s vs 4.9 s). bin/etcd-steward passes the same flags.
 */
export const STEWARD_NODE_FLAGS = ['--max-semi-space-size=1'];
