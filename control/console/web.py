"""What every console page shares: its session and caller, forms and their tokens, units of
work, previews of what a change revokes and the confirmation before saving it, forms shown
again with their problems, and rendering."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from control.console import sessions
from control.console.sessions import SESSION_COOKIE
from control.errors import ERROR_CODES, InvalidRequest, ProblemError
from control.identity.authority import OPERATOR_ROLE
from control.identity.caller import Caller
from control.identity.models import Principal
from control.kit.db import end_unit_of_work
from control.kit.routing import media_type, table_entry
from control.observability.context import identify
from control.revocations.models import Revocation
from control.state import AppState
from control.views import OrgView

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"], default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 2000
# Everything the console loads is its own; no inline script or style, no framing, forms post
# only back here.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
SIGN_IN_PATH = "/console/sign-in"
# What a page says of the change that sent the browser to it (`?done=`).
DONE = {
    "created": "Created.",
    "updated": "Saved.",
    "revoked": "Revoked.",
    "deleted": "Deleted.",
    "registered": "Registered.",
    "rotated": "Rotated: the pending key signs now.",
}

# The navigation: (label, path, the roles that open it).
NAV: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("Principals", "/console/principals", frozenset({"admin"})),
    ("Streams", "/console/streams", frozenset({"admin"})),
    ("Query sets", "/console/query-sets", frozenset({"admin"})),
    ("Grant rules", "/console/rules", frozenset({"admin"})),
    ("Explain", "/console/explain", frozenset({"admin"})),
    ("Revocations", "/console/revocations", frozenset({"admin"})),
    ("Trusted issuers", "/console/trusted-issuers", frozenset({"admin"})),
    ("Signing keys", "/console/keys", frozenset({OPERATOR_ROLE})),
    ("Audit log", "/console/audit", frozenset({"admin"})),
)


class PageExit(Exception):
    """Answer the request with `response` now (a redirect to sign in, a refusal)."""

    def __init__(self, response: Response) -> None:
        super().__init__("page exit")
        self.response = response


class Form:
    """A submitted `application/x-www-form-urlencoded` form."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.pairs = list(pairs)

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.pairs:
            if key == name:
                return value
        return default

    def text(self, name: str) -> str:
        return self.get(name).strip()

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name and value != ""]

    def words(self, name: str) -> list[str]:
        """A comma- or whitespace-separated list typed into one field."""
        return [word for word in self.get(name).replace(",", " ").split() if word]

    def lines(self, name: str) -> list[str]:
        return [line.strip() for line in self.get(name).splitlines() if line.strip()]

    def values(self) -> dict[str, list[str]]:
        merged: dict[str, list[str]] = {}
        for key, value in self.pairs:
            merged.setdefault(key, []).append(value)
        return merged


def render(
    template: str, status: int = 200, headers: Mapping[str, str] | None = None, **context: Any
) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=dict(PAGE_HEADERS))


def secure_cookies(state: AppState) -> bool:
    return state.settings.env == "prod"


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.control
    return state


async def in_unit(state: AppState, work: Callable[[Session], T], *, commit: bool = True) -> T:
    """Run `work` in one unit of work on a worker thread, as the API's requests do (queued on
    the SQLite request lock); committed when `commit`, else always rolled back."""
    lock = state.request_lock
    if lock is not None:
        await lock.acquire()
    try:
        return await run_in_threadpool(_unit, state, work, commit)
    finally:
        if lock is not None:
            lock.release()


def _unit(state: AppState, work: Callable[[Session], T], commit: bool) -> T:
    session = state.sessions()
    try:
        result = work(session)
    except BaseException:
        end_unit_of_work(session, True)
        raise
    end_unit_of_work(session, not commit)
    return result


async def read_form(request: Request) -> Form:
    if media_type(request) != FORM_MEDIA_TYPE:
        raise PageExit(refusal(415, "This page takes an HTML form."))
    body = await request.body()
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise PageExit(refusal(400, "The form could not be read.")) from None
    # NUL reaches no column on PostgreSQL: refused here for every field alike.
    if any("\x00" in key or "\x00" in value for key, value in pairs):
        raise PageExit(refusal(400, "The form could not be read."))
    return Form(pairs)


