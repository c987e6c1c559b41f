"""The console at /admin/ui/: sessions, CSRF, headers, pages and the playground, in process.

The app is the real one (`create_app`) on a real SQLite store, driven over HTTP by
aiohttp's test client with an injected clock; the browser tests in `tests/browser/`
cover the same pages in Chromium against the real console script.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.bundle import load_bundle
from bridge.console.activity import RecentCount
from bridge.console.session import SESSION_TTL_S
from bridge.console.site import CSP
from bridge.models import Event
from bridge.reload import Reloader
from bridge.runtime import RUNTIME, Runtime
from bridge.store import open_store
from bridge.store.base import Store
from tests.conftest import StoredWork
from tests.test_admin import NOW, matched, seed_dead, stripe_event, unmapped

TOKEN = "console-adm-7c1e-40b2-a9f3"
OTHER_TOKEN = "console-adm-rotated-5d8e1f"
UI = "/admin/ui"
PIPEDRIVE_PASSWORD = "pd-console-pass-93a1"


def config_text(db: Path, token: str | None = TOKEN, public_url: str = "http://127.0.0.1") -> str:
    admin = f"admin: {{token: {token}}}\n" if token else ""
    return (
        f"server: {{public_url: {public_url}}}\n"
        "voxys: {api_token: t, account_id: 7}\n"
        + admin
        + f'storage: {{url: "sqlite:///{db}"}}\n'
        + "sources:\n"
        + "  stripe: {preset: stripe, secret: whsec_test_4f9c2b7e1d6a0b3c}\n"
        + "  pipedrive: {preset: pipedrive, basic_auth: {username: voxys, password: "
        + PIPEDRIVE_PASSWORD
        + "}}\n"
        + "rules:\n"
        + "  - name: stripe-paid\n"
        + "    source: stripe\n"
        + "    when: event.type == 'checkout.session.completed'\n"
        + '    lead_id: "{{ event.data.object.metadata.voxys_lead_id }}"\n'
        + "    status: won\n"
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Start = Callable[..., Any]


@pytest.fixture
def start(tmp_path: Path, aiohttp_client: Any) -> Start:
    """Start the real app on a fresh store: `client = await start(token=..., public_url=...)`."""

    async def go(**options: Any) -> TestClient:
        path = tmp_path / "bridge.yaml"
        path.write_text(config_text(tmp_path / "b.db", **options))
        bundle = load_bundle(path)
        runtime = Runtime(
            bundle=bundle,
            store=open_store(bundle.config.storage.url),
            clock=Clock(NOW),
            new_work=StoredWork(),
        )
        return await aiohttp_client(create_app(runtime))

    return go


def runtime_of(client: TestClient) -> Runtime:
    return client.app[RUNTIME]


def stored_work(client: TestClient) -> list[int]:
    """The transitions each store call told delivery about, in order."""
    new_work = runtime_of(client).new_work
    assert isinstance(new_work, StoredWork)
    return new_work.counts


def clock_of(client: TestClient) -> Clock:
    clock = runtime_of(client).clock
    assert isinstance(clock, Clock)
    return clock


def form_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def sign_in(client: TestClient, token: str = TOKEN) -> str:
    """Sign in through the form; the session's CSRF token."""
    form = await client.get(f"{UI}/sign-in")
    answer = await client.post(
        f"{UI}/sign-in",
        data={"csrf": form_token(await form.text()), "token": token, "next": f"{UI}/"},
        allow_redirects=False,
    )
    assert answer.status == 303, await answer.text()
    page = await client.get(f"{UI}/")
    assert page.status == 200
    return form_token(await page.text())


def set_cookies(answer: Any) -> dict[str, str]:
    """The Set-Cookie headers of an answer, by cookie name, as sent."""
    found = {}
    for header in answer.headers.getall("Set-Cookie", []):
        found[next(iter(SimpleCookie(header)))] = header
    return found


# --- mounting and headers ---------------------------------------------------------------


async def test_without_an_admin_token_the_console_does_not_exist(start: Start) -> None:
    client = await start(token=None)
    for path in (f"{UI}/", f"{UI}/sign-in", f"{UI}/static/console.css"):
        answer = await client.get(path, allow_redirects=False)
        assert answer.status == 404, path
        assert "voxys-bridge" not in await answer.text()  # aiohttp's own 404, not a page


