// The shared vectors (`tests/vectors/`), checked against the module's pure code. The Python side
// checks the same files in `tests/test_vectors.py`.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import {
  ClaimsRejected,
  GrantDecision,
  QUERY_SET_VIEWS,
  VIEWS,
  acceptSyncToken,
  authorizeOp,
  isExpired,
  revocationCovers,
  visibleRows,
  type GrantRowLike,
  type Op,
  type Revocation,
  type TokenSession,
  type ViewName,
} from '../src/grants.js';
import {
  JsonFloat,
  isJsonObject,
  parseJson,
  type JsonObject,
  type JsonValue,
} from '../src/json.js';

/** Read a vectors file with the module's own JSON reader, so `1800000290.0` stays a float, as
 * Python's `json` keeps it. */
function loadVectors(name: string): JsonObject {
  const url = new URL(`../../../tests/vectors/${name}`, import.meta.url);
  const document = parseJson(readFileSync(url, 'utf8'));
  assert.ok(isJsonObject(document));
  return document;
}

/** A parsed JSON value as plain data, for deepStrictEqual. */
function plain(value: JsonValue | undefined): unknown {
  if (value instanceof JsonFloat) return value.value;
  if (Array.isArray(value)) return value.map(plain);
  if (isJsonObject(value)) {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, plain(item)]));
  }
  return value;
}

function field<T>(object: JsonObject, key: string): T {
  assert.ok(Object.prototype.hasOwnProperty.call(object, key), `missing ${key}`);
  return plain(object[key]) as T;
}

const REJECT_CODES = new Set([
  'malformed',
  'wrong_issuer',
  'wrong_audience',
  'wrong_token_use',
  'expired',
  'not_yet_valid',
]);

describe('claims.json', () => {
  const doc = loadVectors('claims.json');
  const defaults = field<{ issuer: string; audience: string; now: number; leeway: number }>(
    doc,
    'defaults',
  );
  const cases = doc['cases'];
  assert.ok(Array.isArray(cases) && cases.length > 0);

  for (const raw of cases) {
    assert.ok(isJsonObject(raw));
    const name = field<string>(raw, 'name');
    it(name, () => {
      const check = { ...defaults };
      for (const key of ['issuer', 'audience', 'now', 'leeway'] as const) {
        if (Object.prototype.hasOwnProperty.call(raw, key)) {
          (check as Record<string, unknown>)[key] = field(raw, key);
        }
      }
      const expect = field<{ reject?: string; session?: unknown; grant_rows?: unknown }>(
        raw,
        'expect',
      );
      // The claims go in exactly as parsed: floats stay JsonFloat.
      const claims = raw['claims'] as JsonValue;
      if (expect.reject !== undefined) {
        assert.ok(REJECT_CODES.has(expect.reject), `unknown code ${expect.reject}`);
        assert.throws(
          () => acceptSyncToken(claims, check),
          (error: unknown) => {
            assert.ok(error instanceof ClaimsRejected, String(error));
            assert.equal(error.code, expect.reject);
            return true;
          },
        );
        return;
      }
      const accepted = acceptSyncToken(claims, check);
      assert.deepStrictEqual({ ...accepted.session }, expect.session);
      assert.deepStrictEqual(
        accepted.rows.map((row) => ({ ...row, ops: [...row.ops] })),
        expect.grant_rows,
      );
    });
  }

  it('covers every rejection code', () => {
    const codes = new Set<string>();
    for (const raw of cases) {
      assert.ok(isJsonObject(raw));
      const reject = field<{ reject?: string }>(raw, 'expect').reject;
      if (reject !== undefined) codes.add(reject);
    }
    assert.deepStrictEqual([...codes].sort(), [...REJECT_CODES].sort());
  });
});

interface GrantRowVector extends GrantRowLike {
  identity: string;
  connection_id: string;
  expires_at: number;
}

interface SessionVector extends TokenSession {
  connection_id: string;
  identity: string;
}

interface DataRow {
  id: number;
  org_id: string;
  stream_id: string;
}

interface ViewCase {
  name: string;
  now?: number;
  sessions?: SessionVector[];
  revocations?: Revocation[];
  grant_rows: GrantRowVector[];
  stream_event: DataRow[];
  stream_checkpoint: DataRow[];
  expect: Record<string, Record<ViewName, number[]>>;
  op_checks?: { connection_id: string; org_id: string; stream: string; op: Op; expect: string }[];
}

/** The module's steps, on plain rows: the sweep (`now`), then revocations. */
function liveRows(testCase: ViewCase): GrantRowVector[] {
  let rows = testCase.grant_rows;
  const now = testCase.now;
  if (now !== undefined) rows = rows.filter((row) => !isExpired(row.expires_at, now));
  for (const revocation of testCase.revocations ?? []) {
    const dropped = new Set(
      (testCase.sessions ?? [])
        .filter((session) => revocationCovers(revocation, session))
        .map((session) => session.connection_id),
    );
    rows = rows.filter((row) => !dropped.has(row.connection_id));
  }
  return rows;
}

describe('views.json', () => {
  const doc = loadVectors('views.json');

  it('maps query sets to views exactly as the module does', () => {
    assert.deepStrictEqual(field(doc, 'query_set_views'), QUERY_SET_VIEWS);
    assert.deepStrictEqual(field(doc, 'views'), [...VIEWS]);
  });

  const cases = field<ViewCase[]>(doc, 'cases');
  assert.ok(cases.length > 0);
  for (const testCase of cases) {
    it(testCase.name, () => {
      const rows = liveRows(testCase);
      const data: Record<ViewName, DataRow[]> = {
        run_event_view: testCase.stream_event,
        run_checkpoint_view: testCase.stream_checkpoint,
      };
      for (const [identity, perView] of Object.entries(testCase.expect)) {
        const mine = rows.filter((row) => row.identity === identity);
        for (const [view, expectedIds] of Object.entries(perView) as [ViewName, number[]][]) {
          // As the module's (org_id, stream_id) index lookups do: one pair, or one org's range
          // of ids `<kind>:` up to `<kind>;`.
          const shown = visibleRows(
            view,
            mine,
            (org, stream) =>
              data[view].filter((item) => item.org_id === org && item.stream_id === stream),
            (org, kind) =>
              data[view].filter(
                (item) =>
                  item.org_id === org &&
                  item.stream_id >= `${kind}:` &&
                  item.stream_id < `${kind};`,
              ),
          );
          assert.deepStrictEqual(
            shown.map((item) => item.id).sort((a, b) => a - b),
            expectedIds,
            `${identity.slice(0, 8)} ${view}`,
          );
        }
      }
      for (const check of testCase.op_checks ?? []) {
        const connection = rows.filter((row) => row.connection_id === check.connection_id);
        let outcome = 'ok';
        try {
          authorizeOp(connection, check.org_id, check.stream, check.op);
        } catch (error) {
          assert.ok(error instanceof GrantDecision);
          outcome = error.code;
        }
        assert.equal(outcome, check.expect, JSON.stringify(check));
      }
    });
  }
});
