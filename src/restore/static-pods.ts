import { mkdir, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ConfigError } from '../errors/index.js';
import { exists } from './paths.js';

export interface PausedManifest {
  /** Where the kubelet reads it. */
  from: string;
  /** Where it waits while the restore runs: a sibling dir the kubelet does not watch. */
  to: string;
}

/** `--restore-pause-static-pods DIR:FILE,...` as paths, each checked to be a plain file name in a dir. */
export function parseStaticPods(value: string): PausedManifest[] {
  if (value.trim() === '') return [];
  return value.split(',').map((entry) => {
    const at = entry.lastIndexOf(':');
    const dir = entry.slice(0, at);
    const file = entry.slice(at + 1);
    if (at <= 0 || !file || file !== basename(file) || file.startsWith('.') || !dir.startsWith('/')) {
      throw new ConfigError(`--restore-pause-static-pods: ${JSON.stringify(entry)} is not /MANIFEST-DIR:FILE`, {
        hint: 'e.g. --restore-pause-static-pods=/etc/kubernetes/manifests:kube-apiserver.yaml',
      });
    }
    // Beside the manifest dir, on its filesystem (the move is a rename), and not in it: the kubelet reads
    // every file there, so a manifest moved out of it stops that pod until it is moved back.
    return { from: join(dir, file), to: join(`${dir.replace(/\/+$/, '')}.etcd-steward-paused`, file) };
  });
}

/**
 * Moves each manifest out of the kubelet's dir, as OpenShift's restore does with kube-apiserver: no API
 * server talks to a member whose data is being replaced. A manifest that is not there is skipped.
 */
export async function pauseStaticPods(manifests: PausedManifest[]): Promise<PausedManifest[]> {
  const moved: PausedManifest[] = [];
  for (const manifest of manifests) {
    if (!(await exists(manifest.from))) continue;
    await mkdir(dirname(manifest.to), { recursive: true, mode: 0o700 });
    await rename(manifest.from, manifest.to);
    moved.push(manifest);
  }
  return moved;
}

/** Puts back what pauseStaticPods moved; one already back (a resumed rollback) is fine. */
export async function resumeStaticPods(manifests: PausedManifest[]): Promise<void> {
  for (const manifest of manifests) {
    if (await exists(manifest.to)) await rename(manifest.to, manifest.from);
  }
}
