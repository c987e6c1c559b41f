"""Guessable secrets are configuration errors, for every preset and the generic source.

An unedited `.env.example` once passed `check`, and the bridge then accepted Pipedrive
requests with an empty password and Stripe requests signed with the secret `whsec_`.
Each secret setting of each source is tried here with the empty value, the bare prefix,
a `<…>` placeholder and a value too short for the provider's format.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bridge import strength
from bridge.sources import presets

from .conftest import CONFIG_FILE, build_one, config_errors

PLACEHOLDER = "<signing secret from the provider>"


def stripe(secret: Any) -> dict[str, Any]:
    return {"preset": "stripe", "secret": secret}


def standard_webhooks(secret: Any) -> dict[str, Any]:
    return {"preset": "standard-webhooks", "secret": secret}


def hmac_secret(preset: str) -> Any:
    return lambda secret: {"preset": preset, "secret": secret}


def basic(preset: str) -> Any:
    return lambda password: {
        "preset": preset,
        "basic_auth": {"username": "voxys", "password": password},
    }


def generic_hmac(secret: Any) -> dict[str, Any]:
    return {"verify": {"type": "hmac", "header": "X-Signature"}, "secret": secret}


def generic_token(secret: Any) -> dict[str, Any]:
    return {"verify": {"type": "token", "header": "X-Token"}, "secret": secret}


def generic_basic(password: Any) -> dict[str, Any]:
    return {"verify": {"type": "basic", "username": "voxys", "password": password}}


def salesforce(token: Any) -> dict[str, Any]:
    return {"preset": "salesforce", "organization_ids": ["00D000000000001EAA"], "token": token}


def highlevel(public_key: Any) -> dict[str, Any]:
    return {"preset": "highlevel", "public_key": public_key}


# Each secret setting: (how to configure it, its key under sources.<key>, a strong value).
SETTINGS = {
    "stripe": (stripe, "secret", "whsec_" + "a1B2c3D4e5F6g7H8i9J0k1L2"),
    "hubspot": (hmac_secret("hubspot"), "secret", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
    "paddle": (hmac_secret("paddle"), "secret", "pdl_ntfset_01h0aaaaaaaa_bbbbbbbbcccc"),
    "shopify": (hmac_secret("shopify"), "secret", "shpss_" + "0123456789abcdef" * 2),
    "close": (hmac_secret("close"), "secret", "0123456789abcdef" * 4),
    "standard-webhooks": (
        standard_webhooks,
        "secret",
        "whsec_" + base64.b64encode(b"twenty-four random bytes").decode(),
    ),
    "pipedrive": (basic("pipedrive"), "basic_auth.password", "a-long-password"),
    "chargebee": (basic("chargebee"), "basic_auth.password", "a-long-password"),
    "salesforce": (salesforce, "token", "a-url-token-of-20-chars"),
    "highlevel": (highlevel, "public_key", None),  # a public key: only its emptiness
    "generic-hmac": (generic_hmac, "secret", "a-shared-secret-of-24-ch"),
    "generic-token": (generic_token, "secret", "a-shared-secret-of-24-ch"),
    "generic-basic": (generic_basic, "verify.password", "a-long-password"),
}


def errors_for(entry: dict[str, Any]) -> list[str]:
    return config_errors({"src": entry})


def test_every_preset_is_covered_here() -> None:
    covered = {name.removeprefix("generic-") for name in SETTINGS}
    assert set(presets()) - {"generic"} <= covered


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_strong_value_is_accepted(name: str) -> None:
    make, _, strong = SETTINGS[name]
    if strong is not None:
        build_one(make(strong))


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_an_empty_secret_is_refused_naming_its_key(name: str, value: str) -> None:
    make, key, _ = SETTINGS[name]
    [message] = errors_for(make(value))
    assert message.startswith(f"{CONFIG_FILE}: key 'sources.src.{key}': ")
    assert "is empty" in message


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_placeholder_is_refused_naming_its_key(name: str) -> None:
    make, key, _ = SETTINGS[name]
    [message] = errors_for(make(PLACEHOLDER))
    assert message == f"{CONFIG_FILE}: key 'sources.src.{key}': " + (
        "is a placeholder (<…>): set the real value"
    )


@pytest.mark.parametrize("prefix", strength.KNOWN_PREFIXES)
@pytest.mark.parametrize("name", ["stripe", "paddle", "shopify", "standard-webhooks", "hubspot"])
def test_a_secret_that_is_only_a_known_prefix_is_refused(name: str, prefix: str) -> None:
    make, key, _ = SETTINGS[name]
    [message] = errors_for(make(prefix))
    assert f"key 'sources.src.{key}'" in message
    assert f"is only the prefix {prefix}" in message or "must start with whsec_" in message


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("stripe", "whsec_abc", "is too short: 3 characters after whsec_, at least 16 needed"),
        ("stripe", "a1B2c3D4e5F6g7H8i9J0k1L2", "must start with whsec_"),
        ("hubspot", "short-secret", "is too short: 12 characters, at least 16 needed"),
        ("paddle", "pdl_ntfset_abc", "is too short: 3 characters after pdl_ntfset_"),
        ("shopify", "0123456789", "is too short: 10 characters, at least 16 needed"),
        ("close", "0123456789abcdef", "is the 64 hex digits Close returned (this one has 16)"),
        (
            "standard-webhooks",
            "whsec_" + base64.b64encode(b"sixteen bytes!!!").decode(),
            "holds at least 24 bytes (this one holds 16)",
        ),
        ("pipedrive", "eleven-char", "is too short: 11 characters, at least 12 needed"),
        ("chargebee", "pa55", "or set allow_weak_password: true"),
        ("salesforce", "token-15-chars!", "is too short: 15 characters, at least 16 needed"),
        ("generic-hmac", "s3cr3t", "or set allow_weak_secret: true"),
        ("generic-token", "t0k3n", "or set allow_weak_secret: true"),
        ("generic-basic", "pa55", "or set allow_weak_password: true"),
    ],
)
def test_a_secret_too_short_for_its_format_is_refused(name: str, value: str, words: str) -> None:
    make, key, _ = SETTINGS[name]
    [message] = errors_for(make(value))
    assert f"key 'sources.src.{key}'" in message
    assert words in message
    assert value not in message  # the value itself is never quoted back


def test_each_secret_of_a_rotation_list_is_checked_and_named_by_position() -> None:
    make, _, strong = SETTINGS["hubspot"]
    [message] = errors_for(make([strong, "whsec_"]))
    assert "secret 2 of 2 is only the prefix whsec_" in message


def test_a_weak_basic_password_is_accepted_when_the_operator_says_so() -> None:
    for entry in (
        {
            "preset": "pipedrive",
            "basic_auth": {"username": "u", "password": "pa55", "allow_weak_password": True},
        },
        {
            "verify": {
                "type": "basic",
                "username": "u",
                "password": "pa55",
                "allow_weak_password": True,
            }
        },
    ):
        build_one(entry)
    # but never an empty one
    weak_empty = {"username": "u", "password": "", "allow_weak_password": True}
    [message] = errors_for({"preset": "chargebee", "basic_auth": weak_empty})
    assert "is empty" in message


def test_a_short_generic_secret_is_accepted_when_the_operator_says_so() -> None:
    build_one({**generic_hmac("short"), "allow_weak_secret": True})
    [message] = errors_for({**generic_hmac("whsec_"), "allow_weak_secret": True})
    assert "is only the prefix whsec_" in message


def test_without_a_salesforce_token_only_the_organization_is_checked_with_a_warning() -> None:
    source = build_one({"preset": "salesforce", "organization_ids": ["00D000000000001EAA"]})
    assert any("token" in w for w in source.startup_warnings())
