"""Policy as code: an org's query sets, streams, grant rules and trusted issuers as one
document, exported for version control and applied back in one transaction."""
