"""HighLevel: Ed25519 signatures checked against RFC 8032 vectors, event ids and times."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from bridge.app import create_app
from bridge.bundle import load_bundle
from bridge.errors import BadRequest
from bridge.models import Outcome
from bridge.runtime import RUNTIME, Runtime
from bridge.sources.base import WebhookRequest
from bridge.sources.fields import body_sha256
from bridge.sources.highlevel import HighLevelSource
from bridge.store import open_store

from .conftest import CONFIG_FILE, build_one, config_errors, make_request, refused, rejected, sample

T = 1_724_419_200.0  # 2024-08-23T13:20:00Z, the sample's timestamp
BODY = sample("highlevel", "OpportunityStatusUpdate.json")
ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples" / "highlevel"

# A test key pair standing in for HighLevel's (whose private half only HighLevel has).
KEY = ed25519.Ed25519PrivateKey.generate()
PRIVATE_PEM = KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
PUBLIC_PEM = KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
OTHER = ed25519.Ed25519PrivateKey.generate()

# RFC 8032 section 7.1, TEST 1 and TEST 2: (public key, message, signature), hex.
RFC8032 = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


def spki_pem(raw_public_key: bytes) -> str:
    """A PEM public key built by hand: RFC 8410's SubjectPublicKeyInfo for Ed25519."""
    der = bytes.fromhex("302a300506032b6570032100") + raw_public_key
    return (
        f"-----BEGIN PUBLIC KEY-----\n{base64.b64encode(der).decode()}\n-----END PUBLIC KEY-----\n"
    )


def source(public_key: str = PUBLIC_PEM, **extra: object) -> HighLevelSource:
    built = build_one({"preset": "highlevel", "public_key": public_key, **extra})
    assert isinstance(built, HighLevelSource)
    return built


def signed(body: bytes = BODY, key: ed25519.Ed25519PrivateKey = KEY) -> WebhookRequest:
    signature = base64.b64encode(key.sign(body)).decode()
    return make_request(body, {"X-GHL-Signature": signature, "User-Agent": "HighLevel"})


# Verification


@pytest.mark.parametrize(("public", "message", "signature"), RFC8032, ids=["test1", "test2"])
def test_the_rfc_8032_test_vectors_verify(public: str, message: str, signature: str) -> None:
    header = base64.b64encode(bytes.fromhex(signature)).decode()
    request = make_request(bytes.fromhex(message), {"X-GHL-Signature": header})
    # The vectors sign bare bytes, without HighLevel's timestamp: no freshness to check.
    source(spki_pem(bytes.fromhex(public)), tolerance=None).verify(request, T)


def test_an_rfc_8032_signature_over_another_message_is_refused() -> None:
    public, _, signature = RFC8032[1]
    header = base64.b64encode(bytes.fromhex(signature)).decode()
    request = make_request(b"\x73", {"X-GHL-Signature": header})
    assert refused(source(spki_pem(bytes.fromhex(public))), request, T) == "signature mismatch"


def test_a_request_signed_with_the_configured_key_pair_is_accepted() -> None:
    source().verify(signed(), T)


def test_a_request_signed_by_another_key_is_refused() -> None:
    assert refused(source(), signed(key=OTHER), T) == "signature mismatch"


def test_a_tampered_body_is_refused() -> None:
    request = signed()
    tampered = make_request(BODY.replace(b'"won"', b'"lost"'), request.headers)
    assert refused(source(), tampered, T) == "signature mismatch"


def test_a_request_without_the_header_is_refused() -> None:
    assert refused(source(), make_request(BODY, {}), T) == "missing X-GHL-Signature header"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("not base64!", "malformed X-GHL-Signature header"),
        ("AAAA", "signature mismatch"),  # valid base64, far too short for Ed25519
        (base64.b64encode(b"\0" * 64).decode(), "signature mismatch"),
    ],
)
def test_a_garbled_signature_is_refused_with_a_reason(header: str, reason: str) -> None:
    request = make_request(BODY, {"X-GHL-Signature": header})
    assert refused(source(), request, T) == reason


def test_by_default_the_signed_timestamp_must_be_within_five_minutes() -> None:
    # HighLevel recommends refusing bodies older than about five minutes as replays.
    source().verify(signed(), T + 300)
    source().verify(signed(), T - 300)
    assert refused(source(), signed(), T + 301) == "timestamp outside tolerance"


