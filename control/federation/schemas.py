from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints

from control.kit.schemas import RequestBody, ResponseBody, RoleName

IssuerUrl = Annotated[
    str, StringConstraints(pattern=r"^https?://[^\s/?#]+[^\s?#]*$", max_length=500)
]
Audience = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
]
ClaimName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,100}$")]
ClaimValue = Annotated[str, StringConstraints(min_length=1, max_length=255)]
# Asymmetric algorithms only: an HS* "key" would be the IdP's public JWKS, i.e. no secret.
UpstreamAlg = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]

ISSUER_EXAMPLE: dict[str, Any] = {
    "issuer": "https://login.example.com",
    "audiences": ["control"],
    "default_roles": ["member"],
    "role_claim": "groups",
    "role_map": {"support-team": ["support"]},
    "algorithms": ["ES256", "RS256"],
}
ISSUER_DESCRIPTION = (
    "The identity provider's issuer URL, exactly as its ID tokens' `iss` claim and its "
    "discovery document (`<issuer>/.well-known/openid-configuration`) spell it"
)
AUDIENCES_DESCRIPTION = (
    "The `aud` values an ID token must carry one of: the client ids your applications have at "
    "the provider. An issuer and audience may be trusted by one org only"
)
DEFAULT_ROLES_DESCRIPTION = (
    "The roles of the `user` principal a subject's first ID token creates (later changes to "
    "this list do not touch existing principals). Conferring `admin` or `operator` needs the "
    "caller to hold it"
)
ROLE_CLAIM_DESCRIPTION = (
    "The ID token claim whose values `role_map` maps to roles (a string or a list of "
    "strings), e.g. `groups`; null to map none"
)
ROLE_MAP_DESCRIPTION = (
    "Claim value to roles. A subject's first ID token creates its principal with "
    "`default_roles` plus the roles of the `role_claim` values it carries; each later ID token "
    "adds the roles of the values it carries to the principal's own, for that request only"
)
ALGORITHMS_DESCRIPTION = "The signature algorithms accepted from this provider (asymmetric only)"


def _default_algorithms() -> list[UpstreamAlg]:
    return ["RS256", "ES256"]


class TrustedIssuerBody(RequestBody):
    """An OIDC identity provider whose ID tokens are credentials at the token endpoint."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                ISSUER_EXAMPLE,
                {"issuer": "https://idp.example.org/realms/acme", "audiences": ["control-web"]},
            ]
        }
    )

    issuer: IssuerUrl = Field(description=ISSUER_DESCRIPTION)
    audiences: list[Audience] = Field(
        min_length=1, max_length=32, description=AUDIENCES_DESCRIPTION
    )
    default_roles: list[RoleName] = Field(
        default_factory=lambda: ["member"],
        max_length=32,
        description=DEFAULT_ROLES_DESCRIPTION + ". Omitted: `member`",
    )
    role_claim: ClaimName | None = Field(default=None, description=ROLE_CLAIM_DESCRIPTION)
    role_map: dict[ClaimValue, list[RoleName]] = Field(
        default_factory=dict, max_length=256, description=ROLE_MAP_DESCRIPTION
    )
    algorithms: list[UpstreamAlg] = Field(
        default_factory=_default_algorithms,
        min_length=1,
        description=ALGORITHMS_DESCRIPTION + ". Omitted: `RS256` and `ES256`",
    )


class TrustedIssuerOut(ResponseBody):
    """A trusted issuer of the org."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **ISSUER_EXAMPLE,
                    "id": "tis_01JV6M6F3G8J2K5M9N4P7Q1R6S",
                    "org_id": "org_01JV6M2Q8X4T0R7C5N3B9D1F6H",
                    "created_at": "2026-05-04T09:12:41.538204Z",
                    "updated_at": "2026-05-04T09:12:41.538204Z",
                }
            ]
        }
    )

    id: str = Field(description="The trusted issuer's id (`tis_…`)")
    org_id: str = Field(description="The org whose principals its ID tokens sign in as")
    issuer: str = Field(description=ISSUER_DESCRIPTION)
    audiences: list[str] = Field(description=AUDIENCES_DESCRIPTION)
    default_roles: list[str] = Field(description=DEFAULT_ROLES_DESCRIPTION)
    role_claim: str | None = Field(description=ROLE_CLAIM_DESCRIPTION)
    role_map: dict[str, list[str]] = Field(description=ROLE_MAP_DESCRIPTION)
    algorithms: list[str] = Field(description=ALGORITHMS_DESCRIPTION)
    created_at: datetime = Field(description="When it was created (RFC 3339, UTC)")
    updated_at: datetime = Field(description="When it last changed (RFC 3339, UTC)")
