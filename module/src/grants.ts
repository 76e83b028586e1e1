// The grant grammar and the sync-token claim checks, as the module applies them.
//
// This is a line-for-line port of `control/sdk/grants.py` (`parse_grants`, `validate_sync_claims`,
// `authorize`): the same shape rules, the same limits, the same regular expressions and the same
// rejection codes, checked in the same order. Both sides are tested on the same vectors in
// `tests/vectors/` (`claims.json`, `views.json`).
//
// Besides the grammar it holds the module's own rules, kept pure so they are tested too: the
// `org_id` claim every accepted token must carry, how a token becomes `sync_grant` rows, which
// view a query set opens, which rows a view shows, when a row has expired and which sessions a
// revocation covers.
//
// Every grant row and every data row carries an org, and a row is visible or writable only
// through a grant of the same org AND the same stream. Stream ids are unique across orgs in the
// control plane; matching on the pair as well means a stream id bound to another org can never
// open that org's rows. A kind-wide grant (`run:*`) matches on the org and the stream's kind (the
// part of its id before `:`), so it opens every stream of that kind in its own org, including
// streams whose first row is written after the connection opened, and nothing of another org.
//
// Pure code: no import from `spacetimedb`; `index.ts` wires it to tables, reducers and views.

import { CATALOG, opensView, serves, viewsByName, type Catalog } from './catalog.js';
import { hasKey, isJsonObject, type JsonObject, type JsonValue } from './json.js';

// ---------------------------------------------------------------------------------------------
// Grammar (control/sdk/grants.py)

export const STREAM_KIND_PATTERN = '[a-z][a-z0-9_]{0,31}';
export const STREAM_KEY_PATTERN = '[A-Za-z0-9._~-]{1,128}';
export const QUERY_SET_NAME_PATTERN = '[a-z][a-z0-9_]{0,63}';

/** The key of a kind-wide selector `<kind>:*`; `*` is no character of a stream key. */
export const KIND_WIDE_KEY = '*';

// JavaScript's `$` without the `m` flag matches only at the very end, like Python's `\Z`.
const STREAM_ID = new RegExp(`^(${STREAM_KIND_PATTERN}):(${STREAM_KEY_PATTERN})$`);
const STREAM_SELECTOR = new RegExp(`^(${STREAM_KIND_PATTERN}):(\\*|${STREAM_KEY_PATTERN})$`);
const QUERY_SET_REF = new RegExp(`^(${QUERY_SET_NAME_PATTERN})@([1-9][0-9]{0,8})$`);

/** Bounds on a claim we parse, so a hostile token cannot make us do unbounded work. */
export const MAX_GRANTS_PER_CLAIM = 256;
export const MAX_QUERY_SETS_PER_GRANT = 32;

export const TOKEN_USE = 'sync';

export const OPS = ['subscribe', 'append', 'checkpoint'] as const;
export type Op = (typeof OPS)[number];

export const OP_SCOPES: Readonly<Record<Op, string>> = {
  subscribe: 'sync.subscribe',
  append: 'sync.append',
  checkpoint: 'sync.checkpoint.write',
};

/** A value does not follow the grant grammar; `code` says which rule it broke. */
export class GrammarError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'GrammarError';
  }
}

/** A grant does not cover a request; `code` is one of the `*_not_granted` codes. */
export class GrantDecision extends Error {
  constructor(
    readonly code: GrantDecisionCode,
    message: string,
  ) {
    super(message);
    this.name = 'GrantDecision';
  }
}

export type GrantDecisionCode =
  'stream_not_granted' | 'query_set_not_granted' | 'op_not_granted' | 'stream_org_required';

const show = (value: unknown): string => {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
};

export function parseStreamId(value: JsonValue | undefined): { kind: string; key: string } {
  const match = typeof value === 'string' ? STREAM_ID.exec(value) : null;
  if (match === null) {
    throw new GrammarError(
      'invalid_stream_id',
      `${show(value)} is not a stream id (\`<kind>:<key>\`, kind ${STREAM_KIND_PATTERN}, ` +
        `key ${STREAM_KEY_PATTERN})`,
    );
  }
  return { kind: match[1] as string, key: match[2] as string };
}

