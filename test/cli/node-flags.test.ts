import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { STEWARD_NODE_FLAGS, STEWARD_PROCESS_ENV } from '../../src/cli/node-flags.js';

// The daemon is started from three places besides src/: they must run it the way the benches measured.
describe('every way of starting the daemon uses the same V8 flags and malloc setting', () => {
  const wrapper = readFileSync(new URL('../../bin/etcd-steward', import.meta.url), 'utf8');
  const manifest = readFileSync(new URL('../../manifests/etcd-steward.yaml', import.meta.url), 'utf8');

  it('bin/etcd-steward', () => {
    for (const flag of STEWARD_NODE_FLAGS) expect(wrapper).toContain(flag);
    for (const [name, value] of Object.entries(STEWARD_PROCESS_ENV)) expect(wrapper).toContain(`${name}="\${${name}:-${value}}"`);
  });

  it('the static pod', () => {
    for (const [name, value] of Object.entries(STEWARD_PROCESS_ENV)) {
      expect(manifest).toMatch(new RegExp(`- name: ${name}\\n\\s+value: "${value}"`));
    }
  });
});
