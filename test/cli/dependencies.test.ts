import { readFileSync, readdirSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../harness/steward-cluster.js';

interface PackageJson {
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') ? [path] : [];
  });
}

/** The package a module specifier names: `@scope/name/sub` → `@scope/name`, `name/sub` → `name`. */
function packageOf(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : (parts[0] ?? specifier);
}

/** Every bare module the file loads: static and dynamic imports, re-exports, and `require.resolve`-style strings. */
function loadedPackages(text: string): string[] {
  const specifiers = [
    ...text.matchAll(/\bfrom\s+'([^'.][^']*)'/g),
    ...text.matchAll(/\bimport\(\s*'([^'.][^']*)'\s*\)/g),
    ...text.matchAll(/\.resolve\(\s*'([^'.][^']*)'\s*\)/g),
  ].map((m) => m[1] ?? '');
  return specifiers.filter((s) => s && !s.startsWith('node:') && !builtinModules.includes(s)).map(packageOf);
}

describe('what the shipped code loads', () => {
  const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as PackageJson;
  const runtime = new Set(Object.keys(pkg.dependencies ?? {}));
  const optional = new Set(Object.keys(pkg.optionalDependencies ?? {}));
  const files = sourceFiles(join(REPO_ROOT, 'src'));

  it('never loads a devDependency at run time (a production install has none)', () => {
    const offenders: string[] = [];
    for (const file of files) {
      for (const name of loadedPackages(readFileSync(file, 'utf8'))) {
        if (!runtime.has(name) && !optional.has(name)) offenders.push(`${relative(REPO_ROOT, file)} loads ${name}`);
      }
    }
    expect(offenders).toEqual([]);
    expect(files.length).toBeGreaterThan(20);
  });

  it("loads optional dependencies (the embedded default's S3 server) only from make run's entry point", () => {
    const users = files.filter((file) => loadedPackages(readFileSync(file, 'utf8')).some((name) => optional.has(name))).map((f) => relative(REPO_ROOT, f));
    expect(users).toEqual(['src/cli/local-cluster.ts']);
    expect(optional.has('s3rver')).toBe(true);
    expect(Object.keys(pkg.devDependencies ?? {})).not.toContain('s3rver');
  });
});
