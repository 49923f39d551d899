import { describe, expect, it } from 'vitest';
import { StewardError } from '../../src/errors/index.js';
import { LIMITS, checkInteger, checkName, checkNames, parseDecimalInteger } from '../../src/rpc/bounds.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return err instanceof StewardError ? err.code : 'not a StewardError';
  }
}

describe('strict decimal integers', () => {
  it('accepts plain decimal integers in range', () => {
    expect(parseDecimalInteger('3', 'n', 1, 10)).toBe(3);
    expect(parseDecimalInteger('10000', 'n', 1, LIMITS.retentionMax)).toBe(10000);
    expect(parseDecimalInteger('-2', 'n', -5, 5)).toBe(-2);
  });

  it('refuses exponents, hex, blanks, fractions, signs, empty and out-of-range values', () => {
    for (const bad of ['1e3', '0x10', ' 3', '3 ', '3.0', '+3', '', '03', '4294967297', '0', '10001', '9007199254740993', 'Infinity', '٣']) {
      expect(
        code(() => parseDecimalInteger(bad, '--snapshot-retention', 1, LIMITS.retentionMax)),
        JSON.stringify(bad),
      ).toBe('INVALID_ARGUMENT');
    }
  });

  it('the server check refuses what came over the wire out of range', () => {
    expect(code(() => checkInteger(4294967297, 'r', 0, 10_000))).toBe('INVALID_ARGUMENT');
    expect(code(() => checkInteger(1.5, 'r', 0, 10_000))).toBe('INVALID_ARGUMENT');
    expect(code(() => checkInteger(0, 'r', 0, 10_000))).toBeUndefined();
  });
});

describe('field bounds', () => {
  it('a name is at most 255 bytes (UTF-8), and the refusal quotes only a prefix', () => {
    expect(code(() => checkName('a'.repeat(255), 'name'))).toBeUndefined();
    expect(code(() => checkName('é'.repeat(128), 'name'))).toBe('INVALID_ARGUMENT');
    try {
      checkName('x'.repeat(3_000_000), 'name');
    } catch (err) {
      expect((err as StewardError).describe().length).toBeLessThan(300);
    }
  });

  it('a delete holds at most 1,000 names', () => {
    expect(
      code(() =>
        checkNames(
          Array.from({ length: 1000 }, () => 'a'),
          'delete',
        ),
      ),
    ).toBeUndefined();
    expect(
      code(() =>
        checkNames(
          Array.from({ length: 1001 }, () => 'a'),
          'delete',
        ),
      ),
    ).toBe('INVALID_ARGUMENT');
  });
});
