"""The console's pages. Each reads and changes through the admin API's own endpoint functions
(or, where the API has no list of its own, the same domain services and org view), as the
signed-in caller: nothing here decides who may do what."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

from fastapi import Request, Response

from control.api import federation as federation_api
from control.api import identity as identity_api
from control.api import keys as keys_api
from control.api import policy as policy_api
from control.api import revocations as revocations_api
from control.audit.models import AuditEvent
from control.audit.schemas import AuditEventOut
from control.console.web import (
    FRESH,
    Console,
    Form,
    FormState,
    body_of,
    console_for,
    console_page,
    field_errors,
    invalid_field,
    posted,
    query,
    status_of,
    unique,
)
from control.errors import ProblemError
from control.federation.schemas import TrustedIssuerBody, UpstreamAlg
from control.identity.models import Credential
from control.identity.schemas import CredentialCreate, PrincipalCreate, PrincipalUpdate
from control.kit.db import utcnow
from control.kit.pagination import MAX_LIMIT, PageRequest, decode_cursor
from control.policy.engine import PolicyCache
from control.policy.explain import explain as explain_decisions
from control.policy.schemas import (
    ExplainRequest,
    ExplainResponse,
    GrantRuleCreate,
    GrantRuleOut,
    QuerySetCreate,
    QuerySetUpdate,
    StreamCreate,
)
from control.revocations.models import Revocation
from control.revocations.schemas import RevocationCreate, RevocationOut
from control.spacetime.catalog import Entry, catalog_for
from control.views import OrgView

PAGE_SIZE = 50
BUILTIN_ROLES = ("member", "service", "admin", "operator")
OPS = ("subscribe", "append", "checkpoint")
KINDS = ("user", "device", "service")
RELATIONS = {
    "owner": "streams the principal owns",
    "org": "every stream of the kind in the org",
    "ids": "the streams listed",
}
REASONS = {
    "stream_not_found": "no such stream in this org",
    "not_permitted": "no allow rule gives this principal this stream",
    "query_set_not_allowed": "a requested query set is not given by the rules",
    "query_set_not_found": "a requested query set does not exist",
    "op_not_allowed": "a requested op is not given by the rules",
    "denied_by_rule": "a deny rule takes it away",
    "kind_wide_not_permitted": "a kind-wide grant needs an org-wide allow rule and no deny rule",
}


def _page(cursor: str | None, limit: int = PAGE_SIZE) -> PageRequest:
    return PageRequest(limit=limit, after=decode_cursor(cursor) if cursor else None)


def _principal_names(view: OrgView) -> dict[str, str]:
    page = identity_api.list_principals(view, _page(None, MAX_LIMIT))
    return {p.id: p.name for p in page.items}


def _roles_of(form: Form) -> list[str]:
    return unique([*form.getlist("roles"), *form.words("other_roles")])


# --- principals and credentials -----------------------------------------------------------


async def _principals(
    console: Console, cursor: str | None = None, shown: FormState = FRESH
) -> Response:
    page = await console.read(lambda view: identity_api.list_principals(view, _page(cursor)))
    return console.form_page(
        "principals.html",
        shown,
        title="Principals",
        page=page,
        kinds=KINDS,
        builtin_roles=BUILTIN_ROLES,
    )


@console_page
async def principals_page(request: Request) -> Response:
    console = await console_for(request)
    return await _principals(console, request.query_params.get("cursor"))


@console_page
async def create_principal(request: Request) -> Response:
    console, form = await posted(request)
    roles = _roles_of(form)
    try:
        body = body_of(
            PrincipalCreate,
            {"kind": form.text("kind"), "name": form.text("name"), "roles": roles or None},
        )
        return await console.save(
            form,
            lambda view: identity_api.create_principal(body, view.session, console.caller),
            done=lambda created: f"/console/principals/{created.id}?done=created",
        )
    except ProblemError as problem:
        return await _principals(console, shown=FormState.failed(problem, form))


async def _principal(console: Console, principal_id: str, shown: FormState = FRESH) -> Response:
    def read(view: OrgView) -> tuple[Any, Any]:
        principal = identity_api.get_principal(principal_id, view)
        return principal, identity_api.list_credentials(principal_id, view, _page(None, MAX_LIMIT))

    principal, credentials = await console.read(read)
    return console.form_page(
        "principal.html",
        shown,
        title=f"Principal {principal.name}",
        principal=principal,
        credentials=credentials.items,
        builtin_roles=BUILTIN_ROLES,
        now=utcnow(),
    )


@console_page
async def principal_page(request: Request, principal_id: str) -> Response:
    console = await console_for(request)
    return await _principal(console, principal_id)


@console_page
async def update_principal(request: Request, principal_id: str) -> Response:
    console, form = await posted(request)
    back = f"/console/principals/{principal_id}"
    try:
        body = body_of(
            PrincipalUpdate, {"roles": _roles_of(form), "disabled": form.get("disabled") == "yes"}
        )
        return await console.save(
            form,
            lambda view: identity_api.update_principal(principal_id, body, view, console.caller),
            what=f"Change the roles or state of principal {principal_id}",
            back=back,
            done=f"{back}?done=updated",
        )
    except ProblemError as problem:
        return await _principal(console, principal_id, FormState.failed(problem))


@console_page
async def delete_principal(request: Request, principal_id: str) -> Response:
    console, form = await posted(request)
    name = (await console.read(lambda view: identity_api.get_principal(principal_id, view))).name
    try:
        return await console.save(
            form,
            lambda view: identity_api.delete_principal(principal_id, view, console.caller),
            what=f"Delete principal {name} ({principal_id}) and its API keys",
            always=True,
            back=f"/console/principals/{principal_id}",
            done="/console/principals?done=deleted",
        )
    except ProblemError as problem:
        return await _principal(console, principal_id, FormState.failed(problem))


def _utc(text: str) -> datetime | None:
    """A date and time typed into a form, None when blank; UTC unless it names its zone (a
    `datetime-local` field names none). ValueError when it is no date and time."""
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _expiry(text: str) -> datetime | None:
    try:
        return _utc(text)
    except ValueError:
        raise invalid_field("expires_at", "a date and time, in UTC") from None


@console_page
async def issue_credential(request: Request, principal_id: str) -> Response:
    console, form = await posted(request)
    try:
        body = body_of(
            CredentialCreate,
            {"name": form.text("name") or None, "expires_at": _expiry(form.text("expires_at"))},
        )
        issued = await console.run(
            lambda view: identity_api.create_credential(
                principal_id, body, view, console.caller, console.state, Response()
            )
        )
    except ProblemError as problem:
        renamed = field_errors(problem, {"name": "credential_name"})
        return await _principal(console, principal_id, FormState.failed(problem, errors=renamed))
    return console.page(
        "key.html", title="API key issued", issued=issued, principal_id=principal_id
    )


@console_page
async def revoke_credential(request: Request, credential_id: str) -> Response:
    console, form = await posted(request)

    def read(view: OrgView) -> tuple[str, str]:
        credential = view.get(Credential, credential_id, "credential")
        return credential.principal_id, credential.prefix

    principal_id, prefix = await console.read(read)
    back = f"/console/principals/{principal_id}"
    return await console.save(
        form,
        lambda view: identity_api.revoke_credential(credential_id, view, console.caller),
        what=f"Revoke API key {prefix}… ({credential_id})",
        always=True,
        back=back,
        done=f"{back}?done=revoked",
    )


# --- streams and query sets ---------------------------------------------------------------


async def _streams(
    console: Console, cursor: str | None = None, shown: FormState = FRESH
) -> Response:
    def read(view: OrgView) -> tuple[Any, dict[str, str]]:
        return policy_api.list_streams(view, _page(cursor)), _principal_names(view)

    page, names = await console.read(read)
    return console.form_page("streams.html", shown, title="Streams", page=page, names=names)


@console_page
async def streams_page(request: Request) -> Response:
    console = await console_for(request)
    return await _streams(console, request.query_params.get("cursor"))


@console_page
async def register_stream(request: Request) -> Response:
    console, form = await posted(request)
    data: dict[str, Any] = {"id": form.text("id")}
    if form.text("owner_id"):
        data["owner_id"] = form.text("owner_id")
    try:
        body = body_of(StreamCreate, data)
        return await console.save(
            form,
            lambda view: policy_api.register_stream(body, view, console.caller),
            done="/console/streams?done=registered",
        )
    except ProblemError as problem:
        return await _streams(console, shown=FormState.failed(problem, form))


@console_page
async def delete_stream(request: Request, stream_id: str) -> Response:
    console, form = await posted(request)
    return await console.save(
        form,
        lambda view: policy_api.delete_stream(stream_id, view, console.caller),
        what=f"Delete stream {stream_id}, ending every grant on it",
        always=True,
        back="/console/streams",
        done="/console/streams?done=deleted",
    )


QS_CONTENT = ("stream_kinds", "queries", "description")
QS_FIELDS = ("name", *QS_CONTENT)


def catalog_prefill(name: str, entry: Entry) -> str:
    """The query string that fills a query-set form with what the catalog serves."""
    return query(
        name=name,
        stream_kinds=", ".join(entry.stream_kinds),
        # Subscription SQL for a form to prefill, from the catalog's view names.
        queries="\n".join(f"SELECT * FROM {view}" for view in entry.views),  # noqa: S608
    )


def _catalog_offers(console: Console, defined: set[str]) -> list[tuple[str, Entry, str]]:
    """What the module's catalog serves that can be defined here: a query set starts at
    version 1, so each name of the catalog not yet defined, at version 1."""
    catalog = catalog_for(console.state.settings)
    offers = []
    for ref, entry in sorted(catalog.query_sets.items()):
        name, _, version = ref.partition("@")
        if name not in defined and version == "1":
            offers.append((ref, entry, catalog_prefill(name, entry)))
    return offers


def _prefilled(request: Request, fields: tuple[str, ...]) -> dict[str, list[str]]:
    """The query-set form's fields as a catalog link (`catalog_prefill`) fills them."""
    return {key: [value] for key, value in request.query_params.items() if key in fields}