def test_the_tolerance_is_configurable_as_a_duration() -> None:
    lenient = source(tolerance="10m")
    lenient.verify(signed(), T + 599)
    assert refused(lenient, signed(), T + 601) == "timestamp outside tolerance"


def test_with_tolerance_null_an_old_but_genuine_event_is_accepted() -> None:
    # The operator's explicit choice: the webhookId then deduplicates redeliveries alone.
    source(tolerance=None).verify(signed(), T + 7 * 86_400)


@pytest.mark.parametrize("body", [b'{"webhookId": "w1"}', b'{"timestamp": "soon"}', b"[1]"])
def test_a_body_without_a_timestamp_is_refused(body: bytes) -> None:
    assert refused(source(), signed(body), T) == "no timestamp in the signed body"


def test_a_sender_stamps_the_body_with_the_time_it_sends_it() -> None:
    stamped = source().stamp(BODY, T + 3600)
    assert json.loads(stamped)["timestamp"] == "2024-08-23T14:20:00.000Z"
    assert {**json.loads(stamped), "timestamp": None} == {**json.loads(BODY), "timestamp": None}
    source().verify(signed(stamped), T + 3600)
    assert source().stamp(b"[1]", T) == b"[1]"


# Signing


def test_signing_needs_a_private_key_which_highlevel_never_hands_out() -> None:
    with pytest.raises(NotImplementedError, match="private_key"):
        source().sign(BODY, now=T, path="/webhooks/test")


def test_with_a_test_private_key_what_it_signs_verifies() -> None:
    signer = source(private_key=PRIVATE_PEM)
    headers = signer.sign(BODY, now=T, path="/webhooks/test")
    assert headers["Content-Type"] == "application/json"
    source().verify(make_request(BODY, headers), T)
    assert "private_key" in signer.startup_warnings()[0]
    assert source().startup_warnings() == []


# Parsing


def test_the_event_id_is_the_webhook_id_and_the_time_its_timestamp() -> None:
    [event] = source().parse(signed(), received_at=T + 5)
    payload = json.loads(BODY)
    assert event.event_id == payload["webhookId"] == "a3f1c2d4-5b6e-4f70-8a9b-0c1d2e3f4a5b"
    assert event.occurred_at == T
    assert (event.received_at, event.source, event.payload) == (T + 5, "test", payload)


def test_stored_headers_leave_out_the_signature() -> None:
    [event] = source().parse(signed(), received_at=T)
    assert dict(event.headers) == {"user-agent": "HighLevel"}


def test_an_event_without_a_webhook_id_is_identified_by_its_body() -> None:
    body = b'{"type": "OpportunityStatusUpdate", "id": "opp1", "status": "won"}'
    [event] = source().parse(make_request(body), received_at=T)
    assert (event.event_id, event.occurred_at) == (body_sha256(body), T)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "HighLevel event is not a JSON object"),
        (b"{not json", "malformed JSON"),
        (b"", "empty body"),
    ],
)
def test_a_body_that_is_not_an_event_is_a_bad_request(body: bytes, reason: str) -> None:
    assert rejected(BadRequest, source(), make_request(body)) == reason


# Configuration


def test_the_issue_yaml_shape_builds_with_a_pem_from_the_environment() -> None:
    # An environment variable often carries the PEM's newlines as literal "\n".
    escaped = PUBLIC_PEM.strip().replace("\n", "\\n")
    source(escaped).verify(signed(), T)
    bare = "".join(PUBLIC_PEM.strip().splitlines()[1:-1])
    source(bare).verify(signed(), T)


def test_the_private_key_is_hidden_and_a_blank_one_is_none() -> None:
    built = source(private_key=PRIVATE_PEM)
    secret_line = PRIVATE_PEM.splitlines()[1]
    assert secret_line not in repr(built.settings) + str(built.settings)
    with pytest.raises(NotImplementedError):
        source(private_key="").sign(BODY, now=T, path="/webhooks/test")


def rsa_public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        ({}, "public_key", "required"),
        ({"public_key": "not a key"}, "public_key", "not a PEM public key"),
        ({"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END"}, "public_key", "not a PEM"),
        ({"public_key": rsa_public_pem()}, "public_key", "not an Ed25519 public key"),
        ({"public_key": PUBLIC_PEM, "private_key": "nope"}, "private_key", "not an unencrypted"),
        ({"public_key": PUBLIC_PEM, "tolerance": "soon"}, "tolerance", "duration"),
    ],
    ids=["missing", "garbage", "bad-pem", "rsa", "bad-private", "bad-tolerance"],
)
def test_a_bad_key_is_a_config_error_naming_its_key(
    entry: dict[str, str], key: str, message: str
) -> None:
    [error] = config_errors({"hl": {"preset": "highlevel", **entry}})
    assert error.startswith(f"{CONFIG_FILE}: key 'sources.hl.{key}'")
    assert message in error


