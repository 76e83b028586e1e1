// The reference SpacetimeDB module of the sync fabric.
//
// SpacetimeDB validates our sync tokens (OIDC discovery + JWKS) before a connection opens, but
// views cannot read JWT claims. So `client_connected` checks the claims itself and copies the
// token's `grants` into the private `sync_grant` table; the public views join the private data
// tables with `sync_grant` on the viewer's identity and on (org, stream), or on (org, kind) for a
// kind-wide grant (`run:*`), so each client sees only its granted streams of its own org.
// SpacetimeDB checks `exp` only when a connection opens, so a scheduled reducer deletes grant rows
// whose token has expired, and the views stop showing those streams.
//
// All the rules (claim checks, grant grammar, grant rows, visibility, op checks, expiry,
// revocation) are pure code in `grants.ts`, tested on the shared vectors in `tests/vectors/`;
// this file only wires them to tables, reducers and views. See docs/spacetimedb.md.

import { Identity, Timestamp, type ConnectionId } from 'spacetimedb';
import {
  Range,
  ScheduleAt,
  SenderError,
  schema,
  t,
  table,
  type Infer,
  type ReducerCtx,
} from 'spacetimedb/server';

import {
  DEFAULT_CONFIG,
  MAX_PAYLOAD_LENGTH,
  SWEEP_INTERVAL_SECONDS,
  configProblem,
  type ModuleConfig,
} from './config.js';
import {
  ClaimsRejected,
  GrantDecision,
  NotServed,
  acceptSyncToken,
  authorizeOp,
  isExpired,
  orgStreamKey,
  requireServed,
  revocationCovers,
  visibleRows,
  type Op,
  type Revocation,
  type TokenSession,
} from './grants.js';
import { JsonSyntaxError, parseJson, type JsonValue } from './json.js';
import {
  InvalidWrite,
  applyAppends,
  applyRevocation,
  checkBatch,
  type AppendEntry,
  type AppendStore,
  type RevocationStore,
  type SessionLike,
} from './writes.js';

// ---------------------------------------------------------------------------------------------
// Tables (all private: clients read only through the views below)

/** The one configuration row (`id = 0`), written by `init` and `configure`. */
const sync_config = table(
  { name: 'sync_config' },
  {
    id: t.u32().primaryKey(),
    /** Who published the database; the only caller of `configure`. */
    owner: t.identity(),
    issuer: t.string(),
    audience: t.string(),
    /** The only caller of `revoke_subject` / `revoke_jti`; none until configured. */
    control_plane: t.identity().optional(),
    leeway_seconds: t.u32(),
  },
);

/** One row per connection opened with an accepted sync token. */
const sync_session = table(
  { name: 'sync_session' },
  {
    connection_id: t.connectionId().primaryKey(),
    identity: t.identity().index('btree'),
    subject: t.string().index('btree'),
    jti: t.string().index('btree'),
    /** The token's `org_id`. */
    org_id: t.string(),
    issued_at: t.timestamp(),
    expires_at: t.timestamp().index('btree'),
  },
);

/** The token's grants, one row per (stream, query set) of each connection (DESIGN.md
 * `sync_grant(identity, connection_id, stream, query_set, ops)`, plus the token's org and
 * expiry). */
const sync_grant = table(
  { name: 'sync_grant' },
  {
    id: t.u64().primaryKey().autoInc(),
    identity: t.identity().index('btree'),
    connection_id: t.connectionId().index('btree'),
    /** The token's `org_id`: the row grants `stream` of this org only. */
    org_id: t.string(),
    stream: t.string().index('btree'),
    /** `name@version`, or `""` when the grant names no query set (ops only, no view). */
    query_set: t.string(),
    ops: t.array(t.string()),
    expires_at: t.timestamp().index('btree'),
  },
);

/** Revocations the control plane pushed, kept until every token they cover has expired. */
const sync_revocation = table(
  { name: 'sync_revocation' },
  {
    id: t.u64().primaryKey().autoInc(),
    /** The org that made it: it covers that org's tokens only. */
    org_id: t.string(),
    /** `jti` or `subject`. */
    kind: t.string(),
    value: t.string().index('btree'),
    not_before: t.timestamp(),
    expires_at: t.timestamp().index('btree'),
    created_at: t.timestamp(),
  },
);