async def _query_sets(
    console: Console, cursor: str | None = None, shown: FormState = FRESH
) -> Response:
    def read(view: OrgView) -> tuple[Any, set[str]]:
        every = policy_api.list_query_sets(view, _page(None, MAX_LIMIT))
        return policy_api.list_query_sets(view, _page(cursor)), {q.name for q in every.items}

    page, defined = await console.read(read)
    catalog = catalog_for(console.state.settings)
    return console.form_page(
        "query_sets.html",
        shown,
        _prefilled(console.request, QS_FIELDS),
        catalog=catalog,
        catalog_entries=_catalog_offers(console, defined),
        # Per defined query set: the versions the catalog serves of it.
        served={q.name: catalog.versions(q.name) for q in page.items},
        title="Query sets",
        page=page,
    )


@console_page
async def query_sets_page(request: Request) -> Response:
    console = await console_for(request)
    return await _query_sets(console, request.query_params.get("cursor"))


def _query_set_data(form: Form) -> dict[str, Any]:
    return {
        "stream_kinds": form.words("stream_kinds"),
        "queries": form.lines("queries"),
        "description": form.text("description") or None,
    }


@console_page
async def create_query_set(request: Request) -> Response:
    console, form = await posted(request)
    try:
        body = body_of(QuerySetCreate, {"name": form.text("name"), **_query_set_data(form)})
        return await console.save(
            form,
            lambda view: policy_api.create_query_set(body, view, console.caller, console.state),
            done=f"/console/query-sets/{body.name}?done=created",
        )
    except ProblemError as problem:
        return await _query_sets(console, shown=FormState.failed(problem, form))


