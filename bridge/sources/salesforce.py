"""Salesforce Outbound Messages: a SOAP 1.1 `notifications` call, one event per `Notification`.

Follows Salesforce's outbound messaging WSDL (SOAP API guide, "Outbound Messaging"): the
body is a SOAP envelope whose `notifications` element (namespace
`http://soap.sforce.com/2005/09/outbound`) holds OrganizationId, ActionId, a nillable
SessionId, EnterpriseUrl, PartnerUrl and up to 100 `Notification` elements, each an `Id`
and an `sObject` whose fields are in `urn:sobject.enterprise.soap.sforce.com`.

Outbound messages are not signed. A request is accepted when its OrganizationId is one of
the configured `organization_ids` and, if a `token` is configured, the URL carries it as
`?token=...`. Salesforce retries every message until it gets `<Ack>true</Ack>`, so the
ack is the answer sent once the events are stored; refusals are SOAP faults.

The SessionId is a live API credential: it is never copied into an event.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar
from urllib.parse import parse_qs, urlencode
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from pydantic import AfterValidator, SecretStr

from bridge import strength
from bridge.errors import BadRequest, RequestRejected, Unauthorized, UnsupportedMediaType
from bridge.models import Event
from bridge.sources.base import (
    IngestSummary,
    Source,
    SourceSettings,
    WebhookRequest,
    WebhookResponse,
)
from bridge.sources.fields import id_text, occurred_at

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
MAX_NOTIFICATIONS = 100  # the WSDL's maxOccurs
XML_TYPES = ("text/xml", "application/xml", "application/soap+xml")
QUERY_KEY = "token"  # ?token=... carries the optional shared token

_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}"><soapenv:Body>{{}}</soapenv:Body>'
    "</soapenv:Envelope>"
)
ACK = _ENVELOPE.format(
    f'<notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse>'
).encode()


def _org_id(value: str) -> str:
    # Salesforce ids are 15 case-sensitive characters, or 18 with a case-checksum suffix.
    if len(value) not in (15, 18) or not value.isascii() or not value.isalnum():
        raise ValueError("an organization id has 15 or 18 letters and digits")
    return value


def _not_empty(ids: tuple[str, ...]) -> tuple[str, ...]:
    if not ids:
        raise ValueError("give at least one organization id")
    return ids


OrganizationIds = Annotated[
    tuple[Annotated[str, AfterValidator(_org_id)], ...], AfterValidator(_not_empty)
]


def _strong_token(token: SecretStr | None) -> SecretStr | None:
    # Leave the key out to go without a token; an empty or short one would be guessable.
    if token is not None:
        strength.check(token.get_secret_value())
    return token


class SalesforceSettings(SourceSettings):
    """`{preset: salesforce, organization_ids: [00D...], token: ...}` (token optional)."""

    organization_ids: OrganizationIds
    token: Annotated[SecretStr | None, AfterValidator(_strong_token)] = None


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What a `notifications` call carries, without its SessionId."""

    organization_id: str
    action_id: str | None
    notifications: list[dict[str, Any]]


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _text(element: Element | None) -> str | None:
    if element is None or element.get(f"{{{XSI_NS}}}nil") == "true":
        return None
    return element.text or ""


def _sobject(element: Element) -> dict[str, Any]:
    # xsi:type is a QName such as "sf:Opportunity"; the prefix names the sObject namespace.
    kind = (element.get(f"{{{XSI_NS}}}type") or "").rpartition(":")[2]
    fields: dict[str, Any] = {"type": kind or None}
    for child in element:
        fields[_local(child.tag)] = _text(child)
    return fields


def read_message(body: bytes) -> OutboundMessage:
    """The parts of an Outbound Message body; `BadRequest` when it is not one.

    XML with a DTD, entity declarations or external references is refused outright
    (defusedxml), so neither entity expansion nor fetching can be triggered.
    """
    if not body.strip():
        raise BadRequest("empty body")
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise BadRequest("XML with a DTD or entities is refused") from exc
    except ParseError as exc:
        raise BadRequest("malformed XML") from exc
    call = root.find(f"{{{SOAP_NS}}}Body/{{{OUTBOUND_NS}}}notifications")
    if root.tag != f"{{{SOAP_NS}}}Envelope" or call is None:
        raise BadRequest("not a Salesforce outbound message")
    organization_id = id_text(_text(call.find(f"{{{OUTBOUND_NS}}}OrganizationId")))
    if organization_id is None:
        raise BadRequest("outbound message without OrganizationId")
    action_id = id_text(_text(call.find(f"{{{OUTBOUND_NS}}}ActionId")))
    found = call.findall(f"{{{OUTBOUND_NS}}}Notification")
    if not found:
        raise BadRequest("outbound message without notifications")
    if len(found) > MAX_NOTIFICATIONS:
        raise BadRequest(f"more than {MAX_NOTIFICATIONS} notifications")
    notifications = []
    for element in found:
        sobject = element.find(f"{{{OUTBOUND_NS}}}sObject")
        notification_id = id_text(_text(element.find(f"{{{OUTBOUND_NS}}}Id")))
        if notification_id is None or sobject is None:
            raise BadRequest("notification without Id or sObject")
        notifications.append(
            {
                "Id": notification_id,
                "OrganizationId": organization_id,
                "ActionId": action_id,
                "sObject": _sobject(sobject),
            }
        )
    return OutboundMessage(organization_id, action_id, notifications)


