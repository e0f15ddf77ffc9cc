"""The Splunk HTTP Event Collector sink.

A batch is one ``POST`` to the collector URL (``https://splunk:8088/services/collector/event``)
whose body is the batch's events, each a JSON object, one after another (HEC's batch
format)::

    {"time": 1795953600.123, "host": "...", "source": "tether", "sourcetype": "ocsf",
     "index": "...", "event": { ...OCSF... }}

authenticated with ``Authorization: Splunk <token>``. Acknowledgement is HEC's answer 200
with ``"code": 0`` (HEC always sends it; a 200 without it, say from a proxy or a server
that is not HEC, is not an acknowledgement); anything else (a refused token 401/403, a bad
request 400, a busy server 503) fails the batch, which is retried. With ``use_ack`` the sink
also waits for Splunk's *indexer acknowledgement*: it sends a ``X-Splunk-Request-Channel``
and polls
``/services/collector/ack`` until the batch's ``ackId`` is reported indexed, so that the
cursor moves only once the events are searchable, not merely received.

The token is never logged nor put in an error message: errors name the status and the URL
without what may carry a credential (user, password, query; :func:`.base.display_url`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

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
from tether.audit.sinks.config import HecSinkConfig
from tether.audit.sinks.tls import client_context

COLLECTOR_PATH: Final = "/services/collector"
ACK_PATH: Final = COLLECTOR_PATH + "/ack"
ACK_POLL_SECONDS: Final = 0.5


def hec_event(
    event: AuditEvent, config: HecSinkConfig, budget: int | None = None
) -> dict[str, Any]:
    """One event in HEC's event format; its OCSF JSON shrunk to ``budget`` octets if given."""
    envelope: dict[str, Any] = {
        "time": round(event.time.timestamp(), 3),
        "source": config.source,
        "sourcetype": config.sourcetype,
        "event": fitted_ocsf(event, budget),
    }
    if config.host is not None:
        envelope["host"] = config.host
    if config.index is not None:
        envelope["index"] = config.index
    return envelope


def hec_body(
    events: Sequence[AuditEvent], config: HecSinkConfig, budget: int | None = None
) -> bytes:
    """A batch: the events' JSON objects, newline-separated (HEC accepts any whitespace)."""
    return "\n".join(
        json.dumps(hec_event(event, config, budget), separators=(",", ":"), allow_nan=False)
        for event in events
    ).encode("utf-8")


class HecSink:
    """Posts batches to one HTTP Event Collector."""

    def __init__(
        self, config: HecSinkConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.name = config.name
        self.config = config
        self.channel = str(uuid.uuid4())
        self._token = config.secret()
        self._headers = {
            "Authorization": f"Splunk {self._token}",
            "Content-Type": "application/json",
        }
        if config.use_ack:
            self._headers["X-Splunk-Request-Channel"] = self.channel
        verify = client_context(config.ca_file, config.cert_file, config.key_file)
        self._client = httpx.AsyncClient(
            verify=verify, timeout=config.timeout, transport=transport, follow_redirects=False
        )

    async def deliver(self, events: Sequence[AuditEvent]) -> None:
        await deliver_fitting(self._send, events)  # halves and shrinks on a 413

    async def _send(self, events: Sequence[AuditEvent], budget: int | None) -> None:
        body = await asyncio.to_thread(hec_body, events, self.config, budget)  # off the loop
        answer = await self._post(self.config.url, body)
        if self.config.use_ack:
            ack_id = answer.get("ackId")
            if not isinstance(ack_id, int):
                url = display_url(self.config.url)
                raise SinkError(f"HEC {url}: no ackId in the answer (is useACK on?)")
            await self._wait_indexed(ack_id)

    async def close(self) -> None:
        await self._client.aclose()

    async def _post(self, url: str, body: bytes, *, ack: bool = False) -> dict[str, Any]:
        """POST ``body``; the answer must be 200 with a JSON object, and for events (not
        ``ack``: the ack endpoint answers ``{"acks": ...}`` alone) ``"code": 0``."""
        try:
            status, data = await post_capped(
                self._client, url, body, self._headers, self.config.timeout
            )
        except httpx.HTTPError as error:
            reason = scrub(str(error), url).replace(self._token, "***")  # a library may quote it
            raise SinkError(f"HEC {display_url(url)}: {type(error).__name__}: {reason}") from None
        except TimeoutError:
            limit = self.config.timeout * REQUEST_TIMEOUTS
            raise SinkError(f"HEC {display_url(url)}: no whole answer in {limit:g}s") from None
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):
            answer = None
        if status == 413:
            raise TooLarge(f"HEC {display_url(url)}: status 413: {len(body)} bytes too large")
        if status != 200 or not isinstance(answer, dict):
            raise SinkError(f"HEC {display_url(url)}: status {status}: {_text(answer)}")
        code = answer.get("code", 0 if ack else None)
        if type(code) is not int or code != 0:  # absent, false or 0.0 is not HEC's success
            raise SinkError(f"HEC {display_url(url)}: code {code!r}, not 0: {_text(answer)}")
        return answer

    async def _wait_indexed(self, ack_id: int) -> None:
        url = ack_url(self.config.url, self.channel)
        body = json.dumps({"acks": [ack_id]}).encode()
        deadline = time.monotonic() + self.config.ack_timeout
        while True:
            answer = await self._post(url, body, ack=True)
            acks = answer.get("acks")
            if isinstance(acks, dict) and acks.get(str(ack_id)) is True:
                return
            if time.monotonic() >= deadline:
                raise SinkError(f"HEC: ackId {ack_id} not indexed after {self.config.ack_timeout}s")
            await asyncio.sleep(ACK_POLL_SECONDS)


def ack_url(url: str, channel: str) -> str:
    """The indexer acknowledgement endpoint of the collector at ``url``: beside its
    ``/services/collector`` path, under the same prefix when a proxy puts one before it
    (``https://gw/splunk/services/collector/event`` acknowledges at
    ``https://gw/splunk/services/collector/ack``; the prefix used to be dropped, and every
    poll went to a path the gateway does not route to Splunk)."""
    parts = urlsplit(url)
    found = parts.path.find(COLLECTOR_PATH)
    prefix = parts.path[:found] if found >= 0 else ""
    return urlunsplit((parts.scheme, parts.netloc, prefix + ACK_PATH, f"channel={channel}", ""))


def _text(answer: Any) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("text"), str):
        return str(answer["text"])[:200]
    return "unexpected answer"
