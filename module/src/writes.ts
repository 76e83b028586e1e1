// What the control plane's pushes and the runtime's appends do to the module's rows, as pure code
// over a small store interface: `index.ts` implements the store on its tables, the node tests on
// plain maps, and both run these same functions on the shared vectors (`tests/vectors/
// revocations.json`, `appends.json`).
//
// Both are idempotent, because both arrive at least once over HTTP:
// - a revocation already recorded (same org, kind, value and `not_before`) is not recorded
//   again, and dropping connections that are already gone drops nothing;
// - an append whose idempotency key the stream has seen appends nothing and answers as the first
//   did (the same `seq`), so a retried batch never duplicates an event and `seq` stays gap-free.
//
// Pure code: no import from `spacetimedb`.

import {
  revocationCovers,
  revocationExpiresAt,
  type Revocation,
  type TokenSession,
} from './grants.js';

// ---------------------------------------------------------------------------------------------
// Revocations

export interface SessionLike extends TokenSession {
  readonly connection_id: string;
}

export interface RevocationStore {
  /** The revocations recorded for (org, kind, value). */
  recorded(orgId: string, kind: Revocation['kind'], value: string): Iterable<Revocation>;
  record(revocation: Revocation, expiresAt: number): void;
  /** The open sessions whose `subject` (kind `subject`) or `jti` (kind `jti`) is `value`. */
  sessions(kind: Revocation['kind'], value: string): Iterable<SessionLike>;
  /** Delete a connection's session and grant rows. */
  drop(connectionId: string): void;
}

/** A revocation's arguments are out of bounds (`invalid_request`). */
export class InvalidWrite extends Error {
  readonly code = 'invalid_request';
  constructor(message: string) {
    super(message);
    this.name = 'InvalidWrite';
  }
}

/** Longest org id, subject and jti a push may name, in UTF-16 code units (the control plane's are
 * far shorter). */
export const MAX_REVOCATION_VALUE_LENGTH = 200;

function requireValue(what: string, value: string): void {
  if (value === '' || value.length > MAX_REVOCATION_VALUE_LENGTH || value.includes('\u0000')) {
    throw new InvalidWrite(`${what} must be 1 to ${MAX_REVOCATION_VALUE_LENGTH} characters`);
  }
}

/** Apply one revocation: remember it (once) and drop the connections it covers. Returns the
 * dropped connection ids. */
export function applyRevocation(store: RevocationStore, revocation: Revocation, now: number): string[] {
  requireValue('org_id', revocation.org_id);
  requireValue(revocation.kind, revocation.value);
  const known = [...store.recorded(revocation.org_id, revocation.kind, revocation.value)].some(
    (row) => revocation.kind === 'jti' || row.not_before === revocation.not_before,
  );
  if (!known) store.record(revocation, revocationExpiresAt(revocation, now));
  const dropped: string[] = [];
  for (const session of [...store.sessions(revocation.kind, revocation.value)]) {
    if (revocationCovers(revocation, session)) {
      store.drop(session.connection_id);
      dropped.push(session.connection_id);
    }
  }
  return dropped;
}

// ---------------------------------------------------------------------------------------------
// Appends

/** Idempotency keys: what the publisher sends (`control.runtime.SpacetimePublisher` makes them
 * from its process and a counter, or takes the caller's). */
export const IDEMPOTENCY_KEY = /^[A-Za-z0-9._~:-]{1,128}$/;
/** Most events one `append_batch` call carries. */
export const MAX_BATCH = 256;
/** How long a stream remembers an idempotency key: a retry later than this appends again. */
export const APPEND_KEY_RETENTION_SECONDS = 24 * 3600;

export interface AppendStore {
  /** The last `seq` of (org, stream); 0n before its first event. */
  lastSeq(orgId: string, stream: string): bigint;
  setLastSeq(orgId: string, stream: string, seq: bigint): void;
  /** The `seq` the first append with `key` on (org, stream) got, or null when unseen. */
  seen(orgId: string, stream: string, key: string): bigint | null;
  remember(orgId: string, stream: string, key: string, seq: bigint, expiresAt: number): void;
  insertEvent(orgId: string, stream: string, seq: bigint, payload: string): void;
}

export interface AppendEntry {
  readonly key: string;
  readonly payload: string;
}

export interface Appended {
  readonly key: string;
  readonly seq: bigint;
  /** True when the key had been seen: nothing was written. */
  readonly duplicate: boolean;
}

/** Check a batch's shape before any row is touched: 1 to `MAX_BATCH` entries, each key valid,
 * each payload at most `maxPayload` characters. */
export function checkBatch(entries: readonly AppendEntry[], maxPayload: number): void {
  if (entries.length === 0 || entries.length > MAX_BATCH) {
    throw new InvalidWrite(`a batch holds 1 to ${MAX_BATCH} events`);
  }
  for (const entry of entries) {
    if (!IDEMPOTENCY_KEY.test(entry.key)) {
      throw new InvalidWrite('an idempotency key is 1 to 128 characters of [A-Za-z0-9._~:-]');
    }
    if (entry.payload.length > maxPayload) {
      throw new InvalidWrite(`payload is longer than ${maxPayload} characters`);
    }
  }
}

/** Append `entries` to (org, stream) in order, skipping keys the stream has seen (a key twice in
 * one batch counts once). Every new event takes the next `seq`, so `seq` stays gap-free. */
export function applyAppends(
  store: AppendStore,
  orgId: string,
  stream: string,
  entries: readonly AppendEntry[],
  now: number,
): Appended[] {
  let seq = store.lastSeq(orgId, stream);
  const start = seq;
  const out: Appended[] = [];
  for (const { key, payload } of entries) {
    const first = store.seen(orgId, stream, key);
    if (first !== null) {
      out.push({ key, seq: first, duplicate: true });
      continue;
    }
    seq += 1n;
    store.insertEvent(orgId, stream, seq, payload);
    store.remember(orgId, stream, key, seq, now + APPEND_KEY_RETENTION_SECONDS);
    out.push({ key, seq, duplicate: false });
  }
  if (seq !== start) store.setLastSeq(orgId, stream, seq);
  return out;
}