async def _query_set(console: Console, name: str, shown: FormState = FRESH) -> Response:
    row = await console.read(lambda view: policy_api.get_query_set(name, view))
    catalog = catalog_for(console.state.settings)
    # A replacement is the next version: what the catalog serves at that version.
    upcoming = catalog.entry(row.name, row.version + 1)
    current = {
        "stream_kinds": [", ".join(row.stream_kinds)],
        "queries": ["\n".join(row.queries)],
        "description": [row.description or ""],
    }
    return console.form_page(
        "query_set.html",
        shown,
        _prefilled(console.request, QS_CONTENT) or current,
        title=f"Query set {row.name}",
        qs=row,
        catalog=catalog,
        versions=catalog.versions(row.name),
        current_entry=catalog.entry(row.name, row.version),
        next_version=row.version + 1,
        upcoming=upcoming,
        upcoming_prefill=catalog_prefill(row.name, upcoming) if upcoming else None,
    )


@console_page
async def query_set_page(request: Request, name: str) -> Response:
    console = await console_for(request)
    return await _query_set(console, name)


@console_page
async def update_query_set(request: Request, name: str) -> Response:
    """Replace a query set's content (its next version), confirming first when that revokes
    the tokens of those granted it."""
    console, form = await posted(request)
    back = f"/console/query-sets/{name}"
    row = await console.read(lambda view: policy_api.get_query_set(name, view))
    try:
        body = body_of(QuerySetUpdate, _query_set_data(form))
        return await console.save(
            form,
            lambda view: policy_api.update_query_set(
                name, body, view, console.caller, console.state
            ),
            what=f"Replace query set {row.ref} with {row.name}@{row.version + 1}",
            back=back,
            done=f"{back}?done=updated",
        )
    except ProblemError as problem:
        return await _query_set(console, name, FormState.failed(problem, form))