/** A stream id, or a kind-wide selector `<kind>:*` (its key is `KIND_WIDE_KEY`). */
export function parseStreamSelector(value: JsonValue | undefined): { kind: string; key: string } {
  const match = typeof value === 'string' ? STREAM_SELECTOR.exec(value) : null;
  if (match === null) {
    throw new GrammarError(
      'invalid_stream_selector',
      `${show(value)} is not a stream id or kind-wide selector (\`<kind>:<key>\` or ` +
        `\`<kind>:*\`, kind ${STREAM_KIND_PATTERN}, key ${STREAM_KEY_PATTERN})`,
    );
  }
  return { kind: match[1] as string, key: match[2] as string };
}

/** Whether `stream`, a value that follows the selector grammar, is a kind-wide selector. */
export function isKindWide(stream: string): boolean {
  return stream.endsWith(':*');
}

/** The kind of a stream id; null for anything else, a kind-wide selector included. */
export function streamKindOf(stream: string): string | null {
  const match = STREAM_ID.exec(stream);
  return match === null ? null : (match[1] as string);
}

/** Whether a grant naming `selector` names `stream`, orgs aside: the same stream, or a
 * kind-wide selector and a stream id of its kind (Python: `selector_covers`). */
export function selectorCovers(selector: string, stream: string): boolean {
  if (isKindWide(selector)) return streamKindOf(stream) === selector.slice(0, -2);
  return selector === stream;
}

export function parseQuerySetRef(value: JsonValue | undefined): { name: string; version: number } {
  const match = typeof value === 'string' ? QUERY_SET_REF.exec(value) : null;
  if (match === null) {
    throw new GrammarError(
      'invalid_query_set',
      `${show(value)} is not a query-set ref \`name@version\``,
    );
  }
  return { name: match[1] as string, version: Number(match[2]) };
}

export function parseOp(value: JsonValue | undefined): Op {
  if (typeof value === 'string' && (OPS as readonly string[]).includes(value)) return value as Op;
  throw new GrammarError('invalid_op', `${show(value)} is not an op (${OPS.join(', ')})`);
}

/** The space-separated `scope` claim for a set of ops, in a stable order. */
export function scopeFor(ops: Iterable<Op>): string {
  const present = new Set(ops);
  return OPS.filter((op) => present.has(op))
    .map((op) => OP_SCOPES[op])
    .join(' ');
}

/** One entry of the `grants` claim: a stream, the query sets and the ops allowed on it. */
export interface Grant {
  readonly stream: string;
  readonly query_sets: readonly string[];
  readonly ops: readonly Op[];
}

/** Parse a `grants` claim strictly: any deviation from the shape rejects the whole claim. */
export function parseGrants(value: JsonValue | undefined): Grant[] {
  const malformed = (why: string): GrammarError =>
    new GrammarError('malformed_grants', `grants claim is malformed: ${why}`);

  if (!Array.isArray(value)) throw malformed('not a list');
  if (value.length > MAX_GRANTS_PER_CLAIM) {
    throw malformed(`more than ${MAX_GRANTS_PER_CLAIM} grants`);
  }
  const grants: Grant[] = [];
  const seen = new Set<string>();
  for (const entry of value) {
    if (!isExactGrantShape(entry)) {
      throw malformed('each grant is exactly {stream, query_sets, ops}');
    }
    let stream: string;
    try {
      const id = parseStreamSelector(entry['stream']);
      stream = `${id.kind}:${id.key}`;
    } catch (error) {
      throw malformed(messageOf(error));
    }
    if (seen.has(stream)) throw malformed(`${stream} appears twice`);
    seen.add(stream);
    const querySets = entry['query_sets'];
    const ops = entry['ops'];
    if (!Array.isArray(querySets) || querySets.length > MAX_QUERY_SETS_PER_GRANT) {
      throw malformed(`query_sets of ${stream} is not a list of at most 32 refs`);
    }
    if (!Array.isArray(ops) || ops.length === 0) {
      throw malformed(`ops of ${stream} is not a non-empty list`);
    }
    let refs: string[];
    let parsedOps: Op[];
    try {
      refs = querySets.map((ref) => {
        const parsed = parseQuerySetRef(ref);
        return `${parsed.name}@${parsed.version}`;
      });
      parsedOps = ops.map(parseOp);
    } catch (error) {
      throw malformed(messageOf(error));
    }
    if (new Set(refs).size !== refs.length || new Set(parsedOps).size !== parsedOps.length) {
      throw malformed(`duplicate query set or op on ${stream}`);
    }
    grants.push({ stream, query_sets: refs, ops: parsedOps });
  }
  return grants;
}