async def test_every_answer_carries_the_security_headers(start: Start) -> None:
    client = await start()
    answers = [
        await client.get(f"{UI}/sign-in"),
        await client.get(f"{UI}/", allow_redirects=False),  # a redirect
        await client.get(f"{UI}/no-such-page", allow_redirects=False),
        await client.post(f"{UI}/dead-letters/retry"),  # refused
    ]
    for answer in answers:
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "same-origin"
        assert answer.headers["Cache-Control"] == "no-store"
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    assert "frame-ancestors 'none'" in CSP


async def test_no_page_holds_an_inline_script_or_style(start: Start) -> None:
    client = await start()
    await sign_in(client)
    for path in ("/", "/dead-letters", "/leads?lead=7/42", "/events", "/playground", "/sign-in"):
        html = await (await client.get(f"{UI}{path}")).text()
        assert re.findall(r"<script(?![^>]*\bsrc=)", html) == [], path
        assert " style=" not in html and "<style" not in html, path
        assert re.search(r"\son[a-z]+=", html) is None, path  # no onclick= and the like


async def test_static_files_are_served_with_a_version_and_without_a_session(start: Start) -> None:
    client = await start()
    html = await (await client.get(f"{UI}/sign-in")).text()
    [css] = re.findall(r'href="(/admin/ui/static/console\.css\?v=[0-9a-f]+)"', html)
    [js] = re.findall(r'src="(/admin/ui/static/console\.js\?v=[0-9a-f]+)"', html)
    for url, kind in ((css, "text/css"), (js, "text/javascript")):
        answer = await client.get(url)
        assert answer.status == 200 and answer.content_type == kind
        assert "immutable" in answer.headers["Cache-Control"]


# --- signing in and out ----------------------------------------------------------------------


async def test_a_page_without_a_session_redirects_to_sign_in_and_back(start: Start) -> None:
    client = await start()
    answer = await client.get(f"{UI}/dead-letters?source=stripe", allow_redirects=False)
    assert answer.status == 303
    assert answer.headers["Location"] == (
        f"{UI}/sign-in?next=%2Fadmin%2Fui%2Fdead-letters%3Fsource%3Dstripe"
    )
    form = await client.get(answer.headers["Location"])
    html = await form.text()
    assert 'name="next" value="/admin/ui/dead-letters?source=stripe"' in html
    signed = await client.post(
        f"{UI}/sign-in",
        data={"csrf": form_token(html), "token": TOKEN, "next": f"{UI}/dead-letters?source=stripe"},
        allow_redirects=False,
    )
    assert signed.headers["Location"] == f"{UI}/dead-letters?source=stripe"


async def test_sign_in_never_redirects_off_the_console(start: Start) -> None:
    client = await start()
    for target in ("https://evil.example/", "//evil.example/admin/ui/", f"{UI}//evil.example"):
        client.session.cookie_jar.clear()
        form = await client.get(f"{UI}/sign-in")
        answer = await client.post(
            f"{UI}/sign-in",
            data={"csrf": form_token(await form.text()), "token": TOKEN, "next": target},
            allow_redirects=False,
        )
        assert answer.headers["Location"] == f"{UI}/", target


async def test_a_wrong_token_is_refused_and_logged_without_the_token(start: Start) -> None:
    client = await start()
    form = await client.get(f"{UI}/sign-in")
    wrong = "not-the-admin-token-4c2d"
    with structlog.testing.capture_logs() as logs:
        answer = await client.post(
            f"{UI}/sign-in",
            data={"csrf": form_token(await form.text()), "token": wrong},
            allow_redirects=False,
        )
    html = await answer.text()
    assert answer.status == 401
    assert "That is not the admin token." in html
    assert wrong not in html and TOKEN not in html
    assert "vb_console" not in set_cookies(answer)
    [line] = [entry for entry in logs if entry["event"] == "admin.unauthorized"]
    assert line["path"] == f"{UI}/sign-in"
    assert wrong not in repr(logs) and TOKEN not in repr(logs)


