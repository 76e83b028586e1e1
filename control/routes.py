"""The route table: the only place a route exists.

The FastAPI app is mounted from it, `openapi/openapi.json` is generated from that app, and the
route-contract tests are parametrized over it. A retired route stays here, answering 410 with
its successor, so "retired but active" cannot be expressed.
"""

from __future__ import annotations

from control.api import (
    audit,
    docs,
    federation,
    identity,
    keys,
    metrics,
    oauth,
    policy,
    policyfile,
    revocations,
    system,
    tokens,
)
from control.audit.schemas import AuditEventOut
from control.federation.schemas import TrustedIssuerBody, TrustedIssuerOut
from control.identity.schemas import (
    CredentialCreate,
    CredentialIssued,
    CredentialOut,
    PrincipalCreate,
    PrincipalOut,
    PrincipalUpdate,
)
from control.keys.schemas import JWKS, KeyList, OpenIDConfiguration, RotationResult
from control.kit.pagination import Page
from control.kit.routing import Access, Route, Status
from control.policy.schemas import (
    ExplainRequest,
    ExplainResponse,
    GrantRuleCreate,
    GrantRuleOut,
    QuerySetCreate,
    QuerySetOut,
    QuerySetUpdate,
    StreamCreate,
    StreamOut,
)
from control.policyfile.schemas import PolicyApplied, PolicyApply, PolicyDocument
from control.revocations.schemas import RevocationCreate, RevocationFeed, RevocationOut
from control.tokens.schemas import (
    IntrospectRequest,
    IntrospectResponse,
    TokenRequest,
    TokenResponse,
)

TOKEN_ROUTE = "/api/sync/token"  # noqa: S105 - a path, not a secret

ANYONE = Access.anyone()
OPERATOR = Access.role("operator")
ADMIN = Access.role("admin")
MEMBER_OR_ID_TOKEN = Access.role("member", accepts=("api_key", "id_token"))
SERVICE = Access.role("service")
SERVICE_OR_ADMIN = Access.role("service", "admin")

