// identityOf against the shared vectors (tests/vectors/identity.json), which the Python tests
// hold to the control plane's own `spacetimedb_identity`.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { identityOf } from '../src/index.js';

interface Case {
  issuer: string;
  subject: string;
  identity: string;
}

// dist/test/ -> the repository root, four levels up.
const vectors = JSON.parse(
  readFileSync(new URL('../../../../tests/vectors/identity.json', import.meta.url), 'utf8'),
) as { cases: Case[] };

describe('identityOf', () => {
  it('has vectors to check', () => {
    assert.ok(vectors.cases.length >= 5);
  });

  for (const vector of vectors.cases) {
    it(`${vector.issuer}|${vector.subject}`.slice(0, 70), () => {
      const identity = identityOf(vector.issuer, vector.subject);
      assert.equal(identity, vector.identity);
      assert.match(identity, /^c200[0-9a-f]{60}$/);
    });
  }
});
