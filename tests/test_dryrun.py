"""`voxys-bridge dry-run`, run as the real console script on the shipped config and examples.

Every payload under examples/ has its expected verdict in EXPECTED: the transition it
must produce (rule, account, lead, status) or why it produces none. A new example
without an entry fails `test_every_example_has_an_expected_verdict`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.demo import example_payloads

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "bridge.yaml"
EXAMPLES = ROOT / "examples"
ALL_PROVIDERS = EXAMPLES / "all-providers.yaml"  # config/bridge.yaml's sources and six more
CORE = {"stripe", "hubspot", "pipedrive", "standard-webhooks"}  # in config/bridge.yaml itself
ACCOUNT = 1  # VOXYS_ACCOUNT_ID below: what rules without account_id use

# What dry-run reads of config/bridge.yaml's variables: no secret, since it verifies nothing.
DUMMY_ENV = {"VOXYS_ACCOUNT_ID": str(ACCOUNT), "VOXYS_BASE_URL": "http://127.0.0.1:9"}
# Every secret variable the shipped configs read: unset for each run (see start_dry_run).
SECRET_VARIABLES = (
    "VOXYS_API_TOKEN",
    "BRIDGE_ADMIN_TOKEN",
    "BRIDGE_STORAGE_URL",
    "STRIPE_WEBHOOK_SECRET",
    "HUBSPOT_CLIENT_SECRET",
    "PIPEDRIVE_PASSWORD",
    "BILLING_WEBHOOK_SECRET",
    "PADDLE_SECRET",
    "CHARGEBEE_PASSWORD",
    "SHOPIFY_CLIENT_SECRET",
    "CLOSE_SIGNATURE_KEY",
    "SALESFORCE_ORG_ID",
    "SALESFORCE_URL_TOKEN",
    "HIGHLEVEL_PUBLIC_KEY",
    "HIGHLEVEL_PRIVATE_KEY",
)
XML = ["--header", "Content-Type: text/xml"]
WEBHOOK_ID = ["--header", "webhook-id: msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"]


@dataclass(frozen=True)
class Sends:
    """The event becomes one PATCH for this rule, account, lead and status."""

    rule: str
    lead_id: int
    status: str
    account_id: int = ACCOUNT
    follow_up: tuple[str, str] | None = None  # the status it schedules and when (ISO)


@dataclass(frozen=True)
class Ignored:
    """No rule matched the event."""


@dataclass(frozen=True)
class Unmapped:
    """`rule` matched but could not make a valid transition."""

    rule: str
    reason_part: str


Verdict = Sends | Ignored | Unmapped

# file (relative to examples/) -> (source key, extra CLI args, one verdict per event)
EXPECTED: dict[str, tuple[str, list[str], list[Verdict]]] = {
    "stripe/checkout.session.completed-paid.json": (
        "stripe",
        [],
        [Sends("stripe-checkout-paid", 4711, "won")],
    ),
    "stripe/checkout.session.completed-unpaid-ignored.json": ("stripe", [], [Ignored()]),
    "stripe/checkout.session.completed-no-lead-id-unmapped.json": (
        "stripe",
        [],
        [Unmapped("stripe-checkout-paid", "lead_id")],
    ),
    "stripe/invoice.paid.json": ("stripe", [], [Sends("stripe-invoice-paid", 4713, "won")]),
    "stripe/invoice.payment_failed.json": (
        "stripe",
        [],
        [
            Sends(
                "stripe-invoice-payment-failed",
                4714,
                "snoozed",
                follow_up=("lost", "2024-08-30T14:24:00Z"),  # 7 days after `created`
            )
        ],
    ),
    "stripe/customer.subscription.paused.json": (
        "stripe",
        [],
        [Sends("stripe-subscription-paused", 4715, "snoozed")],
    ),
    "stripe/customer.subscription.deleted.json": (
        "stripe",
        [],
        [Sends("stripe-subscription-deleted", 4716, "lost")],
    ),
    "stripe/charge.refunded.json": ("stripe", [], [Sends("stripe-charge-refunded", 4711, "lost")]),
    "stripe/charge.refunded-partial-ignored.json": ("stripe", [], [Ignored()]),
    "hubspot/deal.propertyChange-closedwon.json": (
        "hubspot",
        [],
        [Sends("hubspot-deal-won", 4711, "won")],
    ),
    "hubspot/deal.propertyChange-closedlost.json": (
        "hubspot",
        [],
        [Sends("hubspot-deal-lost", 4712, "lost")],
    ),
    "hubspot/deal.propertyChange-closedwon-deal-not-in-lookup-unmapped.json": (
        "hubspot",
        [],
        [Unmapped("hubspot-deal-won", "lead_id")],
    ),
    "hubspot/batch-won-lost-and-other-events.json": (
        "hubspot",
        [],
        [
            Sends("hubspot-deal-won", 4720, "won"),
            Sends("hubspot-deal-lost", 4721, "lost"),
            Ignored(),  # another deal stage
            Ignored(),  # a contact event
        ],
    ),
    "pipedrive/v2-deal-won.json": (
        "pipedrive",
        [],
        [Sends("pipedrive-v2-deal-status", 4711, "won")],
    ),
    "pipedrive/v2-deal-lost.json": (
        "pipedrive",
        [],
        [Sends("pipedrive-v2-deal-status", 4712, "lost")],
    ),
    "pipedrive/v2-deal-reopened.json": (
        "pipedrive",
        [],
        [Sends("pipedrive-v2-deal-status", 4713, "open")],
    ),
    "pipedrive/v2-deal-renamed-ignored.json": ("pipedrive", [], [Ignored()]),
    "pipedrive/v1-deal-won.json": (
        "pipedrive",
        [],
        [Sends("pipedrive-v1-deal-status", 4711, "won")],
    ),
    "pipedrive/v1-deal-lost.json": (
        "pipedrive",
        [],
        [Sends("pipedrive-v1-deal-status", 4712, "lost")],
    ),
    "pipedrive/v1-deal-reopened.json": (
        "pipedrive",
        [],
        [Sends("pipedrive-v1-deal-status", 4713, "open")],
    ),
    "standard-webhooks/invoice.paid.json": (
        "billing",
        WEBHOOK_ID,
        [Sends("billing-invoice-paid", 4711, "won")],
    ),
    "standard-webhooks/invoice.payment_failed.json": (
        "billing",
        WEBHOOK_ID,
        [
            Sends(
                "billing-payment-failed",
                4712,
                "snoozed",
                follow_up=("lost", "2024-09-07T06:00:00Z"),  # the grace period's end
            )
        ],
    ),
    "standard-webhooks/subscription.canceled.json": (
        "billing",
        WEBHOOK_ID,
        [Sends("billing-subscription-canceled", 4716, "lost")],
    ),
    "paddle/transaction.completed.json": (
        "paddle",
        [],
        [Sends("paddle-transaction-completed", 4721, "won")],
    ),
    "paddle/subscription.canceled.json": (
        "paddle",
        [],
        [Sends("paddle-subscription-canceled", 4722, "lost")],
    ),
    "chargebee/payment_succeeded.json": (
        "chargebee",
        [],
        [Sends("chargebee-payment-succeeded", 4731, "won")],
    ),
    "chargebee/subscription_cancelled.json": (
        "chargebee",
        [],
        [Sends("chargebee-subscription-cancelled", 4732, "lost")],
    ),
    "shopify/orders-paid.json": (
        "shopify",
        [],
        [Sends("shopify-order-paid", 4741, "won")],
    ),
    "shopify/orders-cancelled.json": (
        "shopify",
        ["--header", "X-Shopify-Topic: orders/cancelled"],
        [Sends("shopify-order-cancelled", 4742, "lost")],
    ),
    "close/opportunity.updated-won.json": (
        "close",
        [],
        [Sends("close-opportunity-status", 4751, "won")],
    ),
    "close/opportunity.updated-lost.json": (
        "close",
        [],
        [Sends("close-opportunity-status", 4752, "lost")],
    ),
    "salesforce/opportunity-won.xml": (
        "salesforce",
        XML,
        [Sends("salesforce-opportunity-won", 4711, "won")],
    ),
    "salesforce/opportunity-lost.xml": (
        "salesforce",
        XML,
        [Sends("salesforce-opportunity-lost", 4712, "lost")],
    ),
    "salesforce/opportunity-open-ignored.xml": ("salesforce", XML, [Ignored()]),
    "highlevel/OpportunityStatusUpdate-won.json": (
        "highlevel",
        [],
        [Sends("highlevel-opportunity-status", 4711, "won")],
    ),
    "highlevel/OpportunityStatusUpdate-lost.json": (
        "highlevel",
        [],
        [Sends("highlevel-opportunity-status", 4712, "lost")],
    ),
    "highlevel/OpportunityStatusUpdate-reopened.json": (
        "highlevel",
        [],
        [Sends("highlevel-opportunity-status", 4712, "open")],
    ),
    "highlevel/OpportunityStatusUpdate-abandoned-ignored.json": ("highlevel", [], [Ignored()]),
}


def console_script() -> list[str]:
    """The installed `voxys-bridge` next to this interpreter, else `python -m bridge`."""
    beside = Path(sys.executable).parent / "voxys-bridge"
    found = str(beside) if beside.exists() else shutil.which("voxys-bridge")
    return [found] if found else [sys.executable, "-m", "bridge"]


def start_dry_run(
    *args: str | Path,
    config: Path | None = CONFIG,
    env: dict[str, str] | None = None,
    unset: str | None = None,
) -> subprocess.Popen[str]:
    """Start `voxys-bridge dry-run` (with --config unless None) in the repository root."""
    options = ["--config", str(config)] if config else []
    command = [*console_script(), "dry-run", *options, *map(str, args)]
    full_env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    full_env.update({**DUMMY_ENV, **(env or {})})
    if unset:
        full_env.pop(unset, None)
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def dry_run(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return finish(start_dry_run(*args, **kwargs))


def dry_run_json(*args: str | Path, **kwargs: Any) -> list[dict[str, Any]]:
    result = dry_run("--json", *args, **kwargs)
    assert result.returncode == 0, result.stderr
    reports: list[dict[str, Any]] = json.loads(result.stdout)
    return reports


def test_every_example_has_an_expected_verdict() -> None:
    shipped = {p.relative_to(EXAMPLES).as_posix() for p in example_payloads(ROOT)}
    assert shipped == set(EXPECTED)


def config_for(name: str) -> Path:
    """config/bridge.yaml for its own providers' examples, all-providers.yaml for the rest."""
    return CONFIG if name.split("/")[0] in CORE else ALL_PROVIDERS


