// The query-set catalog: its shape, its agreement with the module's views and the grammar, and
// the shared vectors (`tests/vectors/catalog.json`) the control plane checks too.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import {
  CATALOG,
  CATALOG_KIND_PATTERN,
  CATALOG_QUERY_SET_REF_PATTERN,
  CatalogError,
  parseCatalog,
} from '../src/catalog.js';
import {
  NotServed,
  QUERY_SET_NAME_PATTERN,
  QUERY_SET_VIEWS,
  STREAM_KIND_PATTERN,
  VIEWS,
  parseGrants,
  requireServed,
  rowOpensView,
  type ViewName,
} from '../src/grants.js';
import { parseJson } from '../src/json.js';

function vectors(name: string): Record<string, unknown> {
  const url = new URL(`../../../tests/vectors/${name}`, import.meta.url);
  return JSON.parse(readFileSync(url, 'utf8')) as Record<string, unknown>;
}

describe('catalog', () => {
  it('declares exactly the views the module defines', () => {
    assert.deepStrictEqual(Object.keys(CATALOG.views).sort(), [...VIEWS].sort());
  });

  it('repeats the grammar patterns exactly', () => {
    assert.equal(CATALOG_KIND_PATTERN, STREAM_KIND_PATTERN);
    assert.equal(CATALOG_QUERY_SET_REF_PATTERN, `${QUERY_SET_NAME_PATTERN}@[1-9][0-9]{0,8}`);
  });

  it('is the copy the control plane ships', () => {
    const shipped = readFileSync(
      new URL('../../../control/spacetime/catalog.json', import.meta.url),
      'utf8',
    );
    assert.deepStrictEqual(parseCatalog(JSON.parse(shipped)), CATALOG);
  });

  it('summarizes per name what views.json carries', () => {
    const views = vectors('views.json');
    assert.deepStrictEqual(views['query_set_views'], QUERY_SET_VIEWS);
  });

  it('refuses malformed documents', () => {
    const good = JSON.parse(JSON.stringify(CATALOG)) as Record<string, unknown>;
    const bad: unknown[] = [
      null,
      [],
      { ...good, catalog: '' },
      { ...good, revision: 0 },
      { ...good, views: {} },
      { ...good, query_sets: {} },
      { ...good, query_sets: { run_events: { views: ['run_event_view'], stream_kinds: ['run'] } } },
      { ...good, query_sets: { 'a@1': { views: ['nope_view'], stream_kinds: ['run'] } } },
      { ...good, query_sets: { 'a@1': { views: ['run_event_view'], stream_kinds: [] } } },
      { ...good, query_sets: { 'a@1': { views: ['run_event_view'], stream_kinds: ['Run'] } } },
      {
        ...good,
        query_sets: { 'a@1': { views: ['run_event_view', 'run_event_view'], stream_kinds: ['run'] } },
      },
    ];
    for (const document of bad) {
      assert.throws(() => parseCatalog(document), CatalogError, JSON.stringify(document));
    }
  });
});

interface OpenCase {
  name: string;
  row: { stream: string; query_set: string; ops: string[] };
  opens: string[];
}
interface ConnectCase {
  name: string;
  grants: unknown;
  expect: string;
}

describe('catalog.json vectors', () => {
  const doc = vectors('catalog.json');
  for (const testCase of doc['opens'] as OpenCase[]) {
    it(`opens: ${testCase.name}`, () => {
      const row = { org_id: 'org_acme', ...testCase.row };
      const opened = VIEWS.filter((view: ViewName) => rowOpensView(row, view));
      assert.deepStrictEqual([...opened].sort(), [...testCase.opens].sort());
    });
  }
  for (const testCase of doc['connect'] as ConnectCase[]) {
    it(`connect: ${testCase.name}`, () => {
      const grants = parseGrants(parseJson(JSON.stringify(testCase.grants)));
      let outcome = 'ok';
      try {
        requireServed(grants);
      } catch (error) {
        assert.ok(error instanceof NotServed);
        assert.match(error.message, /control-sync-module/);
        outcome = error.code;
      }
      assert.equal(outcome, testCase.expect);
    });
  }
});