@console_page
async def delete_query_set(request: Request, name: str) -> Response:
    console, form = await posted(request)
    back = f"/console/query-sets/{name}"
    row = await console.read(lambda view: policy_api.get_query_set(name, view))
    try:
        return await console.save(
            form,
            lambda view: policy_api.delete_query_set(name, view, console.caller),
            what=f"Delete query set {row.ref}",
            always=True,
            back=back,
            done="/console/query-sets?done=deleted",
        )
    except ProblemError as problem:
        return await _query_set(console, name, FormState.failed(problem))


# --- grant rules --------------------------------------------------------------------------

# Where a rule's problems land in its form (the form's names for the body's fields).
RULE_FIELDS = {
    "query_sets": "rule_query_sets",
    "ops": "rule_ops",
    "subjects": "rule_subjects",
    "streams": "rule_streams",
}
# The rule form's choices whatever the org holds, and a new rule's first values.
RULE_CHOICES = {"kinds": KINDS, "ops": OPS, "relations": RELATIONS}
NEW_RULE = {"effect": ["allow"], "streams_relation": ["owner"], "rule_ops": ["subscribe"]}


def rule_data(form: Form) -> dict[str, Any]:
    """A grant rule's JSON body from the rule form (the rules page's, or explain's proposal)."""
    ttl_text = form.text("max_ttl_seconds")
    ttl: Any = None
    if ttl_text:
        # Not a number: left to the model, which names the field.
        ttl = int(ttl_text) if ttl_text.isdigit() else ttl_text
    return {
        "effect": form.text("effect"),
        "subjects": {
            "principal_ids": form.getlist("subjects_principal_ids"),
            "roles": form.words("subjects_roles"),
            "kinds": form.getlist("subjects_kinds"),
        },
        "streams": {
            "kind": form.text("streams_kind"),
            "relation": form.text("streams_relation"),
            "ids": form.words("streams_ids"),
        },
        "query_sets": form.getlist("rule_query_sets"),
        "ops": form.getlist("rule_ops"),
        "max_ttl_seconds": ttl,
        "description": form.text("description") or None,
    }


def _who(subjects: Any, names: dict[str, str]) -> str:
    parts = [f"role {role}" for role in subjects.roles]
    parts += [f"every {kind}" for kind in subjects.kinds]
    parts += [names.get(pid, pid) for pid in subjects.principal_ids]
    return ", ".join(parts) or "nobody"


def describe_rule(rule: GrantRuleOut | GrantRuleCreate, names: dict[str, str]) -> str:
    """What a rule allows (or takes away), in a sentence."""
    streams = rule.streams
    if streams.relation == "owner":
        where = f"the {streams.kind} streams they own"
    elif streams.relation == "org":
        where = f"every {streams.kind} stream of the org"
    else:
        where = f"the {streams.kind} streams " + ", ".join(streams.ids)
    who = _who(rule.subjects, names)
    # In the order saving stores them, so a rule reads the same before and after it is saved.
    sets = ", ".join(sorted(rule.query_sets))
    ops = ", ".join(sorted(str(op) for op in rule.ops))
    if rule.effect == "allow":
        text = f"Allows {who} to {ops or 'do nothing'} on {where}"
        text += f", with query sets {sets}" if sets else ", with no query set"
        if rule.max_ttl_seconds:
            text += f"; tokens live at most {rule.max_ttl_seconds} s"
        return text + "."
    if not sets and not rule.ops:
        return f"Denies {who} any access to {where}."
    taken = " and ".join(x for x in (ops and f"ops {ops}", sets and f"query sets {sets}") if x)
    return f"Takes {taken} away from {who} on {where}."


def _rule_options(view: OrgView) -> tuple[dict[str, str], list[Any]]:
    """What the rule form offers to pick from the org: its principals by name, its query sets."""
    names = _principal_names(view)
    return names, policy_api.list_query_sets(view, _page(None, MAX_LIMIT)).items


async def _rules(console: Console, cursor: str | None = None, shown: FormState = FRESH) -> Response:
    def read(view: OrgView) -> tuple[Any, tuple[dict[str, str], list[Any]]]:
        return policy_api.list_rules(view, _page(cursor)), _rule_options(view)

    page, (names, query_sets) = await console.read(read)
    return console.form_page(
        "rules.html",
        shown,
        NEW_RULE,
        title="Grant rules",
        page=page,
        names=names,
        describe=describe_rule,
        query_sets=query_sets,
        **RULE_CHOICES,
    )


@console_page
async def rules_page(request: Request) -> Response:
    console = await console_for(request)
    return await _rules(console, request.query_params.get("cursor"))


