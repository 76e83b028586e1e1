// Unit tests of the module's pure code beyond the shared vectors: the JSON reader, the grammar
// helpers, the configuration checks, and that the pure files stay free of `spacetimedb`.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { DEFAULT_CONFIG, configProblem } from '../src/config.js';
import {
  ClaimsRejected,
  GrantDecision,
  acceptSyncToken,
  authorize,
  authorizeOp,
  grantRows,
  parseGrants,
  parseQuerySetRef,
  parseStreamId,
  parseStreamSelector,
  orgStreamKey,
  querySetName,
  revocationExpiresAt,
  rowOpensView,
  scopeFor,
  selectorCovers,
  streamKindOf,
  utf8Length,
  validateSyncClaims,
  visibleRows,
  visibleStreams,
  REVOCATION_RETENTION_SECONDS,
} from '../src/grants.js';
import { JsonFloat, JsonSyntaxError, MAX_JSON_DEPTH, parseJson } from '../src/json.js';

const NOW = 1_800_000_000;

function claims(overrides: Record<string, unknown> = {}): string {
  return JSON.stringify({
    iss: 'https://control.example.com',
    sub: 'prn_1',
    aud: 'sync-prod',
    iat: NOW - 5,
    exp: NOW + 300,
    jti: 'tok_1',
    token_use: 'sync',
    org_id: 'org_acme',
    grants: [{ stream: 'run:01J9ZK', query_sets: ['run_events@3'], ops: ['subscribe'] }],
    ...overrides,
  });
}

const CHECK = { issuer: 'https://control.example.com', audience: 'sync-prod', now: NOW };

function rejectCode(payload: string): string {
  try {
    validateSyncClaims(parseJson(payload), CHECK);
  } catch (error) {
    assert.ok(error instanceof ClaimsRejected);
    return error.code;
  }
  return 'accepted';
}

describe('parseJson', () => {
  it('keeps integers as numbers and floats as JsonFloat', () => {
    const value = parseJson('{"a": 1, "b": 1.0, "c": 1e3, "d": -0, "e": -2.5E-1}');
    assert.deepStrictEqual(value, {
      a: 1,
      b: new JsonFloat(1),
      c: new JsonFloat(1000),
      d: -0,
      e: new JsonFloat(-0.25),
    });
  });

  it('reads what JSON.parse reads, the same way', () => {
    const text =
      '{"s": "a\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00", "l": [true, false, null, [], {}],' +
      ' "n": {"x": [1, {"y": "z"}]}, "k": "\u20ac"}';
    assert.deepStrictEqual(parseJson(text), JSON.parse(text));
  });

  it('keeps `__proto__` as an ordinary key, and the last of repeated keys', () => {
    const value = parseJson('{"__proto__": {"polluted": 1}, "a": 1, "a": 2}');
    assert.ok(typeof value === 'object' && value !== null && !Array.isArray(value));
    assert.deepStrictEqual(Object.keys(value), ['__proto__', 'a']);
    assert.equal(Object.getPrototypeOf(value), Object.prototype);
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
    assert.equal((value as Record<string, unknown>)['a'], 2);
  });

  it("reads NaN and Infinity as floats, as Python's json does", () => {
    assert.deepStrictEqual(parseJson('[NaN, Infinity, -Infinity]'), [
      new JsonFloat(NaN),
      new JsonFloat(Infinity),
      new JsonFloat(-Infinity),
    ]);
  });

  it('gives a huge integer literal as an integer', () => {
    assert.equal(parseJson('1' + '0'.repeat(400)), Infinity);
  });

  for (const bad of [
    '',
    ' ',
    '{',
    '{"a" 1}',
    '{"a": 1,}',
    '[1,]',
    '01',
    '1.',
    '.5',
    '+1',
    '"\u0001"',
    '"\\x41"',
    '"\\u12g4"',
    "'a'",
    '{a: 1}',
    '[1] [2]',
    'tru',
    '\ufeff{}',
  ]) {
    it(`rejects ${JSON.stringify(bad)}`, () => {
      assert.throws(() => parseJson(bad), JsonSyntaxError);
    });
  }

  it(`refuses nesting deeper than ${MAX_JSON_DEPTH}`, () => {
    const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);
    assert.doesNotThrow(() => parseJson(deep(MAX_JSON_DEPTH)));
    assert.throws(() => parseJson(deep(MAX_JSON_DEPTH + 2)), JsonSyntaxError);
  });
});

