import { statfs } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { InternalError, errorText } from '../errors/index.js';

/**
 * Bytes an unprivileged writer may still use on the filesystem that holds `path` (bavail, not bfree: the
 * blocks reserved for root are no use to a steward that does not run as root). `path` need not exist yet
 * (a staging file, a temp data dir): its nearest existing ancestor decides the filesystem.
 */
export async function freeBytes(path: string): Promise<number> {
  let current = resolve(path);
  for (;;) {
    try {
      const stats = await statfs(current, { bigint: true });
      return Number(stats.bavail * stats.bsize);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const parent = dirname(current);
      if ((code === 'ENOENT' || code === 'ENOTDIR') && parent !== current) {
        current = parent;
        continue;
      }
      throw new InternalError('DISK_STAT_FAILED', `cannot read the free space of the filesystem holding ${path}: ${errorText(err)}`, {
        hint: `check that the steward can reach ${current}`,
        cause: err,
      });
    }
  }
}
