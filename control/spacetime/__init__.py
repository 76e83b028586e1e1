"""SpacetimeDB: the module's query-set catalog, the revocation outbox and its deliverer."""
