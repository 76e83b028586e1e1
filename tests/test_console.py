"""The admin console in-process: sign-in and sessions, CSRF, timeouts, roles and org views
applied exactly as by the admin API, every page, and what each change confirms it revokes."""

from __future__ import annotations

import html
import logging
import re
import subprocess
import sys
import zipfile
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.console import sessions as console_sessions
from control.console.models import ConsoleSession
from control.console.pages import describe_rule
from control.kit.db import utcnow
from control.kit.routing import Status
from control.policy.schemas import GrantRuleCreate
from control.routes import ROUTES
from control.state import AppState
from tests.factories import RUN_EVENTS_QUERIES, OrgFixture

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """One browser: its own cookie jar on the app, and the forms' token of its last page."""

    def __init__(self, client: TestClient, base_url: str = "http://testserver") -> None:
        self.http = TestClient(client.app, base_url=base_url, raise_server_exceptions=True)
        self.csrf = ""

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params or None, follow_redirects=True)
        self._remember(response.text)
        return response

    def post(
        self,
        path: str,
        form: dict[str, Any] | list[tuple[str, str]] | None = None,
        *,
        csrf: bool = True,
        follow: bool = True,
    ) -> Any:
        pairs = list(form.items()) if isinstance(form, dict) else list(form or [])
        if csrf:
            pairs.append(("csrf_token", self.csrf))
        response = self.http.post(
            path,
            content=_encode(pairs),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=follow,
        )
        self._remember(response.text)
        return response

    def _remember(self, text: str) -> None:
        found = CSRF.search(text)
        if found:
            self.csrf = found.group(1)

    def sign_in(self, key: str) -> Any:
        self.get("/console/sign-in")
        return self.post("/console/sign-in", {"api_key": key})


def _encode(pairs: list[tuple[str, Any]]) -> str:
    from urllib.parse import urlencode

    expanded = []
    for name, value in pairs:
        for item in value if isinstance(value, list) else [value]:
            expanded.append((name, str(item)))
    return urlencode(expanded)


def text_of(response: Any) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.text)).split())


@pytest.fixture
def admin(client: TestClient, org_a: OrgFixture) -> Browser:
    browser = Browser(client)
    response = browser.sign_in(org_a.admin.key or "")
    assert response.status_code == 200, response.text
    assert response.url.path == "/console/principals"
    return browser


def count_sessions(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(ConsoleSession)) or 0)


# --- the route table ----------------------------------------------------------------------

CONSOLE = [route for route in ROUTES if route.status is Status.CONSOLE]


def test_console_routes_are_in_the_table_and_not_the_spec(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert len(CONSOLE) >= 20
    for route in CONSOLE:
        assert route.path.startswith("/console")
        assert route.path not in spec["paths"]


# --- sign-in, sessions, CSRF --------------------------------------------------------------


def test_sign_in_sets_a_strict_cookie_and_stores_only_a_hash(
    client: TestClient, org_a: OrgFixture, session: Session
) -> None:
    browser = Browser(client)
    browser.get("/console/sign-in")
    response = browser.post("/console/sign-in", {"api_key": org_a.admin.key}, follow=False)
    assert response.status_code == 303
    cookie = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith("control_console=")
    )
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # dev; prod below
    rows = session.scalars(select(ConsoleSession)).all()
    assert [row.id_hash for row in rows] == [console_sessions.hash_session_id(session_id)]
    assert session_id not in repr([row.__dict__ for row in rows])
    assert org_a.admin.key not in response.text


def test_prod_cookies_are_secure(client: TestClient, state: AppState, org_a: OrgFixture) -> None:
    settings = state.settings.model_copy(update={"env": "prod"})
    state.settings = settings
    browser = Browser(client, "https://testserver")
    page = browser.http.get("/console/sign-in")
    assert "Secure" in page.headers["set-cookie"]
    browser._remember(page.text)
    response = browser.post("/console/sign-in", {"api_key": org_a.admin.key}, follow=False)
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


