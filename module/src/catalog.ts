// The module's query-set catalog: which views each `name@version` opens, for which stream kinds.
//
// `catalog.json` is the declaration; the control plane ships a copy and accepts only query-set
// definitions it serves (`control module catalog check` compares the two). Here it decides what
// a grant row opens: a view opens only through a grant whose query set the catalog serves at
// exactly the version the grant names, on a stream of a kind the entry lists. A version the
// catalog no longer lists opens nothing, and a token naming one is refused at connect.
//
// Pure code: no import from `spacetimedb`.

import catalogDocument from './catalog.json' with { type: 'json' };

// The grant grammar's patterns (grants.ts), repeated so this file imports nothing of it: grants.ts
// reads the catalog when this file loads. A unit test holds the two copies equal.
export const CATALOG_KIND_PATTERN = '[a-z][a-z0-9_]{0,31}';
export const CATALOG_QUERY_SET_REF_PATTERN = '[a-z][a-z0-9_]{0,63}@[1-9][0-9]{0,8}';
const KIND = new RegExp(`^${CATALOG_KIND_PATTERN}$`);
const REF = new RegExp(`^${CATALOG_QUERY_SET_REF_PATTERN}$`);
const VIEW_NAME = /^[a-z][a-z0-9_]{0,63}$/;

export interface CatalogEntry {
  /** The views the query set opens, each a `SELECT * FROM <view>` for clients. */
  readonly views: readonly string[];
  /** The stream kinds it applies to. */
  readonly stream_kinds: readonly string[];
}

export interface Catalog {
  /** The catalog's name, as the control plane names it in a refusal. */
  readonly catalog: string;
  readonly revision: number;
  /** Every view of the module, and the table it shows. */
  readonly views: Readonly<Record<string, { readonly table: string }>>;
  /** `name@version` → what it opens. */
  readonly query_sets: Readonly<Record<string, CatalogEntry>>;
}

/** The catalog document does not have the catalog's shape. */
export class CatalogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CatalogError';
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function distinctStrings(value: unknown, pattern: RegExp, what: string): string[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new CatalogError(`${what} must be a non-empty list`);
  }
  const items = value.map((item) => {
    if (typeof item !== 'string' || !pattern.test(item)) {
      throw new CatalogError(`${what}: ${JSON.stringify(item)} is not a valid name`);
    }
    return item;
  });
  if (new Set(items).size !== items.length) throw new CatalogError(`${what} has duplicates`);
  return items;
}

/** Check a catalog document's shape (the same rules as `control.spacetime.catalog`). */
export function parseCatalog(document: unknown): Catalog {
  if (!isObject(document)) throw new CatalogError('the catalog is not a JSON object');
  const name = document['catalog'];
  if (typeof name !== 'string' || name === '' || name.length > 64) {
    throw new CatalogError('`catalog` must be a name of 1 to 64 characters');
  }
  const revision = document['revision'];
  if (typeof revision !== 'number' || !Number.isInteger(revision) || revision < 1) {
    throw new CatalogError('`revision` must be a positive integer');
  }
  const rawViews = document['views'];
  if (!isObject(rawViews) || Object.keys(rawViews).length === 0) {
    throw new CatalogError('`views` must be a non-empty object');
  }
  const views: Record<string, { table: string }> = {};
  for (const [view, spec] of Object.entries(rawViews)) {
    if (!VIEW_NAME.test(view)) throw new CatalogError(`view ${JSON.stringify(view)} is not a name`);
    const table = isObject(spec) ? spec['table'] : undefined;
    if (typeof table !== 'string' || !VIEW_NAME.test(table)) {
      throw new CatalogError(`view ${view} must name its table`);
    }
    views[view] = { table };
  }
  const rawSets = document['query_sets'];
  if (!isObject(rawSets) || Object.keys(rawSets).length === 0) {
    throw new CatalogError('`query_sets` must be a non-empty object');
  }
  const querySets: Record<string, CatalogEntry> = {};
  for (const [ref, spec] of Object.entries(rawSets)) {
    if (!REF.test(ref)) throw new CatalogError(`${JSON.stringify(ref)} is not \`name@version\``);
    if (!isObject(spec)) throw new CatalogError(`${ref} must be an object`);
    const entryViews = distinctStrings(spec['views'], VIEW_NAME, `${ref} views`);
    for (const view of entryViews) {
      if (!Object.prototype.hasOwnProperty.call(views, view)) {
        throw new CatalogError(`${ref} opens ${view}, which the catalog does not declare`);
      }
    }
    const kinds = distinctStrings(spec['stream_kinds'], KIND, `${ref} stream_kinds`);
    querySets[ref] = { views: entryViews, stream_kinds: kinds };
  }
  return { catalog: name, revision, views, query_sets: querySets };
}

/** The catalog this module serves. */
export const CATALOG: Catalog = parseCatalog(catalogDocument);

/** The entry of `ref` (`name@version`), or null when the catalog does not serve it. */
export function servedEntry(ref: string, catalog: Catalog = CATALOG): CatalogEntry | null {
  return Object.prototype.hasOwnProperty.call(catalog.query_sets, ref)
    ? (catalog.query_sets[ref] as CatalogEntry)
    : null;
}

/** Whether the catalog serves `ref` on streams of `kind`. */
export function serves(ref: string, kind: string, catalog: Catalog = CATALOG): boolean {
  const entry = servedEntry(ref, catalog);
  return entry !== null && entry.stream_kinds.includes(kind);
}

/** Whether a grant of `ref` on streams of `kind` opens `view`. */
export function opensView(
  ref: string,
  kind: string,
  view: string,
  catalog: Catalog = CATALOG,
): boolean {
  const entry = servedEntry(ref, catalog);
  return entry !== null && entry.stream_kinds.includes(kind) && entry.views.includes(view);
}

/** Per query-set name, the views some served version of it opens (the version-free summary that
 * `tests/vectors/views.json` carries). */
export function viewsByName(catalog: Catalog = CATALOG): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [ref, entry] of Object.entries(catalog.query_sets)) {
    const name = ref.slice(0, ref.indexOf('@'));
    const views = out[name] ?? [];
    for (const view of entry.views) if (!views.includes(view)) views.push(view);
    out[name] = views;
  }
  return out;
}