async def test_the_token_is_in_no_url_page_or_log_of_a_successful_sign_in(start: Start) -> None:
    client = await start()
    form = await client.get(f"{UI}/sign-in")
    html = await form.text()
    assert 'type="password"' in html and 'method="post"' in html
    with structlog.testing.capture_logs() as logs:
        answer = await client.post(
            f"{UI}/sign-in",
            data={"csrf": form_token(html), "token": TOKEN},
            allow_redirects=False,
        )
        page = await client.get(answer.headers["Location"])
    assert TOKEN not in answer.headers["Location"] and TOKEN not in str(page.url)
    assert TOKEN not in await page.text()
    assert TOKEN not in "".join(set_cookies(answer).values())
    assert [e["event"] for e in logs] == ["console.signed_in"]
    assert TOKEN not in repr(logs)


async def test_sign_in_is_throttled_after_five_wrong_tokens_a_minute(start: Start) -> None:
    client = await start()
    clock = clock_of(client)

    async def attempt(token: str) -> int:
        form = await client.get(f"{UI}/sign-in")
        answer = await client.post(
            f"{UI}/sign-in",
            data={"csrf": form_token(await form.text()), "token": token},
            allow_redirects=False,
        )
        return answer.status

    assert [await attempt(f"wrong-token-{i:04d}") for i in range(5)] == [401] * 5
    with structlog.testing.capture_logs() as logs:
        assert await attempt(TOKEN) == 429  # even the right one, until the window passes
    assert logs[0]["event"] == "admin.unauthorized" and logs[0]["reason"] == "throttled"
    clock.now += 61
    assert await attempt(TOKEN) == 303


async def test_sign_in_without_its_form_token_is_refused(start: Start) -> None:
    client = await start()
    await client.get(f"{UI}/sign-in")  # the nonce cookie, but no form token
    answer = await client.post(f"{UI}/sign-in", data={"token": TOKEN}, allow_redirects=False)
    assert answer.status == 403
    assert "vb_console" not in set_cookies(answer)


