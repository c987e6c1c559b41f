"""The console in Chromium: what an on-call operator does with it, against the real server.

Each test is one item of issue 17's "Done when". The bridge (`voxys-bridge serve`) and
its fake Voxys are the module's (`conftest.py`); every test signs in on a fresh context.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from tests.browser.conftest import ADMIN_TOKEN, PIPEDRIVE_PASSWORD, Bridge

pytestmark = pytest.mark.slow

SCREENSHOTS = os.environ.get("VOXYS_BRIDGE_SCREENSHOTS")  # a directory, e.g. docs


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    # A script or style the Content-Security-Policy blocks would fail silently: fail here.
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        # A page answered 401 or 403 is what some tests ask for; they check it themselves.
        expected = re.match(r"Failed to load resource: .* status of 40[13] ", message.text)
        if message.type == "error" and not expected:
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", lambda dialog: problems.append(f"a dialog opened: {dialog.message}"))
    yield page
    assert problems == []


def sign_in(page: Page, bridge: Bridge, token: str = ADMIN_TOKEN) -> None:
    page.goto(f"{bridge.ui}/")
    expect(page).to_have_url(re.compile(r"/admin/ui/sign-in\?next="))
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_a_screenshot_of_the_overview_for_the_readme(
    page: Page, bridge: Bridge, tmp_path: Path
) -> None:
    # First in the file, so the picture shows the two dead letters before they are retried.
    # `VOXYS_BRIDGE_SCREENSHOTS=docs pytest tests/browser` writes docs/console-overview.png.
    sign_in(page, bridge)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    target = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    shot = page.screenshot(path=str(target / "console-overview.png"), full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"


def test_sign_in_wrong_token_and_sign_out(page: Page, context: BrowserContext, bridge: Bridge):
    sign_in(page, bridge, token="not-the-token-at-all")
    expect(page.get_by_text("That is not the admin token.")).to_be_visible()
    assert [c for c in context.cookies() if c["name"] == "vb_console"] == []
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    assert ADMIN_TOKEN not in page.url and ADMIN_TOKEN not in page.content()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("Signed out.")).to_be_visible()
    page.goto(f"{bridge.ui}/dead-letters")
    expect(page).to_have_url(re.compile(r"/admin/ui/sign-in"))
    assert not any(ADMIN_TOKEN in line for line in bridge.log)


def test_the_session_cookie_is_httponly_strict_and_expires_in_12_hours(
    page: Page, context: BrowserContext, bridge: Bridge
) -> None:
    sign_in(page, bridge)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    [cookie] = [c for c in context.cookies() if c["name"] == "vb_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin/ui"
    assert cookie["secure"] is False  # public_url is http://127.0.0.1 here
    assert abs(cookie["expires"] - (time.time() + 12 * 3600)) < 60
    assert page.evaluate("document.cookie") == ""  # no script can read it


def test_the_overview_shows_the_numbers_of_admin_stats(page: Page, bridge: Bridge) -> None:
    stats = bridge.settled()
    sign_in(page, bridge)
    for state, count in stats["transitions"].items():
        expect(page.locator(f'[data-stat="transitions.{state}"]')).to_have_text(str(count))
    for outcome, count in stats["events"].items():
        expect(page.locator(f'[data-stat="events.{outcome}"]')).to_have_text(str(count))
    expect(page.locator('[data-stat="retrying"]')).to_have_text(str(stats["retrying"]))
    expect(page.locator('[data-stat="delivery_role"]')).to_have_text(stats["delivery_role"])
    expect(page.locator('[data-stat="lease_epoch"]')).to_have_text(str(stats["lease_epoch"]))
    expect(page.get_by_text("rules added: stripe-refunded")).to_be_visible()  # the reload


def test_the_overview_refreshes_itself_and_reads_without_javascript(
    page: Page, browser: Browser, bridge: Bridge
) -> None:
    sign_in(page, bridge)
    ignored = page.locator('[data-stat="events.ignored"]')
    before = int(ignored.inner_text())
    bridge.stripe("evt_refresh", "customer.updated", 5, int(time.time()))
    expect(ignored).to_have_text(str(before + 1), timeout=15_000)  # no reload, no click
    plain = browser.new_context(java_script_enabled=False)
    try:
        page_without_js = plain.new_page()
        sign_in(page_without_js, bridge)
        expect(page_without_js.locator('[data-stat="events.ignored"]')).to_have_text(
            str(before + 1)
        )
    finally:
        plain.close()


def test_retry_two_dead_letters_from_the_page_and_see_them_delivered(
    page: Page, bridge: Bridge
) -> None:
    assert bridge.voxys.delivered(101) == bridge.voxys.delivered(102) == []
    sign_in(page, bridge)
    page.get_by_role("link", name="Dead letters").click()
    page.get_by_label("HTTP").fill("422")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("tr[data-dead]")
    expect(rows).to_have_count(2)
    for lead in (101, 102):  # each links to its lead
        expect(page.locator(f'tr[data-dead] a[href$="/leads?lead=7/{lead}"]')).to_be_visible()
    page.get_by_label("Select all shown").check()
    page.get_by_role("button", name="Retry selected").click()
    expect(page.get_by_text("Re-queued 2 dead letters")).to_be_visible()
    delivered = bridge.wait_for(lambda: bridge.voxys.delivered(101) and bridge.voxys.delivered(102))
    assert delivered[0]["status"] == "won"
    expect(page).to_have_url(re.compile(r"/dead-letters\?http=422&queued=2$"))  # still filtered
    page.reload()
    expect(page.locator("tr[data-dead]")).to_have_count(0)
    expect(page.get_by_text("No dead letters.")).to_be_visible()


def test_a_lead_timeline(page: Page, bridge: Bridge) -> None:
    sign_in(page, bridge)
    page.get_by_role("link", name="Leads").click()
    page.get_by_label("Lead").fill("7/42")
    page.get_by_role("button", name="Show its timeline").click()
    entries = page.locator("ol.timeline > li")
    expect(entries).to_have_count(3)
    # In the order they apply, newest first: refunded (lost), the payment (won), and the
    # event that happened before the payment but arrived after it was delivered (stale).
    expect(entries.nth(0)).to_contain_text("lost by rule stripe-refunded")
    expect(entries.nth(0).locator(".badge")).to_have_text("delivered")
    expect(entries.nth(1)).to_contain_text("won by rule stripe-paid")
    expect(entries.nth(1).locator(".badge")).to_have_text("delivered")
    expect(entries.nth(2).locator(".badge")).to_have_text("stale")
    expect(entries.nth(2)).to_contain_text("stripe/evt_late_42")
    entries.nth(1).get_by_role("link", name="stripe/evt_won_42").click()
    expect(page.locator("h1")).to_contain_text("stripe/evt_won_42")


def test_an_event_page_masks_the_stripe_signature_and_basic_auth(
    page: Page, bridge: Bridge
) -> None:
    sign_in(page, bridge)
    page.goto(f"{bridge.ui}/events/{bridge.event_pks['evt_imported']}")
    expect(page.locator('[data-header="stripe-signature"]')).to_have_text("•••• masked")
    expect(page.locator('[data-header="authorization"]')).to_have_text("•••• masked")
    expect(page.locator('[data-header="user-agent"]')).to_contain_text("Stripe/1.0")
    html = page.content()
    assert "v1=5f0c1d9e2b7a4f60d3e8" not in html and "dm94eXM6" not in html
    # A request that really came with basic auth: its password is nowhere on its page.
    page.get_by_role("link", name="Events").click()
    page.get_by_label("Source").select_option("pipedrive")
    page.get_by_role("button", name="Filter").click()
    page.locator("tr[data-event] a").first.click()
    expect(page.locator("h1")).to_contain_text("pipedrive/")
    assert PIPEDRIVE_PASSWORD not in page.content()
    assert "Basic " not in page.content()


def test_markup_in_an_event_body_renders_as_text(page: Page, bridge: Bridge) -> None:
    sign_in(page, bridge)
    page.goto(f"{bridge.ui}/events/{bridge.event_pks['evt_markup']}")
    body = page.locator('[data-field="body"]')
    # The text of the JSON string, quotes escaped as JSON escapes them.
    expect(body).to_contain_text('<script>alert(\\"xss\\")</script>')
    expect(body).to_contain_text('\\"><img src=x onerror=alert(1)>')
    assert page.locator("main img").count() == 0
    assert page.locator("main script").count() == 0
    # (and the page fixture saw no dialog and no script error)


def test_the_playground_shows_a_changed_outcome(page: Page, bridge: Bridge) -> None:
    sign_in(page, bridge)
    page.goto(f"{bridge.ui}/playground?rule=stripe-paid")
    rule = page.get_by_label("Rule (YAML)")
    expect(rule).to_contain_text("name: stripe-paid")
    edited = rule.input_value().replace(
        "event.type == 'checkout.session.completed'",
        "event.type in ['checkout.session.completed', 'invoice.paid']",
    )
    rule.fill(edited)
    page.get_by_label("A stored event").fill(str(bridge.event_pks["evt_invoice"]))
    page.get_by_role("button", name="Try it").click()
    result = page.locator("#result")
    expect(result).to_contain_text(
        f"PATCH {bridge.voxys.fake.base_url}/api/v1/accounts/7/leads/77/status"
    )
    expect(result.get_by_text("changes the outcome")).to_be_visible()
    row = page.locator(f'#changes tr[data-event="{bridge.event_pks["evt_invoice"]}"]')
    expect(row).to_contain_text("ignored")
    expect(row).to_contain_text("won 7/77")
    assert bridge.voxys.delivered(77) == []  # tried, not sent


def test_a_post_without_the_csrf_token_is_refused(page: Page, bridge: Bridge) -> None:
    sign_in(page, bridge)
    page.goto(f"{bridge.ui}/events/{bridge.event_pks['evt_invoice']}")
    # As a forged form would arrive: the same request without the token.
    page.locator('input[name="csrf"]').evaluate_all("inputs => inputs.forEach(i => i.remove())")
    page.get_by_role("button", name="Replay with the current rules").click()
    expect(page.get_by_text("Refused: this form did not come from the console.")).to_be_visible()
    page.goto(f"{bridge.ui}/events/{bridge.event_pks['evt_invoice']}")
    expect(page.locator('[data-field="outcome"]')).to_have_text("ignored")  # not replayed
