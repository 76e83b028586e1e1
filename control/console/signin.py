"""Signing in and out, the console's assets, and its front door."""

from __future__ import annotations

import functools
import logging
import secrets
from pathlib import Path

from fastapi import Request, Response
from sqlalchemy.orm import Session

from control.audit.service import Auditor
from control.console import sessions
from control.console.sessions import COOKIE_PATH, SESSION_COOKIE, SIGN_IN_COOKIE
from control.console.web import (
    HERE,
    app_state,
    console_for,
    console_page,
    in_unit,
    read_form,
    render,
    safe_next,
    secure_cookies,
    see_other,
)
from control.errors import NotFound, Unauthorized
from control.identity.caller import Caller
from control.identity.service import caller_for_key
from control.observability.context import credential_presented
from control.observability.logs import security_event
from control.tokens.ratelimit import RateLimiter

# One message for every failed sign-in (unknown, revoked, expired or disabled key, or one
# without a console role): a failure tells a guesser nothing about the key it tried.
SIGN_IN_FAILED = "That key cannot sign in to the console."
SIGN_IN_COOKIE_SECONDS = 3600

_STATIC = HERE / "static"
# Served by name from this list only: a path parameter never reaches the file system.
ASSETS: dict[str, tuple[Path, str]] = {
    "console.css": (_STATIC / "console.css", "text/css; charset=utf-8"),
    "console.js": (_STATIC / "console.js", "text/javascript; charset=utf-8"),
    "htmx.min.js": (_STATIC / "htmx.min.js", "text/javascript; charset=utf-8"),
}


@functools.cache
def _asset(name: str) -> bytes:
    return ASSETS[name][0].read_bytes()


async def console_asset(asset: str) -> Response:
    if asset not in ASSETS:
        raise NotFound("asset")
    return Response(
        _asset(asset),
        media_type=ASSETS[asset][1],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@console_page
async def console_home(request: Request) -> Response:
    console = await console_for(request)
    return see_other(
        "/console/principals" if console.caller.has_any(frozenset({"admin"})) else "/console/keys"
    )


def _limiter(request: Request) -> RateLimiter:
    """This app's sign-in limiter: per client address, across its requests."""
    limiter = getattr(request.app.state, "console_sign_in_limiter", None)
    if limiter is None:
        per_minute = app_state(request).settings.console_sign_in_attempts_per_minute
        limiter = RateLimiter(per_minute / 60.0, per_minute)
        request.app.state.console_sign_in_limiter = limiter
    assert isinstance(limiter, RateLimiter)
    return limiter


def _sign_in_page(
    request: Request,
    *,
    message: str | None = None,
    status: int = 200,
    notice: str | None = None,
    next_: str | None = None,
) -> Response:
    state = app_state(request)
    secret = secrets.token_urlsafe(32)
    response = render(
        "sign_in.html",
        status=status,
        title="Sign in",
        signed_in=False,
        message=message,
        notice=notice,
        next=next_,
        csrf=sessions.form_token(state.credential_pepper, "sign-in", secret),
    )
    response.set_cookie(
        SIGN_IN_COOKIE,
        secret,
        max_age=SIGN_IN_COOKIE_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        secure=secure_cookies(state),
        samesite="strict",
    )
    return response


NOTICES = {
    "ended": "Your session ended. Sign in again to go on.",
    "out": "You signed out.",
}


@console_page
async def sign_in_page(request: Request) -> Response:
    state = app_state(request)
    session_id = request.cookies.get(SESSION_COOKIE, "")
    if session_id:
        settings = state.settings
        caller = await in_unit(
            state, lambda session: sessions.session_caller(session, session_id, settings)
        )
        if caller is not None:
            return see_other(safe_next(request.query_params.get("next")) or "/console")
    notice = next((text for key, text in NOTICES.items() if key in request.query_params), None)
    return _sign_in_page(request, notice=notice, next_=safe_next(request.query_params.get("next")))


@console_page
async def sign_in(request: Request) -> Response:
    state = app_state(request)
    form = await read_form(request)
    next_ = safe_next(form.get("next"))
    if not sessions.token_matches(
        state.credential_pepper,
        "sign-in",
        request.cookies.get(SIGN_IN_COOKIE),
        form.get("csrf_token"),
    ):
        return _sign_in_page(
            request,
            status=403,
            message="The sign-in form expired; enter the key again.",
            next_=next_,
        )
    address = request.client.host if request.client else "unknown"
    wait = _limiter(request).acquire(address)
    if wait is not None:
        security_event("console.sign_in_limited", level=logging.WARNING, address=address)
        retry = RateLimiter.retry_after(wait)
        response = _sign_in_page(
            request,
            status=429,
            message=f"Too many sign-in attempts; try again in {retry} s.",
            next_=next_,
        )
        response.headers["Retry-After"] = str(retry)
        return response
    key = form.get("api_key").strip()
    settings = state.settings
    pepper = state.credential_pepper
    # A session the browser already holds (whoever's it is) ends here: signing in always
    # starts a new session id, never one a planted cookie chose or knew.
    presented = request.cookies.get(SESSION_COOKIE, "")

    def open_(session: Session) -> tuple[Caller, str] | None:
        try:
            caller = caller_for_key(session, pepper, key)
        except Unauthorized:
            return None
        if not caller.has_any(sessions.CONSOLE_ROLES):
            return None
        if presented:
            sessions.end_session(session, presented)
        session_id = sessions.open_session(session, caller, settings)
        Auditor.of(session, caller).record(
            "console.sign_in", caller.principal_id, {"credential_id": caller.credential_id}
        )
        return caller, session_id

    opened = await in_unit(state, open_) if key else None
    if opened is None:
        # The key is never logged, nor its prefix: a typo'd key is most of a real one. The
        # request's own security line names the kind of credential only.
        credential_presented("console_api_key")
        security_event("console.sign_in_failed", level=logging.WARNING, address=address)
        return _sign_in_page(request, status=401, message=SIGN_IN_FAILED, next_=next_)
    caller, session_id = opened
    security_event("console.sign_in", org_id=caller.org_id, principal_id=caller.principal_id)
    response = see_other(next_ or "/console")
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        path=COOKIE_PATH,
        httponly=True,
        secure=secure_cookies(state),
        samesite="strict",
    )
    response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
    return response


@console_page
async def sign_out(request: Request) -> Response:
    console = await console_for(request)
    await console.form()
    caller, session_id = console.caller, console.session_id

    def end(session: Session) -> None:
        sessions.end_session(session, session_id)
        Auditor.of(session, caller).record(
            "console.sign_out", caller.principal_id, {"credential_id": caller.credential_id}
        )

    await in_unit(console.state, end)
    response = see_other("/console/sign-in?out=1")
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response