function isExactGrantShape(entry: JsonValue): entry is JsonObject {
  if (!isJsonObject(entry)) return false;
  const keys = Object.keys(entry);
  return (
    keys.length === 3 &&
    hasKey(entry, 'stream') &&
    hasKey(entry, 'query_sets') &&
    hasKey(entry, 'ops')
  );
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Whether `grant` covers `querySet` (a name, or an exact `name@version`) and `op`;
 * raises `GrantDecision` otherwise (Python: `Grant.allows`). */
export function grantAllows(grant: Grant, querySet: string | null, op: Op | string): void {
  if (querySet !== null) {
    const wantedExact = querySet.includes('@');
    const covered = grant.query_sets.some(
      (ref) => ref === querySet || (!wantedExact && querySetName(ref) === querySet),
    );
    if (!covered) {
      throw new GrantDecision(
        'query_set_not_granted',
        `${querySet} is not granted on ${grant.stream}`,
      );
    }
  }
  if (!(grant.ops as readonly string[]).includes(op)) {
    throw new GrantDecision('op_not_granted', `${op} is not granted on ${grant.stream}`);
  }
}

/** The grant covering `stream`, `querySet` and `op`, or `GrantDecision` saying what not
 * (Python: `authorize`). A kind-wide grant covers a stream of its kind only when the stream's
 * org (`streamOrg`) is known and is the token's (`tokenOrg`): `stream_org_required` when only a
 * kind-wide grant could cover the stream and `streamOrg` is null; a `streamOrg` other than
 * `tokenOrg` is `stream_not_granted` whatever the grants name. */
export function authorize(
  grants: Iterable<Grant>,
  stream: string,
  querySet: string | null = null,
  op: Op | string = 'subscribe',
  tokenOrg: string | null = null,
  streamOrg: string | null = null,
): Grant {
  const all = [...grants];
  let refused: GrantDecision | null = null;
  const exact = all.find((grant) => grant.stream === stream && !isKindWide(grant.stream));
  if (exact !== undefined && (streamOrg === null || streamOrg === tokenOrg)) {
    try {
      grantAllows(exact, querySet, op);
      return exact;
    } catch (error) {
      if (!(error instanceof GrantDecision)) throw error;
      refused = error;
    }
  }
  const kind = streamKindOf(stream);
  const wide =
    kind === null
      ? undefined
      : all.find((grant) => isKindWide(grant.stream) && grant.stream.slice(0, -2) === kind);
  if (wide === undefined) {
    throw refused ?? new GrantDecision('stream_not_granted', `${stream} is not granted`);
  }
  if (streamOrg === null) {
    throw new GrantDecision(
      'stream_org_required',
      `${stream} is covered only by the kind-wide grant ${wide.stream}, which holds in the ` +
        "token's org alone: name the org that holds the stream (stream_org)",
    );
  }
  if (tokenOrg === null || streamOrg !== tokenOrg) {
    throw new GrantDecision('stream_not_granted', `${stream} is not granted`);
  }
  grantAllows(wide, querySet, op);
  return wide;
}

// ---------------------------------------------------------------------------------------------
// Claims (control/sdk/grants.py: validate_sync_claims)

export const REQUIRED_CLAIMS = [
  'iss',
  'sub',
  'aud',
  'iat',
  'exp',
  'jti',
  'token_use',
  'grants',
] as const;

export type RejectCode =
  'malformed' | 'wrong_issuer' | 'wrong_audience' | 'wrong_token_use' | 'expired' | 'not_yet_valid';

/** A token's claims are not those of a valid sync token for this issuer and audience. */
export class ClaimsRejected extends Error {
  constructor(
    readonly code: RejectCode,
    message: string,
  ) {
    super(message);
    this.name = 'ClaimsRejected';
  }
}

export interface ClaimCheck {
  issuer: string;
  audience: string;
  /** Unix seconds. */
  now: number;
  /** Seconds of clock skew tolerated on `exp`, `nbf` and `iat`; 0 unless configured. */
  leeway?: number;
}

function intClaim(claims: JsonObject, name: string): number {
  const value = claims[name];
  // Integers only: `JsonFloat` (1.0, 1e9), strings and booleans are not timestamps.
  if (typeof value !== 'number') {
    throw new ClaimsRejected('malformed', `\`${name}\` must be an integer`);
  }
  return value;
}

/** The number of bytes `value` takes in UTF-8, or null when it holds a lone surrogate (which
 * has no UTF-8 form). */
export function utf8Length(value: string): number | null {
  let bytes = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      const next = value.charCodeAt(i + 1);
      if (!(next >= 0xdc00 && next <= 0xdfff)) return null;
      bytes += 4;
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) return null;
    else bytes += 3;
  }
  return bytes;
}

