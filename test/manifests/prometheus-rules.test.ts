import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const repo = fileURLToPath(new URL('../..', import.meta.url));

/** promtool's exit code and output; `make deps` (promtool-deps) installs it. */
async function promtool(...args: string[]): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run('promtool', args, { cwd: repo, timeout: 60_000 });
    return { code: 0, output: `${stdout}${stderr}` };
  } catch (err) {
    const failed = err as { code?: number | string; stdout?: string; stderr?: string };
    if (failed.code === 'ENOENT') throw new Error('promtool is not on PATH: run `make promtool-deps` (Debian package prometheus)', { cause: err });
    return { code: typeof failed.code === 'number' ? failed.code : -1, output: `${failed.stdout ?? ''}${failed.stderr ?? ''}` };
  }
}

describe('manifests/prometheus-rules.yaml', () => {
  it('is a valid rules file (promtool check rules)', async () => {
    const { code, output } = await promtool('check', 'rules', 'manifests/prometheus-rules.yaml');
    expect(output).toMatch(/SUCCESS: \d+ rules found/);
    expect(code, output).toBe(0);
  });

  it('fires each alert, with its labels and annotations, on the series that should and stays silent otherwise (promtool test rules)', async () => {
    const { code, output } = await promtool('test', 'rules', 'test/manifests/prometheus-rules.test.yaml');
    expect(code, output).toBe(0);
    expect(output).toMatch(/SUCCESS/);
  });

  it('every alert in the rules file has a promtool unit test that expects it to fire', async () => {
    const rules = await readFile(`${repo}/manifests/prometheus-rules.yaml`, 'utf8');
    const tests = await readFile(`${repo}/test/manifests/prometheus-rules.test.yaml`, 'utf8');
    const alerts = [...rules.matchAll(/^\s*- alert: (\S+)$/gm)].map((m) => m[1]);
    expect(alerts.length).toBeGreaterThan(10);
    for (const alert of alerts) {
      // A firing case: the alertname followed by a non-empty exp_alerts list.
      expect(tests, `${alert} has no case that fires it`).toMatch(new RegExp(`alertname: ${alert}\\n\\s+exp_alerts:\\n\\s+- exp_labels:`));
      expect(tests, `${alert} has no case that keeps it silent`).toMatch(new RegExp(`alertname: ${alert}\\n\\s+exp_alerts: \\[\\]`));
    }
  });
});

describe('manifests/grafana-dashboard.json', () => {
  it("every panel's expression is valid PromQL (promtool check rules on them as recording rules)", async () => {
    const dashboard = JSON.parse(await readFile(`${repo}/manifests/grafana-dashboard.json`, 'utf8')) as {
      panels: Array<{ targets?: Array<{ expr: string }> }>;
    };
    const exprs = dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((target) => target.expr));
    expect(exprs.length).toBeGreaterThan(10);
    const dir = await mkdtemp(join(tmpdir(), 'steward-dashboard-'));
    try {
      // JSON is YAML: one recording rule per expression.
      const rules = { groups: [{ name: 'dashboard', rules: exprs.map((expr, i) => ({ record: `dashboard:expr_${i}`, expr })) }] };
      await writeFile(join(dir, 'dashboard-rules.yaml'), JSON.stringify(rules));
      const { code, output } = await promtool('check', 'rules', join(dir, 'dashboard-rules.yaml'));
      expect(code, output).toBe(0);
      expect(output).toContain(`SUCCESS: ${exprs.length} rules found`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
