"""Where one broker request's time goes: per-stage timers around the HTTP broker.

Used by ``bench/http_proxy.py --setups ...,tether-stages``: the node's API and broker are
served in a process of their own (plain HTTP, on the bench node's database, one process,
like ``tether serve``) with a timer around each stage of a request; when it stops it writes
each stage's p50/p90/mean to a JSON file. The timers wrap the stages from outside (nothing
in Tether is changed for them) and cost about a microsecond each.

Stages (a request passes through each once; ``audit_write`` is per commit, not per request):

==============  ==========================================================================
handle          the whole request inside the broker (``HttpBroker.handle``)
authenticate    access token (cached) + DPoP proof + revocation and agent state
decide          the policy decision (``HttpBroker._decide``)
audit_decision  appending the decision event until it is committed (the durable wait)
audit_write     one audit batch written (SQLite: the round trip to the writer process, its fsync)
forward         credential injection, upstream request and response streamed back
fsync           ``os.fsync`` of a 4 KiB write on the data directory's file system, timed
                once before the load (what one durable commit costs on this disk now)
==============  ==========================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvloop

STAGES = ("handle", "authenticate", "decide", "audit_decision", "audit_write", "forward")


def fsync_cost(directory: Path, count: int = 100) -> list[float]:
    """Seconds per ``fsync`` of a fresh 4 KiB write, ``count`` times, in ``directory``."""
    times: list[float] = []
    with tempfile.NamedTemporaryFile(dir=directory) as handle:
        for _ in range(count):
            os.write(handle.fileno(), b"x" * 4096)
            started = time.perf_counter()
            os.fsync(handle.fileno())
            times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    count = len(ordered)
    return {
        "count": count,
        "p50_ms": round(ordered[count // 2] * 1000, 3),
        "p90_ms": round(ordered[int(count * 0.9)] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def _timed(timings: dict[str, list[float]], cls: Any, name: str, stage: str) -> None:
    original: Callable[..., Any] = getattr(cls, name)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            timings[stage].append(time.perf_counter() - started)

    setattr(cls, name, timed)


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its signal handlers (as the node's): they re-raise the signal
        once stopped, which would end the process before the timings are written."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


async def node_parts(config: str, issuer: str) -> tuple[Any, Any, Any]:
    """What ``tether serve`` builds for its HTTP broker, in this process: the settings, the
    API state and the broker (``tether.node``), on the bench node's configuration."""
    from tether.api import AppState
    from tether.audit.startup import start_auditor
    from tether.config import load_settings
    from tether.node import _http_broker, broker_services, open_identity
    from tether.policywatch import load_initial
    from tether.store import Store
    from tether.vault.secrets import SecretStore
    from tether.vault.targets import TargetStore

    settings = load_settings(Path(config), environ={})
    store = await Store.open(settings.database)
    identity = await open_identity(settings, store, issuer)
    holder = await load_initial(settings.policies, store)
    auditor = await start_auditor(settings.audit, store.engine,
                                  lambda: identity.keys.ring.active)  # fmt: skip
    state = AppState(holder, store, identity, auditor,
                     secrets=SecretStore(store.engine, identity.cipher),
                     targets=TargetStore(store.engine, identity.sealer))  # fmt: skip
    broker = _http_broker(settings, broker_services(state))
    assert broker is not None
    return settings, state, broker


def serve(config: str, port: int, issuer: str, out: str) -> None:
    """The node's API and broker with stage timers, until SIGTERM; then the JSON to ``out``."""
    import uvicorn

    from tether.api import create_app
    from tether.audit.writers import SqliteWriter
    from tether.node import freeze_startup_heap, tune_interpreter
    from tether.proxy.http.broker import BrokerMiddleware, HttpBroker
    from tether.proxy.http.exchange import Exchange

    _Server = _server_class()
    timings: dict[str, list[float]] = defaultdict(list)
    _timed(timings, HttpBroker, "handle", "handle")
    _timed(timings, HttpBroker, "_authenticate", "authenticate")
    _timed(timings, HttpBroker, "_decide", "decide")
    _timed(timings, HttpBroker, "_audit_decision", "audit_decision")
    _timed(timings, Exchange, "run", "forward")
    _timed(timings, SqliteWriter, "write", "audit_write")

    async def main() -> None:
        settings, state, broker = await node_parts(config, issuer)
        fsync = fsync_cost(settings.data_dir)
        freeze_startup_heap()  # as tether serve does once it serves
        identity, auditor = state.identity, state.auditor
        assert identity is not None
        stop = asyncio.Event()
        watcher = asyncio.create_task(identity.watch_revocations(stop))
        server = uvicorn.Config(
            BrokerMiddleware(create_app(state), broker), host="127.0.0.1", port=port,
            http="h11", log_level="warning", access_log=False, lifespan="off",
            server_header=False,
        )  # fmt: skip
        runner = _Server(server)
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGTERM, lambda: setattr(runner, "should_exit", True)
        )
        try:
            await runner.serve()
        finally:
            stop.set()
            await watcher
            await broker.close()
            await auditor.log.close()
        # Only the requests that went through: warm-up requests are in the load's numbers.
        report = {stage: summary(timings[stage]) for stage in STAGES if timings[stage]}
        report["fsync"] = summary(fsync)
        Path(out).write_text(json.dumps(report))

    tune_interpreter()  # the node's interpreter settings (tether serve)
    uvloop.run(main())  # the same loop as the node