@console_page
async def create_rule(request: Request) -> Response:
    console, form = await posted(request)
    try:
        body = body_of(GrantRuleCreate, rule_data(form))
        return await console.save(
            form,
            lambda view: policy_api.create_rule(body, view, console.caller),
            what="Add this grant rule",
            back="/console/rules",
            done=lambda rule: f"/console/rules?done=created#{rule.id}",
        )
    except ProblemError as problem:
        errors = field_errors(problem, RULE_FIELDS)
        return await _rules(console, shown=FormState.failed(problem, form, errors))


@console_page
async def check_rule(request: Request) -> Response:
    """The rule form's live check (htmx): the same validation saving runs, by saving it in a
    rolled-back transaction, and what it would allow and revoke."""
    console, form = await posted(request)
    errors: dict[str, str] = {}
    sentence = None
    revoked: list[tuple[str, str]] = []
    try:
        body = body_of(GrantRuleCreate, rule_data(form))
        # The edit form checks the rule as its replacement; the new-rule form as an addition.
        rule_id = form.text("rule_id")

        def work(view: OrgView) -> dict[str, str]:
            if rule_id:
                policy_api.update_rule(rule_id, body, view, console.caller)
            else:
                policy_api.create_rule(body, view, console.caller)
            return _principal_names(view)

        preview = await console.preview(work)
        sentence = describe_rule(body, preview.result)
        revoked = preview.revoked
    except ProblemError as problem:
        errors = field_errors(problem, RULE_FIELDS)
    return console.page(
        "rule_check.html",
        errors=errors,
        sentence=sentence,
        revoked=revoked,
        fields=RULE_FORM_FIELDS,
    )


RULE_FORM_FIELDS = (
    "effect", "rule_subjects", "subjects_principal_ids", "subjects_roles", "subjects_kinds",
    "rule_streams", "streams_kind", "streams_relation", "streams_ids", "rule_query_sets",
    "rule_ops", "max_ttl_seconds", "description",
)  # fmt: skip


def rule_values(rule: GrantRuleOut) -> dict[str, list[str]]:
    """The rule form's values for a saved rule: the inverse of `rule_data`."""
    return {
        "effect": [rule.effect],
        "subjects_principal_ids": list(rule.subjects.principal_ids),
        "subjects_roles": [", ".join(rule.subjects.roles)],
        "subjects_kinds": [str(kind) for kind in rule.subjects.kinds],
        "streams_kind": [rule.streams.kind],
        "streams_relation": [rule.streams.relation],
        "streams_ids": [", ".join(rule.streams.ids)],
        "rule_query_sets": list(rule.query_sets),
        "rule_ops": [str(op) for op in rule.ops],
        "max_ttl_seconds": [str(rule.max_ttl_seconds) if rule.max_ttl_seconds else ""],
        "description": [rule.description or ""],
    }


async def _rule(console: Console, rule_id: str, shown: FormState = FRESH) -> Response:
    def read(view: OrgView) -> tuple[GrantRuleOut, tuple[dict[str, str], list[Any]]]:
        return policy_api.get_rule(rule_id, view), _rule_options(view)

    rule, (names, query_sets) = await console.read(read)
    return console.form_page(
        "rule.html",
        shown,
        rule_values(rule),
        title="Grant rule",
        rule=rule,
        sentence=describe_rule(rule, names),
        names=names,
        query_sets=query_sets,
        **RULE_CHOICES,
    )


@console_page
async def rule_page(request: Request, rule_id: str) -> Response:
    console = await console_for(request)
    return await _rule(console, rule_id)


@console_page
async def update_rule(request: Request, rule_id: str) -> Response:
    """Replace a rule, after a page saying what it allowed, what it will allow, and whose
    tokens saving the change revokes."""
    console, form = await posted(request)
    back = f"/console/rules/{rule_id}"

    def read(view: OrgView) -> str:
        return describe_rule(policy_api.get_rule(rule_id, view), _principal_names(view))

    before = await console.read(read)
    try:
        body = body_of(GrantRuleCreate, rule_data(form))

        def work(view: OrgView) -> dict[str, str]:
            policy_api.update_rule(rule_id, body, view, console.caller)
            return _principal_names(view)

        return await console.save(
            form,
            work,
            what=f"Change grant rule {rule_id}",
            always=True,
            back=back,
            details=lambda names: [f"Now: {before}", f"After: {describe_rule(body, names)}"],
            done=f"{back}?done=updated",
        )
    except ProblemError as problem:
        errors = field_errors(problem, RULE_FIELDS)
        return await _rule(console, rule_id, FormState.failed(problem, form, errors))


