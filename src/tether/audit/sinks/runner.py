"""Building the configured sinks and running one delivery loop for each.

A node calls :func:`start_sinks` once its store is open and awaits the returned
:class:`SinkRunner`'s :meth:`~SinkRunner.stop` at shutdown. A sink whose configuration
cannot be turned into a sink (a secret variable that is not set, an unreadable CA file)
stops the node at start: a SIEM that silently receives nothing is worse than a refusal.
A sink that sends in clear (``syslog`` over ``tcp``, an ``http://`` collector) is started
with a warning beginning ``insecure:``, like a target that weakens TLS: the events carry
agents' commands and statements, and a HEC token travels with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from tether.audit.sinks.base import DeliveryLoop, Sink
from tether.audit.sinks.config import (
    HecSinkConfig,
    JsonlSinkConfig,
    SinkConfig,
    SyslogSinkConfig,
    WebhookSinkConfig,
)

STOP_GRACE_SECONDS: Final = 5.0


def build_sink(config: SinkConfig) -> Sink:
    """The sink a configuration describes; raises ``SinkConfigError`` when unusable."""
    if isinstance(config, JsonlSinkConfig):
        from tether.audit.sinks.jsonl import JsonlSink

        return JsonlSink(config)
    if isinstance(config, SyslogSinkConfig):
        from tether.audit.sinks.syslog import SyslogSink

        return SyslogSink(config)
    if isinstance(config, HecSinkConfig):
        from tether.audit.sinks.hec import HecSink

        return HecSink(config)
    assert isinstance(config, WebhookSinkConfig)
    from tether.audit.sinks.webhook import WebhookSink

    return WebhookSink(config)


def delivery_loop(
    engine: AsyncEngine, config: SinkConfig, *, node_id: str | None = None
) -> DeliveryLoop:
    """The delivery loop of one configured sink."""
    return DeliveryLoop(
        build_sink(config),
        engine,
        batch_size=config.batch_size,
        poll_interval=config.poll_interval,
        backoff=config.backoff,
        start=config.start,
        node_id=node_id,
    )


@dataclass
class SinkRunner:
    """The running loops of a node's sinks."""

    loops: list[DeliveryLoop]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        """New events were appended: every sink looks now."""
        for loop in self.loops:
            loop.wake()

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop every loop after its batch in flight, and close the sinks.

        A batch still in flight after ``grace`` seconds is abandoned (its loop cancelled):
        a receiver that never answers held the node's stop for as long as the sink's
        deadline (4 x ``timeout``, up to 40 minutes; an indexer acknowledgement up to
        ``ack_timeout``). Nothing is lost: the cursor moves only once a batch is
        acknowledged, so an abandoned one is sent again at the next start."""
        self.stopping.set()
        if not self.tasks:
            return
        _, pending = await asyncio.wait(self.tasks, timeout=grace)
        for loop, task in zip(self.loops, self.tasks, strict=True):
            if task in pending:
                log.warning("audit sink %s: batch in flight abandoned at stop", loop.sink.name)
                task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


log = logging.getLogger(__name__)


def plaintext_warning(config: SinkConfig) -> str | None:
    """The ``insecure:`` warning for a sink that delivers without TLS, else None."""
    if isinstance(config, SyslogSinkConfig) and config.transport == "tcp":
        return f"insecure: audit sink {config.name!r} sends events over plain TCP (no TLS)"
    if (
        isinstance(config, HecSinkConfig | WebhookSinkConfig)
        and config.url[:7].lower() == "http://"
    ):
        carried = "events and its HEC token" if isinstance(config, HecSinkConfig) else "events"
        return f"insecure: audit sink {config.name!r} sends {carried} over plain http"
    return None


def start_sinks(
    engine: AsyncEngine, configs: Sequence[SinkConfig], *, node_id: str | None = None
) -> SinkRunner:
    """Build every enabled sink and start its loop; raises ``SinkConfigError`` first."""
    loops = [delivery_loop(engine, c, node_id=node_id) for c in configs if c.enabled]
    for config in configs:
        warning = plaintext_warning(config) if config.enabled else None
        if warning is not None:
            log.warning("%s", warning)
    runner = SinkRunner(loops)
    runner.tasks = [
        asyncio.create_task(loop.run(runner.stopping), name=f"tether-sink-{loop.sink.name}")
        for loop in loops
    ]
    return runner
