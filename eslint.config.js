// Lint is part of `make test`: the rules here guard classes of bugs that have bitten this code before
// (a floating promise turned an early throw into an unhandled rejection), not taste; prettier owns layout.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'coverage/**', '.run/**', 'src/rpc/generated/**'] },
  {
    files: ['src/**/*.ts', 'test/**/*.ts'],
    extends: [tseslint.configs.base],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: false } }],
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', ignoreRestSiblings: true }],
    },
  },
  {
    // etcd3's traps are worked around in src/etcd/ only; everything else takes its types from src/etcd/client.ts.
    files: ['src/**/*.ts'],
    ignores: ['src/etcd/**'],
    rules: {
      'no-restricted-imports': [
        'error',
        { paths: [{ name: 'etcd3', message: "import etcd3's types from src/etcd/client.ts: its workarounds live in src/etcd/" }] },
      ],
    },
  },
);
