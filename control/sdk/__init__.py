"""The SDK: what runtime services and clients install without the server.

- `control.sdk.grants`: the grant grammar (stream ids, query-set refs, ops, the `grants` claim).
- `control.sdk.runtime`: `GrantVerifier`, local verification of sync tokens and grant checks.
- `control.sdk.client`: `SyncTokenSource`, a cached, self-refreshing sync token for clients.

It imports nothing of the server; the server imports it. `control.runtime` and `control.client`
are its public import paths.
"""
