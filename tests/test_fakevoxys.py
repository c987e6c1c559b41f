"""The fake Voxys endpoint, spoken to over real loopback HTTP like the bridge will."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bridge.fakevoxys import Answer, FakeVoxys, token_id
from bridge.sandbox import parse_rate_limit, parse_seed_leads, run_sandbox

TOKEN = "voxys-token-fake-1"
OTHER_TOKEN = "voxys-token-fake-2"
LEAD_FIELDS = {
    "id",
    "custom_name",
    "status",
    "lead_value",
    "lead_currency",
    "position",
    "notes",
    "assigned_agent",
    "company",
    "conversation_id",
    "custom_attributes",
    "created_at",
    "updated_at",
}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeVoxys]:
    async with FakeVoxys(tokens={TOKEN, OTHER_TOKEN}, clock=clock) as server:
        yield server


@pytest.fixture
async def seeded(clock: Clock) -> AsyncIterator[FakeVoxys]:
    async with FakeVoxys(tokens=TOKEN, seed_leads=[(1, 42), (1, 43)], clock=clock) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def patch(
    http: aiohttp.ClientSession,
    fake: FakeVoxys,
    body: Any = None,
    *,
    path: str = "/api/v1/accounts/1/leads/42/status",
    token: str | None = TOKEN,
    data: bytes | None = None,
    method: str = "PATCH",
) -> tuple[int, dict[str, str], Any]:
    headers = {} if token is None else {"api_access_token": token}
    if data is not None:
        headers["Content-Type"] = "application/json"
    json_body = {"status": "won"} if body is None and data is None else body
    async with http.request(
        method, fake.base_url + path, json=json_body, data=data, headers=headers
    ) as resp:
        text = await resp.text()
        payload = await resp.json(content_type=None) if text.startswith(("{", "[")) else text
        return resp.status, dict(resp.headers), payload


# -- the normal answer -------------------------------------------------------------------


async def test_a_valid_patch_answers_200_with_the_updated_lead_object(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    status, _, body = await patch(http, fake, {"status": "won", "notes": "Paid 49 EUR"})

    assert status == 200
    assert body["message"] == "Status updated."
    assert set(body) == LEAD_FIELDS | {"message"}
    assert (body["id"], body["status"], body["notes"]) == (42, "won", "Paid 49 EUR")
    assert body["updated_at"].endswith("Z")
    assert fake.leads[(1, 42)]["status"] == "won"


async def test_each_call_is_recorded_without_the_raw_token(
    fake: FakeVoxys, http: aiohttp.ClientSession, clock: Clock
) -> None:
    await patch(http, fake, {"status": "lost", "notes": None})

    [call] = fake.calls
    assert (call.at, call.method, call.account_id, call.lead_id) == (1000.0, "PATCH", 1, 42)
    assert call.path == "/api/v1/accounts/1/leads/42/status"
    assert call.body == {"status": "lost", "notes": None}
    assert (call.status, call.token_valid, call.token_id) == (200, True, token_id(TOKEN))
    assert TOKEN not in repr(call)


async def test_absent_notes_keep_the_leads_notes_and_null_clears_them(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    await patch(http, fake, {"status": "won", "notes": "first"})
    _, _, kept = await patch(http, fake, {"status": "lost"})
    _, _, cleared = await patch(http, fake, {"status": "lost", "notes": None})

    assert (kept["status"], kept["notes"]) == ("lost", "first")
    assert cleared["notes"] is None


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-a-token"])
async def test_a_missing_or_unknown_token_answers_401(
    fake: FakeVoxys, http: aiohttp.ClientSession, token: str | None
) -> None:
    status, _, body = await patch(http, fake, token=token)

    assert (status, body) == (401, {"error": "Invalid Access Token"})
    assert fake.calls[0].token_valid is False
    assert fake.leads == {}


async def list_leads(
    http: aiohttp.ClientSession, fake: FakeVoxys, account: str, token: str = TOKEN, **query: str
) -> tuple[int, Any]:
    url = f"{fake.base_url}/api/v1/accounts/{account}/leads"
    async with http.get(url, params=query, headers={"api_access_token": token}) as resp:
        return resp.status, await resp.json()


async def test_listing_an_accounts_leads_pages_them_newest_first(
    seeded: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    status, body = await list_leads(http, seeded, "1", per_page="1")
    assert status == 200
    assert body["meta"] == {"current_page": 1, "total_pages": 2, "total_count": 2}
    [lead] = body["data"]
    assert set(lead) == LEAD_FIELDS and lead["id"] == 43  # same created_at: the higher id
    _, second = await list_leads(http, seeded, "1", per_page="1", page="2")
    assert [lead["id"] for lead in second["data"]] == [42]
    _, every = await list_leads(http, seeded, "1")  # 25 per page by default
    assert [lead["id"] for lead in every["data"]] == [43, 42]


async def test_listing_refuses_a_bad_token_and_an_unknown_account(
    seeded: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    assert await list_leads(http, seeded, "1", token="nope") == (
        401,
        {"error": "Invalid Access Token"},
    )
    assert (await list_leads(http, seeded, "2"))[0] == 404  # only account 1 was seeded
    assert (await list_leads(http, seeded, "x"))[0] == 404
    assert [c.method for c in seeded.calls] == ["GET", "GET", "GET"]


async def test_a_revoked_token_is_refused_until_restored(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    fake.revoke(TOKEN)
    revoked, _, _ = await patch(http, fake)
    other, _, _ = await patch(http, fake, token=OTHER_TOKEN)
    fake.restore(TOKEN)
    restored, _, _ = await patch(http, fake)

    assert (revoked, other, restored) == (401, 200, 200)


@pytest.mark.parametrize(
    "path",
    ["/api/v1/accounts/abc/leads/42/status", "/api/v1/accounts/1/leads/4x2/status"],
)
async def test_a_non_integer_id_answers_404(
    fake: FakeVoxys, http: aiohttp.ClientSession, path: str
) -> None:
    status, _, body = await patch(http, fake, path=path)

    assert status == 404
    assert "error" in body


async def test_with_seeded_leads_an_unknown_lead_answers_404_and_a_known_one_200(
    seeded: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    assert seeded.leads[(1, 43)]["status"] == "open"

    unknown, _, _ = await patch(http, seeded, path="/api/v1/accounts/1/leads/44/status")
    other_account, _, _ = await patch(http, seeded, path="/api/v1/accounts/2/leads/42/status")
    known, _, _ = await patch(http, seeded, path="/api/v1/accounts/1/leads/43/status")

    assert (unknown, other_account, known) == (404, 404, 200)
    assert set(seeded.leads) == {(1, 42), (1, 43)}
    assert seeded.leads[(1, 43)]["status"] == "won"


async def test_a_body_that_is_not_json_answers_400(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await patch(http, fake, data=b'{"status": won')

    assert status == 400
    assert fake.leads == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "status is required"),
        (["won"], "status is required"),
        ({"status": "closed"}, "status must be one of open, won, lost, snoozed"),
        ({"status": None}, "status must be one of"),
        ({"status": "won", "notes": 12}, "notes must be a string or null"),
    ],
)
async def test_an_invalid_body_answers_422_with_a_message(
    fake: FakeVoxys, http: aiohttp.ClientSession, body: Any, message: str
) -> None:
    status, _, answer = await patch(http, fake, body)

    assert status == 422
    assert answer["error"].startswith(message)
    assert fake.leads == {}


async def test_other_methods_answer_405_and_other_paths_404(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    get, headers, _ = await patch(http, fake, method="GET")
    post, _, _ = await patch(http, fake, method="POST")
    elsewhere, _, _ = await patch(http, fake, path="/api/v1/accounts/1/leads/42")

    assert (get, post, elsewhere) == (405, 405, 404)
    assert headers["Allow"] == "PATCH"
    assert [c.status for c in fake.calls] == [405, 405, 404]


# -- fault injection ---------------------------------------------------------------------


async def test_scripted_answers_are_given_in_order_then_normal_handling_resumes(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    fake.script(
        Answer(status=429, headers={"Retry-After": "2"}),
        Answer(status=502, body="<html>Bad Gateway</html>"),
    )

    first = await patch(http, fake)
    second = await patch(http, fake)
    third = await patch(http, fake)

    assert (first[0], first[1]["Retry-After"], first[2]) == (
        429,
        "2",
        {"error": "Too Many Requests"},
    )
    assert (second[0], second[2]) == (502, "<html>Bad Gateway</html>")
    assert third[0] == 200
    assert fake.scripted == 0
    assert fake.calls[0].body == {"status": "won"}


async def test_a_scripted_reset_drops_the_connection_without_changing_the_lead(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    fake.script(Answer.reset())

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await patch(http, fake)

    assert fake.leads == {}
    assert (fake.calls[0].status, fake.calls[0].dropped) == (None, True)
    assert (await patch(http, fake))[0] == 200


async def test_a_reset_after_applying_changes_the_lead_though_the_client_saw_an_error(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    fake.script(Answer.reset(apply=True))

    with pytest.raises(aiohttp.ClientConnectionError):
        await patch(http, fake, {"status": "snoozed"})

    assert fake.leads[(1, 42)]["status"] == "snoozed"


async def test_a_partial_reset_cuts_the_body_after_the_headers(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    fake.script(Answer.reset(partial=True))

    with pytest.raises(aiohttp.ClientPayloadError):
        await patch(http, fake)

    assert (fake.calls[0].status, fake.calls[0].dropped) == (200, True)


async def test_the_rate_limit_answers_429_with_retry_after_on_the_injected_clock(
    fake: FakeVoxys, http: aiohttp.ClientSession, clock: Clock
) -> None:
    fake.fail_rate_limit = (2, 1.0)
    answers = []
    # Two calls, a third within the second, an impatient retry, a retry after Retry-After.
    for at in (0.0, 0.5, 0.6, 0.9, 1.6):
        clock.now = at
        status, headers, _ = await patch(http, fake)
        answers.append((status, headers.get("Retry-After")))

    assert answers == [(200, None), (200, None), (429, "1"), (429, "1"), (200, None)]
    assert fake.leads[(1, 42)]["status"] == "won"


async def test_retry_after_says_when_a_slot_in_the_window_frees(
    fake: FakeVoxys, http: aiohttp.ClientSession, clock: Clock
) -> None:
    fake.fail_rate_limit = (2, 10.0)
    answers = []
    for at in (0.0, 5.0, 6.0, 15.0):  # the call at 5.0 leaves the window at 15.0
        clock.now = at
        status, headers, _ = await patch(http, fake)
        answers.append((status, headers.get("Retry-After")))

    assert answers == [(200, None), (200, None), (429, "9"), (200, None)]


async def test_max_in_window_is_the_most_calls_in_any_window_of_that_length(
    fake: FakeVoxys, http: aiohttp.ClientSession, clock: Clock
) -> None:
    assert fake.max_in_window(1.0) == 0
    for at in (0.0, 0.5, 0.9, 1.0, 2.5):
        clock.now = at
        await patch(http, fake)

    assert fake.max_in_window(1.0) == 3  # 0.0, 0.5, 0.9 -- or 0.5, 0.9, 1.0
    assert fake.max_in_window(0.1) == 1
    assert fake.max_in_window(0.11) == 2  # 0.9 and 1.0
    assert fake.max_in_window(10.0) == 5


async def test_latency_delays_every_answer(fake: FakeVoxys, http: aiohttp.ClientSession) -> None:
    fake.latency = 0.05
    loop = asyncio.get_running_loop()
    started = loop.time()

    await asyncio.gather(patch(http, fake), patch(http, fake))

    elapsed = loop.time() - started
    assert 0.045 <= elapsed < 0.5  # concurrent requests wait side by side, not in turn


async def test_fail_ratio_answers_503_for_that_share_of_requests(
    fake: FakeVoxys, http: aiohttp.ClientSession
) -> None:
    fake.fail_ratio = 1.0
    failed, _, _ = await patch(http, fake)
    fake.fail_ratio = 0.0
    passed, _, _ = await patch(http, fake)

    assert (failed, passed) == (503, 200)


# -- sandbox -----------------------------------------------------------------------------


def test_sandbox_arguments_parse_seed_leads_and_rate_limits() -> None:
    assert parse_seed_leads("1/42, 1/43,") == [(1, 42), (1, 43)]
    assert parse_rate_limit("10/1") == (10, 1.0)
    for bad in ("1-42", "a/1"):
        with pytest.raises(ValueError, match="ACCOUNT/LEAD"):
            parse_seed_leads(bad)
    for bad in ("10", "0/1", "10/0", "x/1"):
        with pytest.raises(ValueError, match="REQUESTS/SECONDS"):
            parse_rate_limit(bad)


class Lines(io.StringIO):
    """A stream that tells the test when a line arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def write(self, text: str) -> int:
        self.arrived.set()
        return super().write(text)


async def test_the_sandbox_prints_its_url_and_serves_seeded_leads_until_cancelled(
    http: aiohttp.ClientSession,
) -> None:
    out = Lines()
    task = asyncio.create_task(run_sandbox("127.0.0.1", 0, TOKEN, [(1, 42)], 0.0, (10, 1.0), out))
    await asyncio.wait_for(out.arrived.wait(), 1.0)
    base_url = out.getvalue().split()[-1]

    async with http.patch(
        base_url + "/api/v1/accounts/1/leads/42/status",
        json={"status": "won"},
        headers={"api_access_token": TOKEN},
    ) as known:
        assert known.status == 200
    async with http.patch(
        base_url + "/api/v1/accounts/1/leads/7/status",
        json={"status": "won"},
        headers={"api_access_token": TOKEN},
    ) as unknown:
        assert unknown.status == 404
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    lines = out.getvalue().splitlines()
    assert base_url.startswith("http://127.0.0.1:")
    assert lines[1:] == [
        "PATCH /api/v1/accounts/1/leads/42/status -> 200 status='won'",
        "PATCH /api/v1/accounts/1/leads/7/status -> 404 status='won'",
    ]
    assert TOKEN not in out.getvalue()