/** The last sequence number appended to each stream of each org. A unique constraint spans one
 * column only, so the key is the (org, stream) pair as one string (`orgStreamKey`). */
const stream_head = table(
  { name: 'stream_head' },
  {
    org_stream: t.string().primaryKey(),
    org_id: t.string(),
    stream_id: t.string(),
    last_seq: t.u64(),
  },
);

/** Every stream id of one kind, as a range of the (org_id, stream_id) index: ids of kind `run`
 * are exactly the strings from `run:` up to, not including, `run;` (`;` follows `:`). Kinds
 * sharing a prefix (`run_v2`) fall outside, and `visibleRows` checks each row's kind again. */
function kindRange(kind: string): Range<string> {
  return new Range<string>(
    { tag: 'included', value: `${kind}:` },
    { tag: 'excluded', value: `${kind};` },
  );
}

/** Events of every stream, in `seq` order per (org, stream). */
const stream_event = table(
  {
    name: 'stream_event',
    indexes: [{ accessor: 'org_stream', algorithm: 'btree', columns: ['org_id', 'stream_id'] }],
  },
  {
    id: t.u64().primaryKey().autoInc(),
    org_id: t.string(),
    stream_id: t.string(),
    seq: t.u64(),
    payload: t.string(),
    author: t.identity(),
    appended_at: t.timestamp(),
  },
);

/** One checkpoint per client (identity) and (org, stream). */
const stream_checkpoint = table(
  {
    name: 'stream_checkpoint',
    indexes: [{ accessor: 'org_stream', algorithm: 'btree', columns: ['org_id', 'stream_id'] }],
  },
  {
    id: t.u64().primaryKey().autoInc(),
    org_id: t.string(),
    stream_id: t.string(),
    client: t.identity(),
    seq: t.u64(),
    payload: t.string(),
    updated_at: t.timestamp(),
  },
);

/** The idempotency keys each (org, stream) has seen, and the `seq` their first append got, for
 * `APPEND_KEY_RETENTION_SECONDS`: a retried append with a seen key appends nothing. A unique
 * constraint spans one column only, so the key is (org, stream, key) as one string. */
const append_key = table(
  { name: 'append_key' },
  {
    org_stream_key: t.string().primaryKey(),
    seq: t.u64(),
    expires_at: t.timestamp().index('btree'),
  },
);

/** Drives `sweep_expired` every `SWEEP_INTERVAL_SECONDS`. */
const sweep_schedule = table(
  { name: 'sweep_schedule' },
  {
    scheduled_id: t.u64().primaryKey().autoInc(),
    scheduled_at: t.scheduleAt(),
  },
);

const spacetimedb = schema({
  sync_config,
  sync_session,
  sync_grant,
  sync_revocation,
  stream_head,
  stream_event,
  stream_checkpoint,
  append_key,
  sweep_schedule,
});
export default spacetimedb;

type Ctx = ReducerCtx<(typeof spacetimedb)['schemaType']>;
type SessionRow = Infer<typeof sync_session.rowType>;
type GrantTableRow = Infer<typeof sync_grant.rowType>;

// ---------------------------------------------------------------------------------------------
// Helpers

const MICROS_PER_SECOND = 1_000_000n;
// Timestamps are i64 microseconds; keep any integer claim (even a huge one) representable.
const MAX_TIMESTAMP_SECONDS = 9_000_000_000_000;

function secondsOf(timestamp: Timestamp): number {
  return Number(timestamp.microsSinceUnixEpoch / MICROS_PER_SECOND);
}

function timestampOfSeconds(seconds: number): Timestamp {
  const clamped = Math.min(Math.max(seconds, -MAX_TIMESTAMP_SECONDS), MAX_TIMESTAMP_SECONDS);
  return new Timestamp(BigInt(Math.trunc(clamped)) * MICROS_PER_SECOND);
}

/** Errors returned to the caller read `<code>: <message>`. */
function fail(code: string, message: string): never {
  throw new SenderError(`${code}: ${message}`);
}

function loadConfig(
  ctx: Ctx,
): ModuleConfig & { owner: Identity | null; controlPlane: Identity | null } {
  const row = ctx.db.sync_config.id.find(0);
  if (row === null) {
    return { ...DEFAULT_CONFIG, owner: null, controlPlane: null };
  }
  return {
    issuer: row.issuer,
    audience: row.audience,
    controlPlaneIdentity: row.control_plane?.toHexString() ?? '',
    leewaySeconds: row.leeway_seconds,
    owner: row.owner,
    controlPlane: row.control_plane ?? null,
  };
}

