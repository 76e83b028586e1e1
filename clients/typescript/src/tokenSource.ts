// A cached, self-refreshing sync token from the control plane's token endpoint,
// `POST {baseUrl}/api/sync/token`, behaving as the Python SDK's `SyncTokenSource` does:
//
// - `token()` hands out the current token while it is valid, and never waits for a refresh
//   while it is. Once `refresh_after` (plus a random share of the time left, so clients that
//   minted together do not refresh together) has passed, one refresh starts in the background.
// - One refresh is in flight at a time, however many callers ask.
// - A refresh retries 429 / 502 / 503 / 504 and network errors with exponential backoff,
//   honouring `Retry-After`, each wait capped at 30 s. When all its attempts fail, the next
//   refresh starts no sooner than `backoffMs` x 2^failures (x 0.5-1.5, capped at 30 s) later.
// - Callers wait only when there is no valid token: on the first call, and after expiry (a
//   token is used until `expiryMarginMs`, 5 s, before `expires_at`). Before any token, a 401 is
//   `CredentialRejected` and a 403 `StreamsDenied`, neither retried; once a token has expired
//   and refreshing keeps failing, `TokenExpired` says so (at once while the next refresh is not
//   yet due).

import {
  CredentialRejected,
  type Denial,
  StreamsDenied,
  TokenExpired,
  TokenSourceError,
} from './errors.js';

export const TOKEN_PATH = '/api/sync/token';
export const RETRYABLE: ReadonlySet<number> = new Set([429, 502, 503, 504]);
export const MAX_DELAY_MS = 30_000;

export interface Grant {
  stream: string;
  query_sets: string[];
  ops: string[];
}

/** The token endpoint's answer (see the control plane's OpenAPI document, `TokenResponse`). */
export interface TokenResponse {
  token: string;
  token_type: string;
  expires_in: number;
  expires_at: string;
  refresh_after: string;
  issuer: string;
  audience: string;
  subject: string;
  identity: string;
  org_id: string;
  kid: string;
  jti: string;
  grants: Grant[];
  denied: Denial[];
  policy_rev: number;
}

export interface SyncToken {
  readonly token: string;
  /** Epoch milliseconds. */
  readonly expiresAt: number;
  /** Epoch milliseconds, the random spread included. */
  readonly refreshAfter: number;
  readonly response: TokenResponse;
}

/** An API key (`ctl_...`), or an ID token of an identity provider the org trusts: a string, or a
 * function asked for a current one before each request. */
export type Credential =
  | { apiKey: string }
  | { idToken: string | (() => string | Promise<string>) };

export interface TokenSourceOptions {
  /** Where the control plane is, e.g. `https://control.example.com`. */
  baseUrl: string;
  credential: Credential;
  streams: readonly string[];
  querySets?: readonly string[];
  ops?: readonly string[];
  ttlSeconds?: number;
  deviceId?: string;
  /** Attempts per refresh (5). */
  maxAttempts?: number;
  /** The first retry's wait, doubled per attempt and per failed refresh (500 ms). */
  backoffMs?: number;
  /** The share of the time between `refresh_after` and expiry to spread refreshes over (0.5). */
  refreshJitter?: number;
  /** A token is not handed out this close to its expiry (5000 ms). */
  expiryMarginMs?: number;
  /** Each request's time limit (10000 ms). */
  requestTimeoutMs?: number;
  /** Refresh on a timer too, not only when `token()` is called: for long-lived connections that
   * want every new token (`subscribe`). Timers never keep the process alive. */
  autoRefresh?: boolean;
  /** The `fetch` to use (the global one by default). */
  fetch?: typeof fetch;
}

type Outcome = { token: SyncToken } | { error: unknown };

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

type Settings = Required<
  Omit<TokenSourceOptions, 'querySets' | 'ops' | 'ttlSeconds' | 'deviceId'>
> &
  Pick<TokenSourceOptions, 'querySets' | 'ops' | 'ttlSeconds' | 'deviceId'>;

export class SyncTokenSource {
  readonly #options: Settings;
  #current: SyncToken | undefined;
  #flight: Promise<Outcome> | undefined;
  #failures = 0;
  #retryAt = 0;
  #lastError: unknown = undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #listeners = new Set<(token: SyncToken) => void>();
  readonly #closing = new AbortController();