@console_page
async def delete_rule(request: Request, rule_id: str) -> Response:
    console, form = await posted(request)
    return await console.save(
        form,
        lambda view: policy_api.delete_rule(rule_id, view, console.caller),
        what=f"Delete grant rule {rule_id}",
        always=True,
        back="/console/rules",
        done="/console/rules?done=deleted",
    )


# --- explain ------------------------------------------------------------------------------


@console_page
async def explain_page(request: Request) -> Response:
    """Pick a principal and streams: each decision and the rules behind it; with a proposed
    rule, the decisions it would make and whose tokens saving it would revoke."""
    console = await console_for(request)
    form = Form(list(request.query_params.multi_items()))
    errors: dict[str, str] = {}
    now: ExplainResponse | None = None
    after: ExplainResponse | None = None
    revoked: list[tuple[str, str]] = []
    proposing = form.get("propose") == "yes"

    def read(view: OrgView) -> tuple[dict[str, str], Any, Any]:
        return (
            _principal_names(view),
            policy_api.list_rules(view, _page(None, MAX_LIMIT)),
            policy_api.list_query_sets(view, _page(None, MAX_LIMIT)),
        )

    names, rules, query_sets = await console.read(read)
    status = 200
    if form.text("principal_id") or form.text("streams"):
        renames: dict[str, str] = {}
        try:
            asked = body_of(
                ExplainRequest,
                {
                    "principal_id": form.text("principal_id"),
                    "streams": unique(form.words("streams")),
                    "query_sets": form.words("query_sets") or None,
                    "ops": form.getlist("ops") or None,
                },
            )
            now = await console.read(lambda view: policy_api.explain(asked, view, console.state))
            if proposing:
                renames = RULE_FIELDS
                proposal = body_of(GrantRuleCreate, rule_data(form))
                cap = console.state.settings.max_streams_per_token

                def what_if(view: OrgView) -> ExplainResponse:
                    policy_api.create_rule(proposal, view, console.caller)
                    # A throwaway cache: the shared one must never hold a policy that was
                    # rolled back.
                    return explain_decisions(view, PolicyCache(), asked, cap)

                preview = await console.preview(what_if)
                after, revoked = preview.result, preview.revoked
        except ProblemError as problem:
            errors = field_errors(problem, renames)
            status = status_of(problem)
    rule_text = {rule.id: describe_rule(rule, names) for rule in rules.items}
    return console.page(
        "explain.html",
        status=status,
        title="Explain",
        names=names,
        query_sets=query_sets.items,
        values=form.values() or NEW_RULE,
        errors=errors,
        now=now,
        after=after,
        pairs=list(zip(now.decisions, after.decisions, strict=True)) if now and after else [],
        revoked=revoked,
        proposing=proposing,
        rule_text=rule_text,
        **RULE_CHOICES,
        reasons=REASONS,
        save_fields=[(k, v) for k, v in form.pairs if k not in EXPLAIN_ONLY],
    )


EXPLAIN_ONLY = ("principal_id", "streams", "query_sets", "ops", "propose")


# --- revocations, trusted issuers, keys ---------------------------------------------------


async def _revocations(
    console: Console, before: str | None = None, shown: FormState = FRESH
) -> Response:
    # The API's feed is oldest first for runtime caches; people want the newest first.
    older_than = int(before) if before and before.isdigit() and len(before) <= 18 else None

    def read(view: OrgView) -> list[tuple[RevocationOut, str | None]]:
        statement = view.select(Revocation).order_by(Revocation.cursor.desc())
        if older_than is not None:
            statement = statement.where(Revocation.cursor < older_than)
        rows = view.session.scalars(statement.limit(PAGE_SIZE + 1))
        return [(RevocationOut.of(row), row.reason) for row in rows]

    rows = await console.read(read)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return console.form_page(
        "revocations.html",
        shown,
        title="Revocations",
        rows=rows,
        older=rows[-1][0].cursor if more and rows else None,
    )


@console_page
async def revocations_page(request: Request) -> Response:
    console = await console_for(request)
    return await _revocations(console, request.query_params.get("before"))


@console_page
async def create_revocation(request: Request) -> Response:
    console, form = await posted(request)
    try:
        body = body_of(
            RevocationCreate,
            {
                "kind": form.text("kind"),
                "value": form.text("value"),
                "reason": form.text("reason") or None,
            },
        )
        return await console.save(
            form,
            lambda view: revocations_api.create_revocation(body, view, console.caller),
            what=f"Revoke {body.kind} {body.value}",
            always=True,
            back="/console/revocations",
            done="/console/revocations?done=revoked",
        )
    except ProblemError as problem:
        return await _revocations(console, shown=FormState.failed(problem, form))


