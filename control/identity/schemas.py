from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from control.kit.schemas import Name, RequestBody, ResponseBody, RoleName

# The examples' org and principals (as in the other domains' examples).
_ORG_ID = "org_01JV6M2Q8X4T0R7C5N3B9D1F6H"
_ADA_ID = "prn_01JV6M3A7R2K9W4P1X8Z5C3D0E"
_CREDENTIAL_ID = "cred_01JV6M4C2D9F5H1K7M3N8P4Q6R"

ROLES_DESCRIPTION = (
    "Roles decide which routes a principal may call and which grant rules name it: `member` "
    "(mint tokens), `service` (introspection, the revocation feed, registering streams), "
    "`admin` (the org's admin API), `operator` (signing keys; honoured in the operator org "
    "only), or the org's own names (`support`), which open no route but rules can name"
)


class PrincipalCreate(RequestBody):
    """A principal to create in the caller's org."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "user", "name": "ada"},
                {"kind": "service", "name": "runtime"},
                {"kind": "user", "name": "grace", "roles": ["member", "support"]},
            ]
        }
    )

    kind: Literal["user", "device", "service"] = Field(
        description="What calls: a `user` (a person), a `device` (one machine) or a `service` "
        "(a backend, such as a runtime that registers streams and checks tokens)"
    )
    name: Name = Field(description="A name for people to recognise it by; need not be unique")
    roles: list[RoleName] | None = Field(
        default=None,
        max_length=32,
        description=ROLES_DESCRIPTION + ". Omitted: `member` for users and devices, `service` "
        "for services. Conferring `admin` or `operator` needs the caller to hold it",
    )


class PrincipalUpdate(RequestBody):
    """What to change about a principal; a field left out stays as it is."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"roles": ["member", "support"]}, {"disabled": True}]}
    )

    roles: list[RoleName] | None = Field(
        default=None,
        max_length=32,
        description="The principal's roles, replacing the current ones. Removing one revokes "
        "the principal's tokens",
    )
    # A JSON boolean: `"false"` is refused, not guessed at.
    disabled: StrictBool | None = Field(
        default=None,
        description="true: its credentials stop authenticating and its tokens are revoked; "
        "false: it may authenticate again",
    )


class PrincipalOut(ResponseBody):
    """A principal: who calls."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _ADA_ID,
                    "kind": "user",
                    "name": "ada",
                    "org_id": _ORG_ID,
                    "roles": ["member"],
                    "disabled": False,
                }
            ]
        }
    )

    id: str = Field(description="The principal's id (`prn_…`): the `sub` of its tokens")
    kind: str = Field(description="`user`, `device` or `service`")
    name: str = Field(description="Its name, for people")
    org_id: str = Field(description="The org it belongs to")
    roles: list[str] = Field(description=ROLES_DESCRIPTION)
    disabled: bool = Field(
        description="Whether it is disabled: a disabled principal cannot authenticate"
    )


class CredentialCreate(RequestBody):
    """An API key to issue; both fields are optional."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "ada's laptop", "expires_at": "2030-01-01T00:00:00Z"}, {}]
        }
    )

    name: Name | None = Field(
        default=None, description="A name to tell the principal's keys apart, e.g. where it is used"
    )
    expires_at: datetime | None = Field(
        default=None,
        description="When the key stops working: RFC 3339 with a timezone, in the future. "
        "Omitted: it works until revoked",
    )


class CredentialIssued(BaseModel):
    """A new API key. This is the only time the key is shown."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _CREDENTIAL_ID,
                    "key": "ctl_a5mjfdbla27LRe_T2ev9hF5q38nicIVDExPAT7B7SrM",
                    "prefix": "ctl_a5mjfdbl",
                    "created_at": "2026-05-04T09:12:41.538204Z",
                }
            ]
        }
    )

    id: str = Field(
        description="The credential's id (`cred_…`): revoke it by this id, and use it as the "
        "OAuth client id with the key as the client secret"
    )
    key: str = Field(description="The API key. Shown only in this response; store it now.")
    prefix: str = Field(
        description="The key's first characters, which listings show to tell keys apart"
    )
    created_at: datetime = Field(description="When it was issued (RFC 3339, UTC)")


class CredentialOut(ResponseBody):
    """An API key's record; the key itself is never shown again."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _CREDENTIAL_ID,
                    "principal_id": _ADA_ID,
                    "name": "ada's laptop",
                    "prefix": "ctl_a5mjfdbl",
                    "created_at": "2026-05-04T09:12:41.538204Z",
                    "expires_at": "2030-01-01T00:00:00Z",
                    "revoked_at": None,
                    "last_used_at": "2026-05-04T09:30:00.104518Z",
                }
            ]
        }
    )

    id: str = Field(description="The credential's id (`cred_…`)")
    principal_id: str = Field(description="The principal it authenticates")
    name: str | None = Field(description="Its name, if it was given one")
    prefix: str = Field(description="The key's first characters, to tell keys apart")
    created_at: datetime = Field(description="When it was issued (RFC 3339, UTC)")
    expires_at: datetime | None = Field(description="When it stops working, or null for never")
    revoked_at: datetime | None = Field(description="When it was revoked, or null while it is not")
    last_used_at: datetime | None = Field(
        description="When it last authenticated, to within a minute, or null if never"
    )


class Bootstrap(BaseModel):
    org_id: str
    principal_id: str
    api_key: str
