/**
 * V8 flags the daemon runs with. A 1 MiB young generation makes V8 scavenge often enough that the Buffers
 * of a streaming snapshot are freed promptly: peak RSS of a 570 MB snapshot fell from 143 MB to 107 MB
 * and it ran faster (3.7 s vs 4.9 s). bin/etcd-steward passes the same flags.
 */
export const STEWARD_NODE_FLAGS = ['--max-semi-space-size=1'];

/**
 * Process environment the daemon runs with. glibc serves an allocation above its mmap threshold with its
 * own mmap and returns it on free, but after the first such free it raises the threshold (up to 32 MiB),
 * so the 512 KiB blocks of a snapshot stream then come from the heap and stay in RSS after the stream:
 * a coordinator sat at ~175 MB after saving 256 MB and peaked at 210 MB in the restore that followed.
 * A fixed threshold (setting it turns the raising off) kept it at 142 MB and 152 MB (test/bench/
 * restore.bench.ts). bin/etcd-steward and the static pod set the same.
 */
export const STEWARD_PROCESS_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: '131072' };