@pytest.fixture(scope="module")
def example_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """`dry-run --json` of every example, a few at a time (start-up dominates, and CPU-bound
    start-ups beyond the cores only queue: all at once, a loaded machine timed them out)."""
    window = (os.cpu_count() or 1) + 1
    pending = list(EXPECTED.items())
    running: dict[str, subprocess.Popen[str]] = {}
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    while pending or running:
        while pending and len(running) < window:
            name, (source, extra, _) = pending.pop()
            running[name] = start_dry_run(
                "--json", "--source", source, *extra, EXAMPLES / name, config=config_for(name)
            )
        name = next(iter(running))
        runs[name] = finish(running.pop(name))
    return runs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_example_payload_produces_its_expected_request(
    name: str, example_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    source, _, verdicts = EXPECTED[name]
    run = example_runs[name]
    assert run.returncode == 0, run.stderr

    reports = json.loads(run.stdout)

    assert len(reports) == len(verdicts)
    for report, verdict in zip(reports, verdicts, strict=True):
        assert report["source"] == source
        assert report["event_id"]
        if isinstance(verdict, Sends):
            assert report["outcome"] == "matched"
            assert report["rule"] == verdict.rule
            [request] = report["requests"]
            path = f"/api/v1/accounts/{verdict.account_id}/leads/{verdict.lead_id}/status"
            assert (request["method"], request["path"]) == ("PATCH", path)
            assert request["body"]["status"] == verdict.status
            assert set(request["body"]) <= {"status", "notes"}
            follow_up = request["follow_up"]
            if verdict.follow_up is None:
                assert follow_up is None
            else:
                assert (follow_up["status"], follow_up["due_iso"]) == verdict.follow_up
            assert report["why_nothing"] is None
        elif isinstance(verdict, Ignored):
            assert report["outcome"] == "ignored"
            assert report["requests"] == []
            assert report["why_nothing"].startswith("no rule matched")
        else:
            assert report["outcome"] == "unmapped"
            assert report["requests"] == []
            assert report["rule"] == verdict.rule
            assert verdict.reason_part in report["unmapped"][0]["reason"]
            assert verdict.rule in report["why_nothing"]


def test_text_output_shows_the_rule_and_the_exact_request() -> None:
    result = dry_run("--source", "stripe", EXAMPLES / "stripe/checkout.session.completed-paid.json")

    assert result.returncode == 0, result.stderr
    assert "outcome   matched" in result.stdout
    assert "rule      stripe-checkout-paid" in result.stdout
    assert "PATCH /api/v1/accounts/1/leads/4711/status" in result.stdout
    assert '{"status": "won", "notes": "Stripe checkout paid: 49.00 EUR"}' in result.stdout


def test_text_output_shows_the_follow_up_a_rule_would_schedule_and_when() -> None:
    result = dry_run("--source", "stripe", EXAMPLES / "stripe/invoice.payment_failed.json")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index("  follow-up PATCH /api/v1/accounts/1/leads/4714/status")
    assert lines[at + 1].strip().startswith('{"status": "lost", "notes": "Stripe invoice')
    assert lines[at + 2].strip() == (
        "at 2024-08-30T14:24:00Z, 7d after the event (past: fires at once),"
    )
    assert lines[at + 3].strip() == "unless a newer event for lead 1/4714 is stored first"


def test_a_follow_up_in_the_future_says_how_far_off_it_is(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(
        RULE_WITHOUT_NOTES
        + "    follow_up: {after: 36h, status: lost, notes: 'unpaid {{ event.id }}'}\n"
    )
    payload = tmp_path / "event.json"
    event = {"id": "evt_9", "type": "invoice.paid", "created": 4_102_444_800}  # 2100-01-01
    event["data"] = {"object": {"metadata": {"account": "12", "lead": "34"}}}
    payload.write_text(json.dumps(event))

    [report] = dry_run_json("--source", "shop", payload, config=config)

    follow_up = report["requests"][0]["follow_up"]
    assert follow_up["body"] == {"status": "lost", "notes": "unpaid evt_9"}
    assert follow_up["after_event_s"] == 36 * 3600
    assert not follow_up["fires_at_once"]
    # A time in the future is taken as the time of receipt (the source clamps it), so the
    # follow-up is 36 h from now.
    assert 36 * 3600 - 60 < follow_up["due_in_s"] <= 36 * 3600


def test_text_output_says_why_nothing_would_be_sent() -> None:
    ignored = dry_run(
        "--source", "stripe", EXAMPLES / "stripe/checkout.session.completed-unpaid-ignored.json"
    )
    unmapped = dry_run(
        "--source",
        "hubspot",
        EXAMPLES / "hubspot/deal.propertyChange-closedwon-deal-not-in-lookup-unmapped.json",
    )

    assert ignored.returncode == unmapped.returncode == 0
    assert "no request: no rule matched (6 rule(s) for source 'stripe')" in ignored.stdout
    assert "PATCH" not in ignored.stdout + unmapped.stdout
    assert "no request: rule 'hubspot-deal-won' matched but lead_id rendered ''" in unmapped.stdout


RULE_WITHOUT_NOTES = """
voxys: {base_url: "${VOXYS_BASE_URL}", api_token: token, account_id: 3}
sources:
  shop: {preset: stripe, secret: whsec_dry_run}
rules:
  - name: paid
    source: shop
    when: event.type == 'invoice.paid'
    account_id: "{{ event.data.object.metadata.account }}"
    lead_id: "{{ event.data.object.metadata.lead }}"
    status: won
"""


def test_the_body_has_no_notes_when_the_rule_sets_none(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(RULE_WITHOUT_NOTES)
    payload = tmp_path / "event.json"
    event = {"id": "evt_1", "type": "invoice.paid"}
    event["data"] = {"object": {"metadata": {"account": "12", "lead": "34"}}}
    payload.write_text(json.dumps(event))

    [report] = dry_run_json("--source", "shop", payload, config=config)

    [request] = report["requests"]
    assert request["path"] == "/api/v1/accounts/12/leads/34/status"
    assert request["body"] == {"status": "won"}


SENDING_SAMPLES = [
    "stripe/invoice.paid.json",
    "hubspot/batch-won-lost-and-other-events.json",
    "pipedrive/v2-deal-won.json",
    "standard-webhooks/invoice.paid.json",
]


def test_dry_run_never_connects_to_voxys() -> None:
    # Given a Voxys base URL that is a real listening socket
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        # When examples of every provider family that would send are dry-run against it
        for name in SENDING_SAMPLES:
            source, extra, _ = EXPECTED[name]
            dry_run_json("--source", source, *extra, EXAMPLES / name, env={"VOXYS_BASE_URL": url})
        # Then nothing ever connected
        with pytest.raises(BlockingIOError):
            server.accept()


def test_a_missing_payload_file_is_a_clear_error_with_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"

    result = dry_run("--source", "stripe", missing)

    assert result.returncode == 2
    assert f"error: cannot read payload file {missing}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_payload_that_is_not_json_is_a_clear_error_with_its_position(tmp_path: Path) -> None:
    payload = tmp_path / "broken.json"
    payload.write_text('{"id": "evt_1",\n  "type": }\n')

    result = dry_run("--source", "stripe", payload)

    assert result.returncode == 2
    assert "error: payload is not valid JSON: Expecting value at line 2, column 11" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_payload_file_is_named_as_empty(tmp_path: Path) -> None:
    payload = tmp_path / "empty.json"
    payload.write_text("\n")

    result = dry_run("--source", "stripe", payload)

    assert result.returncode == 2
    assert f"error: payload file {payload} is empty" in result.stderr


def test_an_unknown_source_lists_the_configured_keys() -> None:
    result = dry_run("--source", "paddle", EXAMPLES / "stripe/invoice.paid.json")

    assert result.returncode == 2
    expected = "unknown source 'paddle' (configured sources: billing, hubspot, pipedrive, stripe)"
    assert f"error: {expected}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_payload_the_source_would_reject_names_the_reason() -> None:
    # Standard Webhooks events are identified by the webhook-id header, not the body.
    result = dry_run("--source", "billing", EXAMPLES / "standard-webhooks/invoice.paid.json")

    assert result.returncode == 2
    assert "would reject" in result.stderr
    assert "HTTP 400: missing webhook-id header" in result.stderr


def test_a_header_without_a_colon_is_refused() -> None:
    result = dry_run(
        "--source",
        "billing",
        "--header",
        "webhook-id msg_1",
        EXAMPLES / "standard-webhooks/invoice.paid.json",
    )

    assert result.returncode == 2
    assert "--header 'webhook-id msg_1' is not of the form 'Name: value'" in result.stderr


def test_a_config_error_is_printed_like_check_does_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(
        CONFIG.read_text().replace(
            "account_id: ${VOXYS_ACCOUNT_ID:-1}", "account_id: ${DRY_ACCOUNT}"
        )
    )
    (tmp_path / "rules").symlink_to(CONFIG.parent / "rules")
    (tmp_path / "lookups").symlink_to(CONFIG.parent / "lookups")
    result = dry_run("--source", "stripe", "examples/stripe/invoice.paid.json", config=config)

    assert result.returncode == 2
    assert "key 'voxys.account_id': environment variable DRY_ACCOUNT is not set" in result.stderr
    assert f"1 error(s) in {config}" in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_needs_no_secret_of_any_source_set_or_not() -> None:
    # Given every secret variable unset, or set to something `check` would refuse,
    weak = {name: "x" for name in SECRET_VARIABLES if name != "BRIDGE_STORAGE_URL"}
    for env in ({}, weak):
        # when a payload is tried on the config with every provider,
        result = dry_run(
            "--source",
            "close",
            EXAMPLES / "close/opportunity.updated-won.json",
            config=ALL_PROVIDERS,
            env=env,
        )
        # then the rules run as with real secrets.
        assert result.returncode == 0, result.stderr
        assert "close-opportunity-status" in result.stdout