  constructor(options: TokenSourceOptions) {
    if (options.streams.length === 0) {
      throw new TypeError('streams: at least one stream is required');
    }
    this.#options = {
      maxAttempts: 5,
      backoffMs: 500,
      refreshJitter: 0.5,
      expiryMarginMs: 5_000,
      requestTimeoutMs: 10_000,
      autoRefresh: false,
      fetch: globalThis.fetch.bind(globalThis),
      ...options,
      baseUrl: options.baseUrl.replace(/\/+$/, ''),
    };
  }

  /** A valid sync token; waits only when there is none (see the module's description). */
  async token(): Promise<string> {
    return (await this.current()).token;
  }

  /** The current token with its times and the whole token response. */
  async current(): Promise<SyncToken> {
    // Everything up to the first `await` runs as one step: checking for a refresh in flight and
    // starting one cannot interleave with another caller's, so one is in flight at a time.
    const now = Date.now();
    const current = this.#current;
    if (current !== undefined && now < current.refreshAfter) {
      return current;
    }
    if (current !== undefined && this.#valid(current, now)) {
      if (this.#flight === undefined && now >= this.#retryAt) {
        this.#start();
      }
      return current;
    }
    let flight = this.#flight;
    if (flight === undefined) {
      if (this.#lastError !== undefined && now < this.#retryAt) {
        throw this.#failure(this.#lastError);
      }
      flight = this.#start();
    }
    const outcome = await flight;
    if ('token' in outcome) {
      return outcome.token;
    }
    throw this.#failure(outcome.error);
  }

  /** Call `listener` with every token this source gets from now on; returns the unsubscribe. */
  subscribe(listener: (token: SyncToken) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** Stop: requests and retry waits in flight are abandoned, timers cleared. */
  close(): void {
    this.#closing.abort();
    clearTimeout(this.#timer);
    this.#listeners.clear();
  }

  #valid(token: SyncToken, now: number): boolean {
    // A margin, so the token is not already dead when it reaches SpacetimeDB.
    return now < token.expiresAt - this.#options.expiryMarginMs;
  }

  #start(): Promise<Outcome> {
    const flight = this.#refresh();
    this.#flight = flight;
    return flight;
  }

  async #refresh(): Promise<Outcome> {
    let outcome: Outcome;
    try {
      outcome = { token: await this.#fetchWithRetries() };
    } catch (error) {
      outcome = { error };
    }
    this.#flight = undefined;
    this.#settle(outcome);
    return outcome;
  }

  #settle(outcome: Outcome): void {
    const now = Date.now();
    if ('token' in outcome) {
      this.#current = outcome.token;
      this.#failures = 0;
      this.#retryAt = 0;
      this.#lastError = undefined;
      this.#schedule(outcome.token.refreshAfter - now);
      for (const listener of [...this.#listeners]) {
        try {
          listener(outcome.token);
        } catch (error) {
          console.error('a sync token listener failed:', error);
        }
      }
      return;
    }
    this.#retryAt = now + this.#delay(this.#failures, -1);
    this.#failures += 1;
    this.#lastError = outcome.error;
    this.#schedule(this.#retryAt - now);
  }

  #schedule(inMs: number): void {
    if (!this.#options.autoRefresh || this.#closing.signal.aborted) {
      return;
    }
    clearTimeout(this.#timer);
    // The timer starts the refresh itself: it may fire a little before `Date.now()` reaches
    // the time it was set for, and `current()` would then find nothing due. The outcome is
    // kept for the next caller, and schedules the next timer.
    this.#timer = setTimeout(
      () => {
        if (this.#flight === undefined && !this.#closing.signal.aborted) this.#start();
      },
      Math.max(0, inMs),
    );
    this.#timer.unref?.();
  }

  #delay(attempt: number, hintedMs: number): number {
    if (hintedMs >= 0) {
      return Math.min(hintedMs, MAX_DELAY_MS);
    }
    const spread = 0.5 + Math.random();
    return Math.min(this.#options.backoffMs * 2 ** attempt * spread, MAX_DELAY_MS);
  }

  #failure(error: unknown): TokenSourceError {
    const current = this.#current;
    if (current !== undefined) {
      const at = new Date(current.expiresAt).toISOString();
      const known = error instanceof TokenSourceError ? error : undefined;
      return new TokenExpired(
        `the sync token expired at ${at} and refreshing it keeps failing: ${describe(error)}`,
        { status: known?.status, code: known?.code, cause: error },
      );
    }
    if (error instanceof TokenSourceError) {
      return error;
    }
    return new TokenSourceError(`no token: ${describe(error)}`, { cause: error });
  }

  async #fetchWithRetries(): Promise<SyncToken> {
    const attempts = this.#options.maxAttempts;
    let lastError: unknown;
    for (let attempt = 0; attempt < attempts; attempt += 1) {
      if (this.#closing.signal.aborted) {
        throw new TokenSourceError('the token source is closed');
      }
      let hinted = -1;
      try {
        const outcome = await this.#attempt();
        if (typeof outcome !== 'number') {
          return outcome;
        }
        hinted = outcome;
        lastError = undefined;
      } catch (error) {
        if (error instanceof TokenSourceError) {
          throw error; // an answer retrying cannot change
        }
        lastError = error;
      }
      if (attempt + 1 < attempts) {
        await this.#sleep(this.#delay(attempt, hinted));
      }
    }
    const why = lastError === undefined ? 'the control plane is busy' : describe(lastError);
    throw new TokenSourceError(`no token after ${attempts} attempts: ${why}`, {
      cause: lastError,
    });
  }

  /** One request and its answer, within `requestTimeoutMs` or until `close()`. */
  async #attempt(): Promise<SyncToken | number> {
    // A controller and a timer of our own, held until the body is read: a signal from
    // `AbortSignal.timeout` combined by `AbortSignal.any` can be collected before it fires on
    // Node 20, leaving a request to a hung server waiting forever.
    const controller = new AbortController();
    const abort = (): void => controller.abort(this.#closing.signal.reason);
    const timer = setTimeout(() => {
      controller.abort(new DOMException('the request timed out', 'TimeoutError'));
    }, this.#options.requestTimeoutMs);
    this.#closing.signal.addEventListener('abort', abort, { once: true });
    try {
      return await this.#parse(await this.#post(controller.signal));
    } finally {
      clearTimeout(timer);
      this.#closing.signal.removeEventListener('abort', abort);
    }
  }

  async #post(signal: AbortSignal): Promise<Response> {
    const credential = this.#options.credential;
    let bearer: string;
    if ('apiKey' in credential) {
      bearer = credential.apiKey;
    } else {
      const idToken = credential.idToken;
      bearer = typeof idToken === 'string' ? idToken : await idToken();
    }
    return this.#options.fetch(`${this.#options.baseUrl}${TOKEN_PATH}`, {
      method: 'POST',
      headers: {
        Authorization: `Bearer ${bearer}`,
        'Content-Type': 'application/json',
        Accept: 'application/json',
      },
      body: JSON.stringify(this.#body()),
      signal,
    });
  }

  #body(): Record<string, unknown> {
    const { streams, querySets, ops, ttlSeconds, deviceId } = this.#options;
    const body: Record<string, unknown> = { streams: [...streams] };
    if (querySets !== undefined) body.query_sets = [...querySets];
    if (ops !== undefined) body.ops = [...ops];
    if (ttlSeconds !== undefined) body.ttl_seconds = ttlSeconds;
    if (deviceId !== undefined) body.device_id = deviceId;
    return body;
  }

  /** The token, or the milliseconds to wait before retrying (-1: back off); throws when
   * retrying is futile. */
  async #parse(response: Response): Promise<SyncToken | number> {
    if (response.status === 200) {
      const body = (await response.json()) as TokenResponse;
      const expiresAt = Date.parse(body.expires_at);
      const refreshAfter = Date.parse(body.refresh_after);
      if (typeof body.token !== 'string' || Number.isNaN(expiresAt) || Number.isNaN(refreshAfter)) {
        throw new TokenSourceError('the token response is not a token response', { status: 200 });
      }
      // Spread refreshes of clients that minted together, never past the expiry.
      const jitter = Math.random() * this.#options.refreshJitter * (expiresAt - refreshAfter);
      return { token: body.token, expiresAt, refreshAfter: refreshAfter + jitter, response: body };
    }
    let problem: Record<string, unknown> = {};
    if ((response.headers.get('content-type') ?? '').includes('json')) {
      try {
        problem = (await response.json()) as Record<string, unknown>;
      } catch {
        problem = {};
      }
    } else {
      await response.body?.cancel();
    }
    const detail = typeof problem.detail === 'string' ? problem.detail : response.statusText;
    const code = typeof problem.code === 'string' ? problem.code : undefined;
    if (response.status === 401) {
      throw new CredentialRejected(detail, { status: 401, code });
    }
    if (response.status === 403) {
      const denied = Array.isArray(problem.denied) ? (problem.denied as Denial[]) : [];
      throw new StreamsDenied(detail, denied, { code });
    }
    if (RETRYABLE.has(response.status)) {
      const retryAfter = response.headers.get('retry-after') ?? '';
      return /^\d+$/.test(retryAfter) ? Number(retryAfter) * 1000 : -1;
    }
    throw new TokenSourceError(detail, { status: response.status, code });
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const signal = this.#closing.signal;
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done, { once: true });
    });
  }
}