# Where sign-in may send the browser next: a console page of this origin, by a path of plain
# characters (no `//`, `\\`, `..` or percent-escapes that a browser could read as another host
# or another path), never the sign-in and sign-out forms themselves.
_NEXT_PATH = re.compile(r"^/console(/[A-Za-z0-9_:@.~-]+)*/?$")
_NEXT_QUERY = re.compile(r"^[A-Za-z0-9_:@.~%&=+,*/-]*$")
MAX_NEXT = 1000


def safe_next(value: str | None) -> str | None:
    """`value` when it is a console page to go on to after signing in, else None: the
    sign-in form's `next` is an open redirect unless it can only name this console's pages."""
    if not value or len(value) > MAX_NEXT:
        return None
    path, _, rest = value.partition("?")
    if not _NEXT_PATH.match(path) or ".." in path or not _NEXT_QUERY.match(rest):
        return None
    if path.rstrip("/") in (SIGN_IN_PATH, "/console/sign-out") or path.startswith(
        "/console/assets"
    ):
        return None
    return value


def refusal(status: int, message: str) -> HTMLResponse:
    """A refusal before (or without) a signed-in caller."""
    return render("refused.html", status=status, message=message, signed_in=False, title="Refused")


@dataclass(frozen=True)
class Preview:
    """What a change would revoke: the principals whose tokens would end."""

    revoked: list[tuple[str, str]] = field(default_factory=list)
    result: Any = None


