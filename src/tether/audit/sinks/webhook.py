"""The webhook sink: each batch POSTed as a JSON array of OCSF events, signed.

Headers of every delivery::

    Content-Type: application/json
    X-Tether-Delivery: <id>          same id when the same batch is sent again
    X-Tether-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

A receiver checks the signature by recomputing the HMAC over the timestamp, a dot and the
raw body bytes, comparing in constant time, and refusing a timestamp too far from its
clock (:func:`verify_signature` does all three, five minutes by default): the timestamp
is signed, so a captured delivery cannot be replayed later with a fresh one. Any 2xx
answer acknowledges the batch; anything else, or no answer, fails it and it is retried.
Receivers deduplicate by event (``metadata.uid``), since a retried batch may have grown.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Final

import httpx

from tether.audit.events import AuditEvent
from tether.audit.ocsf import fitted_ocsf
from tether.audit.sinks.base import (
    REQUEST_TIMEOUTS,
    SinkError,
    TooLarge,
    deliver_fitting,
    display_url,
    post_capped,
    scrub,
)
from tether.audit.sinks.config import WebhookSinkConfig
from tether.audit.sinks.tls import client_context

SIGNATURE_HEADER: Final = "X-Tether-Signature"
DELIVERY_HEADER: Final = "X-Tether-Delivery"
DEFAULT_TOLERANCE: Final = 300
_DELIVERY_NAMESPACE: Final = uuid.UUID("6f1d3c1e-2c43-4d0b-9d55-7d2b8f0b7a11")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Tether-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: bytes,
    header: str,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """True if ``header`` is a valid signature of ``body`` made within ``tolerance`` s."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    stamps = fields.get("t", [])
    # ASCII digits only, and few: int() raises on '²' (a digit to isdigit) and past 4300
    # digits, and this function's answer to any header is True or False.
    if len(stamps) != 1 or not (stamps[0].isascii() and stamps[0].isdigit()):
        return False
    if len(stamps[0]) > 15:
        return False
    timestamp = int(stamps[0])
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


def delivery_id(sink: str, events: Sequence[AuditEvent]) -> str:
    """A stable id for a batch: the same events from the same sink give the same id."""
    first, last = events[0], events[-1]
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{sink}:{first.id}:{last.id}:{len(events)}"))


def webhook_body(events: Sequence[AuditEvent], budget: int | None = None) -> bytes:
    """The batch as a JSON array; each event's OCSF JSON shrunk to ``budget`` if given."""
    array = [fitted_ocsf(event, budget) for event in events]
    return json.dumps(array, separators=(",", ":")).encode()


class WebhookSink:
    """POSTs signed batches to one URL."""

    def __init__(
        self,
        config: WebhookSinkConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = config.name
        self.config = config
        self._key = config.signing_key()
        self._clock = clock
        verify = client_context(config.ca_file, config.cert_file, config.key_file)
        self._client = httpx.AsyncClient(
            verify=verify, timeout=config.timeout, transport=transport, follow_redirects=False
        )

    async def deliver(self, events: Sequence[AuditEvent]) -> None:
        await deliver_fitting(self._send, events)  # halves and shrinks on a 413

    async def _send(self, events: Sequence[AuditEvent], budget: int | None) -> None:
        body = await asyncio.to_thread(webhook_body, events, budget)  # off the event loop
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: delivery_id(self.name, events),
            SIGNATURE_HEADER: sign(self._key, int(self._clock()), body),
        }
        url = display_url(self.config.url)
        try:
            status, _ = await post_capped(
                self._client, self.config.url, body, headers, self.config.timeout
            )
        except httpx.HTTPError as error:
            reason = scrub(str(error), self.config.url)
            raise SinkError(f"webhook {url}: {type(error).__name__}: {reason}") from None
        except TimeoutError:
            limit = self.config.timeout * REQUEST_TIMEOUTS
            raise SinkError(f"webhook {url}: no whole answer in {limit:g}s") from None
        if status == 413:
            raise TooLarge(f"webhook {url}: status 413: {len(body)} bytes too large")
        if not 200 <= status < 300:
            raise SinkError(f"webhook {url}: status {status}")

    async def close(self) -> None:
        await self._client.aclose()
