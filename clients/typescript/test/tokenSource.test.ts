// SyncTokenSource against a real control plane (`control serve` on a loopback port, see
// controlPlane.ts) that hangs, goes down and comes back: the scenarios the Python SDK's tests
// hold its own `SyncTokenSource` to.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  CredentialRejected,
  StreamsDenied,
  type SyncToken,
  SyncTokenSource,
  TOKEN_PATH,
  TokenExpired,
  type TokenSourceOptions,
  identityOf,
} from '../src/index.js';
import { ControlPlane, orgWithMember } from './controlPlane.js';
import { IdentityProvider } from './idp.js';

const STREAM = 'run:01J9ZK';
// What "does not wait" means here: a call that waited for the control plane would take at least
// the request timeout (2 s). Half of it leaves room for a loaded machine's scheduling, which can
// stretch fifty calls that never touch the network to tens of milliseconds.
const NO_WAIT_MS = 1000;

/** The real `fetch`, counting the token requests it sends. */
class CountingFetch {
  sent = 0;
  readonly fetch: typeof fetch = (input, init) => {
    if (String(input).endsWith(TOKEN_PATH)) this.sent += 1;
    return fetch(input, init);
  };
}

async function waitFor(
  condition: () => boolean | Promise<boolean>,
  ms: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    assert.ok(Date.now() < deadline, what);
    await sleep(50);
  }
}

async function newTokenArrives(source: SyncTokenSource, old: SyncToken): Promise<boolean> {
  try {
    return (await source.token()) !== old.token;
  } catch (error) {
    if (error instanceof TokenExpired) return false;
    throw error;
  }
}