async def _issuers(
    console: Console, cursor: str | None = None, shown: FormState = FRESH
) -> Response:
    page = await console.read(lambda view: federation_api.list_trusted_issuers(view, _page(cursor)))
    return console.form_page(
        "issuers.html",
        shown,
        {"default_roles": ["member"]},
        title="Trusted issuers",
        page=page,
        algorithms=ALGORITHMS,
    )


@console_page
async def issuers_page(request: Request) -> Response:
    console = await console_for(request)
    return await _issuers(console, request.query_params.get("cursor"))


ALGORITHMS: tuple[str, ...] = get_args(UpstreamAlg)
ISSUER_FIELDS = ("issuer", "audiences", "default_roles", "role_claim", "role_map", "algorithms")


def role_map_text(role_map: dict[str, list[str]]) -> str:
    return "\n".join(f"{value} = {', '.join(roles)}" for value, roles in role_map.items())


def _role_map(form: Form) -> dict[str, list[str]]:
    """`role_map` from its textarea: a line per claim value, `value = role, role`. A claim
    value may hold `=` itself (an LDAP group's DN does), a role never: split at the last."""
    mapped: dict[str, list[str]] = {}
    for number, line in enumerate(form.lines("role_map"), start=1):
        value, equals, roles = line.rpartition("=")
        if not equals or not value.strip():
            raise invalid_field("role_map", f"line {number}: write `claim value = role, role`")
        mapped.setdefault(value.strip(), []).extend(
            role for role in roles.replace(",", " ").split() if role
        )
    return mapped


def issuer_data(form: Form) -> dict[str, Any]:
    """A trusted issuer's JSON body from its form (the list's, or an issuer's page)."""
    data: dict[str, Any] = {
        "issuer": form.text("issuer"),
        "audiences": form.words("audiences"),
        "default_roles": form.words("default_roles"),
        "role_map": _role_map(form),
    }
    if form.text("role_claim"):
        data["role_claim"] = form.text("role_claim")
    if form.getlist("algorithms"):
        data["algorithms"] = form.getlist("algorithms")
    return data


def _issuer_errors(problem: ProblemError) -> dict[str, str]:
    """The problem's messages by field; a nested `role_map` location is the textarea's."""
    found: dict[str, str] = {}
    for name, message in field_errors(problem).items():
        field = next((f for f in ISSUER_FIELDS if name == f or name.startswith(f + "_")), name)
        found[field] = "; ".join(filter(None, (found.get(field), message)))
    return found


@console_page
async def create_issuer(request: Request) -> Response:
    console, form = await posted(request)
    try:
        body = body_of(TrustedIssuerBody, issuer_data(form))
        return await console.save(
            form,
            lambda view: federation_api.create_trusted_issuer(
                body, console.state, view, console.caller
            ),
            done="/console/trusted-issuers?done=created",
        )
    except ProblemError as problem:
        errors = _issuer_errors(problem)
        return await _issuers(console, shown=FormState.failed(problem, form, errors))


async def _issuer(console: Console, issuer_id: str, shown: FormState = FRESH) -> Response:
    row = await console.read(lambda view: federation_api.get_trusted_issuer(issuer_id, view))
    current = {
        "issuer": [row.issuer],
        "audiences": [", ".join(row.audiences)],
        "default_roles": [", ".join(row.default_roles)],
        "role_claim": [row.role_claim or ""],
        "role_map": [role_map_text(row.role_map)],
        "algorithms": list(row.algorithms),
    }
    return console.form_page(
        "issuer.html",
        shown,
        current,
        title="Trusted issuer",
        issuer=row,
        role_map=role_map_text(row.role_map),
        algorithms=ALGORITHMS,
    )


@console_page
async def issuer_page(request: Request, issuer_id: str) -> Response:
    console = await console_for(request)
    return await _issuer(console, issuer_id)


@console_page
async def update_issuer(request: Request, issuer_id: str) -> Response:
    """Replace a trusted issuer's settings; pointing it at another issuer URL ends its
    principals' links and tokens, which a page names before anything changes."""
    console, form = await posted(request)
    back = f"/console/trusted-issuers/{issuer_id}"
    row = await console.read(lambda view: federation_api.get_trusted_issuer(issuer_id, view))
    try:
        body = body_of(TrustedIssuerBody, issuer_data(form))
        return await console.save(
            form,
            lambda view: federation_api.update_trusted_issuer(
                issuer_id, body, console.state, view, console.caller
            ),
            what=f"Change trusted issuer {row.issuer}",
            back=back,
            details=[f"Its issuer URL becomes {body.issuer}"] if body.issuer != row.issuer else [],
            done=f"{back}?done=updated",
        )
    except ProblemError as problem:
        errors = _issuer_errors(problem)
        return await _issuer(console, issuer_id, FormState.failed(problem, form, errors))


