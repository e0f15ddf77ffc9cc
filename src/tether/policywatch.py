"""Loading the policy directory into the running node, at startup and whenever it changes.

A reload builds the whole new set off the event loop and puts it in force only if it loaded
whole; a set that does not load is refused loudly (an ERROR log with the load error) and the
set in force stays. Every attempt is recorded in ``policy_loads``, except a reload that yields
the version already in force (a file touched or an editor's temporary file, nothing changed).

A reload loads only files that have stopped changing: it reads the directory, waits
:data:`SETTLE_SECONDS` and reads it again, until two reads agree. A file written in place is
valid YAML at many points of its writing (any cut between two rules): without this, a writer
pausing mid-file (a copy over the network, an editor saving a large file) put the set without
the rules still to come in force, a deny rule among them, until the next change event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import watchfiles

from tether.api.state import PolicyHolder
from tether.policy import PolicySet, PolicySource, load_policies
from tether.policy.errors import PolicyLoadError
from tether.policyfiles import read_policy_dir
from tether.store import PolicyLoad, Store

log = logging.getLogger(__name__)

# After the watcher itself fails (directory removed, watch limit reached), wait and retry.
RETRY_SECONDS: Final = 2.0
# A reload reads the directory again after this long and loads only what two reads agree on;
# after SETTLE_ROUNDS reads that all differ it is refused (the next change event retries).
SETTLE_SECONDS: Final = 1.0
SETTLE_ROUNDS: Final = 10


class LoadRefused(Exception):
    """The policy directory did not load; the message is the load error."""


@dataclass(frozen=True)
class _Attempt:
    policy_set: PolicySet | None
    file_count: int
    error: str | None = None


def _load(directory: Path, settle: bool) -> _Attempt:
    """Read and load ``directory``, once it stopped changing if ``settle`` (blocking: run it
    in a thread)."""
    try:
        sources = _settled(directory) if settle else read_policy_dir(directory)
    except PolicyLoadError as error:
        return _Attempt(None, 0, str(error))
    try:
        return _Attempt(load_policies(sources), len(sources))
    except PolicyLoadError as error:
        return _Attempt(None, len(sources), str(error))


def _settled(directory: Path) -> list[PolicySource]:
    """The policy files of ``directory`` as two reads :data:`SETTLE_SECONDS` apart agree."""
    sources = read_policy_dir(directory)
    for _ in range(SETTLE_ROUNDS):
        time.sleep(SETTLE_SECONDS)
        again = read_policy_dir(directory)
        if again == sources:
            return sources
        sources = again
    raise PolicyLoadError("the policy files kept changing while being read", file=str(directory))


async def _attempt(directory: Path, store: Store, in_force: str | None) -> _Attempt:
    """Load ``directory`` and record the attempt unless it yields ``in_force`` again. A reload
    (``in_force`` set) waits for the files to settle; the first load does not."""
    attempt = await asyncio.to_thread(_load, directory, in_force is not None)
    if attempt.policy_set is None:
        load = PolicyLoad(status="rejected", file_count=attempt.file_count, error=attempt.error)
    elif attempt.policy_set.version != in_force:
        load = PolicyLoad(
            status="active",
            file_count=attempt.file_count,
            version=attempt.policy_set.version,
            rule_count=len(attempt.policy_set.rules),
        )
    else:
        return attempt
    await store.record_policy_load(load)
    return attempt


def _log_in_force(policy_set: PolicySet) -> None:
    log.info("policy set %s in force: %d rules", policy_set.version, len(policy_set.rules))


async def load_initial(directory: Path, store: Store) -> PolicyHolder:
    """The set a node starts with; raises :class:`LoadRefused` if it does not load."""
    attempt = await _attempt(directory, store, in_force=None)
    if attempt.policy_set is None:
        raise LoadRefused(attempt.error)
    _log_in_force(attempt.policy_set)
    return PolicyHolder(attempt.policy_set)


class PolicyReloader:
    """Reloads ``directory`` into ``holder`` on change, recording each attempt in ``store``."""

    def __init__(self, directory: Path, store: Store, holder: PolicyHolder) -> None:
        self.directory = directory
        self.store = store
        self.holder = holder

    async def reload(self) -> bool:
        """Load the directory again; True when a new set was put in force."""
        in_force = self.holder.current.version
        attempt = await _attempt(self.directory, self.store, in_force)
        if attempt.policy_set is None:
            log.error("policy reload refused, %s stays in force: %s", in_force, attempt.error)
            return False
        if attempt.policy_set.version == in_force:
            log.debug("policy directory touched, set unchanged (%s)", in_force)
            return False
        self.holder.replace(attempt.policy_set)
        _log_in_force(attempt.policy_set)
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change under the directory until ``stop`` is set.

        Any change triggers a reload, hidden paths included: a Kubernetes ConfigMap
        update only swaps its hidden ``..data`` link. An unchanged result costs a read.
        If the watch fails (the directory was removed, say), the node keeps serving the
        set in force and retries; once the watch is back it reloads, since changes may
        have been missed meanwhile.
        """
        failures = 0
        while not stop.is_set():
            if failures and self.directory.is_dir():
                await self._reload_logged()
            try:
                await self._watch_until_gone(stop)
                failures = 0
            # The watcher failed (not a load): whatever it was, keep serving and retry.
            except Exception as error:  # noqa: BLE001
                failures += 1
                level = logging.ERROR if failures == 1 else logging.DEBUG
                log.log(level, "watching %s failed (%s); retrying", self.directory, error)
            if not stop.is_set():
                await _sleep_unless(stop, RETRY_SECONDS)

    async def _watch_until_gone(self, stop: asyncio.Event) -> None:
        """Watch until ``stop`` is set; raises when the directory itself disappears."""
        async for _changes in watchfiles.awatch(self.directory, stop_event=stop):
            await self._reload_logged()
            if not self.directory.is_dir():
                raise FileNotFoundError("the policy directory was removed")

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:  # e.g. the store is unreachable: the set in force stays
            log.exception("policy reload failed, %s stays in force", self.holder.current.version)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