describe('SyncTokenSource against a real control plane', () => {
  let plane: ControlPlane;
  let org: Awaited<ReturnType<typeof orgWithMember>>;
  const sources: SyncTokenSource[] = [];

  const sourceFor = (counter: CountingFetch, options: Partial<TokenSourceOptions> = {}) => {
    const source = new SyncTokenSource({
      baseUrl: plane.baseUrl,
      credential: { apiKey: org.memberKey },
      streams: [STREAM],
      // Short-lived, refreshed at 6 s, handed out until 0.5 s before expiry: an outage of a
      // few seconds covers the refresh, the expiry and the recovery.
      ttlSeconds: 8,
      refreshJitter: 0,
      expiryMarginMs: 500,
      maxAttempts: 2,
      backoffMs: 1_000,
      requestTimeoutMs: 2_000,
      fetch: counter.fetch,
      ...options,
    });
    sources.push(source);
    return source;
  };

  before(async () => {
    plane = await ControlPlane.start();
    org = await orgWithMember(plane, 'acme', STREAM);
  });

  afterEach(async () => {
    for (const source of sources.splice(0)) source.close();
    await plane.ensureUp();
  });

  after(async () => {
    await plane.close();
  });

  it('hands out one cached token, whose identity is what SpacetimeDB will compute', async () => {
    const counter = new CountingFetch();
    const source = sourceFor(counter);
    const [first, ...others] = await Promise.all(Array.from({ length: 20 }, () => source.current()));
    assert.ok(first !== undefined);
    assert.ok(others.every((token) => token === first), 'concurrent first calls: one token');
    assert.equal(counter.sent, 1, 'concurrent first calls: one request');
    assert.equal(await source.token(), first.token);
    assert.equal(counter.sent, 1);
    assert.equal(first.response.issuer, plane.baseUrl);
    assert.equal(identityOf(first.response.issuer, first.response.subject), first.response.identity);
    assert.equal(first.response.subject, org.memberId);
    assert.ok(first.refreshAfter < first.expiresAt);
  });

  it('says which credential or stream was refused, without retrying', async () => {
    const counter = new CountingFetch();
    const wrong = sourceFor(counter, { credential: { apiKey: 'ctl_not-a-key' } });
    await assert.rejects(wrong.token(), CredentialRejected);
    assert.equal(counter.sent, 1);
    const denied = sourceFor(counter, { streams: ['run:other'] });
    await assert.rejects(denied.token(), (error: unknown) => {
      assert.ok(error instanceof StreamsDenied);
      assert.equal(error.status, 403);
      assert.deepEqual(error.denied, [{ stream: 'run:other', reason: 'stream_not_found' }]);
      return true;
    });
    assert.equal(counter.sent, 2);
  });

  it('mints with an ID token of an identity provider the org trusts', async () => {
    const idp = await IdentityProvider.start();
    try {
      await plane.api(org.adminKey, 'POST', '/api/admin/trusted-issuers', {
        issuer: idp.issuer,
        audiences: ['desktop-app'],
      });
      let asked = 0;
      const source = sourceFor(new CountingFetch(), {
        credential: {
          idToken: () => {
            asked += 1;
            return idp.idToken('user-7', 'desktop-app', { email: 'ada@example.com' });
          },
        },
      });
      const token = await source.current();
      assert.equal(asked, 1);
      const principal = await plane.api(
        org.adminKey,
        'GET',
        `/api/admin/principals/${token.response.subject}`,
      );
      assert.equal(principal.name, 'ada@example.com');
      assert.equal(token.response.org_id, org.orgId);
      assert.equal(identityOf(plane.baseUrl, token.response.subject), token.response.identity);
    } finally {
      await idp.close();
    }
  });

  it('serves the valid token through a hung control plane, then says TokenExpired', async () => {
    const counter = new CountingFetch();
    const source = sourceFor(counter);
    const first = await source.current();
    plane.hang();
    await sleep(Math.max(0, first.refreshAfter - Date.now()) + 50);
    assert.ok(Date.now() < first.expiresAt - 500, 'the refresh window closed already');

    // Due for refresh, the server hung: every caller gets the current token without waiting,
    // and one refresh goes out.
    const started = performance.now();
    const handed = await Promise.all(Array.from({ length: 50 }, () => source.token()));
    const elapsed = performance.now() - started;
    assert.ok(elapsed < NO_WAIT_MS, `token() waited ${elapsed.toFixed(1)} ms`);
    assert.deepEqual(new Set(handed), new Set([first.token]));
    await sleep(100);
    assert.equal(counter.sent, 2, 'not one refresh in flight');

    // Expired, refresh failing: the clear error; at once while the next refresh is not due.
    await sleep(Math.max(0, first.expiresAt - 500 - Date.now()));
    await assert.rejects(source.token(), (error: unknown) => {
      assert.ok(error instanceof TokenExpired);
      assert.ok(error.cause !== undefined);
      return true;
    });
    const sent = counter.sent;
    const again = performance.now();
    await assert.rejects(source.token(), TokenExpired);
    assert.ok(performance.now() - again < NO_WAIT_MS);
    assert.equal(counter.sent, sent);

    plane.resume();
    await waitFor(() => newTokenArrives(source, first), 15_000, 'no token after the plane came back');
  });

  it('refreshes ahead on its own and recovers after the control plane was down', async () => {
    const counter = new CountingFetch();
    const source = sourceFor(counter, { autoRefresh: true, backoffMs: 200 });
    const received: SyncToken[] = [];
    source.subscribe((token) => received.push(token));
    const first = await source.current();
    assert.deepEqual(received, [first]);

    // Refreshed ahead, with no caller asking: the timer at refresh_after.
    await waitFor(() => received.length === 2, 10_000, 'no refresh ahead of expiry');
    const second = received[1];
    assert.ok(second !== undefined && second.token !== first.token);
    assert.ok(Date.now() < first.expiresAt, 'refreshed only after the old token expired');

    // Down across the next refresh and expiry: the valid token meanwhile, then TokenExpired.
    await plane.down();
    await sleep(Math.max(0, second.refreshAfter - Date.now()) + 50);
    const started = performance.now();
    assert.equal(await source.token(), second.token);
    assert.ok(performance.now() - started < NO_WAIT_MS);
    await sleep(Math.max(0, second.expiresAt - 500 - Date.now()) + 50);
    await assert.rejects(source.token(), TokenExpired);
    assert.ok(counter.sent > 2, 'no refresh was tried while down');

    // Back: the timer's retries get a new token to the subscriber with no caller asking.
    await plane.up();
    await waitFor(() => received.length === 3, 30_000, 'no new token after the plane came back');
    assert.equal(await source.token(), received[2]?.token);
  });
});