def test_failed_sign_ins_read_alike_and_open_nothing(
    client: TestClient, org_a: OrgFixture, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    member = org_a.principal("plain-member")
    disabled = org_a.principal("gone")
    org_a.admin.ok(
        "PATCH", f"/api/admin/principals/{org_a.principals['gone']}", {"disabled": True}, status=200
    )
    answers = []
    for key in ("ctl_nope", "not-a-key", member.key, disabled.key, ""):
        browser = Browser(client)
        response = browser.sign_in(key or "")
        assert response.status_code == 401
        answers.append(re.sub(CSRF, "", response.text))
    assert len(set(answers)) == 1
    assert "cannot sign in" in answers[0]
    assert count_sessions(session) == 0
    assert member.key and member.key not in caplog.text


def test_sign_in_without_its_form_token_is_refused(client: TestClient, org_a: OrgFixture) -> None:
    browser = Browser(client)
    response = browser.post("/console/sign-in", {"api_key": org_a.admin.key}, csrf=False)
    assert response.status_code == 403
    assert "control_console=" not in response.headers.get("set-cookie", "")


def test_sign_in_attempts_are_rate_limited(
    client: TestClient, state: AppState, org_a: OrgFixture
) -> None:
    state.settings = state.settings.model_copy(update={"console_sign_in_attempts_per_minute": 2})
    browser = Browser(client)
    statuses = [browser.sign_in("ctl_wrong").status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    # The right key is refused too while the address is limited.
    assert browser.sign_in(org_a.admin.key or "").status_code == 429


def test_a_post_without_the_session_token_is_refused_and_changes_nothing(
    admin: Browser, org_a: OrgFixture
) -> None:
    before = org_a.admin.ok("GET", "/api/admin/principals", status=200)["items"]
    response = admin.post("/console/principals", {"kind": "user", "name": "sneaky"}, csrf=False)
    assert response.status_code == 403
    response = admin.http.post(
        "/console/principals",
        content="kind=user&name=sneaky&csrf_token=" + "0" * 64,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 403
    assert org_a.admin.ok("GET", "/api/admin/principals", status=200)["items"] == before


def test_another_sessions_token_does_not_post(
    client: TestClient, admin: Browser, org_a: OrgFixture
) -> None:
    other = Browser(client)
    other.sign_in(org_a.admin.key or "")
    assert other.csrf != admin.csrf
    other.csrf = admin.csrf
    assert other.post("/console/principals", {"kind": "user", "name": "x"}).status_code == 403


def test_pages_without_a_session_send_to_sign_in(client: TestClient) -> None:
    browser = Browser(client)
    for route in CONSOLE:
        if route.access.public:
            continue
        path = re.sub(r"\{[^}]+\}", "x1", route.path)
        response = browser.http.request(route.method, path, follow_redirects=False)
        if route.method == "GET":
            assert response.status_code == 303, route.path
            assert response.headers["location"].startswith("/console/sign-in")
        else:
            assert response.status_code == 403, route.path


def test_sign_out_ends_the_session(admin: Browser, session: Session) -> None:
    assert count_sessions(session) == 1
    response = admin.post("/console/sign-out")
    assert response.url.path == "/console/sign-in"
    assert "You signed out" in response.text
    assert count_sessions(session) == 0
    assert admin.get("/console/principals").url.path == "/console/sign-in"


def test_idle_and_absolute_timeouts(
    admin: Browser, client: TestClient, org_a: OrgFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = utcnow()
    # Busy just inside the idle timeout, again and again: still signed in...
    for step in (1, 2, 3):
        later = start + timedelta(minutes=29 * step)
        monkeypatch.setattr(console_sessions, "utcnow", lambda later=later: later)
        assert admin.get("/console/principals").url.path == "/console/principals"
    # ...then idle past it: the session is over.
    idle = start + timedelta(minutes=29 * 3 + 31)
    monkeypatch.setattr(console_sessions, "utcnow", lambda: idle)
    response = admin.get("/console/principals")
    assert response.url.path == "/console/sign-in"
    assert "Your session ended" in response.text

    fresh = Browser(client)
    monkeypatch.setattr(console_sessions, "utcnow", lambda: start)
    fresh.sign_in(org_a.admin.key or "")
    for step in range(1, 29):  # a request every 25 minutes, for 11 h 40 min
        moment = start + timedelta(minutes=25 * step)
        monkeypatch.setattr(console_sessions, "utcnow", lambda moment=moment: moment)
        assert fresh.get("/console/principals").url.path == "/console/principals"
    end = start + timedelta(hours=12)
    monkeypatch.setattr(console_sessions, "utcnow", lambda: end)
    assert fresh.get("/console/principals").url.path == "/console/sign-in"


def test_revoking_the_sign_in_key_ends_the_session(
    client: TestClient, org_b: OrgFixture, session: Session
) -> None:
    admin = Browser(client)
    admin.sign_in(org_b.admin.key or "")
    assert admin.get("/console/principals").url.path == "/console/principals"
    credentials = org_b.admin.ok(
        "GET", f"/api/admin/principals/{org_b.admin_id}/credentials", status=200
    )["items"]
    # A second admin revokes the key the console session was opened with.
    other = org_b.principal("second-admin", roles=["admin", "member"])
    assert other.delete(f"/api/admin/credentials/{credentials[0]['id']}").status_code == 204
    assert admin.get("/console/principals").url.path == "/console/sign-in"
    assert count_sessions(session) == 0


# --- roles and orgs -----------------------------------------------------------------------


def test_another_orgs_admin_sees_none_of_it(
    admin: Browser, client: TestClient, org_a: OrgFixture, org_b: OrgFixture
) -> None:
    admin.post("/console/principals", {"kind": "user", "name": "ada-of-a"})
    ada = admin.http.get("/console/principals").text
    ada_id = re.search(r"/console/principals/(prn_[A-Za-z0-9]+)\">ada-of-a", ada).group(1)
    other = Browser(client)
    other.sign_in(org_b.admin.key or "")
    listing = other.get("/console/principals")
    assert "ada-of-a" not in listing.text and org_a.admin_id not in listing.text
    assert other.get(f"/console/principals/{ada_id}").status_code == 404
    # Its forms cannot reach org A's objects either, and org A's audit stays out of sight.
    response = other.post(f"/console/principals/{ada_id}", {"disabled": "yes", "confirm": "yes"})
    assert response.status_code == 404
    assert "ada-of-a" not in other.get("/console/audit").text
    assert "No events match" in other.get("/console/audit", target=ada_id).text
    assert org_a.admin.ok("GET", f"/api/admin/principals/{ada_id}", status=200)["disabled"] is False


def test_keys_page_is_for_operators(admin: Browser, client: TestClient, org_b: OrgFixture) -> None:
    page = admin.get("/console/keys")
    assert page.status_code == 200
    assert "active" in page.text and "pending" in page.text
    other = Browser(client)
    other.sign_in(org_b.admin.key or "")
    assert "/console/keys" not in other.get("/console/principals").text
    refused = other.get("/console/keys")
    assert refused.status_code == 403
    assert "operator role" in refused.text


def test_an_admin_cannot_confer_operator_through_the_console(
    client: TestClient, org_b: OrgFixture
) -> None:
    browser = Browser(client)
    browser.sign_in(org_b.admin.key or "")
    response = browser.post(
        "/console/principals", [("kind", "user"), ("name", "boss"), ("roles", "operator")]
    )
    assert response.status_code == 403
    assert "operator" in text_of(response)


# --- pages --------------------------------------------------------------------------------


def _principal_id(browser: Browser, name: str) -> str:
    page = browser.http.get("/console/principals").text
    found = re.search(rf"/console/principals/(prn_[A-Za-z0-9]+)\">{re.escape(name)}<", page)
    assert found, page
    return found.group(1)


def test_create_a_principal_issue_and_revoke_a_key(admin: Browser, org_a: OrgFixture) -> None:
    created = admin.post("/console/principals", {"kind": "user", "name": "ada"})
    assert created.status_code == 200 and "Created." in created.text
    ada = _principal_id(admin, "ada")
    issued = admin.post(f"/console/principals/{ada}/credentials", {"name": "laptop"})
    key = re.search(r'id="issued-key" class="key" readonly value="(ctl_[^"]+)"', issued.text)
    assert key, issued.text
    assert issued.headers["cache-control"] == "no-store"
    assert "Copy" in issued.text
    # The key works, and the page showing it once does not show it again.
    assert (
        org_a.client.get(
            "/api/admin/principals", headers={"Authorization": f"Bearer {key.group(1)}"}
        ).status_code
        == 403
    )  # a member, not an admin: authenticated, refused
    detail = admin.get(f"/console/principals/{ada}")
    assert key.group(1) not in detail.text
    credential_id = re.search(r"/console/credentials/(cred_[A-Za-z0-9]+)/revoke", detail.text)
    # Revoking asks first, naming whose tokens end.
    confirm = admin.post(f"/console/credentials/{credential_id.group(1)}/revoke")
    assert "Confirm" in confirm.text and "ada" in text_of(confirm)
    assert (
        org_a.client.get(
            "/api/admin/principals", headers={"Authorization": f"Bearer {key.group(1)}"}
        ).status_code
        == 403
    )
    done = admin.post(f"/console/credentials/{credential_id.group(1)}/revoke", {"confirm": "yes"})
    assert "Revoked." in done.text and "revoked" in done.text
    assert (
        org_a.client.get(
            "/api/admin/principals", headers={"Authorization": f"Bearer {key.group(1)}"}
        ).status_code
        == 401
    )


def test_api_problems_show_next_to_their_field(admin: Browser) -> None:
    response = admin.post("/console/principals", {"kind": "user", "name": ""})
    assert response.status_code == 422
    assert re.search(r'id="err-name" role="alert">[^<]+<', response.text)
    response = admin.post("/console/streams", {"id": "not a stream"})
    assert response.status_code == 422
    assert re.search(r'id="err-id" role="alert">[^<]+<', response.text)


def test_rules_check_live_and_explain_before_and_after(admin: Browser, org_a: OrgFixture) -> None:
    admin.post("/console/principals", {"kind": "user", "name": "ada"})
    ada = _principal_id(admin, "ada")
    defined = admin.post(
        "/console/query-sets",
        {
            "name": "run_events",
            "stream_kinds": "run",
            "queries": "SELECT * FROM run_event_view\nSELECT * FROM run_checkpoint_view",
        },
    )
    assert "Created." in defined.text, defined.text
    registered = admin.post("/console/streams", {"id": "run:01J9ZK", "owner_id": ada})
    assert "Registered." in registered.text
    # Denied: no rule gives it.
    explained = admin.get("/console/explain", principal_id=ada, streams="run:01J9ZK")
    assert "denied" in explained.text and "not_permitted" in explained.text

    rule = {
        "effect": "allow",
        "subjects_roles": "member",
        "streams_kind": "run",
        "streams_relation": "owner",
        "rule_query_sets": "run_events",
        "rule_ops": "subscribe",
    }
    # The live check names the problem next to the field, and saves nothing.
    check = admin.post("/console/rules/check", {**rule, "rule_ops": ""})
    assert 'id="err-rule_ops"' in check.text and "at least one op" in check.text
    check = admin.post("/console/rules/check", {**rule, "streams_kind": "Bad Kind"})
    assert re.search(r'id="err-streams_kind" role="alert" hx-swap-oob="true">[^<]+<', check.text)
    check = admin.post("/console/rules/check", rule)
    assert "Valid." in check.text and "Allows role member to subscribe" in check.text
    assert org_a.admin.ok("GET", "/api/admin/grant-rules", status=200)["items"] == []

    # A proposed rule shows what it would allow before it is saved.
    proposed = admin.get(
        "/console/explain", principal_id=ada, streams="run:01J9ZK", propose="yes", **rule
    )
    assert "would become" in proposed.text and "allowed" in text_of(proposed)
    assert org_a.admin.ok("GET", "/api/admin/grant-rules", status=200)["items"] == []
    saved = admin.post("/console/rules", rule)
    assert "Created." in saved.text
    explained = admin.get("/console/explain", principal_id=ada, streams="run:01J9ZK")
    assert "allowed" in explained.text and "run_events@1" in explained.text

    # A deny rule confirms whose tokens it revokes before it is saved.
    deny = {
        "effect": "deny",
        "subjects_principal_ids": ada,
        "streams_kind": "run",
        "streams_relation": "org",
    }
    asked = admin.post("/console/rules", deny)
    assert "Confirm" in asked.text and "ada" in text_of(asked)
    assert len(org_a.admin.ok("GET", "/api/admin/grant-rules", status=200)["items"]) == 1
    admin.post("/console/rules", {**deny, "confirm": "yes"})
    explained = admin.get("/console/explain", principal_id=ada, streams="run:01J9ZK")
    assert "denied_by_rule" in explained.text


def test_a_what_if_never_leaks_into_the_shared_policy_cache(
    admin: Browser, org_a: OrgFixture, state: AppState
) -> None:
    member = org_a.principal("ada")
    ada = org_a.principals["ada"]
    org_a.stream("run:1", owner_id=ada)
    rule = {
        "effect": "allow",
        "subjects_roles": "member",
        "streams_kind": "run",
        "streams_relation": "owner",
        "rule_ops": "subscribe",
    }
    admin.get("/console/explain", principal_id=ada, streams="run:1", propose="yes", **rule)
    # A real change moves the policy revision to where the what-if's did: minting must see
    # the real policy (no rule), not the rolled-back one.
    org_a.query_set("run_checkpoints", ["run"], ["SELECT * FROM run_checkpoint_view"])
    response = member.post("/api/sync/token", {"streams": ["run:1"]})
    assert response.status_code == 403, response.text


def test_deleting_a_stream_confirms_and_every_change_is_audited(
    admin: Browser, org_a: OrgFixture
) -> None:
    admin.post("/console/streams", {"id": "run:gone"})
    confirm = admin.post("/console/streams/run:gone/delete")
    assert "Confirm" in confirm.text
    assert org_a.admin.get("/api/admin/streams/run:gone").status_code == 200
    admin.post("/console/streams/run:gone/delete", {"confirm": "yes"})
    assert org_a.admin.get("/api/admin/streams/run:gone").status_code == 404
    audit = admin.get("/console/audit")
    for action in ("console.sign_in", "stream.register", "stream.delete"):
        assert action in audit.text
    filtered = admin.get("/console/audit", action="stream.")
    assert "stream.delete" in filtered.text and "console.sign_in" not in filtered.text
    assert "run:gone" in admin.get("/console/audit", target="run:").text
    assert "No events match" in admin.get("/console/audit", since="2999-01-01T00:00").text
    assert admin.get("/console/audit", since="yesterday").status_code == 422


def test_audit_log_pages(admin: Browser, org_a: OrgFixture) -> None:
    for index in range(55):
        org_a.stream(f"run:page{index}")
    first = admin.get("/console/audit")
    assert "run:page54" in first.text and "run:page0<" not in first.text
    older = re.search(r'href="\?([^"]+)" id="older"', first.text)
    assert older
    second = admin.get("/console/audit?" + html.unescape(older.group(1)))
    assert "run:page0<" in second.text and "run:page54" not in second.text


def test_revocations_and_trusted_issuers_pages(admin: Browser, org_a: OrgFixture) -> None:
    org_a.principal("ada")
    ada = org_a.principals["ada"]
    asked = admin.post("/console/revocations", {"kind": "subject", "value": ada})
    assert "Confirm" in asked.text and "ada" in text_of(asked)
    done = admin.post("/console/revocations", {"kind": "subject", "value": ada, "confirm": "yes"})
    assert "Revoked." in done.text and ada in done.text
    wrong = admin.post("/console/revocations", {"kind": "subject", "value": "prn_nobody"})
    assert wrong.status_code == 422 and "not a principal of this org" in wrong.text

    created = admin.post(
        "/console/trusted-issuers",
        {"issuer": "http://127.0.0.1:9/idp", "audiences": "web", "default_roles": "member"},
    )
    assert created.status_code == 200, created.text
    assert "http://127.0.0.1:9/idp" in created.text
    bad = admin.post("/console/trusted-issuers", {"issuer": "nope", "audiences": "web"})
    assert bad.status_code == 422 and re.search(r'id="err-issuer" role="alert">[^<]+<', bad.text)


def test_an_empty_list_says_so_in_one_row_across_its_columns(
    admin: Browser, org_a: OrgFixture
) -> None:
    # A new org has its admin, the service's signing keys, and nothing else.
    for path, columns, empty in (
        ("/console/streams", 5, "No streams."),
        ("/console/query-sets", 4, "No query sets."),
        ("/console/revocations", 5, "No revocations."),
        ("/console/trusted-issuers", 5, "No trusted issuers."),
        ("/console/audit?action=nothing.", 6, "No events match."),
    ):
        page = admin.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.text.count('<th scope="col">') == columns, path
        assert f'<tr><td colspan="{columns}">{empty}</td></tr>' in page.text, path
    for path, row in (("/console/principals", org_a.admin_id), ("/console/keys", "pending")):
        page = admin.get(path)
        assert row in page.text and "colspan" not in page.text, path
    # The row-action column has a name for screen readers only.
    issuers = admin.get("/console/trusted-issuers").text
    assert '<th scope="col"><span class="sr-only">Actions</span></th>' in issuers


def test_every_page_renders_with_its_security_headers(admin: Browser) -> None:
    for path in (
        "/console/principals",
        "/console/streams",
        "/console/query-sets",
        "/console/rules",
        "/console/explain",
        "/console/revocations",
        "/console/trusted-issuers",
        "/console/keys",
        "/console/audit",
    ):
        page = admin.get(path)
        assert page.status_code == 200, (path, page.text)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert "<label" in page.text or path == "/console/keys"
    asset = admin.http.get("/console/assets/htmx.min.js")
    assert asset.status_code == 200 and "htmx" in asset.text
    assert admin.http.get("/console/assets/..%2Fmodels.py").status_code == 404


def test_bad_forms_never_reach_a_500(admin: Browser) -> None:
    for body in (b"\xff\xfe", b"name=%00&kind=user", b"a=" + b"x&a=" * 3000):
        response = admin.http.post(
            "/console/principals",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code in (400, 403, 413), response.status_code
    json_post = admin.http.post("/console/principals", json={"kind": "user"})
    assert json_post.status_code == 415
    assert admin.get("/console/principals", cursor="!!").status_code == 422
    assert admin.get("/console/explain", principal_id="prn_x", streams="run:1").status_code == 404


def test_rule_sentences_say_what_each_rule_allows() -> None:
    rule = GrantRuleCreate.model_validate(
        {
            "effect": "allow",
            "subjects": {"roles": ["member"]},
            "streams": {"kind": "run", "relation": "owner"},
            "query_sets": ["run_events"],
            "ops": ["subscribe"],
            "max_ttl_seconds": 600,
        }
    )
    assert describe_rule(rule, {}) == (
        "Allows role member to subscribe on the run streams they own, with query sets "
        "run_events; tokens live at most 600 s."
    )
    deny = GrantRuleCreate.model_validate(
        {
            "effect": "deny",
            "subjects": {"kinds": ["device"]},
            "streams": {"kind": "run", "relation": "org"},
        }
    )
    assert (
        describe_rule(deny, {}) == "Denies every device any access to every run stream of the org."
    )


@pytest.mark.e2e
def test_the_wheel_ships_the_consoles_templates_and_assets(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("control-*.whl"))).namelist())
    package = root / "control" / "console"
    shipped = [
        path.relative_to(root).as_posix()
        for folder in ("templates", "static")
        for path in (package / folder).iterdir()
    ]
    assert "control/console/static/htmx.min.js" in shipped
    assert "control/console/static/htmx.LICENSE" in shipped
    assert set(shipped) <= names, set(shipped) - names


# --- editing: rules, query sets, trusted issuers; principals and keys ---------------------


def _ada_with_a_granted_stream(org_a: OrgFixture) -> tuple[str, dict[str, Any]]:
    """Ada (a member) owning run:1, and the allow rule that gives it to her."""
    org_a.principal("ada")
    ada = org_a.principals["ada"]
    org_a.query_set("run_events", ["run"], RUN_EVENTS_QUERIES)
    org_a.stream("run:1", owner_id=ada)
    rule = org_a.allow(relation="owner", query_sets=["run_events"], ops=["subscribe", "append"])
    return ada, rule


def test_editing_a_rule_previews_what_it_allows_and_revokes(
    admin: Browser, org_a: OrgFixture
) -> None:
    _, rule = _ada_with_a_granted_stream(org_a)
    listing = admin.get("/console/rules")
    assert f'href="/console/rules/{rule["id"]}"' in listing.text
    page = admin.get(f"/console/rules/{rule['id']}")
    assert page.status_code == 200
    assert "Allows role member to append, subscribe on the run streams they own" in text_of(page)
    # The form holds the rule as saved.
    assert re.search(r'name="rule_ops" value="append"\s+checked', page.text)
    assert re.search(r'name="rule_query_sets" value="run_events"\s+checked', page.text)
    assert 'id="subjects_roles" name="subjects_roles" value="member"' in page.text

    narrower = {
        "rule_id": rule["id"],
        "effect": "allow",
        "subjects_roles": "member",
        "streams_kind": "run",
        "streams_relation": "owner",
        "rule_query_sets": "run_events",
        "rule_ops": "subscribe",
    }
    # The live check runs it as the replacement: valid, and whose tokens it ends.
    check = admin.post("/console/rules/check", narrower)
    assert "Valid." in check.text and "revokes the tokens of" in check.text
    assert "ada" in text_of(check)
    bad = admin.post("/console/rules/check", {**narrower, "streams_kind": "Not A Kind"})
    assert re.search(r'id="err-streams_kind" role="alert" hx-swap-oob="true">[^<]+<', bad.text)

    path = f"/console/rules/{rule['id']}"
    form = {k: v for k, v in narrower.items() if k != "rule_id"}
    asked = admin.post(path, form)
    words = text_of(asked)
    assert "Confirm" in words and "ada" in words
    assert "Now: Allows role member to append, subscribe" in words
    assert "After: Allows role member to subscribe on" in words
    assert org_a.admin.ok("GET", f"/api/admin/grant-rules/{rule['id']}")["ops"] == [
        "append",
        "subscribe",
    ]
    done = admin.post(path, {**form, "confirm": "yes"})
    assert done.url.path == path and "Saved." in done.text
    assert org_a.admin.ok("GET", f"/api/admin/grant-rules/{rule['id']}")["ops"] == ["subscribe"]
    # A problem shows next to its field, and saves nothing.
    wrong = admin.post(path, {**form, "rule_ops": "", "confirm": "yes"})
    assert wrong.status_code == 422
    assert re.search(r'id="err-rule_ops" role="alert">[^<]+<', wrong.text)
    assert "grant_rule.update" in admin.get("/console/audit", action="grant_rule.").text


@pytest.mark.usefixtures("enforce_shipped_catalog")
def test_query_sets_are_defined_and_replaced_from_the_modules_catalog(
    admin: Browser, org_a: OrgFixture
) -> None:
    page = admin.get("/console/query-sets")
    # A query set starts at version 1: the catalog's first versions are offered.
    assert "run_events@1" in page.text and "run_checkpoints@1" in page.text
    assert "run_events@2" not in page.text
    prefill = re.search(
        r'href="/console/query-sets\?([^"]+)#create-h"><code>run_events@1', page.text
    )
    assert prefill
    filled = admin.get("/console/query-sets?" + html.unescape(prefill.group(1)))
    assert 'value="run_events"' in filled.text and "SELECT * FROM run_event_view" in filled.text
    created = admin.post(
        "/console/query-sets",
        {"name": "run_events", "stream_kinds": "run", "queries": "\n".join(RUN_EVENTS_QUERIES)},
    )
    assert created.url.path == "/console/query-sets/run_events" and "Created." in created.text
    assert "run_events@1" not in admin.get("/console/query-sets").text.split("catalog")[-1]

    # Its page offers the next version the catalog serves, and fills it in.
    page = admin.get("/console/query-sets/run_events")
    assert "control-sync-module@1 serves run_events@1 , run_events@2" in text_of(page)
    assert "Save as version 2" in page.text
    fill = re.search(
        r'href="(/console/query-sets/run_events\?[^"]+)" id="fill-from-catalog"', page.text
    )
    assert fill
    filled = admin.get(html.unescape(fill.group(1)))
    assert ">SELECT * FROM run_event_view</textarea>" in filled.text

    # Granted to Ada: replacing it ends her tokens, and says so first.
    org_a.principal("ada")
    org_a.allow(relation="org", query_sets=["run_events"])
    form = {"stream_kinds": "run", "queries": "SELECT * FROM run_event_view"}
    asked = admin.post("/console/query-sets/run_events", form)
    assert "Replace query set run_events@1 with run_events@2" in text_of(asked)
    assert "ada" in text_of(asked)
    assert org_a.admin.ok("GET", "/api/admin/query-sets/run_events")["version"] == 1
    done = admin.post("/console/query-sets/run_events", {**form, "confirm": "yes"})
    assert "Saved." in done.text
    assert org_a.admin.ok("GET", "/api/admin/query-sets/run_events")["version"] == 2

    # The catalog serves no version 3: refused, with the catalog's words, changing nothing.
    page = admin.get("/console/query-sets/run_events")
    assert "does not serve" in text_of(page)
    refused = admin.post("/console/query-sets/run_events", {**form, "confirm": "yes"})
    assert refused.status_code == 422 and "does not serve run_events@3" in text_of(refused)
    assert org_a.admin.ok("GET", "/api/admin/query-sets/run_events")["version"] == 2

    # Deleting is refused while a rule names it, then confirmed and done.
    in_use = admin.post("/console/query-sets/run_events/delete", {"confirm": "yes"})
    assert in_use.status_code == 409 and "delete it first" in text_of(in_use)
    assert admin.get("/console/query-sets/nope").status_code == 404
    assert admin.get("/console/query-sets/%00bad").status_code == 404


def test_trusted_issuers_are_edited_with_their_role_map(admin: Browser, org_a: OrgFixture) -> None:
    created = admin.post(
        "/console/trusted-issuers",
        {
            "issuer": "http://127.0.0.1:9/idp",
            "audiences": "web, cli",
            "default_roles": "member",
            "role_claim": "groups",
            "role_map": "support-team = support\ncn=ops,ou=groups = ops, support",
            "algorithms": "ES256",
        },
    )
    assert created.status_code == 200, created.text
    issuer = org_a.admin.ok("GET", "/api/admin/trusted-issuers")["items"][0]
    assert issuer["role_map"] == {
        "support-team": ["support"],
        "cn=ops,ou=groups": ["ops", "support"],
    }
    assert issuer["audiences"] == ["cli", "web"] and issuer["algorithms"] == ["ES256"]

    path = f"/console/trusted-issuers/{issuer['id']}"
    page = admin.get(path)
    assert page.status_code == 200
    assert "cn=ops,ou=groups = ops, support" in html.unescape(page.text)
    assert re.search(r'name="algorithms" value="ES256"\s+checked', page.text)
    edit = {
        "issuer": "http://127.0.0.1:9/idp",
        "audiences": "web",
        "default_roles": "member",
        "role_claim": "roles",
        "role_map": "admins = support",
        "algorithms": ["ES256", "RS256"],
    }
    saved = admin.post(path, edit)
    assert saved.url.path == path and "Saved." in saved.text, saved.text
    after = org_a.admin.ok("GET", f"/api/admin/trusted-issuers/{issuer['id']}")
    assert after["role_claim"] == "roles" and after["role_map"] == {"admins": ["support"]}
    assert after["algorithms"] == ["ES256", "RS256"] and after["audiences"] == ["web"]

    for bad, field in (
        ({"role_map": "no equals sign"}, "role_map"),
        ({"role_map": "x = Not A Role!"}, "role_map"),
        ({"role_claim": "has spaces"}, "role_claim"),
        ({"algorithms": "HS256"}, "algorithms"),
    ):
        wrong = admin.post(path, {**edit, **bad})
        assert wrong.status_code == 422, (bad, wrong.status_code)
        assert re.search(rf'id="err-{field}" role="alert">[^<]+<', wrong.text), bad
    assert org_a.admin.ok("GET", f"/api/admin/trusted-issuers/{issuer['id']}") == after
    assert "trusted_issuer.update" in admin.get("/console/audit").text


def test_deleting_a_principal_confirms_whose_tokens_end(admin: Browser, org_a: OrgFixture) -> None:
    org_a.principal("ada")
    ada = org_a.principals["ada"]
    page = admin.get(f"/console/principals/{ada}")
    assert f'action="/console/principals/{ada}/delete"' in page.text
    asked = admin.post(f"/console/principals/{ada}/delete")
    assert "Delete principal ada" in text_of(asked) and ada in asked.text
    assert org_a.admin.get(f"/api/admin/principals/{ada}").status_code == 200
    done = admin.post(f"/console/principals/{ada}/delete", {"confirm": "yes"})
    assert done.url.path == "/console/principals" and "Deleted." in done.text
    assert org_a.admin.get(f"/api/admin/principals/{ada}").status_code == 404
    # No one deletes themselves.
    own = admin.post(f"/console/principals/{org_a.admin_id}/delete", {"confirm": "yes"})
    assert own.status_code == 409 and "cannot delete itself" in text_of(own)


def test_roles_disabling_and_keys_with_an_expiry(admin: Browser, org_a: OrgFixture) -> None:
    org_a.principal("ada")
    ada = org_a.principals["ada"]
    path = f"/console/principals/{ada}"
    # Taking a role away revokes her tokens: confirmed first.
    asked = admin.post(path, [("roles", "service")])
    assert "Confirm" in asked.text and "ada" in text_of(asked)
    admin.post(path, [("roles", "service"), ("other_roles", "support"), ("confirm", "yes")])
    assert org_a.admin.ok("GET", f"/api/admin/principals/{ada}")["roles"] == ["service", "support"]
    admin.post(
        path,
        [("roles", "service"), ("other_roles", "support"), ("disabled", "yes"), ("confirm", "yes")],
    )
    assert org_a.admin.ok("GET", f"/api/admin/principals/{ada}")["disabled"] is True
    assert "disabled" in admin.get("/console/principals").text

    issued = admin.post(f"{path}/credentials", {"name": "ci", "expires_at": "2030-01-02T03:04"})
    assert issued.status_code == 200 and 'id="issued-key"' in issued.text
    credentials = org_a.admin.ok("GET", f"/api/admin/principals/{ada}/credentials")["items"]
    assert [c["expires_at"][:16] for c in credentials if c["name"] == "ci"] == ["2030-01-02T03:04"]
    assert "2030-01-02 03:04:00 UTC" in admin.get(path).text
    wrong = admin.post(f"{path}/credentials", {"name": "x", "expires_at": "soon"})
    assert wrong.status_code == 422 and re.search(
        r'id="err-expires_at" role="alert">[^<]+<', wrong.text
    )


def test_an_operator_rotates_the_signing_keys(
    admin: Browser, client: TestClient, state: AppState, org_b: OrgFixture
) -> None:
    before = {k["state"]: k["kid"] for k in admin_keys(admin)}
    asked = admin.post("/console/keys/rotate")
    words = text_of(asked)
    assert "Rotate the signing keys now" in words and "revokes no token" in words
    assert f"The pending key {before['pending']} starts signing" in words
    # Too soon after the pending key was published: refused, with how long to wait.
    early = admin.post("/console/keys/rotate", {"confirm": "yes"})
    assert early.status_code == 409 and "rotate in" in text_of(early)
    state.settings = state.settings.model_copy(update={"key_publish_lead_seconds": 0})
    done = admin.post("/console/keys/rotate", {"confirm": "yes"})
    assert done.url.path == "/console/keys" and "Rotated" in done.text
    after = {k["state"]: k["kid"] for k in admin_keys(admin)}
    assert after["active"] == before["pending"] and after["retiring"] == before["active"]
    assert "keys.rotate" in admin.get("/console/audit").text
    # Only operators.
    other = Browser(client)
    other.sign_in(org_b.admin.key or "")
    refused = other.post("/console/keys/rotate", {"confirm": "yes"})
    assert refused.status_code == 403 and "operator role" in refused.text
    assert {k["state"]: k["kid"] for k in admin_keys(admin)} == after


def admin_keys(browser: Browser) -> list[dict[str, str]]:
    page = browser.get("/console/keys").text
    rows = re.findall(
        r"<td><code>([^<]+)</code></td>\s*<td>[^<]*</td>\s*"
        r"<td><span class=\"badge [a-z]+\">([a-z]+)<",
        page,
    )
    return [{"kid": kid, "state": state} for kid, state in rows]


# --- as an attacker -----------------------------------------------------------------------


def _org_a_objects(org_a: OrgFixture) -> dict[str, str]:
    """One object of each kind in org A, by the path parameter that names it."""
    org_a.principal("ada")
    ada = org_a.principals["ada"]
    credential = org_a.admin.ok("GET", f"/api/admin/principals/{ada}/credentials")["items"][0]
    org_a.query_set("run_events", ["run"], RUN_EVENTS_QUERIES)
    org_a.stream("run:of-a", owner_id=ada)
    rule = org_a.allow(relation="owner", query_sets=["run_events"])
    issuer = org_a.admin.ok(
        "POST",
        "/api/admin/trusted-issuers",
        {"issuer": "http://127.0.0.1:9/a", "audiences": ["a"]},
    )
    return {
        "principal_id": ada,
        "credential_id": credential["id"],
        "name": "run_events",
        "stream_id": "run:of-a",
        "rule_id": rule["id"],
        "issuer_id": issuer["id"],
    }


# Nonexistent ids of the same shapes.
MISSING = {
    "principal_id": "prn_01M0000000000000000000000A",
    "credential_id": "cred_01M0000000000000000000000A",
    "name": "run_checkpoints",
    "stream_id": "run:nobody",
    "rule_id": "rule_01M0000000000000000000000A",
    "issuer_id": "tis_01M0000000000000000000000A",
}
# A plausible form for each post, so that only the object's org can tell the answers apart.
FORMS: dict[str, dict[str, Any]] = {
    "console_update_principal": {"roles": "member"},
    "console_issue_credential": {"name": "stolen"},
    "console_update_query_set": {"stream_kinds": "run", "queries": RUN_EVENTS_QUERIES[0]},
    "console_update_rule": {
        "effect": "allow",
        "subjects_roles": "member",
        "streams_kind": "run",
        "streams_relation": "org",
        "rule_ops": "subscribe",
    },
    "console_update_trusted_issuer": {"issuer": "http://127.0.0.1:9/b", "audiences": "b"},
}


def _snapshot(org: OrgFixture) -> Any:
    principals = org.admin.ok("GET", "/api/admin/principals")["items"]
    credentials = [
        org.admin.ok("GET", f"/api/admin/principals/{p['id']}/credentials")["items"]
        for p in principals
    ]
    return principals, credentials, org.admin.ok("GET", "/api/admin/policy")


def test_another_orgs_ids_are_not_found_in_every_path_and_form(
    client: TestClient, org_a: OrgFixture, org_b: OrgFixture
) -> None:
    ids = _org_a_objects(org_a)
    before = _snapshot(org_a)
    other = Browser(client)
    other.sign_in(org_b.admin.key or "")

    def answer(method: str, path: str, form: dict[str, Any], secret: str) -> tuple[int, str]:
        if method == "GET":
            response = other.get(path, **form)
        else:
            response = other.post(path, {**form, "confirm": "yes"})
        return response.status_code, text_of(response).replace(secret, "ID")

    paths = [r for r in CONSOLE if "{" in r.path and "{asset}" not in r.path]
    assert len(paths) >= 14
    for route in paths:
        param = re.search(r"\{([^}]+)\}", route.path).group(1)
        form = FORMS.get(route.operation_id, {})
        theirs = answer(
            route.method, route.path.replace(f"{{{param}}}", ids[param]), form, ids[param]
        )
        missing = answer(
            route.method, route.path.replace(f"{{{param}}}", MISSING[param]), form, MISSING[param]
        )
        assert theirs[0] == 404, (route.operation_id, theirs)
        assert theirs == missing, route.operation_id
        assert "not found" in theirs[1], route.operation_id

    # Forms naming another org's objects read as forms naming none.
    ada, nobody = ids["principal_id"], MISSING["principal_id"]
    rule = {**FORMS["console_update_rule"], "streams_relation": "owner"}
    for method, path, field, form in (
        ("POST", "/console/streams", "owner_id", {"id": "run:b-1"}),
        ("POST", "/console/rules", "subjects_principal_ids", rule),
        ("POST", "/console/rules/check", "subjects_principal_ids", rule),
        ("GET", "/console/explain", "principal_id", {"streams": "run:of-a"}),
        ("POST", "/console/revocations", "value", {"kind": "subject"}),
        ("GET", "/console/audit", "actor", {}),
    ):
        theirs = answer(method, path, {**form, field: ada}, ada)
        missing = answer(method, path, {**form, field: nobody}, nobody)
        assert theirs == missing, (path, theirs[1][-300:], missing[1][-300:])
        assert theirs[0] in (200, 404, 422), (path, theirs[0])
    credential = answer(
        "POST",
        "/console/revocations",
        {"kind": "credential", "value": ids["credential_id"]},
        ids["credential_id"],
    )
    assert credential == answer(
        "POST",
        "/console/revocations",
        {"kind": "credential", "value": MISSING["credential_id"]},
        MISSING["credential_id"],
    )
    assert _snapshot(org_a) == before
    assert "run:of-a" not in other.get("/console/streams").text


BAD_NEXT = (
    "https://evil.example/console",
    "//evil.example/console",
    "/\\evil.example",
    "/console/../..//evil.example",
    "/console//evil.example",
    "/console/%2F%2Fevil.example",
    "/console/sign-out",
    "/console/sign-in?next=//evil.example",
    "javascript:alert(1)",
    "/console\r\nLocation: https://evil.example",
    "/elsewhere",
)


def test_sign_in_goes_on_only_to_a_console_page(
    client: TestClient, state: AppState, org_a: OrgFixture
) -> None:
    state.settings = state.settings.model_copy(update={"console_sign_in_attempts_per_minute": 100})
    browser = Browser(client)
    # A page asked for before signing in is where signing in goes on to.
    first = browser.http.get("/console/audit?action=principal.", follow_redirects=False)
    assert first.status_code == 303
    assert (
        first.headers["location"]
        == "/console/sign-in?next=%2Fconsole%2Faudit%3Faction%3Dprincipal."
    )
    page = browser.get(first.headers["location"])
    assert 'name="next" value="/console/audit?action=principal."' in page.text
    response = browser.post(
        "/console/sign-in",
        {"api_key": org_a.admin.key, "next": "/console/audit?action=principal."},
        follow=False,
    )
    assert response.headers["location"] == "/console/audit?action=principal."
    for bad in BAD_NEXT:
        attempt = Browser(client)
        page = attempt.get("/console/sign-in", next=bad)
        assert 'name="next"' not in page.text, bad
        response = attempt.post(
            "/console/sign-in", {"api_key": org_a.admin.key, "next": bad}, follow=False
        )
        assert response.status_code == 303, bad
        assert response.headers["location"] == "/console", bad
        # Signed in already: the sign-in page does not go on there either.
        again = attempt.http.get("/console/sign-in", params={"next": bad}, follow_redirects=False)
        assert again.headers["location"] == "/console", bad


def test_every_post_needs_its_form_token_sign_out_too(
    admin: Browser, org_a: OrgFixture, session: Session
) -> None:
    ids = _org_a_objects(org_a)
    before = _snapshot(org_a)
    posts = [r for r in CONSOLE if r.method == "POST" and r.path != "/console/sign-in"]
    assert len(posts) >= 17
    for route in posts:
        path = re.sub(r"\{([^}]+)\}", lambda m: ids[m.group(1)], route.path)
        form = {**FORMS.get(route.operation_id, {}), "confirm": "yes"}
        response = admin.post(path, form, csrf=False)
        assert response.status_code == 403, route.operation_id
        assert "did not come from the console" in response.text, route.operation_id
    assert _snapshot(org_a) == before
    # Still signed in: a forged sign-out ended nothing.
    assert count_sessions(session) == 1
    assert admin.get("/console/principals").url.path == "/console/principals"


def _session_cookie(response: Any) -> str:
    cookie = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith("control_console=")
    )
    return str(cookie.split(";")[0].split("=", 1)[1])


def _sign_in_with_cookie(client: TestClient, key: str, session_id: str) -> Any:
    """Sign in from a browser that holds `session_id` as its session cookie."""
    browser = Browser(client)
    browser.get("/console/sign-in")
    return browser.http.post(
        "/console/sign-in",
        content=_encode([("api_key", key), ("csrf_token", browser.csrf)]),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"control_console={session_id}; "
            f"control_console_sign_in={browser.http.cookies.get('control_console_sign_in')}",
        },
        follow_redirects=False,
    )


def test_signing_in_always_starts_a_new_session(
    client: TestClient, org_a: OrgFixture, org_b: OrgFixture, session: Session
) -> None:
    # A planted cookie is never adopted: the session gets an id of the service's choosing.
    planted = "attacker-chosen-session-id"
    response = _sign_in_with_cookie(client, org_a.admin.key or "", planted)
    assert response.status_code == 303
    first = _session_cookie(response)
    assert first != planted
    assert count_sessions(session) == 1
    # Signing in (as anyone) from a browser holding a live session ends that session.
    response = _sign_in_with_cookie(client, org_b.admin.key or "", first)
    second = _session_cookie(response)
    assert second not in (first, planted)
    rows = session.scalars(select(ConsoleSession)).all()
    assert [row.id_hash for row in rows] == [console_sessions.hash_session_id(second)]
    # Signing out is a post with the form's token, never a link.
    assert client.get("/console/sign-out").status_code == 405


def test_framing_caching_and_script_are_locked_down(admin: Browser, org_a: OrgFixture) -> None:
    ids = _org_a_objects(org_a)
    pages = [r for r in CONSOLE if r.method == "GET" and "{asset}" not in r.path]
    for route in pages:
        path = re.sub(r"\{([^}]+)\}", lambda m: ids[m.group(1)], route.path)
        response = admin.http.get(path, follow_redirects=False)
        assert response.status_code in (200, 303), (path, response.status_code)
        headers = response.headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["cache-control"] == "no-store", path
        csp = headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp, path
        # No inline script, event handler or style attribute for the policy to forbid.
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", response.text), path
        assert not re.search(r"\son[a-z]+=", response.text), path
        assert not re.search(r"\sstyle=", response.text), path
    refused = admin.get("/console/principals/prn_nothere")
    assert refused.headers["x-frame-options"] == "DENY"
    signed_out = Browser(admin.http)
    page = signed_out.http.get("/console/sign-in")
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_no_key_or_session_id_is_ever_logged(
    client: TestClient, org_a: OrgFixture, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [org_a.admin.key or ""]
    browser = Browser(client)
    for wrong in ("ctl_wrong_key_0123456789", org_a.admin.key[:-3] + "xyz"):  # type: ignore[index]
        assert browser.sign_in(wrong).status_code == 401
        secrets.append(wrong)
    secrets.append(browser.http.cookies.get("control_console_sign_in") or "")
    signed_in = browser.post("/console/sign-in", {"api_key": org_a.admin.key}, follow=False)
    secrets += [_session_cookie(signed_in), browser.csrf]
    browser.get("/console/principals")
    secrets.append(browser.csrf)
    browser.post("/console/principals", {"kind": "user", "name": "ada"})
    ada = _principal_id(browser, "ada")
    issued = browser.post(f"/console/principals/{ada}/credentials", {"name": "laptop"})
    secrets.append(re.search(r'value="(ctl_[^"]+)"', issued.text).group(1))  # type: ignore[union-attr]
    browser.post("/console/sign-out")
    # Each failure is a security line, naming the address and never the key.
    failures = [r for r in caplog.records if "console.sign_in_failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.levelno == logging.WARNING for r in failures)
    assert "address=" in failures[0].getMessage()
    logged = caplog.text + "".join(repr(getattr(r, "fields", "")) for r in caplog.records)
    for secret in secrets:
        assert secret and len(secret) >= 20
        assert secret not in logged
        # Not even the half of one a careless prefix would show.
        assert secret[: len(secret) // 2] not in logged


# --- accessibility ------------------------------------------------------------------------


class _Controls(HTMLParser):
    """Every form control of a page, and whether a label names it."""

    def __init__(self) -> None:
        super().__init__()
        self.label_for: set[str] = set()
        self.in_label = 0
        self.controls: list[tuple[str, dict[str, str | None], bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "label":
            self.in_label += 1
            if found.get("for"):
                self.label_for.add(str(found["for"]))
        elif tag in ("input", "select", "textarea") and found.get("type") != "hidden":
            self.controls.append((tag, found, self.in_label > 0))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.in_label -= 1

    def unlabelled(self) -> list[str]:
        return [
            f"<{tag} {found}>"
            for tag, found, wrapped in self.controls
            if not wrapped
            and found.get("id") not in self.label_for
            and not found.get("aria-label")
            and not found.get("aria-labelledby")
        ]


def test_every_control_of_every_page_has_a_label(admin: Browser, org_a: OrgFixture) -> None:
    ids = _org_a_objects(org_a)
    pages = [r for r in CONSOLE if r.method == "GET" and "{asset}" not in r.path]
    seen = 0
    for route in pages:
        path = re.sub(r"\{([^}]+)\}", lambda m: ids[m.group(1)], route.path)
        page = admin.get(path)
        parser = _Controls()
        parser.feed(page.text)
        assert not parser.unlabelled(), (path, parser.unlabelled())
        seen += len(parser.controls)
    # And the pages reached by posting: a confirmation, a key shown once, a refusal.
    for page in (
        admin.post(f"/console/principals/{ids['principal_id']}/delete"),
        admin.post(f"/console/principals/{ids['principal_id']}/credentials", {"name": "k"}),
        admin.post("/console/principals", {"kind": "user", "name": ""}),
        Browser(admin.http).get("/console/sign-in"),
    ):
        parser = _Controls()
        parser.feed(page.text)
        assert not parser.unlabelled(), parser.unlabelled()
        seen += len(parser.controls)
    assert seen > 100


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, two: str) -> float:
    high, low = sorted((_luminance(one), _luminance(two)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_text_colours_meet_wcag_aa_contrast() -> None:
    css = (
        Path(__file__).resolve().parent.parent / "control/console/static/console.css"
    ).read_text()
    names = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", css))
    assert len(names) >= 12

    def colour(value: str) -> str:
        value = value.strip()
        found = re.fullmatch(r"var\(--([a-z-]+)\)", value)
        return names[found.group(1)] if found else value

    # Every rule that sets both a text colour and a background, as the stylesheet pairs them.
    pairs = []
    for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
        declared = dict(re.findall(r"(?:^|;)\s*(color|background):\s*([^;]+)", body))
        if "color" in declared and "background" in declared:
            pairs.append(
                (selector.strip(), colour(declared["color"]), colour(declared["background"]))
            )
    assert len(pairs) >= 8
    # And text on the backgrounds it inherits: body and muted text, links, errors, successes.
    for ink in ("ink", "muted", "accent", "bad", "ok"):
        for paper in ("paper", "wash"):
            pairs.append((f"{ink} on {paper}", names[ink], names[paper]))
    pairs += [
        ("error text", names["bad"], names["bad-wash"]),
        ("done text", names["ok"], names["ok-wash"]),
        ("warning card", names["ink"], names["warn-wash"]),
        ("muted on the table head", names["muted"], "#e5e7eb"),
        ("header text", "#d1d5db", "#111827"),
        ("a danger button", names["accent-ink"], names["bad"]),
        ("a hovered header link", "#e5e7eb", "#374151"),
    ]
    for what, ink, paper in pairs:
        assert contrast(ink, paper) >= 4.5, (what, ink, paper, round(contrast(ink, paper), 2))
    # The focus ring stands out (WCAG's 3:1 for what is not text) on every background.
    for paper in (names["paper"], names["wash"], names["warn-wash"], "#111827"):
        assert contrast(names["focus"], paper) >= 3, paper
    assert ":focus-visible { outline: 3px solid var(--focus)" in css
