"""The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium) against a real `control serve` on loopback: an admin's whole session, another org's
admin seeing none of it, and a form posted without its token refused. Each page is saved as a
screenshot under `test-artifacts/console/`.

`make browser-deps` installs the browser where it is missing; without it these tests skip,
saying so."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import Server, running_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

MISSING_BROWSER = (
    "the console's browser tests need Debian's chromium and chromium-driver: "
    "run `make browser-deps` (apt-get install chromium chromium-driver)"
)
# CI sets this: there, a missing browser is a failure, not a skip.
BROWSER_REQUIRED = os.environ.get("CONTROL_REQUIRE_BROWSER") == "1"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        (CHROMIUM is None or CHROMEDRIVER is None) and not BROWSER_REQUIRED,
        reason=MISSING_BROWSER,
    ),
]


@pytest.fixture(autouse=True)
def _browser_present() -> None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail(f"CONTROL_REQUIRE_BROWSER=1, but {MISSING_BROWSER}")


webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("console-browser")
    with running_server(f"sqlite:///{workdir}/control.db", workdir) as server:
        yield server


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace to sandbox in
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1366,900",  # a laptop screen
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER or "")
    browser = webdriver.Chrome(options=options, service=service)
    browser.implicitly_wait(0)
    try:
        yield browser
    finally:
        browser.quit()


class Console:
    def __init__(self, driver: WebDriver, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def wait_for(self, css: str, text: str | None = None, timeout: float = 15) -> None:
        # A page still loading can refuse a look at an element it is replacing (a stale
        # element, or Chromium's "node does not belong to the document"): look again, until
        # the timeout says the page never showed it.
        wait = WebDriverWait(self.driver, timeout, ignored_exceptions=(WebDriverException,))
        if text is None:
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))
        else:
            wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def fill(self, field_id: str, value: str) -> None:
        element = self.driver.find_element(By.ID, field_id)
        element.clear()
        element.send_keys(value)

    def choose(self, field_id: str, text_contains: str) -> None:
        select = Select(self.driver.find_element(By.ID, field_id))
        for option in select.options:
            if text_contains in option.text:
                select.select_by_visible_text(option.text)
                return
        raise AssertionError(f"no option {text_contains!r} in #{field_id}")

    def tick(self, name: str, value: str, on: bool = True) -> None:
        box = self.driver.find_element(By.CSS_SELECTOR, f"input[name='{name}'][value='{value}']")
        if box.is_selected() != on:
            box.click()

    def submit(self, button_css: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, button_css).click()

    def follow(self, by: str, value: str) -> None:
        """Click what loads another page (a form's button, a link) and wait until that page has
        replaced this one: where both show what the test looks for next, `wait_for` alone could
        find it on the page being left."""
        leaving = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.find_element(by, value).click()
        WebDriverWait(self.driver, 15).until(ec.staleness_of(leaving))

    def heading(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "h1").text)

    def main_text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "main").text)

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        # The whole page, not just the window: resize to the document's height first.
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1366, max(900, min(int(height), 4000)))
        self.driver.execute_script("window.scrollTo(0, 0)")
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1366, 900)
        return path

    def sign_in(self, key: str) -> None:
        self.open("/console")
        self.wait_for("#api_key")
        self.fill("api_key", key)
        self.submit("main form button[type=submit]")
        self.wait_for("h1", "Principals")

    def sign_out(self) -> None:
        self.submit("form.sign-out button")
        self.wait_for("h1", "Sign in")


def test_an_admins_session_end_to_end(server: Server, driver: WebDriver) -> None:
    acme = server.bootstrap("acme")
    globex = server.bootstrap("globex")
    console = Console(driver, server.base_url)

    # Sign in: the sign-in page, then the principals page.
    console.open("/console/principals")
    console.wait_for("#api_key")
    console.shot("01-sign-in")

    # By keyboard alone: the key field has the focus; Shift+Tab reaches the skip link, Tab the
    # key and the button, each showing its focus ring; Enter in the field signs in, and the
    # page first asked for opens.
    def press(*keys: str) -> str:
        chain = ActionChains(driver)
        for key in keys:
            chain = chain.key_down(Keys.SHIFT) if key == "shift" else chain.send_keys(key)
        chain.key_up(Keys.SHIFT).perform()
        active = driver.switch_to.active_element
        ring = driver.execute_script(
            "const s = getComputedStyle(document.activeElement);"
            "return [s.outlineStyle, s.outlineWidth];"
        )
        name = str(active.get_attribute("id") or active.text)
        assert ring == ["solid", "3px"], (name, ring)
        return name

    assert driver.switch_to.active_element.get_attribute("id") == "api_key"
    assert press("shift", Keys.TAB) == "Skip to content"
    assert press(Keys.TAB) == "api_key"
    driver.switch_to.active_element.send_keys(acme["api_key"])
    assert press(Keys.TAB) == "Sign in"
    assert press("shift", Keys.TAB) == "api_key"
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    console.wait_for("h1", "Principals")
    assert driver.current_url.endswith("/console/principals")
    assert acme["api_key"] not in driver.page_source
    cookie = driver.get_cookie("control_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    sessions_seen = [cookie["value"]]
    assert cookie["path"] == "/console"
    assert acme["api_key"] not in repr(driver.get_cookies())

    # Create a user.
    console.choose("kind", "user")
    console.fill("name", "ada")
    console.submit("form[action='/console/principals'] button")
    console.wait_for("h1", "Principal ada")
    ada_id = re.search(r"prn_[0-9A-Z]+", console.main_text()).group(0)
    console.open("/console/principals")
    console.shot("02-principals")

    # A query set from the module's catalog, and Ada's stream.
    console.open("/console/query-sets")
    console.follow(By.LINK_TEXT, "run_events@1")
    console.wait_for("#name")
    assert driver.find_element(By.ID, "name").get_attribute("value") == "run_events"
    console.follow(By.CSS_SELECTOR, "form[action='/console/query-sets'] button")
    console.wait_for("main", "Created.")
    assert "run_events@1" in console.main_text()
    console.shot("03-query-sets")
    console.open("/console/streams")
    console.fill("id", "run:01J9ZK")
    console.choose("owner_id", "ada")
    console.submit("form[action='/console/streams'] button")
    console.wait_for("main", "Registered.")
    console.shot("04-streams")

    # Explain a denial.
    console.open("/console/explain")
    console.choose("principal_id", "ada")
    console.fill("streams", "run:01J9ZK")
    console.submit("#explain")
    console.wait_for("#now-h")
    assert "denied" in console.main_text()
    assert "no allow rule gives this principal this stream" in console.main_text()
    console.shot("05-explain-denied")

    # Propose a rule: see it would be allowed, and whom saving it revokes, before saving.
    driver.find_element(By.CSS_SELECTOR, "details summary").click()
    console.tick("propose", "yes")
    console.fill("subjects_roles", "member")
    console.fill("streams_kind", "run")
    console.choose("streams_relation", "owner:")
    console.tick("rule_query_sets", "run_events")
    console.tick("rule_ops", "subscribe")
    console.fill("description", "Members read their own runs")
    console.submit("#explain")
    console.wait_for("#after-h")
    assert "would become allowed" in console.main_text()
    console.shot("06-explain-proposal")
    console.submit("#save-proposal")
    console.wait_for("main", "Created.")
    assert "Allows role member to subscribe on the run streams they own" in console.main_text()

    # The rule form checks as you type, by the same validation saving runs.
    driver.find_element(By.CSS_SELECTOR, "input[name='effect'][value='deny']").click()
    console.tick("subjects_kinds", "device")
    console.fill("streams_kind", "run")
    console.choose("streams_relation", "org:")
    console.tick("rule_ops", "subscribe", on=False)
    console.tick("rule_ops", "append")
    # Each change sends a check; an earlier one's "Valid." may show before the last one's answer.
    console.wait_for("#rule-check", "Takes ops append away from every device")
    assert driver.find_element(By.ID, "rule-check").text.startswith("Valid.")
    console.fill("streams_kind", "Run Kind")
    console.wait_for("#err-streams_kind", "pattern")
    console.fill("streams_kind", "run")
    console.wait_for("#rule-check", "Valid.")
    console.shot("07-rules")

    # Change the saved rule: its form checks the replacement live, and saving it says what it
    # allowed, what it will allow and whose tokens end, before anything changes.
    driver.find_element(By.PARTIAL_LINK_TEXT, "Edit").click()
    console.wait_for("h1", "Grant rule")
    console.tick("rule_ops", "append")
    console.wait_for("#rule-check", "append, subscribe")
    assert driver.find_element(By.ID, "rule-check").text.startswith("Valid.")
    console.shot("07b-rule-edit")
    console.submit("#save-rule")
    console.wait_for("#confirm")
    assert "After: Allows role member to append, subscribe" in console.main_text()
    console.shot("07c-confirm-rule-change")
    console.submit("#confirm")
    console.wait_for("main", "Saved.")

    # Now Ada is allowed.
    console.open(f"/console/explain?principal_id={ada_id}&streams=run%3A01J9ZK")
    console.wait_for("#now-h")
    assert "allowed" in console.main_text() and "run_events@1" in console.main_text()
    console.shot("08-explain-allowed")

    # A key for Ada, shown once with a copy button; then revoked, after a confirmation.
    console.open(f"/console/principals/{ada_id}")
    console.fill("credential_name", "laptop")
    console.submit(f"form[action='/console/principals/{ada_id}/credentials'] button")
    console.wait_for("#issued-key")
    key = driver.find_element(By.ID, "issued-key").get_attribute("value")
    assert key and key.startswith("ctl_")
    console.submit("#copy-key")
    console.wait_for("#copy-status", "Cop")
    console.shot("09-key-issued")
    console.open(f"/console/principals/{ada_id}")
    assert key not in driver.page_source
    console.shot("10-principal")
    console.submit("form[action^='/console/credentials/'] button")
    console.wait_for("#confirm")
    assert "ada" in console.main_text()
    console.shot("11-confirm-revoke")
    console.submit("#confirm")
    console.wait_for("main", "Revoked.")
    assert (
        httpx.get(
            server.base_url + "/api/admin/principals", headers={"Authorization": f"Bearer {key}"}
        ).status_code
        == 401
    )

    for path, name in (
        ("/console/revocations", "12-revocations"),
        ("/console/query-sets/run_events", "12b-query-set"),
    ):
        console.open(path)
        console.wait_for("h1")
        console.shot(name)

    # Trust an issuer with a role map, then change it on its own page.
    console.open("/console/trusted-issuers")
    console.fill("issuer", "http://127.0.0.1:9/idp")
    console.fill("audiences", "web")
    console.fill("role_claim", "groups")
    console.fill("role_map", "support-team = support")
    console.submit("form[action='/console/trusted-issuers'] button[type=submit]")
    console.wait_for("main", "Created.")
    console.shot("13-trusted-issuers")
    driver.find_element(By.PARTIAL_LINK_TEXT, "127.0.0.1:9/idp").click()
    console.wait_for("#role_map")
    console.fill("role_map", "support-team = support\nadmins = support, auditor")
    console.submit("#save-issuer")
    console.wait_for("main", "Saved.")
    assert "auditor" in console.main_text()
    console.shot("13b-trusted-issuer")

    # Signing keys: states and ages; rotating asks first (and here is cancelled).
    console.open("/console/keys")
    console.wait_for("h1")
    assert "active" in console.main_text() and "pending" in console.main_text()
    console.shot("14-signing-keys")
    console.submit("#rotate-keys")
    console.wait_for("#confirm")
    assert "revokes no token" in console.main_text()
    console.shot("14b-confirm-rotation")
    driver.find_element(By.LINK_TEXT, "Cancel").click()
    console.wait_for("h1", "Signing keys")

    # Every action is in the audit log; a filter finds one kind.
    console.open("/console/audit")
    console.wait_for("table.audit")
    log = console.main_text()
    for action in (
        "console.sign_in",
        "principal.create",
        "query_set.create",
        "stream.register",
        "grant_rule.create",
        "credential.create",
        "credential.revoke",
    ):
        assert action in log, action
    console.shot("15-audit")
    console.fill("action", "credential.")
    console.follow(By.CSS_SELECTOR, "#audit-filters button")
    console.wait_for("table.audit")
    actions = {e.text for e in driver.find_elements(By.CSS_SELECTOR, "code.action")}
    assert actions == {"credential.create", "credential.revoke"}

    # Sign out: the session is gone, the pages send back to sign in.
    console.sign_out()
    assert "You signed out" in console.main_text()
    console.open("/console/principals")
    console.wait_for("#api_key")

    # Another org's admin sees none of it.
    console.sign_in(globex["api_key"])
    sessions_seen.append(driver.get_cookie("control_console")["value"])
    assert "ada" not in console.main_text()
    console.open("/console/audit")
    console.wait_for("table.audit")
    assert "principal.create" not in console.main_text() and ada_id not in driver.page_source
    console.open(f"/console/principals/{ada_id}")
    console.wait_for("h1")
    assert "principal not found" in console.main_text()
    console.open("/console/explain")
    assert "ada" not in console.main_text()
    console.open("/console/keys")
    console.wait_for("h1")
    assert "needs the operator role" in console.main_text()
    console.shot("16-other-org")

    # A form posted without its token is refused, and changes nothing.
    console.open("/console/principals")
    console.wait_for("h1", "Principals")
    driver.execute_script(
        """
        const form = document.createElement("form");
        form.method = "post";
        form.action = "/console/principals";
        for (const [name, value] of [["kind", "user"], ["name", "forged"]]) {
          const input = document.createElement("input");
          input.type = "hidden"; input.name = name; input.value = value;
          form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
        """
    )
    console.wait_for("main", "did not come from the console")
    console.shot("17-csrf-refused")
    console.open("/console/principals")
    console.wait_for("h1", "Principals")
    assert "forged" not in console.main_text()
    console.sign_out()

    # The server's log names no key and no session, whatever happened above.
    log = server.log()
    assert "console.sign_in" in log
    for secret in (acme["api_key"], globex["api_key"], key, *sessions_seen):
        assert secret[: len(secret) // 2] not in log