/** Check a decoded sync token's claims and return its grants. The same checks, with the same
 * codes and in the same order, as `control.grants.validate_sync_claims`. */
export function validateSyncClaims(claims: JsonValue, check: ClaimCheck): Grant[] {
  const { issuer, audience, now } = check;
  const leeway = check.leeway ?? 0;
  if (!isJsonObject(claims)) {
    throw new ClaimsRejected('malformed', 'the token payload is not a JSON object');
  }
  for (const name of REQUIRED_CLAIMS) {
    if (!hasKey(claims, name)) {
      throw new ClaimsRejected('malformed', `\`${name}\` claim is missing`);
    }
  }
  const sub = claims['sub'];
  const subBytes = typeof sub === 'string' ? utf8Length(sub) : null;
  if (subBytes === null || subBytes < 1 || subBytes > 128) {
    throw new ClaimsRejected('malformed', '`sub` must be a string of 1 to 128 bytes');
  }
  const jti = claims['jti'];
  if (typeof jti !== 'string' || jti === '') {
    throw new ClaimsRejected('malformed', '`jti` must be a non-empty string');
  }
  // NUL is no character of any identifier the control plane issues.
  if ((sub as string).includes('\u0000') || jti.includes('\u0000')) {
    throw new ClaimsRejected('malformed', '`sub` and `jti` must not contain NUL');
  }
  const exp = intClaim(claims, 'exp');
  const iat = intClaim(claims, 'iat');
  const nbf = hasKey(claims, 'nbf') ? intClaim(claims, 'nbf') : iat;
  if (claims['iss'] !== issuer) {
    throw new ClaimsRejected('wrong_issuer', 'the token was issued by another issuer');
  }
  const aud = claims['aud'];
  const audiences = Array.isArray(aud) ? aud : [aud];
  if (!audiences.some((candidate) => candidate === audience)) {
    throw new ClaimsRejected('wrong_audience', 'the token is for another audience');
  }
  if (claims['token_use'] !== TOKEN_USE) {
    throw new ClaimsRejected('wrong_token_use', 'the token is not a sync token');
  }
  if (exp <= now - leeway) {
    throw new ClaimsRejected('expired', 'the token has expired');
  }
  if (Math.max(nbf, iat) > now + leeway) {
    throw new ClaimsRejected('not_yet_valid', 'the token is not valid yet');
  }
  try {
    return parseGrants(claims['grants']);
  } catch (error) {
    throw new ClaimsRejected('malformed', messageOf(error));
  }
}

// ---------------------------------------------------------------------------------------------
// Module rules: what a connection's token becomes, and what it opens

/** Longest `org_id` accepted, in UTF-8 bytes (the bound `sub` has). */
export const MAX_ORG_ID_BYTES = 128;

/** The token's org: the `org_id` claim, a string of 1 to 128 UTF-8 bytes without NUL. The control
 * plane puts the principal's org in every sync token; the module scopes every row it writes or
 * shows by it, so a token without a usable one is refused as `malformed`. */
