// The control plane's revocation pushes and the publisher's appends, applied by the module's pure
// write rules (`src/writes.ts`) to in-memory tables, on the shared vectors
// (`tests/vectors/revocations.json`, `appends.json`): at-least-once delivery is harmless.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import type { Revocation } from '../src/grants.js';
import {
  APPEND_KEY_RETENTION_SECONDS,
  InvalidWrite,
  MAX_BATCH,
  applyAppends,
  applyRevocation,
  checkBatch,
  type AppendStore,
  type RevocationStore,
  type SessionLike,
} from '../src/writes.js';

function vectors(name: string): Record<string, unknown> {
  const url = new URL(`../../../tests/vectors/${name}`, import.meta.url);
  return JSON.parse(readFileSync(url, 'utf8')) as Record<string, unknown>;
}

/** `sync_session` and `sync_revocation` as plain arrays. */
class MemoryRevocations implements RevocationStore {
  rows: { revocation: Revocation; expiresAt: number }[] = [];
  constructor(public sessionRows: SessionLike[]) {}
  *recorded(orgId: string, kind: Revocation['kind'], value: string): Iterable<Revocation> {
    for (const { revocation } of this.rows) {
      if (revocation.org_id === orgId && revocation.kind === kind && revocation.value === value) {
        yield revocation;
      }
    }
  }
  record(revocation: Revocation, expiresAt: number): void {
    this.rows.push({ revocation, expiresAt });
  }
  *sessions(kind: Revocation['kind'], value: string): Iterable<SessionLike> {
    for (const session of this.sessionRows) {
      if ((kind === 'jti' ? session.jti : session.subject) === value) yield session;
    }
  }
  drop(connectionId: string): void {
    this.sessionRows = this.sessionRows.filter((s) => s.connection_id !== connectionId);
  }
}

/** A push (reducer + JSON args) as the reducer receives it. */
function revocationOf(push: { reducer: string; args: unknown[] }): Revocation {
  const [org, value, notBefore] = push.args as [string, string, number | undefined];
  if (push.reducer === 'revoke_subject') {
    return { org_id: org, kind: 'subject', value, not_before: notBefore as number };
  }
  assert.equal(push.reducer, 'revoke_jti');
  assert.equal(push.args.length, 2);
  return { org_id: org, kind: 'jti', value, not_before: 0 };
}

interface EffectCase {
  name: string;
  now: number;
  sessions: SessionLike[];
  pushes: { reducer: string; args: unknown[] }[];
  dropped: string[];
  recorded: number;
}

describe('revocations.json', () => {
  const doc = vectors('revocations.json');
  for (const testCase of doc['effects'] as EffectCase[]) {
    it(testCase.name, () => {
      const store = new MemoryRevocations([...testCase.sessions]);
      const dropped: string[] = [];
      for (const push of testCase.pushes) {
        dropped.push(...applyRevocation(store, revocationOf(push), testCase.now));
      }
      assert.deepStrictEqual(dropped.sort(), testCase.dropped);
      assert.equal(store.rows.length, testCase.recorded);
    });
  }

  it('a duplicate delivery leaves the same state as one', () => {
    for (const testCase of doc['effects'] as EffectCase[]) {
      const once = new MemoryRevocations([...testCase.sessions]);
      const twice = new MemoryRevocations([...testCase.sessions]);
      for (const push of testCase.pushes) {
        applyRevocation(once, revocationOf(push), testCase.now);
        applyRevocation(twice, revocationOf(push), testCase.now);
        applyRevocation(twice, revocationOf(push), testCase.now + 1);
      }
      assert.deepStrictEqual(twice.sessionRows, once.sessionRows);
      assert.deepStrictEqual(
        twice.rows.map((r) => r.revocation),
        once.rows.map((r) => r.revocation),
      );
    }
  });

  it('the push vectors name the reducers the module has, with their arity', () => {
    for (const entry of doc['pushes'] as { push: { reducer: string; args: unknown[] } | null }[]) {
      if (entry.push !== null) revocationOf(entry.push);
    }
  });

  it('refuses empty or oversized values', () => {
    const store = new MemoryRevocations([]);
    for (const bad of [
      { org_id: '', kind: 'jti', value: 't', not_before: 0 },
      { org_id: 'o', kind: 'jti', value: '', not_before: 0 },
      { org_id: 'o', kind: 'subject', value: 'x'.repeat(201), not_before: 0 },
    ] as Revocation[]) {
      assert.throws(() => applyRevocation(store, bad, 0), InvalidWrite);
    }
    assert.equal(store.rows.length, 0);
  });
});

