"""The JSON Lines sink: rotation, whole lines after a crash, and a delivery process killed."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from tests.audit_export.conftest import Trail, seqs_check
from tests.audit_export.receivers.harness import ROOT
from tether.audit.sinks.base import DeliveryLoop, sink_status
from tether.audit.sinks.config import JsonlSinkConfig
from tether.audit.sinks.jsonl import JsonlSink, ocsf_line


def _seqs(path: Path) -> list[int]:
    return [json.loads(line)["metadata"]["sequence"] for line in path.read_bytes().splitlines()]


async def _drain(loop: DeliveryLoop) -> None:
    while await loop.deliver_once():
        pass


async def test_files_rotate_by_size_and_keep_n(trail: Trail, tmp_path: Path) -> None:
    path = tmp_path / "audit" / "tether.jsonl"
    config = JsonlSinkConfig(name="f", kind="jsonl", path=path, max_bytes=20_000, keep=2)
    loop = DeliveryLoop(JsonlSink(config), trail.engine, batch_size=5)
    stored = await trail.emit(60)
    await _drain(loop)
    await loop.sink.close()

    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["tether.jsonl", "tether.jsonl.1", "tether.jsonl.2"]
    kept = [path.with_name("tether.jsonl.2"), path.with_name("tether.jsonl.1"), path]
    seqs = [seq for file in kept for seq in _seqs(file)]
    assert seqs == list(range(seqs[0], 61))  # the newest events, contiguous, in order
    assert seqs[0] > 1  # the oldest file was deleted
    for file in kept:
        assert file.stat().st_size <= 20_000
        assert len(_seqs(file)) % 5 == 0  # rotated between batches, never inside one
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert json.loads(path.read_bytes().splitlines()[-1]) == json.loads(ocsf_line(stored[-1]))


async def test_a_partial_last_line_is_cut_before_appending(trail: Trail, tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    events = await trail.emit(3)
    path.write_bytes(ocsf_line(events[0]) + ocsf_line(events[1])[:50])  # a crash mid-line
    sink = JsonlSink(JsonlSinkConfig(name="f", kind="jsonl", path=path))
    await sink.deliver(events[1:])
    await sink.close()
    assert _seqs(path) == [1, 2, 3]


async def test_a_delivery_process_killed_mid_batch_resumes_at_least_once(
    trail: Trail, tmp_path: Path
) -> None:
    await trail.emit(3000)
    url = str(trail.engine.url)
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "tests.audit_export.sink_worker", url, str(out)]
    worker = subprocess.Popen(
        [*command, "--hang-after-write", "9"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    for _ in range(8):
        assert worker.stdout.readline() == "batch 100\n"
    assert worker.stdout.readline() == "written\n"  # batch 9 is on disk, its cursor is not
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    worker.stdout.close()
    [status] = await sink_status(trail.engine)
    assert status.last_seq == 800

    again = subprocess.run([*command, "--until-caught-up"], cwd=ROOT, capture_output=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    # Exactly the batch that was written but not recorded came again (801-900), once.
    assert seqs_check(_seqs(out), 3000, 100) == 100
    assert _seqs(out)[800:1000] == list(range(801, 901)) * 2
    [status] = await sink_status(trail.engine)
    assert status.lag == 0
