"""The README's configuration table names every key of the config models."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from bridge.config import Config

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