/** `stream_head`, `append_key` and `stream_event` as maps. */
class MemoryAppends implements AppendStore {
  heads = new Map<string, bigint>();
  keys = new Map<string, { seq: bigint; expiresAt: number }>();
  events: { org: string; stream: string; seq: bigint; payload: string }[] = [];
  lastSeq(org: string, stream: string): bigint {
    return this.heads.get(JSON.stringify([org, stream])) ?? 0n;
  }
  setLastSeq(org: string, stream: string, seq: bigint): void {
    this.heads.set(JSON.stringify([org, stream]), seq);
  }
  seen(org: string, stream: string, key: string): bigint | null {
    return this.keys.get(JSON.stringify([org, stream, key]))?.seq ?? null;
  }
  remember(org: string, stream: string, key: string, seq: bigint, expiresAt: number): void {
    this.keys.set(JSON.stringify([org, stream, key]), { seq, expiresAt });
  }
  insertEvent(org: string, stream: string, seq: bigint, payload: string): void {
    this.events.push({ org, stream, seq, payload });
  }
}

interface AppendCase {
  name: string;
  calls: { keys: string[]; payloads: string[] }[];
  results: [string, number, boolean][][];
  events: [number, string, string][];
}

describe('appends.json', () => {
  const doc = vectors('appends.json');
  for (const testCase of doc['cases'] as AppendCase[]) {
    it(testCase.name, () => {
      const store = new MemoryAppends();
      const keyOfSeq = new Map<bigint, string>();
      testCase.calls.forEach((call, index) => {
        const entries = call.keys.map((key, i) => ({ key, payload: call.payloads[i] as string }));
        checkBatch(entries, 1024);
        const out = applyAppends(store, 'org_acme', 'run:A', entries, 1_800_000_000);
        for (const r of out) if (!r.duplicate) keyOfSeq.set(r.seq, r.key);
        assert.deepStrictEqual(
          out.map((r) => [r.key, Number(r.seq), r.duplicate]),
          testCase.results[index],
        );
      });
      assert.deepStrictEqual(
        store.events.map((e) => [Number(e.seq), keyOfSeq.get(e.seq), e.payload]),
        testCase.events,
      );
      // Gap-free and monotonic.
      store.events.forEach((event, index) => assert.equal(event.seq, BigInt(index + 1)));
    });
  }

  it('keys are per (org, stream): the same key elsewhere is a new event', () => {
    const store = new MemoryAppends();
    const entries = [{ key: 'k1', payload: 'x' }];
    applyAppends(store, 'org_a', 'run:A', entries, 0);
    applyAppends(store, 'org_a', 'run:B', entries, 0);
    applyAppends(store, 'org_b', 'run:A', entries, 0);
    assert.equal(store.events.length, 3);
    assert.ok([...store.keys.values()].every((k) => k.expiresAt === APPEND_KEY_RETENTION_SECONDS));
  });

  it('checks a batch before anything is written', () => {
    const ok = { key: 'k', payload: 'p' };
    assert.throws(() => checkBatch([], 10), InvalidWrite);
    assert.throws(() => checkBatch(Array(MAX_BATCH + 1).fill(ok), 10), InvalidWrite);
    assert.throws(() => checkBatch([{ key: 'a b', payload: 'p' }], 10), InvalidWrite);
    assert.throws(() => checkBatch([{ key: 'x'.repeat(129), payload: 'p' }], 10), InvalidWrite);
    assert.throws(() => checkBatch([{ key: 'k', payload: 'x'.repeat(11) }], 10), /payload/);
    checkBatch([ok], 10);
  });
});
