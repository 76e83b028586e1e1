"""RFC 9457 problem details: one error base class, one renderer, one set of handlers.

Every error the service answers with, from validation to a database outage, leaves through
`problem_response`, so clients see one shape: `type, title, status, detail, code` plus extras.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("control.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://control.dev/problems/"

# code -> (status, title). The contract's full list of error codes (DESIGN.md, "HTTP surface").
ERROR_CODES: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "stream_not_granted": (403, "Stream not granted"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "conflict": (409, "Conflict"),
    "route_retired": (410, "Route retired"),
    "cursor_expired": (410, "Cursor expired"),
    "payload_too_large": (413, "Payload too large"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "invalid_request": (422, "Invalid request"),
    "too_many_streams": (422, "Too many streams"),
    "rate_limited": (429, "Rate limited"),
    "unavailable": (503, "Service unavailable"),
    "issuer_unavailable": (503, "Issuer unavailable"),
    "signing_unavailable": (503, "Signing unavailable"),
}


class Problem(BaseModel):
    """An RFC 9457 problem document as this service writes it."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str


class ProblemError(Exception):
    """Base of every error a handler raises on purpose; rendered as problem+json."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extras: Any,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.status, self.title = ERROR_CODES[code]
        self.detail = detail
        self.headers = headers or {}
        self.extras = extras


class Unauthorized(ProblemError):
    """401 with a `WWW-Authenticate: Bearer` challenge; `reason` is a short, non-secret code
    (also in the body) saying why a presented credential was refused."""

    def __init__(self, detail: str = "a valid credential is required", *, reason: str = "") -> None:
        challenge = 'Bearer realm="control"'
        extras = {}
        if reason:
            challenge += f', error="invalid_token", error_description="{reason}"'
            extras["reason"] = reason
        super().__init__("unauthorized", detail, headers={"WWW-Authenticate": challenge}, **extras)


class Forbidden(ProblemError):
    def __init__(self, detail: str = "this credential may not do that") -> None:
        super().__init__("forbidden", detail)


class NotFound(ProblemError):
    def __init__(self, what: str) -> None:
        super().__init__("not_found", f"{what} not found")


class Conflict(ProblemError):
    def __init__(self, detail: str) -> None:
        super().__init__("conflict", detail)


class InvalidRequest(ProblemError):
    def __init__(self, detail: str, *, errors: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__("invalid_request", detail, errors=list(errors))


class Unavailable(ProblemError):
    def __init__(self, detail: str = "the service is temporarily unavailable", retry: int = 1):
        super().__init__(
            "unavailable", detail, headers={"Retry-After": str(retry)}, retry_after=retry
        )


def problem_response(
    code: str, detail: str, headers: dict[str, str] | None = None, **extras: Any
) -> JSONResponse:
    status, title = ERROR_CODES[code]
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extras,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    fields = []
    for error in exc.errors():
        # Echo no input back: it may be huge, binary, or a secret pasted into the wrong field.
        fields.append(
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "message": str(error.get("msg", "invalid")),
                "type": str(error.get("type", "invalid")),
            }
        )
    return fields


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.code, exc.detail, exc.headers, **exc.extras)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        fields = sorted({".".join(e["loc"][1:] or e["loc"]) for e in errors})
        detail = "invalid " + ", ".join(fields) if fields else "the request is invalid"
        if any(e["type"] == "json_invalid" for e in errors):
            detail = "the request body is not valid JSON"
        body_errors = [e for e in errors if e["loc"][:1] == ["body"]]
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body_errors and media_type != "application/json":
            # FastAPI reads a body as JSON only when the header says so; otherwise the fields
            # look missing, which says nothing of the real mistake (`curl -d` sends a form).
            sent = f"`{media_type}`" if media_type else "no Content-Type"
            detail = (
                f"the body must be JSON sent with `Content-Type: application/json` "
                f"(this request sent {sent})"
            )
        return problem_response("invalid_request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
        }.get(exc.status_code, "invalid_request")
        detail = exc.detail if isinstance(exc.detail, str) else ERROR_CODES[code][1]
        return problem_response(code, detail, dict(exc.headers or {}))

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeoutError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # A lost or saturated database is transient: 503 so clients back off and retry.
        log.warning("database unavailable: %s", type(exc).__name__)
        return problem_response(
            "unavailable",
            "the database is temporarily unavailable",
            {"Retry-After": "1"},
            retry_after=1,
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(_: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return problem_response(
                "unavailable",
                "the database connection was lost",
                {"Retry-After": "1"},
                retry_after=1,
            )
        raise exc