async def test_the_session_cookie_is_signed_httponly_strict_and_lasts_12_hours(
    start: Start,
) -> None:
    client = await start()
    form = await client.get(f"{UI}/sign-in")
    answer = await client.post(
        f"{UI}/sign-in",
        data={"csrf": form_token(await form.text()), "token": TOKEN},
        allow_redirects=False,
    )
    header = set_cookies(answer)["vb_console"]
    morsel = SimpleCookie(header)["vb_console"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == UI
    assert morsel["max-age"] == str(int(SESSION_TTL_S)) == "43200"
    assert not morsel["secure"]  # public_url is http here
    sid, issued, mac = morsel.value.split(".")
    assert issued == str(int(NOW)) and len(sid) >= 22 and len(mac) >= 43


async def test_over_https_the_cookie_is_secure_and_prefixed(start: Start) -> None:
    client = await start(public_url="https://bridge.example.com")
    form = await client.get(f"{UI}/sign-in")
    assert "__Secure-vb_sign_in" in set_cookies(form)
    answer = await client.post(
        f"{UI}/sign-in",
        data={"csrf": form_token(await form.text()), "token": TOKEN},
        allow_redirects=False,
        # The test client speaks http and its jar keeps no Secure cookie: send it by hand.
        cookies={
            "__Secure-vb_sign_in": SimpleCookie(form.headers["Set-Cookie"])[
                "__Secure-vb_sign_in"
            ].value
        },
    )
    morsel = SimpleCookie(set_cookies(answer)["__Secure-vb_console"])["__Secure-vb_console"]
    assert morsel["secure"] is True and morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"


async def test_a_session_expires_12_hours_after_sign_in(start: Start) -> None:
    client = await start()
    await sign_in(client)
    clock_of(client).now += SESSION_TTL_S - 1
    assert (await client.get(f"{UI}/", allow_redirects=False)).status == 200
    clock_of(client).now += 1
    answer = await client.get(f"{UI}/", allow_redirects=False)
    assert answer.status == 303 and "/sign-in" in answer.headers["Location"]


async def test_a_forged_cookie_is_no_session(start: Start) -> None:
    client = await start()
    await sign_in(client)
    value = next(c.value for c in client.session.cookie_jar if c.key == "vb_console")
    sid, issued, mac = value.split(".")
    forged = {
        "later issue time": f"{sid}.{int(issued) + 3600}.{mac}",
        "other id": f"A{sid[1:]}.{issued}.{mac}",
        "no mac": f"{sid}.{issued}.",
        "garbage": "x" * 300,
    }
    for why, cookie in forged.items():
        client.session.cookie_jar.clear()
        answer = await client.get(f"{UI}/", cookies={"vb_console": cookie}, allow_redirects=False)
        assert answer.status == 303, why


async def test_sign_out_ends_the_session_even_for_a_copy_of_the_cookie(start: Start) -> None:
    client = await start()
    csrf = await sign_in(client)
    copied = next(c.value for c in client.session.cookie_jar if c.key == "vb_console")
    answer = await client.post(f"{UI}/sign-out", data={"csrf": csrf}, allow_redirects=False)
    assert answer.status == 303 and answer.headers["Location"] == f"{UI}/sign-in?signed_out=1"
    assert SimpleCookie(set_cookies(answer)["vb_console"])["vb_console"]["max-age"] == "0"
    again = await client.get(f"{UI}/", cookies={"vb_console": copied}, allow_redirects=False)
    assert again.status == 303


def rewrite(config: Path, **options: Any) -> None:
    config.write_text(config_text(config.parent / "b.db", **options))


async def test_a_reload_that_changes_the_token_ends_every_session(start: Start) -> None:
    client = await start()
    await sign_in(client)
    runtime = runtime_of(client)
    config = Path(runtime.bundle.loaded.path)
    rewrite(config, token=OTHER_TOKEN)
    assert await Reloader(runtime, str(config)).reload("sighup") == "applied"
    answer = await client.get(f"{UI}/", allow_redirects=False)
    assert answer.status == 303 and "/sign-in" in answer.headers["Location"]
    await sign_in(client, OTHER_TOKEN)  # the new token works at once
    # and one that removes the token turns the console off.
    rewrite(config, token=None)
    assert await Reloader(runtime, str(config)).reload("sighup") == "applied"
    assert (await client.get(f"{UI}/", allow_redirects=False)).status == 404


# --- CSRF -------------------------------------------------------------------------------


async def dead_letter_ids(client: TestClient) -> list[int]:
    store = runtime_of(client).store
    await store.open()
    return await seed_dead(store, "evt_a", "evt_b")


async def test_a_post_without_the_csrf_token_changes_nothing(start: Start) -> None:
    client = await start()
    ids = await dead_letter_ids(client)
    csrf = await sign_in(client)
    attempts = {
        "no token": {"ids": str(ids[0])},
        "wrong token": {"ids": str(ids[0]), "csrf": csrf[:-2] + "xx"},
    }
    with structlog.testing.capture_logs() as logs:
        for why, data in attempts.items():
            answer = await client.post(f"{UI}/dead-letters/retry", data=data)
            assert answer.status == 403, why
        foreign = await client.post(
            f"{UI}/dead-letters/retry",
            data={"ids": str(ids[0]), "csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status == 403
    assert [e["event"] for e in logs] == ["console.csrf_refused"] * 3
    stats = await runtime_of(client).store.stats(NOW)
    assert stats.transitions["dead"] == 2


async def test_a_post_with_the_token_retries_the_chosen_dead_letters(start: Start) -> None:
    client = await start()
    ids = await dead_letter_ids(client)
    csrf = await sign_in(client)
    woken = stored_work(client)
    with structlog.testing.capture_logs() as logs:
        answer = await client.post(
            f"{UI}/dead-letters/retry",
            data={"csrf": csrf, "ids": str(ids[1]), "action": "selected"},
            allow_redirects=False,
        )
    assert answer.status == 303 and answer.headers["Location"] == f"{UI}/dead-letters?queued=1"
    assert woken == [1]
    assert [(e["event"], e["queued"], e["via"]) for e in logs] == [("admin.retry", 1, "console")]
    dead = await runtime_of(client).store.dead_letters()
    assert [d.id for d in dead] == [ids[0]]


# --- pages ------------------------------------------------------------------------------


def stat(html: str, name: str) -> str:
    found = re.search(rf'data-stat="{re.escape(name)}">([^<]*)<', html)
    assert found, name
    return found.group(1)


async def test_the_overview_shows_what_admin_stats_shows(start: Start) -> None:
    client = await start()
    await dead_letter_ids(client)
    store = runtime_of(client).store
    await store.ingest([(stripe_event("evt_u"), unmapped())], NOW - 5)
    await sign_in(client)
    html = await (await client.get(f"{UI}/")).text()
    stats = await (
        await client.get("/admin/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    ).json()
    for state, count in stats["transitions"].items():
        assert stat(html, f"transitions.{state}") == str(count)
    for outcome, count in stats["events"].items():
        assert stat(html, f"events.{outcome}") == str(count)
    assert stat(html, "delivery_role") == stats["delivery_role"] == "standby"
    assert "No reload since this process started." in html
    assert "No account is paused." in html


class CountingStore:
    """The store, counting the calls made to it by name."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.store, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return found(*args, **kwargs)

        return call


async def test_an_overview_refresh_reads_the_store_once(start: Start) -> None:
    client = await start()
    await sign_in(client)
    counting = CountingStore(runtime_of(client).store)
    runtime_of(client).store = counting  # type: ignore[assignment]
    assert (await client.get(f"{UI}/")).status == 200
    assert counting.calls == ["stats"]  # what /admin/stats and /metrics read too


async def test_the_overview_names_paused_accounts_and_the_last_reload(start: Start) -> None:
    client = await start()
    runtime = runtime_of(client)
    runtime.delivery.pauses.refuse(9, NOW - 120, 403)
    await Reloader(runtime, runtime.bundle.loaded.path).reload("sighup")
    await sign_in(client)
    html = await (await client.get(f"{UI}/")).text()
    assert 'data-paused-account="9"' in html and "Voxys answered 403" in html
    assert "2 min ago" in html
    assert "reload-applied" in html and "nothing changed" in html


async def test_dead_letters_filter_by_reason_and_http_status(start: Start) -> None:
    client = await start()
    ids = await dead_letter_ids(client)
    await sign_in(client)
    html = await (await client.get(f"{UI}/dead-letters?http=422&reason=answered")).text()
    assert all(f'data-dead="{i}"' in html for i in ids)
    html = await (await client.get(f"{UI}/dead-letters?http=500")).text()
    assert "No dead letter matches the filter (2 in all)." in html
    html = await (await client.get(f"{UI}/dead-letters?older=1h")).text()
    assert "No dead letter matches" in html  # they died 30 s before NOW
    html = await (await client.get(f"{UI}/dead-letters?older=soon")).text()
    assert "older than: invalid duration" in html


async def test_the_lead_page_shows_the_ledger_and_any_field_it_does_not_know(
    start: Start,
) -> None:
    client = await start()
    await dead_letter_ids(client)
    await sign_in(client)
    html = await (await client.get(f"{UI}/leads?lead=7/42")).text()
    assert 'data-transition="' in html and "state-dead" in html
    assert "Voxys answered 422" in html and "/admin/ui/events/" in html
    html = await (await client.get(f"{UI}/leads?lead=7/x")).text()
    assert "ACCOUNT/LEAD or LEAD as integers" in html
    from bridge.console.views import extra_fields

    # A field a later ledger adds (a bulk batch, say) shows by its name.
    entry = {"id": 1, "state": "delivered", "batch_id": "b-9", "batch_size": 40, "reason": None}
    assert extra_fields(entry) == [("batch_id", "b-9"), ("batch_size", 40)]


async def test_an_event_page_masks_credentials_and_shows_markup_as_text(start: Start) -> None:
    client = await start()
    store = runtime_of(client).store
    await store.open()
    hostile = '<script>alert(1)</script> "><img src=x onerror=alert(2)>'
    event = Event(
        "stripe",
        "evt_x",
        NOW - 9,
        NOW - 8,
        {"type": "checkout.session.completed", "note": hostile},
        headers={
            "stripe-signature": "t=1,v1=abcdef0123",
            "authorization": "Basic dm94eXM6cGQtY29uc29sZS1wYXNzLTkzYTE=",
            "x-echo": f"has {PIPEDRIVE_PASSWORD} inside",
            "user-agent": "Stripe/1.0",
        },
    )
    await store.ingest([(event, unmapped())], NOW - 8)
    [stored] = await store.list_events(limit=1)
    await sign_in(client)
    html = await (await client.get(f"{UI}/events/{stored.pk}")).text()
    assert "t=1,v1=abcdef0123" not in html and "dm94eXM6" not in html
    assert PIPEDRIVE_PASSWORD not in html
    assert html.count("•••• masked") == 3
    assert "Stripe/1.0" in html
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Replay with the current rules" in html  # it is unmapped


async def test_replay_from_an_event_page_applies_the_current_rules(start: Start) -> None:
    client = await start()
    store = runtime_of(client).store
    await store.open()
    await store.ingest([(stripe_event("evt_r"), unmapped())], NOW - 8)
    [stored] = await store.list_events(limit=1)
    csrf = await sign_in(client)
    answer = await client.post(f"{UI}/events/{stored.pk}/replay", data={"csrf": csrf})
    html = await answer.text()
    assert "Replayed with the current rules" in html
    assert 'data-field="outcome">matched<' in html
    assert "Replay with the current rules</button>" not in html


async def test_events_filter_by_source_outcome_and_time(start: Start) -> None:
    client = await start()
    store = runtime_of(client).store
    await store.open()
    old, new = stripe_event("evt_old", received_at=NOW - 7200), stripe_event("evt_new")
    await store.ingest([(old, matched(old)), (new, unmapped())], NOW)
    await sign_in(client)
    html = await (await client.get(f"{UI}/events?outcome=unmapped")).text()
    assert "stripe/evt_new" in html and "stripe/evt_old" not in html
    html = await (await client.get(f"{UI}/events?since=2024-05-01T11:30")).text()
    assert "stripe/evt_new" in html and "stripe/evt_old" not in html
    html = await (await client.get(f"{UI}/events?outcome=lost")).text()
    assert "outcome: " in html and 'class="alert"' in html


async def test_an_unknown_event_is_a_404_page_not_a_traceback(start: Start) -> None:
    client = await start()
    await sign_in(client)
    for path in ("/events/999", "/events/abc", "/playground?event=999"):
        answer = await client.get(f"{UI}{path}")
        assert answer.status == 404, path
        assert "Traceback" not in await answer.text()


# --- the playground ---------------------------------------------------------------------

RULE = """\
name: stripe-paid
source: stripe
when: event.type in ['checkout.session.completed', 'invoice.paid']
lead_id: "{{ event.data.object.metadata.voxys_lead_id }}"
status: won
"""


async def playground(client: TestClient, csrf: str, **fields: str) -> tuple[int, str]:
    answer = await client.post(f"{UI}/playground", data={"csrf": csrf, **fields})
    return answer.status, await answer.text()


async def seeded(client: TestClient) -> Store:
    store = runtime_of(client).store
    await store.open()
    paid = stripe_event("evt_paid", lead_id=42)
    invoice = Event(
        "stripe",
        "evt_inv",
        NOW - 20,
        NOW - 19,
        {"type": "invoice.paid", "data": {"object": {"metadata": {"voxys_lead_id": "77"}}}},
    )
    await store.ingest([(paid, matched(paid)), (invoice, unmapped())], NOW - 10)
    return store


async def test_the_playground_shows_the_request_and_the_events_it_would_change(
    start: Start,
) -> None:
    client = await start()
    store = await seeded(client)
    csrf = await sign_in(client)
    before = await store.stats(NOW)
    status, html = await playground(
        client, csrf, rule=RULE, source="stripe", last="50", payload=stripe_body(lead=5)
    )
    assert status == 200, html
    assert "takes the place of the running rule" in html
    assert "PATCH https://connect.voxys.ai/api/v1/accounts/7/leads/5/status" in html
    assert '"status": "won"' in html.replace("&#34;", '"')
    # Of the two stored events, only the invoice changes: ignored before, lead 7/77 after.
    [row] = re.findall(r'<tr data-event="(\d+)">(.*?)</tr>', html, re.S)
    assert "stripe/evt_inv" in row[1] and "7/77" in row[1]
    assert "ignored" in row[1] and "matched</span> won 7/77" in row[1]
    assert await store.stats(NOW) == before  # nothing stored, nothing queued


def stripe_body(lead: int) -> str:
    return (
        '{"id": "evt_p", "type": "checkout.session.completed", "created": 1714564000,'
        f' "data": {{"object": {{"metadata": {{"voxys_lead_id": "{lead}"}}}}}}}}'
    )


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("name: [unclosed", "YAML: "),
        ("- a\n- b\n", "write one rule"),
        ("name: x\nsource: stripe\nlead_id: 1\n", "status: "),
        ("name: x\nsource: nope\nlead_id: 1\nstatus: won\n", "unknown source 'nope'"),
        ("name: x\nsource: stripe\nwhen: evnt.type\nlead_id: 1\nstatus: won\n", "unknown name"),
        ("name: x\nsource: stripe\nwhen: event.__class__ == 1\nlead_id: 1\nstatus: won\n", "'_'"),
        ("name: x\nsource: stripe\nlead_id: '{{ 1 +'\nstatus: won\n", "syntax error"),
        ("a: &a [1, 2]\nb: *a\n", "aliases"),
        ("name: x\nsource: stripe\nlead_id: ${HOME}\nstatus: won\n", "${VAR}"),
        ("x" * 16_001, "longer than 16000"),
    ],
)
async def test_a_bad_rule_is_a_message_that_names_the_key_never_a_traceback(
    start: Start, rule: str, message: str
) -> None:
    client = await start()
    csrf = await sign_in(client)
    status, html = await playground(client, csrf, rule=rule, source="stripe", last="0")
    assert status == 400
    assert message in html.replace("&#39;", "'")
    assert "Traceback" not in html


async def test_a_rule_that_runs_too_long_is_stopped_at_the_deadline(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.console import playground as core

    monkeypatch.setattr(core, "DEADLINE_S", 0.3)
    client = await start()
    csrf = await sign_in(client)
    loops = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}1"
    rule = f"name: x\nsource: stripe\nlead_id: '{loops}'\nstatus: won\n"
    status, html = await playground(
        client, csrf, rule=rule, source="stripe", payload=stripe_body(lead=5)
    )
    assert status == 400
    assert "stopped after 0.3 s" in html


async def test_a_payload_the_source_refuses_is_explained(start: Start) -> None:
    client = await start()
    csrf = await sign_in(client)
    status, html = await playground(client, csrf, rule=RULE, source="stripe", payload="{oops")
    assert status == 400 and "payload is not valid JSON" in html


async def test_the_playground_starts_from_a_running_rule_with_no_secret_in_it(
    start: Start,
) -> None:
    client = await start()
    await seeded(client)
    await sign_in(client)
    html = await (await client.get(f"{UI}/playground?rule=stripe-paid")).text()
    assert "name: stripe-paid" in html and "status: won" in html
    assert "whsec_test" not in html


def test_bundles_load_with_the_console_package_data() -> None:
    # The templates and static files are read through importlib.resources (a wheel too:
    # tests/test_demo.py checks an installed wheel), never from the source tree.
    from bridge.console.site import load_static, templates

    static = load_static()
    assert set(static) == {"console.css", "console.js", "favicon.svg"}
    env = templates(static)
    for name in ("base.html", "overview.html", "playground.html", "sign_in.html"):
        assert env.get_template(name)


def test_requests_in_the_last_minute_come_from_samples_of_the_attempts_counter() -> None:
    from bridge.console.activity import RequestRate

    rate = RequestRate()
    assert rate.last_minute(100.0, 7) == RecentCount(0, 0.0)  # nothing sampled yet
    for second, total in ((0, 0), (5, 10), (30, 40), (61, 70)):
        rate.sample(float(second), total)
    # From the newest sample at least a minute old (t=5, 10 sent) to now (t=66, 90 sent).
    assert rate.last_minute(66.0, 90) == RecentCount(80, 61.0)
    # A young process counts since its first sample, and says over how long.
    young = RequestRate()
    young.sample(10.0, 3)
    assert young.last_minute(25.0, 8) == RecentCount(5, 15.0)


async def test_the_sampler_runs_as_a_supervised_task(start: Start) -> None:
    client = await start()
    supervisor = runtime_of(client).supervisor
    assert "console-sampler" in supervisor.restarts and supervisor.broken() == {}
