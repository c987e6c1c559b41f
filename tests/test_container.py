"""The container files, checked without a Docker engine: what each compose profile starts,
and the pinned base image (.ci/check-image runs the image's entrypoint and demo)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# python:<major.minor.patch>-slim-<debian>@sha256:<64 hex>: a patch version and a digest.
PINNED = re.compile(r"^python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}$")


def services() -> dict[str, dict[str, object]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    found: dict[str, dict[str, object]] = compose["services"]
    return found


def test_each_profile_starts_only_its_own_services() -> None:
    profiles = {name: service.get("profiles") for name, service in services().items()}
    assert profiles == {
        "bridge": ["single"],
        "postgres": ["replicas"],
        "replica-a": ["replicas"],
        "replica-b": ["replicas"],
    }


def test_the_replicas_share_postgresql_and_not_the_single_bridges_sqlite_volume() -> None:
    for name in ("replica-a", "replica-b"):
        service = services()[name]
        environment = service["environment"]
        assert isinstance(environment, dict)
        assert environment["BRIDGE_STORAGE_URL"].startswith("postgresql://")
        assert not any("bridge-data" in str(v) for v in service.get("volumes", []))  # type: ignore[attr-defined]
    assert "bridge-data:/data" in services()["bridge"]["volumes"]  # type: ignore[operator]


def test_the_header_says_what_each_profile_starts() -> None:
    header = (ROOT / "docker-compose.yml").read_text().split("services:")[0]
    assert "docker compose --profile single up -d" in header
    assert "docker compose --profile replicas up -d" in header
    assert "The single bridge is NOT started" in header


def test_the_base_image_is_pinned_by_patch_version_and_digest_in_both_stages() -> None:
    images = [
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("FROM ")
    ]
    assert len(images) == 2 and images[0] == images[1]
    assert PINNED.match(images[0]), images[0]