@dataclass
class Console:
    """One request of a signed-in console user."""

    request: Request
    state: AppState
    caller: Caller
    session_id: str

    @property
    def csrf(self) -> str:
        return sessions.form_token(self.state.credential_pepper, "session", self.session_id)

    @property
    def is_operator(self) -> bool:
        return OPERATOR_ROLE in self.caller.roles

    def nav(self) -> list[tuple[str, str, bool]]:
        path = self.request.url.path
        return [
            (label, href, path == href or path.startswith(href + "/"))
            for label, href, roles in NAV
            if self.caller.has_any(roles)
        ]

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return render(
            template,
            status=status,
            console=self,
            caller=self.caller,
            csrf=self.csrf,
            nav=self.nav(),
            signed_in=True,
            **context,
        )

    def form_page(
        self,
        template: str,
        shown: FormState,
        fresh: Mapping[str, list[str]] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        """A page with a form, `shown` fresh (its fields holding `fresh`) or again after its
        post met a problem; it says what the change that sent the browser here did."""
        return self.page(
            template,
            status=shown.status,
            errors=shown.errors,
            values=shown.values or fresh or {},
            done=DONE.get(self.request.query_params.get("done", "")),
            **context,
        )

    async def form(self) -> Form:
        """The posted form, once its synchronizer token proves it came from this session's
        own page; a post without it (or with another session's) is refused, changing nothing."""
        form = await read_form(self.request)
        if not sessions.token_matches(
            self.state.credential_pepper, "session", self.session_id, form.get("csrf_token")
        ):
            raise PageExit(
                self.page(
                    "refused.html",
                    status=403,
                    title="Refused",
                    message="This form is stale or did not come from the console; reload the "
                    "page and try again.",
                )
            )
        return form

    async def run(self, work: Callable[[OrgView], T]) -> T:
        """Do `work` as the caller, in the caller's org, and commit it."""
        org = self.caller.org_id
        return await in_unit(self.state, lambda session: work(OrgView(session, org)))

    async def read(self, work: Callable[[OrgView], T]) -> T:
        org = self.caller.org_id
        return await in_unit(self.state, lambda session: work(OrgView(session, org)), commit=False)

    async def preview(self, work: Callable[[OrgView], Any]) -> Preview:
        """Do `work` exactly as saving it would, through the same services, then roll it all
        back: what it returned and whose tokens it would have revoked. A problem the change
        meets is raised as it would be on saving."""
        org = self.caller.org_id

        def dry_run(session: Session) -> Preview:
            view = OrgView(session, org)
            last = view.execute(
                select(func.coalesce(func.max(Revocation.cursor), 0)).where(
                    Revocation.org_id == org
                )
            ).scalar()
            result = work(view)
            ids = sorted(
                {
                    row.value
                    for row in view.all(
                        Revocation, Revocation.cursor > (last or 0), Revocation.kind == "subject"
                    )
                }
            )
            names = {row.id: row.name for row in view.all(Principal, Principal.id.in_(ids))}
            return Preview(revoked=[(pid, names.get(pid, pid)) for pid in ids], result=result)

        return await in_unit(self.state, dry_run, commit=False)

    async def confirmation(
        self,
        form: Form,
        work: Callable[[OrgView], Any],
        *,
        what: str,
        always: bool = False,
        back: str,
        details: Sequence[str] | Callable[[Any], Sequence[str]] = (),
    ) -> Response | None:
        """Unless the form confirms it already: a page saying what `work` will revoke, asking
        to confirm, when it revokes anything (or `always`). None when the change may go ahead."""
        if form.get("confirm") == "yes":
            return None
        preview = await self.preview(work)
        if not preview.revoked and not always:
            return None
        if callable(details):
            details = details(preview.result)
        return self.confirm_page(
            form, what=what, revoked=preview.revoked, back=back, details=details
        )

    async def save(
        self,
        form: Form,
        work: Callable[[OrgView], T],
        *,
        done: str | Callable[[T], str],
        what: str = "",
        always: bool = False,
        back: str = "",
        details: Sequence[str] | Callable[[Any], Sequence[str]] = (),
    ) -> Response:
        """`work` done and committed, then the browser sent on to `done` (or to where `done`
        makes of what `work` returned). Given `what`, the change is put to the `confirmation`
        page first, when it revokes anything (or `always`), until the form confirms it."""
        if what:
            confirm = await self.confirmation(
                form, work, what=what, always=always, back=back, details=details
            )
            if confirm is not None:
                return confirm
        result = await self.run(work)
        return see_other(done(result) if callable(done) else done)

    def confirm_page(
        self,
        form: Form,
        *,
        what: str,
        revoked: list[tuple[str, str]],
        back: str,
        details: Sequence[str] = (),
        note: str | None = None,
    ) -> HTMLResponse:
        """The page asking to confirm a change: the form again, confirmed, posted back here."""
        fields = [(k, v) for k, v in form.pairs if k not in ("csrf_token", "confirm")]
        return self.page(
            "confirm.html",
            title="Confirm",
            what=what,
            details=list(details),
            note=note,
            revoked=revoked,
            fields=fields,
            action=self.request.url.path,
            back=back,
        )


async def posted(request: Request) -> tuple[Console, Form]:
    """The signed-in console user of this request and the form they posted, its token checked
    (`Console.form`)."""
    console = await console_for(request)
    return console, await console.form()


async def console_for(request: Request) -> Console:
    """The signed-in console user of this request, or a `PageExit` to the sign-in page (or a
    refusal, when the page's table entry needs a role the caller lacks)."""
    state = app_state(request)
    session_id = request.cookies.get(SESSION_COOKIE, "")
    caller = None
    if session_id:
        settings = state.settings
        caller = await in_unit(
            state, lambda session: sessions.session_caller(session, session_id, settings)
        )
    if caller is None:
        if request.method == "GET":
            back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            params = query(ended=1 if session_id else None, next=safe_next(back))
            response: Response = see_other(SIGN_IN_PATH + (f"?{params}" if params else ""))
        else:
            response = refusal(
                403, "You are not signed in (or your session ended); sign in and try again."
            )
        if session_id:
            response.delete_cookie(SESSION_COOKIE, path=sessions.COOKIE_PATH)
        raise PageExit(response)
    # The request's log line names who acted, as for an API key.
    identify(caller.org_id, caller.principal_id)
    console = Console(request, state, caller, session_id)
    entry = table_entry(request.scope)
    # Closed unless the route table says who may open the page.
    if entry is None or (entry.access.roles and not caller.has_any(entry.access.roles)):
        needed = " or ".join(sorted(entry.access.roles)) if entry is not None else ""
        raise PageExit(
            console.page(
                "refused.html",
                status=403,
                title="Refused",
                message=f"This page needs the {needed} role."
                if needed
                else "This page is not open to you.",
            )
        )
    request.state.console = console
    return console


def console_page(
    endpoint: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """A console endpoint that may answer early (`PageExit`), and whose unexpected problems
    (a 404 of another org's id, a 403 of authority) become a page saying so."""

    @functools.wraps(endpoint)
    async def page(**values: Any) -> Response:
        try:
            return await endpoint(**values)
        except PageExit as exit_:
            return exit_.response
        except ProblemError as problem:
            request: Request = values["request"]
            console = getattr(request.state, "console", None)
            if isinstance(console, Console):
                return console.page(
                    "refused.html",
                    status=problem.status,
                    title=problem.title,
                    message=problem.detail,
                )
            return refusal(problem.status, problem.detail)

    return page


# --- problems next to fields --------------------------------------------------------------


def invalid(exc: ValidationError) -> InvalidRequest:
    """A request model's validation error, as the API words it: one problem naming fields."""
    errors = [
        {
            "loc": ["body", *(str(part) for part in error.get("loc", ()))],
            "message": str(error.get("msg", "invalid")),
            "type": str(error.get("type", "invalid")),
        }
        for error in exc.errors(include_url=False, include_input=False)
    ]
    fields = sorted({".".join(e["loc"][1:]) for e in errors})
    return InvalidRequest("invalid " + ", ".join(fields), errors=errors)


M = TypeVar("M", bound=BaseModel)


def body_of(model: type[M], data: Mapping[str, Any]) -> M:
    """A request model from a form's values, validated as the API validates a JSON body."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise invalid(exc) from None


def field_errors(problem: ProblemError, renames: Mapping[str, str] | None = None) -> dict[str, str]:
    """The problem's messages by form field (`subjects.roles.0` -> `subjects_roles`), and what
    names no field under `_form`."""
    found: dict[str, list[str]] = {}
    for error in problem.extras.get("errors", ()) or ():
        loc = [str(p) for p in error.get("loc", ()) if str(p) != "body" and not str(p).isdigit()]
        name = "_".join(loc)
        name = (renames or {}).get(name, name) or "_form"
        found.setdefault(name, []).append(str(error.get("message", "invalid")))
    if not found:
        found["_form"] = [problem.detail]
    return {name: "; ".join(messages) for name, messages in found.items()}


def status_of(problem: ProblemError) -> int:
    return ERROR_CODES[problem.code][0]


def invalid_field(name: str, message: str) -> InvalidRequest:
    """A problem with one field the request models cannot check, worded as theirs are."""
    return InvalidRequest(f"invalid {name}", errors=[{"loc": ["body", name], "message": message}])


@dataclass(frozen=True)
class FormState:
    """How a page shows its form: fresh, or again after its post met a problem, with the
    problem's messages by field and, for a form of fields (not a lone button), what was typed."""

    errors: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, list[str]] = field(default_factory=dict)
    status: int = 200

    @classmethod
    def failed(
        cls,
        problem: ProblemError,
        typed: Form | None = None,
        errors: Mapping[str, str] | None = None,
    ) -> FormState:
        """After `problem`, its messages placed by `field_errors` unless `errors` places them."""
        return cls(
            field_errors(problem) if errors is None else errors,
            typed.values() if typed is not None else {},
            status_of(problem),
        )


FRESH = FormState()


def query(**params: Any) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")}, doseq=True)


def unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