describe('claims', () => {
  it('accepts a good token', () => {
    assert.equal(rejectCode(claims()), 'accepted');
  });

  it('treats a payload that is not an object as malformed', () => {
    for (const payload of ['[]', '"token"', 'null', '42']) {
      assert.equal(rejectCode(payload), 'malformed');
    }
  });

  it('rejects a sub with a lone surrogate as malformed', () => {
    assert.equal(utf8Length('\ud800'), null);
    assert.equal(utf8Length('a\udc00'), null);
    assert.equal(rejectCode(claims({ sub: '\ud800' })), 'malformed');
  });

  it('counts sub in UTF-8 bytes', () => {
    assert.equal(utf8Length('a\u00e9\u20ac\u{1f600}'), 1 + 2 + 3 + 4);
    assert.equal(rejectCode(claims({ sub: '\u{1f600}'.repeat(32) })), 'accepted');
    assert.equal(rejectCode(claims({ sub: '\u{1f600}'.repeat(32) + 'x' })), 'malformed');
  });

  it('does not take an inherited property for a claim', () => {
    const payload = JSON.parse(claims());
    delete payload.token_use;
    assert.equal(rejectCode(JSON.stringify(payload)), 'malformed');
    assert.equal(rejectCode(claims({ constructor: 1, toString: 'x' })), 'accepted');
  });

  it('requires org_id after the checks it shares with the control plane', () => {
    const accept = (payload: string): string => {
      try {
        return acceptSyncToken(parseJson(payload), CHECK).session.org_id;
      } catch (error) {
        assert.ok(error instanceof ClaimsRejected);
        return error.code;
      }
    };
    assert.equal(accept(claims()), 'org_acme');
    // validateSyncClaims stays the control plane's check; the org is the module's own rule.
    assert.equal(rejectCode(claims({ org_id: undefined })), 'accepted');
    assert.equal(accept(claims({ org_id: undefined })), 'malformed');
    assert.equal(accept(claims({ org_id: '\ud800' })), 'malformed');
    // A token failing a shared check reports that check's code, org or no org.
    const otherIssuer = claims({ org_id: undefined, iss: 'https://other.example' });
    assert.equal(accept(otherIssuer), 'wrong_issuer');
  });

  it('reads exp written with an exponent as a float', () => {
    const text = claims().replace(`"exp":${NOW + 300}`, '"exp":1.8000003e9');
    assert.notEqual(text, claims());
    assert.equal(rejectCode(text), 'malformed');
  });
});

