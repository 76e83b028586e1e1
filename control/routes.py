"""The route table: the only place a route exists.

The FastAPI app is mounted from it, `openapi/openapi.json` is generated from that app, and the
route-contract tests are parametrized over it. A retired route stays here, answering 410 with
its successor, so "retired but active" cannot be expressed.
"""

from __future__ import annotations

from control.keys import endpoints as keys
from control.keys.schemas import JWKS, KeyList, OpenIDConfiguration, RotationResult
from control.kit.routing import Access, Route, Status
from control.system import endpoints as system

TOKEN_ROUTE = "/api/sync/token"  # noqa: S105 - a path, not a secret

ANYONE = Access.anyone()
OPERATOR = Access.role("operator")

ROUTES: tuple[Route, ...] = (
    # --- system -------------------------------------------------------------------------
    Route("GET", "/healthz", "healthz", "Liveness", "system", ANYONE,
          system.healthz, response_model=system.Health),
    Route("GET", "/readyz", "readyz", "Readiness: database reachable and an active key",
          "system", ANYONE, system.readyz, response_model=system.Readiness,
          errors=("unavailable",)),
    Route("GET", "/openapi.json", "openapi", "This OpenAPI document", "system", ANYONE,
          system.openapi_document, response_model=system.OpenAPIDocument),
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
