/**
 * Crash points for the restore's crash-safety tests, in the spirit of etcd's gofail: a steward started with
 * ETCD_STEWARD_FAILPOINTS=<name>[,<name>] kills itself with SIGKILL when it reaches that point, as a power
 * cut would. Unset (always, in production) each check is one lookup.
 */
const ARMED = new Set((process.env.ETCD_STEWARD_FAILPOINTS ?? '').split(',').filter(Boolean));

export type FailpointName = 'restore-member-after-old-moved' | 'restore-coordinator-after-swap';

export function failpoint(name: FailpointName): void {
  if (!ARMED.has(name)) return;
  process.stdout.write(`${JSON.stringify({ level: 60, component: 'restore', failpoint: name, msg: 'failpoint reached: SIGKILL' })}\n`);
  process.kill(process.pid, 'SIGKILL');
}