@console_page
async def delete_issuer(request: Request, issuer_id: str) -> Response:
    console, form = await posted(request)
    return await console.save(
        form,
        lambda view: federation_api.delete_trusted_issuer(issuer_id, view, console.caller),
        what=f"Stop trusting issuer {issuer_id}",
        always=True,
        back="/console/trusted-issuers",
        done="/console/trusted-issuers?done=deleted",
    )


def age(since: datetime | None, now: datetime) -> str:
    if since is None:
        return ""
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


async def _keys(console: Console, shown: FormState = FRESH) -> Response:
    keys = await console.read(lambda view: keys_api.list_keys(view.session))
    return console.form_page(
        "keys.html",
        shown,
        title="Signing keys",
        keys=keys.items,
        now=utcnow(),
        age=age,
        lead=console.state.settings.key_publish_lead_seconds,
    )


@console_page
async def keys_page(request: Request) -> Response:
    console = await console_for(request)
    return await _keys(console)


def _by_state(keys: Any, state: str) -> str:
    return ", ".join(key.kid for key in keys.items if key.state == state) or "none"


@console_page
async def rotate_keys(request: Request) -> Response:
    """Rotate the signing keys now (operators), after a page saying which key will sign."""
    console, form = await posted(request)
    if form.get("confirm") != "yes":
        keys = await console.read(lambda view: keys_api.list_keys(view.session))
        pending = next((key for key in keys.items if key.state == "pending"), None)
        lead = console.state.settings.key_publish_lead_seconds
        details = [
            f"The pending key {pending.kid if pending else '(none)'} starts signing"
            + (
                f"; it has been published for {age(pending.created_at, utcnow())}"
                if pending
                else ""
            ),
            f"The active key {_by_state(keys, 'active')} stops signing and stays published "
            "until its last tokens expire",
            "A new pending key is published, to sign at the next rotation",
        ]
        return console.confirm_page(
            form,
            what="Rotate the signing keys now",
            revoked=[],
            back="/console/keys",
            details=details,
            note="Rotating revokes no token: tokens the active key signed stay valid until they "
            f"expire. It is refused while the pending key is younger than {lead} s, since "
            "verifiers may not have fetched it yet.",
        )

    try:
        return await console.save(
            form,
            lambda view: keys_api.rotate_keys(view.session, console.state, console.caller),
            done="/console/keys?done=rotated",
        )
    except ProblemError as problem:
        return await _keys(console, FormState.failed(problem))


# --- the audit log ------------------------------------------------------------------------


def _moment(form: Form, name: str, errors: dict[str, str]) -> datetime | None:
    try:
        return _utc(form.text(name))
    except ValueError:
        errors[name] = "a date and time, in UTC (2026-05-04T09:12)"
        return None


@console_page
async def audit_page(request: Request) -> Response:
    """The org's audit log, newest first, filtered by actor, action, target and time."""
    console = await console_for(request)
    form = Form(list(request.query_params.multi_items()))
    errors: dict[str, str] = {}
    since, until = _moment(form, "since", errors), _moment(form, "until", errors)
    before = form.text("before")
    actor, action, target = form.text("actor"), form.text("action"), form.text("target")

    def read(view: OrgView) -> list[AuditEventOut]:
        statement = view.select(AuditEvent)
        if actor:
            statement = statement.where(AuditEvent.actor == actor)
        if action:  # `principal.` finds every principal event
            statement = statement.where(AuditEvent.action.startswith(action, autoescape=True))
        if target:
            statement = statement.where(AuditEvent.target.startswith(target, autoescape=True))
        if since is not None:
            statement = statement.where(AuditEvent.at >= since)
        if until is not None:
            statement = statement.where(AuditEvent.at < until)
        if before.isdigit() and len(before) <= 18:
            statement = statement.where(AuditEvent.id < int(before))
        statement = statement.order_by(AuditEvent.id.desc()).limit(PAGE_SIZE + 1)
        return [AuditEventOut.model_validate(row) for row in view.session.scalars(statement)]

    rows = await console.read(read) if not errors else []
    more = len(rows) > PAGE_SIZE
    events = rows[:PAGE_SIZE]
    filters = {k: form.text(k) for k in ("actor", "action", "target", "since", "until")}
    older = query(**filters, before=events[-1].id) if more and events else None
    return console.page(
        "audit.html",
        status=422 if errors else 200,
        title="Audit log",
        events=events,
        filters=filters,
        errors=errors,
        older=older,
        newest=query(**filters) if before else None,
    )
