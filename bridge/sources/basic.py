"""Senders that do not sign: they send HTTP basic credentials (Pipedrive, Chargebee).

`BasicAuthSource` verifies `Authorization: Basic` in constant time and signs test
requests the same way; a preset adds its settings' docstring and its `parse`.
"""

from __future__ import annotations

from typing import ClassVar

from bridge.sources.base import Source, SourceSettings, WebhookRequest
from bridge.sources.signing import BasicAuth, basic_authorization, check_basic_auth


class BasicAuthSettings(SourceSettings):
    """`{preset: …, basic_auth: {username: u, password: p}}`."""

    basic_auth: BasicAuth


class BasicAuthSource(Source):
    """The verification half of a basic-auth preset (no `preset` of its own)."""

    settings_model: ClassVar[type[SourceSettings]] = BasicAuthSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, BasicAuthSettings):
            raise TypeError(f"{type(self).__name__} needs BasicAuthSettings")
        self._credentials = settings.basic_auth

    def verify(self, request: WebhookRequest, now: float) -> None:
        check_basic_auth(request, self._credentials)

    def sign(
        self,
        body: bytes,
        *,
        now: float,
        path: str,
        query_string: str = "",
        content_type: str = "application/json",
    ) -> dict[str, str]:
        """`Authorization: Basic` with the configured credentials, as the sender sends it."""
        credentials = self._credentials
        authorization = basic_authorization(credentials.username, credentials.password)
        return {"Content-Type": content_type, "Authorization": authorization}
