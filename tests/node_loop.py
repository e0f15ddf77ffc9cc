"""The event loop the node runs on (``tether serve`` runs uvloop), for the broker tests.

A package's conftest imports :func:`pytest_asyncio_loop_factories` so that pytest-asyncio
runs its tests, and with them the brokers they start in-process, on that loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import uvloop


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}