function sessionOf(row: SessionRow): TokenSession {
  return {
    subject: row.subject,
    jti: row.jti,
    org_id: row.org_id,
    issued_at: secondsOf(row.issued_at),
    expires_at: secondsOf(row.expires_at),
  };
}

/** Delete everything a connection was granted; the connection stays open but sees nothing. */
function dropConnection(ctx: Ctx, connectionId: ConnectionId): void {
  ctx.db.sync_grant.connection_id.delete(connectionId);
  ctx.db.sync_session.connection_id.delete(connectionId);
}

/** The calling connection's unexpired grant row that allows `op` on `stream` of the
 * connection's own org (its token's `org_id`); `stream_not_granted` / `op_not_granted`
 * otherwise. Writes take the org from this row, never from the caller's arguments. */
function requireOp(ctx: Ctx, stream: string, op: Op): GrantTableRow {
  const connectionId = ctx.connectionId;
  if (connectionId === null) fail('stream_not_granted', `${stream} is not granted`);
  const session = ctx.db.sync_session.connection_id.find(connectionId);
  if (session === null) fail('stream_not_granted', `${stream} is not granted`);
  const now = secondsOf(ctx.timestamp);
  const rows = [...ctx.db.sync_grant.connection_id.filter(connectionId)].filter(
    (row) => !isExpired(secondsOf(row.expires_at), now),
  );
  try {
    return authorizeOp(rows, session.org_id, stream, op);
  } catch (error) {
    if (error instanceof GrantDecision) fail(error.code, error.message);
    throw error;
  }
}

function requirePayload(payload: string): void {
  if (payload.length > MAX_PAYLOAD_LENGTH) {
    fail('payload_too_large', `payload is longer than ${MAX_PAYLOAD_LENGTH} characters`);
  }
}

function requireControlPlane(ctx: Ctx): void {
  const { controlPlane } = loadConfig(ctx);
  if (controlPlane === null || !ctx.sender.isEqual(controlPlane)) {
    fail('forbidden', 'only the control plane identity may revoke');
  }
}

function sessionLike(row: SessionRow): SessionLike {
  return { ...sessionOf(row), connection_id: row.connection_id.toHexString() };
}

/** The module's tables as `applyRevocation` reads and writes them. */
function revocationStore(ctx: Ctx): RevocationStore {
  const connections = new Map<string, ConnectionId>();
  return {
    *recorded(orgId, kind, value) {
      for (const row of ctx.db.sync_revocation.value.filter(value)) {
        if (row.org_id === orgId && row.kind === kind) {
          yield { org_id: orgId, kind, value, not_before: secondsOf(row.not_before) };
        }
      }
    },
    record(revocation, expiresAt) {
      ctx.db.sync_revocation.insert({
        id: 0n,
        org_id: revocation.org_id,
        kind: revocation.kind,
        value: revocation.value,
        not_before: timestampOfSeconds(revocation.not_before),
        expires_at: timestampOfSeconds(expiresAt),
        created_at: ctx.timestamp,
      });
    },
    *sessions(kind, value) {
      const rows =
        kind === 'jti'
          ? ctx.db.sync_session.jti.filter(value)
          : ctx.db.sync_session.subject.filter(value);
      for (const row of rows) {
        const session = sessionLike(row);
        connections.set(session.connection_id, row.connection_id);
        yield session;
      }
    },
    drop(connectionId) {
      const id = connections.get(connectionId);
      if (id !== undefined) dropConnection(ctx, id);
    },
  };
}

function isRevoked(ctx: Ctx, session: TokenSession): boolean {
  for (const value of new Set([session.jti, session.subject])) {
    for (const row of ctx.db.sync_revocation.value.filter(value)) {
      if (row.kind !== 'jti' && row.kind !== 'subject') continue;
      const revocation: Revocation = {
        org_id: row.org_id,
        kind: row.kind,
        value: row.value,
        not_before: secondsOf(row.not_before),
      };
      if (revocationCovers(revocation, session)) return true;
    }
  }
  return false;
}

