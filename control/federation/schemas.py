from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

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


def _default_algorithms() -> list[UpstreamAlg]:
    return ["RS256", "ES256"]


class TrustedIssuerBody(RequestBody):
    issuer: IssuerUrl
    audiences: list[Audience] = Field(min_length=1, max_length=32)
    default_roles: list[RoleName] = Field(default_factory=lambda: ["member"], max_length=32)
    role_claim: ClaimName | None = None
    role_map: dict[ClaimValue, list[RoleName]] = Field(default_factory=dict, max_length=256)
    algorithms: list[UpstreamAlg] = Field(default_factory=_default_algorithms, min_length=1)


class TrustedIssuerOut(ResponseBody):
    id: str
    org_id: str
    issuer: str
    audiences: list[str]
    default_roles: list[str]
    role_claim: str | None
    role_map: dict[str, list[str]]
    algorithms: list[str]
    created_at: datetime
    updated_at: datetime
