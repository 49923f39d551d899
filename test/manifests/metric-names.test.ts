import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { StewardMetrics } from '../../src/observability/metrics.js';

const repo = fileURLToPath(new URL('../..', import.meta.url));

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);

/** Metric names a PromQL expression selects: identifiers outside strings, label matchers and ranges that are not function calls or keywords. */
export function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, '{}')
    .replace(/\[[^\]]*\]/g, '[]')
    // by (a, b) / on(a) / ignoring (a) / group_left(a): label lists, not metrics; gone, `max by (l) (x)` reads as a call
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '');
  const names = new Set<string>();
  for (const match of bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const word = match[0];
    const after = bare.slice((match.index ?? 0) + word.length).trimStart();
    if (after.startsWith('(') || PROMQL_WORDS.has(word.toLowerCase())) continue;
    names.add(word);
  }
  return [...names];
}

interface RuleFile {
  groups: Array<{ rules: Array<{ alert?: string; record?: string; expr: string; annotations?: Record<string, string> }> }>;
}
interface Dashboard {
  panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
}

/** What the steward exports: a fresh registry's names, with the series a histogram or summary adds. */
async function exported(): Promise<Set<string>> {
  const names = new Set<string>();
  // prom-client's types declare `type` a numeric enum; at run time it is the exposition's word ('histogram').
  for (const metric of await new StewardMetrics().registry.getMetricsAsJSON()) {
    names.add(metric.name);
    if (String(metric.type) === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${metric.name}${suffix}`);
    if (String(metric.type) === 'summary') for (const suffix of ['_sum', '_count']) names.add(`${metric.name}${suffix}`);
  }
  return names;
}

async function expressions(): Promise<Array<{ where: string; expr: string }>> {
  const rules = parse(await readFile(`${repo}/manifests/prometheus-rules.yaml`, 'utf8')) as RuleFile;
  const dashboard = JSON.parse(await readFile(`${repo}/manifests/grafana-dashboard.json`, 'utf8')) as Dashboard;
  return [
    ...rules.groups.flatMap((group) => group.rules.map((rule) => ({ where: `rule ${rule.alert ?? rule.record ?? '?'}`, expr: rule.expr }))),
    ...dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ where: `panel "${panel.title}"`, expr: target.expr }))),
  ];
}

describe('the rules and the dashboard use only metrics the steward exports', () => {
  it('finds the metric names of an expression', () => {
    expect(
      metricNames(
        'time() - max by (kind) (label_replace(a_b{location="s3"}, "kind", "$1", "location", "([^:]+).*")) > 86400 or (c - min(d) unless ignoring(result) count(e[5m]))',
      ).sort(),
    ).toEqual(['a_b', 'c', 'd', 'e']);
  });

  it('every metric an alert expression or a dashboard panel selects is registered by StewardMetrics', async () => {
    const known = await exported();
    const all = await expressions();
    expect(all.length).toBeGreaterThan(20);
    const unknown: string[] = [];
    for (const { where, expr } of all) {
      const names = metricNames(expr);
      expect(names.length, `${where} selects no metric: ${expr}`).toBeGreaterThan(0);
      for (const name of names) if (!known.has(name)) unknown.push(`${where}: ${name}`);
    }
    expect(unknown).toEqual([]);
  });

  it('every etcd_steward_ name the files mention (annotations, descriptions included) is exported', async () => {
    const known = await exported();
    const text = `${await readFile(`${repo}/manifests/prometheus-rules.yaml`, 'utf8')}${await readFile(`${repo}/manifests/grafana-dashboard.json`, 'utf8')}`;
    const mentioned = new Set([...text.matchAll(/\betcd_steward_[a-z0-9_]+/g)].map((m) => m[0]));
    expect([...mentioned].filter((name) => !known.has(name))).toEqual([]);
  });
});