describe('grammar', () => {
  it('parses stream ids and query-set refs', () => {
    assert.deepStrictEqual(parseStreamId('run:01J9ZK'), { kind: 'run', key: '01J9ZK' });
    assert.deepStrictEqual(parseQuerySetRef('run_events@3'), { name: 'run_events', version: 3 });
    assert.throws(() => parseStreamId('org:acme:workers'), /not a stream id/);
    assert.throws(() => parseQuerySetRef('run_events'), /not a query-set ref/);
  });

  it('derives scopes in a stable order', () => {
    assert.equal(scopeFor(['checkpoint', 'subscribe']), 'sync.subscribe sync.checkpoint.write');
    assert.equal(scopeFor([]), '');
  });

  it('authorizes like control.grants.authorize', () => {
    const grants = parseGrants(
      parseJson('[{"stream": "run:a", "query_sets": ["run_events@3"], "ops": ["subscribe"]}]'),
    );
    assert.equal(authorize(grants, 'run:a', 'run_events').stream, 'run:a');
    assert.equal(authorize(grants, 'run:a', 'run_events@3').stream, 'run:a');
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (error) {
        assert.ok(error instanceof GrantDecision);
        return error.code;
      }
      return 'ok';
    };
    assert.equal(
      code(() => authorize(grants, 'run:b')),
      'stream_not_granted',
    );
    assert.equal(
      code(() => authorize(grants, 'run:a', 'run_events@2')),
      'query_set_not_granted',
    );
    assert.equal(
      code(() => authorize(grants, 'run:a', 'run_checkpoints')),
      'query_set_not_granted',
    );
    assert.equal(
      code(() => authorize(grants, 'run:a', null, 'append')),
      'op_not_granted',
    );
  });

  it('turns grants into rows and rows into views', () => {
    const rows = grantRows(
      [
        { stream: 'run:a', query_sets: ['run_events@1', 'run_checkpoints@1'], ops: ['subscribe'] },
        { stream: 'run:b', query_sets: [], ops: ['append'] },
      ],
      'org_acme',
      NOW,
    );
    assert.equal(rows.length, 3);
    assert.equal(rows[2]?.query_set, '');
    assert.ok(rows.every((row) => row.org_id === 'org_acme'));
    const opened = [{ org_id: 'org_acme', stream: 'run:a' }];
    assert.deepStrictEqual(visibleStreams(rows, 'run_event_view'), opened);
    assert.deepStrictEqual(visibleStreams(rows, 'run_checkpoint_view'), opened);
    assert.equal(querySetName('run_events@3'), 'run_events');
    // A query-set name that is also an Object.prototype key opens nothing.
    assert.equal(
      rowOpensView(
        { org_id: 'org_acme', stream: 'run:a', query_set: 'constructor@1', ops: ['subscribe'] },
        'run_event_view',
      ),
      false,
    );
  });

  it("shows no other org's rows even from a lookup that ignores the org", () => {
    const grants = grantRows(
      [{ stream: 'run:s', query_sets: ['run_events@1'], ops: ['subscribe'] }],
      'org_a',
      NOW,
    );
    const events = [
      { id: 1, org_id: 'org_a', stream_id: 'run:s' },
      { id: 2, org_id: 'org_b', stream_id: 'run:s' },
      { id: 3, org_id: 'org_a', stream_id: 'run:t' },
    ];
    const byStreamOnly = (_org: string, stream: string) =>
      events.filter((row) => row.stream_id === stream);
    const byKindOnly = (_org: string, kind: string) =>
      events.filter((row) => row.stream_id.startsWith(`${kind}:`));
    const shown = visibleRows('run_event_view', grants, byStreamOnly, byKindOnly);
    assert.deepStrictEqual(
      shown.map((row) => row.id),
      [1],
    );
    const wide = grantRows(
      [{ stream: 'run:*', query_sets: ['run_events@1'], ops: ['subscribe'] }],
      'org_a',
      NOW,
    );
    const everything = () => events;
    const shownWide = visibleRows('run_event_view', wide, everything, everything);
    assert.deepStrictEqual(
      shownWide.map((row) => row.id),
      [1, 3],
    );
  });

  it('parses kind-wide selectors and no other wildcard', () => {
    assert.deepStrictEqual(parseStreamSelector('run:*'), { kind: 'run', key: '*' });
    assert.deepStrictEqual(parseStreamSelector('run:01J9ZK'), { kind: 'run', key: '01J9ZK' });
    for (const bad of ['run:01*', '*:*', '*:x', 'run:*x', 'run:**', 'run*', '*']) {
      assert.throws(() => parseStreamSelector(bad), /not a stream id or kind-wide selector/, bad);
    }
    // A selector names streams; it is not one.
    assert.throws(() => parseStreamId('run:*'), /not a stream id/);
    assert.equal(streamKindOf('run:*'), null);
    assert.equal(streamKindOf('run_v2:a'), 'run_v2');
    assert.ok(selectorCovers('run:*', 'run:a'));
    assert.ok(!selectorCovers('run:*', 'run_v2:a'));
    assert.ok(!selectorCovers('run:*', 'run:*'));
  });

  it('authorizes kind-wide grants like control.grants.authorize', () => {
    const grants = parseGrants(
      parseJson(
        '[{"stream": "run:*", "query_sets": ["run_events@3"], "ops": ["subscribe", "append"]},' +
          ' {"stream": "run:a", "query_sets": [], "ops": ["checkpoint"]}]',
      ),
    );
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (error) {
        assert.ok(error instanceof GrantDecision);
        return error.code;
      }
      return 'ok';
    };
    assert.equal(authorize(grants, 'run:b', null, 'append', 'org_a', 'org_a').stream, 'run:*');
    assert.equal(authorize(grants, 'run:a', null, 'checkpoint').stream, 'run:a');
    assert.equal(authorize(grants, 'run:a', null, 'append', 'org_a', 'org_a').stream, 'run:*');
    assert.equal(
      code(() => authorize(grants, 'run:b', null, 'append', 'org_a')),
      'stream_org_required',
    );
    assert.equal(
      code(() => authorize(grants, 'run:b', null, 'append', 'org_a', 'org_b')),
      'stream_not_granted',
    );
    assert.equal(
      code(() => authorize(grants, 'run:a', null, 'checkpoint', 'org_a', 'org_b')),
      'stream_not_granted',
    );
    assert.equal(
      code(() => authorize(grants, 'worker:w', null, 'subscribe', 'org_a', 'org_a')),
      'stream_not_granted',
    );
    assert.equal(
      code(() => authorize(grants, 'run:*', null, 'subscribe', 'org_a', 'org_a')),
      'stream_not_granted',
    );
    assert.equal(
      code(() => authorize(grants, 'run:b', null, 'checkpoint', 'org_a', 'org_a')),
      'op_not_granted',
    );
  });

  it('takes the org of an op from the matching grant row, never a grant of another org', () => {
    const rows = [
      ...grantRows([{ stream: 'run:s', query_sets: [], ops: ['append'] }], 'org_a', NOW),
      ...grantRows([{ stream: 'run:s', query_sets: [], ops: ['checkpoint'] }], 'org_b', NOW),
    ];
    assert.equal(authorizeOp(rows, 'org_a', 'run:s', 'append').org_id, 'org_a');
    assert.throws(
      () => authorizeOp(rows, 'org_b', 'run:s', 'append'),
      (error: unknown) => error instanceof GrantDecision && error.code === 'op_not_granted',
    );
    assert.throws(
      () => authorizeOp(rows, 'org_c', 'run:s', 'append'),
      (error: unknown) => error instanceof GrantDecision && error.code === 'stream_not_granted',
    );
  });

  it('keys a stream head by the (org, stream) pair, one key per pair', () => {
    const pairs: [string, string][] = [
      ['org_a', 'run:s'],
      ['org_b', 'run:s'],
      ['org_a', 'run:t'],
      ['org_a","run:s', 'x'],
      ['org_a', '","run:s'],
      ['org_a:run', 's'],
      ['org_a', 'run:s\u0000'],
    ];
    const keys = new Set(pairs.map(([org, stream]) => orgStreamKey(org, stream)));
    assert.equal(keys.size, pairs.length);
    assert.equal(orgStreamKey('org_a', 'run:s'), orgStreamKey('org_a', 'run:s'));
  });

  it('keeps a revocation until every token it covers has expired', () => {
    assert.equal(
      revocationExpiresAt({ org_id: 'o', kind: 'jti', value: 't', not_before: 0 }, NOW),
      NOW + REVOCATION_RETENTION_SECONDS,
    );
    assert.equal(
      revocationExpiresAt({ org_id: 'o', kind: 'subject', value: 's', not_before: NOW + 10 }, NOW),
      NOW + 10 + REVOCATION_RETENTION_SECONDS,
    );
  });
});

describe('config', () => {
  it('accepts the defaults', () => {
    assert.equal(configProblem(DEFAULT_CONFIG), null);
  });

  it('refuses an issuer with a trailing slash and a bad identity', () => {
    assert.match(
      configProblem({ ...DEFAULT_CONFIG, issuer: 'https://x.example/' }) ?? '',
      /trailing|end/,
    );
    assert.match(
      configProblem({ ...DEFAULT_CONFIG, controlPlaneIdentity: 'c200' }) ?? '',
      /64 hex/,
    );
    assert.equal(
      configProblem({ ...DEFAULT_CONFIG, controlPlaneIdentity: 'c2' + '0'.repeat(62) }),
      null,
    );
    assert.match(configProblem({ ...DEFAULT_CONFIG, leewaySeconds: -1 }) ?? '', /leeway/);
  });
});

describe('module layout', () => {
  it('keeps the pure files free of spacetimedb imports', () => {
    for (const file of ['json.ts', 'grants.ts', 'config.ts']) {
      const source = readFileSync(new URL(`../../src/${file}`, import.meta.url), 'utf8');
      assert.doesNotMatch(source, /from\s+['"]spacetimedb/, file);
    }
  });
});