def test_a_private_key_of_another_pair_is_a_config_error() -> None:
    other = OTHER.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    [error] = config_errors(
        {"hl": {"preset": "highlevel", "public_key": PUBLIC_PEM, "private_key": other}}
    )
    assert "private_key does not belong to public_key" in error
    assert other.splitlines()[1] not in error


# Over HTTP, with the shipped rules


CONFIG = """
server: {{host: 127.0.0.1, port: 0, public_url: "http://127.0.0.1", max_body_bytes: 65536}}
storage: {{url: "sqlite:///{db}"}}
voxys: {{base_url: "http://127.0.0.1:9", api_token: "voxys-test-token", account_id: 7}}
logging: {{format: json, level: warning}}
lookups:
  highlevel_opportunities: {{file: opportunities.csv}}
sources:
  highlevel: {{preset: highlevel, public_key: "${{TEST_HIGHLEVEL_PUBLIC_KEY}}"}}
rules:
  - include: {rules}
"""


NOW = [T]  # the server's clock in the HTTP tests


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("TEST_HIGHLEVEL_PUBLIC_KEY", PUBLIC_PEM.strip().replace("\n", "\\n"))
    (tmp_path / "opportunities.csv").write_text(
        "key,value\nnmFmQEsNgz6AVpgLVUJ0,4711\npQ7rS9tU1vW3xY5zA2bC,4712\n"
    )
    config = tmp_path / "bridge.yaml"
    config.write_text(CONFIG.format(db=tmp_path / "bridge.db", rules=EXAMPLES / "rules.yaml"))
    bundle = load_bundle(config)
    NOW[0] = T
    store = open_store(bundle.config.storage.url)
    runtime = Runtime(bundle=bundle, store=store, clock=lambda: NOW[0])
    return await aiohttp_client(create_app(runtime))


async def post(client: TestClient, body: bytes, key: ed25519.Ed25519PrivateKey = KEY) -> int:
    signature = base64.b64encode(key.sign(body)).decode()
    resp = await client.post(
        "/webhooks/highlevel",
        data=body,
        headers={"Content-Type": "application/json", "X-GHL-Signature": signature},
    )
    return resp.status


async def test_a_request_signed_by_another_key_is_401_and_stores_nothing(
    client: TestClient,
) -> None:
    assert await post(client, BODY, key=OTHER) == 401
    assert await client.app[RUNTIME].store.events_for_replay(since=0.0) == []


@pytest.mark.parametrize(
    ("example", "lead", "status"),
    [
        ("OpportunityStatusUpdate-won.json", 4711, "won"),
        ("OpportunityStatusUpdate-lost.json", 4712, "lost"),
        ("OpportunityStatusUpdate-reopened.json", 4712, "open"),
    ],
)
async def test_the_shipped_examples_move_their_lead_by_the_shipped_rule(
    client: TestClient, example: str, lead: int, status: str
) -> None:
    body = (EXAMPLES / example).read_bytes()
    NOW[0] = datetime.fromisoformat(json.loads(body)["timestamp"]).timestamp()  # as it was sent
    assert await post(client, body) == 200
    [entry] = await client.app[RUNTIME].store.ledger(7, lead)
    assert (entry.status, entry.rule) == (status, "highlevel-opportunity-status")
    assert entry.notes is not None and entry.notes.startswith("HighLevel opportunity ")


async def test_an_abandoned_opportunity_changes_no_lead(client: TestClient) -> None:
    body = (EXAMPLES / "OpportunityStatusUpdate-abandoned-ignored.json").read_bytes()
    assert await post(client, body) == 200
    [stored] = await client.app[RUNTIME].store.events_for_replay(since=0.0)
    assert stored.outcome is Outcome.IGNORED


async def test_an_opportunity_missing_from_the_lookup_is_stored_unmapped(
    client: TestClient,
) -> None:
    payload = {**json.loads(BODY), "id": "notInTheTable00000000", "webhookId": "w-unmapped"}
    assert await post(client, json.dumps(payload).encode()) == 200
    [stored] = await client.app[RUNTIME].store.events_for_replay(since=0.0)
    assert stored.outcome is Outcome.UNMAPPED