/** The module's tables as `applyAppends` reads and writes them. */
function appendStore(ctx: Ctx): AppendStore {
  const keyOf = (orgId: string, stream: string, key: string): string =>
    JSON.stringify([orgId, stream, key]);
  return {
    lastSeq(orgId, stream) {
      return ctx.db.stream_head.org_stream.find(orgStreamKey(orgId, stream))?.last_seq ?? 0n;
    },
    setLastSeq(orgId, stream, seq) {
      const org_stream = orgStreamKey(orgId, stream);
      const head = ctx.db.stream_head.org_stream.find(org_stream);
      if (head === null) {
        ctx.db.stream_head.insert({ org_stream, org_id: orgId, stream_id: stream, last_seq: seq });
      } else {
        ctx.db.stream_head.org_stream.update({ ...head, last_seq: seq });
      }
    },
    seen(orgId, stream, key) {
      return ctx.db.append_key.org_stream_key.find(keyOf(orgId, stream, key))?.seq ?? null;
    },
    remember(orgId, stream, key, seq, expiresAt) {
      ctx.db.append_key.insert({
        org_stream_key: keyOf(orgId, stream, key),
        seq,
        expires_at: timestampOfSeconds(expiresAt),
      });
    },
    insertEvent(orgId, stream, seq, payload) {
      ctx.db.stream_event.insert({
        id: 0n,
        org_id: orgId,
        stream_id: stream,
        seq,
        payload,
        author: ctx.sender,
        appended_at: ctx.timestamp,
      });
    },
  };
}

/** Append a batch to `stream_id` of the caller's org: the `append` op is checked once, the batch
 * once, then `applyAppends` writes it in one transaction. */
function appendBatch(ctx: Ctx, stream_id: string, entries: readonly AppendEntry[]): void {
  const { org_id } = requireOp(ctx, stream_id, 'append');
  try {
    checkBatch(entries, MAX_PAYLOAD_LENGTH);
  } catch (error) {
    if (error instanceof InvalidWrite) {
      fail(error.message.startsWith('payload') ? 'payload_too_large' : error.code, error.message);
    }
    throw error;
  }
  applyAppends(appendStore(ctx), org_id, stream_id, entries, secondsOf(ctx.timestamp));
}

