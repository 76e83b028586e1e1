// Connecting to SpacetimeDB with sync tokens from the control plane, and connecting again each
// time the token is refreshed.
//
// The module copies a token's grants into its `sync_grant` table when a client connects, and
// those rows expire with the token: a connection made with a token stops seeing its streams
// once that token has expired. So a long-lived client reconnects with every new token, opening
// the new connection before closing the old one, so its subscriptions never go dark.
//
//   CONTROL_URL=http://127.0.0.1:8080 CONTROL_API_KEY=ctl_... \
//   SPACETIMEDB_URI=ws://127.0.0.1:3000 SPACETIMEDB_DATABASE=sync \
//   npx tsx examples/spacetimedb.ts run:01J9ZK   (or bundle it)

import { pathToFileURL } from 'node:url';

import type { DbConnectionBuilder, DbConnectionImpl } from 'spacetimedb';

import { identityOf, type SyncToken, SyncTokenSource } from '../src/index.js';
import { DbConnection } from './module_bindings/index.js';

export interface Link<C> {
  /** The connection made with the newest token, once it is connected. */
  readonly connection: C | undefined;
  close(): void;
}

/**
 * Keep a SpacetimeDB connection on the newest sync token: connect with the source's token, and
 * on every refreshed token connect again and then disconnect the previous connection.
 * `builder` returns a fresh builder with the URI and database set (`DbConnection.builder()...`);
 * `onConnected` runs for each new connection (subscribe there).
 */
export function connectWithSyncTokens<C extends DbConnectionImpl<any>>(
  source: SyncTokenSource,
  builder: () => DbConnectionBuilder<C>,
  onConnected: (connection: C, token: SyncToken | string) => void,
): Link<C> {
  let current: C | undefined;
  let lastToken: string | undefined;
  let closed = false;

  const open = (token: SyncToken | string): void => {
    const jwt = typeof token === 'string' ? token : token.token;
    if (closed || jwt === lastToken) {
      return;
    }
    lastToken = jwt;
    builder()
      .withToken(jwt)
      .onConnect((connection) => {
        if (closed || jwt !== lastToken) {
          connection.disconnect(); // a newer token is connecting, or we are done
          return;
        }
        const previous = current;
        current = connection;
        onConnected(connection, token);
        previous?.disconnect();
      })
      .onConnectError((_ctx, error) => {
        console.error('connecting to SpacetimeDB failed:', error.message);
      })
      .build();
  };

  const unsubscribe = source.subscribe(open);
  source.current().then(open, (error: unknown) => {
    console.error('no sync token:', error instanceof Error ? error.message : error);
  });
  return {
    get connection() {
      return current;
    },
    close() {
      closed = true;
      unsubscribe();
      current?.disconnect();
      current = undefined;
    },
  };
}

async function main(streams: string[]): Promise<void> {
  const source = new SyncTokenSource({
    baseUrl: process.env.CONTROL_URL ?? 'http://127.0.0.1:8080',
    credential: { apiKey: process.env.CONTROL_API_KEY ?? '' },
    streams: streams.length > 0 ? streams : ['run:01J9ZK'],
    querySets: ['run_events'],
    autoRefresh: true, // refresh on a timer, so every new token reaches `subscribe`
  });
  const first = await source.current();
  console.log('SpacetimeDB identity:', identityOf(first.response.issuer, first.response.subject));

  const link = connectWithSyncTokens(
    source,
    () =>
      DbConnection.builder()
        .withUri(process.env.SPACETIMEDB_URI ?? 'ws://127.0.0.1:3000')
        .withDatabaseName(process.env.SPACETIMEDB_DATABASE ?? 'sync'),
    (connection, token) => {
      const expires = typeof token === 'string' ? '' : new Date(token.expiresAt).toISOString();
      console.log('connected as', connection.identity?.toHexString(), 'until', expires);
      connection
        .subscriptionBuilder()
        .onApplied(() => console.log('subscribed to run_event_view'))
        .subscribe('SELECT * FROM run_event_view');
    },
  );
  const stop = (): void => {
    link.close();
    source.close();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