ROUTES: tuple[Route, ...] = (
    # --- system -------------------------------------------------------------------------
    Route("GET", "/healthz", "healthz", "Liveness", "system", ANYONE,
          system.healthz, response_model=system.Health),
    Route("GET", "/readyz", "readyz", "Readiness: database reachable, keys fresh, schema current",
          "system", ANYONE, system.readyz, response_model=system.Readiness,
          errors=("unavailable",)),
    Route("GET", "/openapi.json", "openapi", "This OpenAPI document", "system", ANYONE,
          system.openapi_document, response_model=system.OpenAPIDocument),
    # For Prometheus, not clients: out of the spec; the endpoint checks its own access
    # (CONTROL_METRICS_TOKEN, or loopback in dev).
    Route("GET", "/metrics", "metrics", "Prometheus metrics", "system", ANYONE,
          metrics.serve_metrics, status=Status.OPERATIONS),
    # Pages for people: the interactive API docs, with their assets from the package.
    Route("GET", "/docs", "api_docs", "Interactive API docs", "system", ANYONE,
          docs.api_docs, status=Status.PAGE),
    Route("GET", "/docs/assets/{asset}", "api_docs_asset", "An asset of the API docs", "system",
          ANYONE, docs.api_docs_asset, status=Status.PAGE),
    # --- keys, discovery ----------------------------------------------------------------
    Route("GET", "/.well-known/openid-configuration", "openid_configuration",
          "OIDC discovery document", "discovery", ANYONE, keys.openid_configuration,
          response_model=OpenIDConfiguration),
    Route("GET", "/.well-known/jwks.json", "jwks", "Published public signing keys",
          "discovery", ANYONE, keys.jwks, response_model=JWKS),
    Route("GET", "/api/admin/keys", "list_keys", "List signing keys and their states",
          "keys", OPERATOR, keys.list_keys, response_model=KeyList),
    Route("POST", "/api/admin/keys/rotate", "rotate_keys",
          "Promote the pending key, retire the active one, publish a new pending key",
          "keys", OPERATOR, keys.rotate_keys, response_model=RotationResult,
          errors=("conflict",)),
    # --- tokens -------------------------------------------------------------------------
    Route("POST", TOKEN_ROUTE, "mint_sync_token",
          "Mint a sync token carrying stream / query-set grants (the canonical token route)",
          "tokens", MEMBER_OR_ID_TOKEN, tokens.mint_token, request_model=TokenRequest,
          response_model=TokenResponse,
          errors=("stream_not_granted", "too_many_streams", "rate_limited", "issuer_unavailable",
                  "signing_unavailable"),
          # The same route speaks OAuth 2.0 to form bodies (docs/oauth.md).
          media_endpoints={oauth.FORM_MEDIA_TYPE: oauth.token_form},
          openapi_extra=oauth.OPENAPI_EXTRA),
    Route("POST", "/api/sync/introspect", "introspect_sync_token",
          "Is this sync token active, and does it cover a stream / query set / op?",
          "tokens", SERVICE, tokens.introspect, request_model=IntrospectRequest,
          response_model=IntrospectResponse),
    Route("GET", "/api/sync/revocations", "revocation_feed",
          "Revocations after a cursor, in order, for runtime caches", "tokens", SERVICE,
          revocations.revocation_feed, response_model=RevocationFeed,
          errors=("invalid_request",)),
    Route("POST", "/api/streams", "register_stream", "Register a stream (owner, org)",
          "streams", SERVICE_OR_ADMIN, policy.register_stream, request_model=StreamCreate,
          response_model=StreamOut, status_code=201, errors=("conflict",)),
    # --- admin: principals and credentials -----------------------------------------------
    Route("POST", "/api/admin/principals", "create_principal", "Create a principal",
          "principals", ADMIN, identity.create_principal, request_model=PrincipalCreate,
          response_model=PrincipalOut, status_code=201),
    Route("GET", "/api/admin/principals", "list_principals", "List principals", "principals",
          ADMIN, identity.list_principals, response_model=Page[PrincipalOut],
          errors=("invalid_request",)),
    Route("GET", "/api/admin/principals/{principal_id}", "get_principal", "Read a principal",
          "principals", ADMIN, identity.get_principal, response_model=PrincipalOut),
    Route("PATCH", "/api/admin/principals/{principal_id}", "update_principal",
          "Change a principal's roles or disable it", "principals", ADMIN,
          identity.update_principal, request_model=PrincipalUpdate, response_model=PrincipalOut),
    Route("DELETE", "/api/admin/principals/{principal_id}", "delete_principal",
          "Delete a principal", "principals", ADMIN, identity.delete_principal,
          status_code=204, errors=("conflict",)),
    Route("POST", "/api/admin/principals/{principal_id}/credentials", "create_credential",
          "Issue an API key (shown once)", "principals", ADMIN, identity.create_credential,
          request_model=CredentialCreate, response_model=CredentialIssued, status_code=201),
    Route("GET", "/api/admin/principals/{principal_id}/credentials", "list_credentials",
          "List a principal's credentials (no secrets)", "principals", ADMIN,
          identity.list_credentials, response_model=Page[CredentialOut],
          errors=("invalid_request",)),
    Route("DELETE", "/api/admin/credentials/{credential_id}", "revoke_credential",
          "Revoke a credential", "principals", ADMIN, identity.revoke_credential,
          status_code=204),
    # --- admin: streams, query sets, grant rules -----------------------------------------
    Route("GET", "/api/admin/streams", "list_streams", "List streams", "streams", ADMIN,
          policy.list_streams, response_model=Page[StreamOut], errors=("invalid_request",)),
    Route("GET", "/api/admin/streams/{stream_id}", "get_stream", "Read a stream", "streams",
          ADMIN, policy.get_stream, response_model=StreamOut),
    Route("DELETE", "/api/admin/streams/{stream_id}", "delete_stream", "Delete a stream",
          "streams", ADMIN, policy.delete_stream, status_code=204),
    Route("POST", "/api/admin/query-sets", "create_query_set", "Define a query set",
          "policy", ADMIN, policy.create_query_set, request_model=QuerySetCreate,
          response_model=QuerySetOut, status_code=201, errors=("conflict",)),
    Route("GET", "/api/admin/query-sets", "list_query_sets", "List query sets", "policy",
          ADMIN, policy.list_query_sets, response_model=Page[QuerySetOut],
          errors=("invalid_request",)),
    Route("GET", "/api/admin/query-sets/{name}", "get_query_set", "Read a query set",
          "policy", ADMIN, policy.get_query_set, response_model=QuerySetOut),
    Route("PUT", "/api/admin/query-sets/{name}", "update_query_set",
          "Replace a query set's queries (bumps its version)", "policy", ADMIN,
          policy.update_query_set, request_model=QuerySetUpdate, response_model=QuerySetOut,
          errors=("conflict",)),
    Route("DELETE", "/api/admin/query-sets/{name}", "delete_query_set", "Delete a query set",
          "policy", ADMIN, policy.delete_query_set, status_code=204, errors=("conflict",)),
    Route("POST", "/api/admin/grant-rules", "create_grant_rule", "Create a grant rule",
          "policy", ADMIN, policy.create_rule, request_model=GrantRuleCreate,
          response_model=GrantRuleOut, status_code=201),
    Route("GET", "/api/admin/grant-rules", "list_grant_rules", "List grant rules", "policy",
          ADMIN, policy.list_rules, response_model=Page[GrantRuleOut],
          errors=("invalid_request",)),
    Route("GET", "/api/admin/grant-rules/{rule_id}", "get_grant_rule", "Read a grant rule",
          "policy", ADMIN, policy.get_rule, response_model=GrantRuleOut),
    Route("PUT", "/api/admin/grant-rules/{rule_id}", "update_grant_rule",
          "Replace a grant rule", "policy", ADMIN, policy.update_rule,
          request_model=GrantRuleCreate, response_model=GrantRuleOut),
    Route("DELETE", "/api/admin/grant-rules/{rule_id}", "delete_grant_rule",
          "Delete a grant rule", "policy", ADMIN, policy.delete_rule, status_code=204),
    Route("POST", "/api/admin/explain", "explain",
          "Dry-run the policy engine for a principal: the decision a mint would make",
          "policy", ADMIN, policy.explain, request_model=ExplainRequest,
          response_model=ExplainResponse, errors=("not_found", "too_many_streams")),
    Route("GET", "/api/admin/policy", "export_policy",
          "The org's query sets, streams, grant rules and trusted issuers as one document",
          "policy", ADMIN, policyfile.export_policy, response_model=PolicyDocument),
    Route("POST", "/api/admin/policy:apply", "apply_policy",
          "Make the org's policy match a document in one transaction, or report what would change",
          "policy", ADMIN, policyfile.apply_policy, request_model=PolicyApply,
          response_model=PolicyApplied, errors=("conflict",)),
    Route("POST", "/api/admin/trusted-issuers", "create_trusted_issuer",
          "Trust an upstream OIDC issuer's ID tokens at the token endpoint", "federation",
          ADMIN, federation.create_trusted_issuer, request_model=TrustedIssuerBody,
          response_model=TrustedIssuerOut, status_code=201, errors=("conflict",)),
    Route("GET", "/api/admin/trusted-issuers", "list_trusted_issuers",
          "List trusted issuers", "federation", ADMIN, federation.list_trusted_issuers,
          response_model=Page[TrustedIssuerOut], errors=("invalid_request",)),
    Route("GET", "/api/admin/trusted-issuers/{issuer_id}", "get_trusted_issuer",
          "Read a trusted issuer", "federation", ADMIN, federation.get_trusted_issuer,
          response_model=TrustedIssuerOut),
    Route("PUT", "/api/admin/trusted-issuers/{issuer_id}", "update_trusted_issuer",
          "Replace a trusted issuer", "federation", ADMIN, federation.update_trusted_issuer,
          request_model=TrustedIssuerBody, response_model=TrustedIssuerOut,
          errors=("conflict",)),
    Route("DELETE", "/api/admin/trusted-issuers/{issuer_id}", "delete_trusted_issuer",
          "Stop trusting an issuer", "federation", ADMIN, federation.delete_trusted_issuer,
          status_code=204),
    Route("POST", "/api/admin/revocations", "create_revocation",
          "Revoke a token (jti), every earlier token of a subject, or a credential",
          "tokens", ADMIN, revocations.create_revocation, request_model=RevocationCreate,
          response_model=RevocationOut, status_code=201),
    Route("GET", "/api/admin/audit", "list_audit", "Page through the audit log", "audit",
          ADMIN, audit.list_audit, response_model=Page[AuditEventOut],
          errors=("invalid_request",)),
    # --- retired ------------------------------------------------------------------------
    Route("POST", "/api/spacetime/token", "retired_spacetime_token", "Retired token route",
          "retired", ANYONE, status=Status.RETIRED, successor=TOKEN_ROUTE),
    Route("POST", "/api/v1/sync/token", "retired_v1_sync_token", "Retired token route",
          "retired", ANYONE, status=Status.RETIRED, successor=TOKEN_ROUTE),
    Route("POST", "/api/v1/spacetime/token", "retired_v1_spacetime_token",
          "Retired token route", "retired", ANYONE, status=Status.RETIRED,
          successor=TOKEN_ROUTE),
    Route("GET", "/sync/socket/websocket", "retired_sync_socket", "Retired sync socket",
          "retired", ANYONE, status=Status.RETIRED, successor=TOKEN_ROUTE),
)  # fmt: skip