function revokeNow(ctx: Ctx, revocation: Revocation): void {
  requireControlPlane(ctx);
  try {
    applyRevocation(revocationStore(ctx), revocation, secondsOf(ctx.timestamp));
  } catch (error) {
    if (error instanceof InvalidWrite) fail(error.code, error.message);
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

export const init = spacetimedb.init((ctx) => {
  // In `init`, the sender is whoever published the database: it becomes the owner.
  ctx.db.sync_config.insert({
    id: 0,
    owner: ctx.sender,
    issuer: DEFAULT_CONFIG.issuer,
    audience: DEFAULT_CONFIG.audience,
    control_plane: undefined,
    leeway_seconds: DEFAULT_CONFIG.leewaySeconds,
  });
  ctx.db.sweep_schedule.insert({
    scheduled_id: 0n,
    scheduled_at: ScheduleAt.interval(BigInt(SWEEP_INTERVAL_SECONDS) * MICROS_PER_SECOND),
  });
});

export const client_connected = spacetimedb.clientConnected((ctx) => {
  const config = loadConfig(ctx);
  // The owner (to call `configure`) and the control plane (to revoke) connect with their own
  // tokens; they are let in with no grants, so every view is empty for them.
  if (
    (config.owner !== null && ctx.sender.isEqual(config.owner)) ||
    (config.controlPlane !== null && ctx.sender.isEqual(config.controlPlane))
  ) {
    return;
  }
  const connectionId = ctx.connectionId;
  if (connectionId === null) fail('malformed', 'the connection has no connection id');
  const jwt = ctx.senderAuth.jwt;
  if (!ctx.senderAuth.hasJWT || jwt === null) fail('malformed', 'a sync token is required');

  let claims: JsonValue;
  try {
    claims = parseJson(jwt.rawPayload);
  } catch (error) {
    if (error instanceof JsonSyntaxError) fail('malformed', 'the token payload is not JSON');
    throw error;
  }
  let accepted: ReturnType<typeof acceptSyncToken>;
  try {
    accepted = acceptSyncToken(claims, {
      issuer: config.issuer,
      audience: config.audience,
      now: secondsOf(ctx.timestamp),
      leeway: config.leewaySeconds,
    });
  } catch (error) {
    if (error instanceof ClaimsRejected) {
      console.info(`sync token rejected: ${error.code}`);
      fail(error.code, error.message);
    }
    throw error;
  }
  const { session, rows } = accepted;
  try {
    requireServed(accepted.grants);
  } catch (error) {
    if (error instanceof NotServed) {
      console.info('sync token rejected: query_set_not_served');
      fail(error.code, error.message);
    }
    throw error;
  }
  if (isRevoked(ctx, session)) {
    console.info('sync token rejected: revoked');
    fail('revoked', 'the token has been revoked');
  }

  dropConnection(ctx, connectionId);
  ctx.db.sync_session.insert({
    connection_id: connectionId,
    identity: ctx.sender,
    subject: session.subject,
    jti: session.jti,
    org_id: session.org_id,
    issued_at: timestampOfSeconds(session.issued_at),
    expires_at: timestampOfSeconds(session.expires_at),
  });
  for (const row of rows) {
    ctx.db.sync_grant.insert({
      id: 0n,
      identity: ctx.sender,
      connection_id: connectionId,
      org_id: row.org_id,
      stream: row.stream,
      query_set: row.query_set,
      ops: [...row.ops],
      expires_at: timestampOfSeconds(row.expires_at),
    });
  }
});

export const client_disconnected = spacetimedb.clientDisconnected((ctx) => {
  if (ctx.connectionId !== null) dropConnection(ctx, ctx.connectionId);
});

/** Every few seconds: delete grant rows, sessions and revocations whose time has passed. */
export const sweep_expired = spacetimedb.reducer(
  { onSchedule: sweep_schedule },
  { schedule: sweep_schedule.rowType },
  (ctx) => {
    if (!ctx.sender.isEqual(ctx.databaseIdentity)) {
      fail('forbidden', 'sweep_expired runs only on its schedule');
    }
    // `isExpired`: a row expires at its `exp` itself, so the bound is inclusive of now.
    const expired = new Range<Timestamp>(
      { tag: 'unbounded' },
      { tag: 'included', value: ctx.timestamp },
    );
    ctx.db.sync_grant.expires_at.delete(expired);
    ctx.db.sync_session.expires_at.delete(expired);
    ctx.db.sync_revocation.expires_at.delete(expired);
    ctx.db.append_key.expires_at.delete(expired);
  },
);

// ---------------------------------------------------------------------------------------------
// Administration

/** Set the issuer, audience, control-plane identity (hex, or "" for none) and leeway. Only the
 * database owner may call it. */
export const configure = spacetimedb.reducer(
  {
    issuer: t.string(),
    audience: t.string(),
    control_plane_identity: t.string(),
    leeway_seconds: t.u32(),
  },
  (ctx, { issuer, audience, control_plane_identity, leeway_seconds }) => {
    const current = ctx.db.sync_config.id.find(0);
    if (current === null || !ctx.sender.isEqual(current.owner)) {
      fail('forbidden', 'only the database owner may configure the module');
    }
    const problem = configProblem({
      issuer,
      audience,
      controlPlaneIdentity: control_plane_identity,
      leewaySeconds: leeway_seconds,
    });
    if (problem !== null) fail('invalid_request', problem);
    ctx.db.sync_config.id.update({
      ...current,
      issuer,
      audience,
      control_plane:
        control_plane_identity === '' ? undefined : new Identity(control_plane_identity),
      leeway_seconds,
    });
  },
);

/** Revoke every token of `subject` in `org_id` issued (`iat`) before `not_before_unix` (unix
 * seconds): their connections lose their grants now, and they cannot be used to connect again.
 * The control plane pushes it at least once; a repeat changes nothing. */
export const revoke_subject = spacetimedb.reducer(
  { org_id: t.string(), subject: t.string(), not_before_unix: t.u64() },
  (ctx, { org_id, subject, not_before_unix }) => {
    revokeNow(ctx, {
      org_id,
      kind: 'subject',
      value: subject,
      not_before: Number(not_before_unix),
    });
  },
);

/** Revoke the one token `jti` of `org_id`: its connections lose their grants now, and it cannot be
 * used to connect again. A repeat changes nothing. */
export const revoke_jti = spacetimedb.reducer(
  { org_id: t.string(), jti: t.string() },
  (ctx, { org_id, jti }) => {
    revokeNow(ctx, { org_id, kind: 'jti', value: jti, not_before: 0 });
  },
);

// ---------------------------------------------------------------------------------------------
// Writes

/** Append `payload` to `stream_id` of the caller's org; needs the `append` op on that stream.
 * `idempotency_key` names the event: a key the stream has seen appends nothing and succeeds, as
 * the first append did, so a retry never duplicates an event. */
export const append = spacetimedb.reducer(
  { stream_id: t.string(), payload: t.string(), idempotency_key: t.string() },
  (ctx, { stream_id, payload, idempotency_key }) => {
    appendBatch(ctx, stream_id, [{ key: idempotency_key, payload }]);
  },
);

/** Append several events to `stream_id` in one transaction, in order: `idempotency_keys[i]` names
 * `payloads[i]`, and seen keys are skipped as by `append`. All or nothing. */
export const append_batch = spacetimedb.reducer(
  { stream_id: t.string(), idempotency_keys: t.array(t.string()), payloads: t.array(t.string()) },
  (ctx, { stream_id, idempotency_keys, payloads }) => {
    if (idempotency_keys.length !== payloads.length) {
      fail('invalid_request', 'idempotency_keys and payloads must have the same length');
    }
    appendBatch(
      ctx,
      stream_id,
      payloads.map((payload, index) => ({ key: idempotency_keys[index] as string, payload })),
    );
  },
);

/** Record the caller's checkpoint on `stream_id` of the caller's org (one per client and
 * stream); needs the `checkpoint` op on that stream. `seq` may not pass the stream's last
 * appended event. */
export const checkpoint = spacetimedb.reducer(
  { stream_id: t.string(), seq: t.u64(), payload: t.string() },
  (ctx, { stream_id, seq, payload }) => {
    const { org_id } = requireOp(ctx, stream_id, 'checkpoint');
    requirePayload(payload);
    const lastSeq =
      ctx.db.stream_head.org_stream.find(orgStreamKey(org_id, stream_id))?.last_seq ?? 0n;
    if (seq > lastSeq) {
      fail('invalid_request', `seq ${seq} is past the last event (${lastSeq}) of ${stream_id}`);
    }
    for (const row of ctx.db.stream_checkpoint.org_stream.filter([org_id, stream_id])) {
      if (row.client.isEqual(ctx.sender)) {
        ctx.db.stream_checkpoint.id.update({ ...row, seq, payload, updated_at: ctx.timestamp });
        return;
      }
    }
    ctx.db.stream_checkpoint.insert({
      id: 0n,
      org_id,
      stream_id,
      client: ctx.sender,
      seq,
      payload,
      updated_at: ctx.timestamp,
    });
  },
);

// ---------------------------------------------------------------------------------------------
// Views: what clients subscribe to (`SELECT * FROM run_event_view`)

/** Events of the (org, stream) pairs the viewer holds a `subscribe` grant for, and of every
 * stream of the (org, kind) pairs it holds a kind-wide one for, through a query set that opens
 * this view (`run_events`). */
export const run_event_view = spacetimedb.view(
  { name: 'run_event_view', public: true },
  t.array(stream_event.rowType),
  (ctx) =>
    visibleRows(
      'run_event_view',
      ctx.db.sync_grant.identity.filter(ctx.sender),
      (org_id, stream) => ctx.db.stream_event.org_stream.filter([org_id, stream]),
      (org_id, kind) => ctx.db.stream_event.org_stream.filter([org_id, kindRange(kind)]),
    ),
);

/** Checkpoints of the (org, stream) pairs the viewer holds a `subscribe` grant for, and of every
 * stream of the (org, kind) pairs it holds a kind-wide one for, through a query set that opens
 * this view (`run_events`, `run_checkpoints`). */
export const run_checkpoint_view = spacetimedb.view(
  { name: 'run_checkpoint_view', public: true },
  t.array(stream_checkpoint.rowType),
  (ctx) =>
    visibleRows(
      'run_checkpoint_view',
      ctx.db.sync_grant.identity.filter(ctx.sender),
      (org_id, stream) => ctx.db.stream_checkpoint.org_stream.filter([org_id, stream]),
      (org_id, kind) => ctx.db.stream_checkpoint.org_stream.filter([org_id, kindRange(kind)]),
    ),
);
