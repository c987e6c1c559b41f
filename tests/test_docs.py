"""The docs cannot drift: config keys, metric names and links are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from bridge.config import Config
from bridge.metrics import Metrics

README = Path(__file__).parent.parent / "README.md"
SCALAR_CONTAINERS = {"lookups", "sources", "rules"}  # documented as `lookups.<table>` etc.


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(leaf_keys(annotation, f"{key}."))
        else:
            keys.append(key)
    return keys


def test_every_config_key_is_in_the_readme_reference() -> None:
    text = README.read_text()
    missing = [
        key
        for key in leaf_keys(Config)
        if f"`{key}`" not in text and not (key in SCALAR_CONTAINERS and f"`{key}." in text)
    ]
    assert missing == []


def test_the_reference_walks_nested_models() -> None:
    assert "voxys.retry.not_found.backoff" in leaf_keys(Config)


def test_every_metric_in_the_operations_guide_exists_and_every_metric_is_documented() -> None:
    text = (README.parent / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"`(bridge_[a-z_]+)`", text))
    exposed = {metric.name for metric in Metrics().registry.collect()}
    # prometheus-client names counters without `_total`; the text shows what is scraped.
    documented = {name.removesuffix("_total") for name in documented}
    assert documented == exposed


def test_every_document_the_readme_links_to_exists() -> None:
    links = re.findall(r"\]\(((?:docs|examples)/[^)#]+)\)", README.read_text())
    assert links
    assert [link for link in links if not (README.parent / link).exists()] == []


def test_every_command_is_in_the_readme_table() -> None:
    import argparse

    from bridge.cli import build_parser

    [commands] = [
        action.choices
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    documented = set(re.findall(r"^\| `([a-z-]+)", README.read_text(), re.MULTILINE))
    assert set(commands) <= documented


def test_the_providers_guide_gives_the_ids_and_times_the_sources_use() -> None:
    from bridge.sources.hubspot import _ID_FIELDS

    text = (README.parent / "docs" / "providers.md").read_text()
    assert f"`{':'.join(_ID_FIELDS)}`" in text  # HubSpot's composite event id
    assert "`webhook-id` / the payload's `timestamp`" in text  # Standard Webhooks
    pipedrive_rules = (README.parent / "config" / "rules" / "pipedrive.yaml").read_text()
    assert "event.meta.action == 'change'" in pipedrive_rules
    assert "event.event == 'updated.deal'" in pipedrive_rules
    assert "`meta.action: change`; v1 sends `event: updated.deal`" in text