export function orgIdOf(claims: JsonObject): string {
  if (!hasKey(claims, 'org_id')) {
    throw new ClaimsRejected('malformed', '`org_id` claim is missing');
  }
  const org = claims['org_id'];
  const bytes = typeof org === 'string' ? utf8Length(org) : null;
  if (bytes === null || bytes < 1 || bytes > MAX_ORG_ID_BYTES) {
    throw new ClaimsRejected(
      'malformed',
      `\`org_id\` must be a string of 1 to ${MAX_ORG_ID_BYTES} bytes`,
    );
  }
  if ((org as string).includes('\u0000')) {
    throw new ClaimsRejected('malformed', '`org_id` must not contain NUL');
  }
  return org as string;
}

/** What the module remembers of an accepted token, per connection (`sync_session`). */
export interface TokenSession {
  readonly subject: string;
  readonly jti: string;
  /** The token's `org_id`. */
  readonly org_id: string;
  /** `iat`, unix seconds. */
  readonly issued_at: number;
  /** `exp`, unix seconds. */
  readonly expires_at: number;
}

/** One `sync_grant` row, without the connection's identity and connection id. */
export interface GrantRow {
  /** The token's `org_id`: the grant opens `stream` of this org only. */
  readonly org_id: string;
  readonly stream: string;
  /** `name@version`, or `""` for a grant that names no query set (it then carries only ops,
   * e.g. `append`, and opens no view). */
  readonly query_set: string;
  readonly ops: readonly Op[];
  /** The token's `exp`, unix seconds. */
  readonly expires_at: number;
}

export interface AcceptedToken {
  readonly session: TokenSession;
  readonly grants: readonly Grant[];
  readonly rows: readonly GrantRow[];
}

/** Check a token's claims as `client_connected` does and compute what to store: first every
 * check of `validateSyncClaims` (the control plane's, unchanged and in its order), then the
 * module's own requirement of an `org_id` (`orgIdOf`). */
export function acceptSyncToken(claims: JsonValue, check: ClaimCheck): AcceptedToken {
  const grants = validateSyncClaims(claims, check);
  // validateSyncClaims has checked these claims' types.
  const object = claims as JsonObject;
  const session: TokenSession = {
    subject: object['sub'] as string,
    jti: object['jti'] as string,
    org_id: orgIdOf(object),
    issued_at: object['iat'] as number,
    expires_at: object['exp'] as number,
  };
  return { session, grants, rows: grantRows(grants, session.org_id, session.expires_at) };
}

/** The `sync_grant` rows for a token's grants: one per (grant, query set), in claim order; a
 * grant with no query set gets one row with `query_set: ""`. Every row carries the token's org
 * and expires with the token. */
export function grantRows(grants: Iterable<Grant>, orgId: string, expiresAt: number): GrantRow[] {
  const rows: GrantRow[] = [];
  for (const grant of grants) {
    const refs = grant.query_sets.length > 0 ? grant.query_sets : [''];
    for (const ref of refs) {
      rows.push({
        org_id: orgId,
        stream: grant.stream,
        query_set: ref,
        ops: [...grant.ops],
        expires_at: expiresAt,
      });
    }
  }
  return rows;
}

/** The views of this module, each a `SELECT *` target for clients (`catalog.json` declares
 * the same; a unit test holds them equal). */
export const VIEWS = ['run_event_view', 'run_checkpoint_view'] as const;
export type ViewName = (typeof VIEWS)[number];

/**
 * Per query-set NAME, the views some version of it the catalog serves opens: a summary of
 * `catalog.json` (`tests/vectors/views.json` carries the same table). What a grant row opens is
 * decided on its exact `name@version` and its stream's kind (`rowOpensView`), never on this.
 */
export const QUERY_SET_VIEWS: Readonly<Record<string, readonly string[]>> = viewsByName(CATALOG);

/** `run_events` for `run_events@3`; the whole string when it has no `@`. */
export function querySetName(ref: string): string {
  const at = ref.indexOf('@');
  return at < 0 ? ref : ref.slice(0, at);
}

/** The part of a `sync_grant` row the visibility and op rules read. */
export interface GrantRowLike {
  readonly org_id: string;
  readonly stream: string;
  readonly query_set: string;
  readonly ops: readonly string[];
}