def soap_fault(code: str, reason: str) -> bytes:
    """A SOAP 1.1 fault envelope with `code` (Client or Server) and a short reason."""
    fault = (
        f"<soapenv:Fault><faultcode>soapenv:{code}</faultcode>"
        f"<faultstring>{escape(reason)}</faultstring></soapenv:Fault>"
    )
    return _ENVELOPE.format(fault).encode()


class SalesforceSource(Source):
    """A Salesforce Outbound Message endpoint (`preset: salesforce`)."""

    preset: ClassVar[str] = "salesforce"
    settings_model: ClassVar[type[SourceSettings]] = SalesforceSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, SalesforceSettings):
            raise TypeError("SalesforceSource needs SalesforceSettings")
        # Ids are compared on their case-sensitive 15-character form.
        self._orgs = tuple(org[:15].encode() for org in settings.organization_ids)
        self._token = settings.token.get_secret_value().encode() if settings.token else None

    def startup_warnings(self) -> list[str]:
        if self._token is None:
            return [
                f"source {self.key!r}: Salesforce does not sign outbound messages; only the "
                "organization id is checked (add a token to the URL: ?token=...)"
            ]
        return []

    def verify(self, request: WebhookRequest, now: float) -> None:
        if self._token is not None:
            given = parse_qs(request.query_string, keep_blank_values=True).get(QUERY_KEY)
            if not given:
                raise Unauthorized(f"missing {QUERY_KEY} query parameter")
            if not hmac.compare_digest(given[0].encode("utf-8"), self._token):
                raise Unauthorized("invalid token")
        message = read_message(self._xml(request))
        org = message.organization_id[:15].encode("utf-8")
        allowed = False
        for known in self._orgs:
            allowed |= hmac.compare_digest(org, known)
        if not allowed:
            raise Unauthorized("organization not allowed")

    def sign(
        self,
        body: bytes,
        *,
        now: float,
        path: str,
        query_string: str = "",
        content_type: str = "text/xml; charset=utf-8",
    ) -> dict[str, str]:
        """The headers Salesforce sends; the token goes in the query (see `signed_query`)."""
        return {"Content-Type": content_type, "SOAPAction": '""'}

    def signed_query(self, query_string: str = "") -> str:
        """The query a sender uses: `query_string`, plus `token=` when one is configured."""
        if self._token is None:
            return query_string
        token = urlencode({QUERY_KEY: self._token.decode("utf-8")})
        return f"{query_string}&{token}" if query_string else token

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        message = read_message(self._xml(request))
        headers = request.safe_headers()
        return [
            Event(
                source=self.key,
                event_id=notification["Id"],
                # Notifications carry no time; LastModifiedDate is there when selected.
                occurred_at=occurred_at(
                    notification["sObject"].get("LastModifiedDate"), received_at
                ),
                received_at=received_at,
                payload=notification,
                headers=headers,
            )
            for notification in message.notifications
        ]

    def reject(self, error: RequestRejected) -> WebhookResponse:
        """A SOAP fault with the refusal's status: anything but an Ack makes Salesforce retry."""
        return WebhookResponse(
            status=error.status,
            body=soap_fault("Client", error.reason),
            content_type="text/xml",
        )

    def acknowledge(self, summary: IngestSummary) -> WebhookResponse:
        """`notificationsResponse` with `<Ack>true</Ack>`: Salesforce stops retrying."""
        return WebhookResponse(body=ACK, content_type="text/xml")

    @staticmethod
    def _xml(request: WebhookRequest) -> bytes:
        if request.body.strip() and request.content_type not in XML_TYPES:
            raise UnsupportedMediaType(f"unsupported content type {request.content_type!r}")
        return request.body