/** The part of a data row (`stream_event`, `stream_checkpoint`) the visibility rule reads. */
export interface DataRowLike {
  readonly org_id: string;
  readonly stream_id: string;
}

/** A stream of one org: what a grant row opens and a data row belongs to. */
export interface OrgStream {
  readonly org_id: string;
  readonly stream: string;
}

/** Every stream of one kind in one org: what a kind-wide grant row opens. */
export interface OrgKind {
  readonly org_id: string;
  readonly kind: string;
}

/** One string per (org, stream) pair, distinct for distinct pairs whatever the strings hold
 * (`stream_head`'s key). */
export function orgStreamKey(orgId: string, stream: string): string {
  return JSON.stringify([orgId, stream]);
}

/** The kind a grant row's stream names: a stream id's kind, or a kind-wide selector's. */
export function selectorKindOf(stream: string): string | null {
  return isKindWide(stream) ? stream.slice(0, -2) : streamKindOf(stream);
}

/** Whether one grant row opens `view`: it allows `subscribe`, and the catalog serves its query
 * set at exactly the version it names, on streams of its kind, opening `view`. */
export function rowOpensView(row: GrantRowLike, view: ViewName): boolean {
  if (!row.ops.includes('subscribe') || row.query_set === '') return false;
  const kind = selectorKindOf(row.stream);
  return kind !== null && opensView(row.query_set, kind, view);
}

/** A token's grant names a query set the catalog does not serve (at that version, or on that
 * stream's kind): the module refuses the connection, so a token minted for a version the
 * catalog has dropped stops passing. */
export class NotServed extends Error {
  readonly code = 'query_set_not_served';
  constructor(message: string) {
    super(message);
    this.name = 'NotServed';
  }
}

/** Refuse (`NotServed`) a token whose grants name a query set the catalog does not serve at the
 * version and for the stream kind they name; `catalog` is the one in force. */
export function requireServed(grants: Iterable<Grant>, catalog: Catalog = CATALOG): void {
  for (const grant of grants) {
    const kind = selectorKindOf(grant.stream);
    for (const ref of grant.query_sets) {
      if (kind === null || !serves(ref, kind, catalog)) {
        throw new NotServed(
          `${ref} on ${grant.stream} is not served by the catalog ${catalog.catalog}@${catalog.revision}`,
        );
      }
    }
  }
}

/** The (org, stream) pairs `view` shows through grants naming the stream, given the viewer's
 * grant rows (all connections of its identity), in the order they are first granted. A stream
 * whose kind a kind-wide row of the same org opens is left out: `visibleKinds` covers it. */
export function visibleStreams(rows: Iterable<GrantRowLike>, view: ViewName): OrgStream[] {
  const opened = [...rows].filter((row) => rowOpensView(row, view));
  const kinds = new Set(visibleKinds(opened, view).map((k) => orgStreamKey(k.org_id, k.kind)));
  const streams: OrgStream[] = [];
  const seen = new Set<string>();
  for (const row of opened) {
    if (isKindWide(row.stream)) continue;
    const key = orgStreamKey(row.org_id, row.stream);
    const kind = streamKindOf(row.stream);
    if (seen.has(key) || (kind !== null && kinds.has(orgStreamKey(row.org_id, kind)))) continue;
    seen.add(key);
    streams.push({ org_id: row.org_id, stream: row.stream });
  }
  return streams;
}

/** The (org, kind) pairs `view` shows through kind-wide grant rows, in the order they are first
 * granted. */
export function visibleKinds(rows: Iterable<GrantRowLike>, view: ViewName): OrgKind[] {
  const kinds: OrgKind[] = [];
  const seen = new Set<string>();
  for (const row of rows) {
    if (!isKindWide(row.stream) || !rowOpensView(row, view)) continue;
    const kind = row.stream.slice(0, -2);
    const key = orgStreamKey(row.org_id, kind);
    if (seen.has(key)) continue;
    seen.add(key);
    kinds.push({ org_id: row.org_id, kind });
  }
  return kinds;
}

/** What `view` shows: every row of every (org, stream) and every (org, kind) the viewer's grant
 * rows open for it, each row once. The module passes index lookups on (org_id, stream_id), the
 * second a range over the ids of one kind (`<kind>:` up to `<kind>;`), as `rowsOfStream` and
 * `rowsOfKind`; tests pass filters over plain data. A row a lookup returns is kept only when its
 * own org and stream (or kind) are the granted pair, so a lookup that matched on the stream or
 * kind alone still shows no other org's rows. */
export function visibleRows<R extends DataRowLike>(
  view: ViewName,
  rows: Iterable<GrantRowLike>,
  rowsOfStream: (orgId: string, stream: string) => Iterable<R>,
  rowsOfKind: (orgId: string, kind: string) => Iterable<R>,
): R[] {
  const grants = [...rows];
  const out: R[] = [];
  for (const { org_id, kind } of visibleKinds(grants, view)) {
    for (const row of rowsOfKind(org_id, kind)) {
      if (row.org_id === org_id && streamKindOf(row.stream_id) === kind) out.push(row);
    }
  }
  for (const { org_id, stream } of visibleStreams(grants, view)) {
    for (const row of rowsOfStream(org_id, stream)) {
      if (row.org_id === org_id && row.stream_id === stream) out.push(row);
    }
  }
  return out;
}

/** The caller's grant row (of the calling connection) that allows `op` on `stream` of `orgId`;
 * raises `GrantDecision` with `stream_not_granted` or `op_not_granted` otherwise, as
 * `control.grants.authorize(grants, stream, None, op, token_org=orgId, stream_org=orgId)` does.
 * A row naming the stream covers it, and so does a kind-wide row of the stream's kind (a
 * kind-wide `append` grant appends to any stream of that kind in the org). A grant in another
 * org does not count, and a selector is no stream: nothing is ever written to `run:*` itself. */
export function authorizeOp<R extends GrantRowLike>(
  rows: Iterable<R>,
  orgId: string,
  stream: string,
  op: Op,
): R {
  let streamGranted = false;
  const kind = streamKindOf(stream);
  const candidates = [...rows].filter(
    (row) =>
      row.org_id === orgId &&
      (isKindWide(row.stream)
        ? kind !== null && row.stream.slice(0, -2) === kind
        : row.stream === stream),
  );
  // A row naming the stream first, as `authorize` tries the grant naming it first.
  candidates.sort((a, b) => Number(isKindWide(a.stream)) - Number(isKindWide(b.stream)));
  for (const row of candidates) {
    if (row.ops.includes(op)) return row;
    streamGranted = true;
  }
  if (streamGranted) {
    throw new GrantDecision('op_not_granted', `${op} is not granted on ${stream}`);
  }
  throw new GrantDecision('stream_not_granted', `${stream} is not granted`);
}

/** A row (or session) expires when its token does: at `exp` itself, as `validateSyncClaims`
 * rejects `exp <= now`. */
export function isExpired(expiresAt: number, now: number): boolean {
  return expiresAt <= now;
}

export type RevocationKind = 'jti' | 'subject';

export interface Revocation {
  /** The org that made it: it covers that org's tokens only. */
  readonly org_id: string;
  readonly kind: RevocationKind;
  readonly value: string;
  /** For `subject`: tokens issued (`iat`) before this unix second are revoked. Ignored for
   * `jti`, which revokes that one token whenever it was issued. */
  readonly not_before: number;
}

/** Whether `revocation` covers the token behind `session`. */
export function revocationCovers(revocation: Revocation, session: TokenSession): boolean {
  // A jti or a subject another org names is not this org's token, whoever learned its value.
  if (session.org_id !== revocation.org_id) return false;
  if (revocation.kind === 'jti') return session.jti === revocation.value;
  return session.subject === revocation.value && session.issued_at < revocation.not_before;
}

/**
 * The longest a token we accept can live (DESIGN.md: TTL at most 900 s) plus a minute. A
 * revocation is remembered this long after it takes effect, so a revoked token cannot be used to
 * reconnect; after that every token it covers has expired anyway.
 */
export const REVOCATION_RETENTION_SECONDS = 900 + 60;

export function revocationExpiresAt(revocation: Revocation, now: number): number {
  const from = revocation.kind === 'subject' ? Math.max(now, revocation.not_before) : now;
  return from + REVOCATION_RETENTION_SECONDS;
}
