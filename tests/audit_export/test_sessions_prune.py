"""``tether sessions prune`` (tether.audit.recordings_prune) on recordings the real recorder
wrote: whole days before the cutoff removed, a session still being written kept, anything
that is not the recorder's left alone, refusals with a reason."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tether.audit.recordings import Recorder, RecordingMeta
from tether.audit.recordings_prune import IN_USE, Day, plan, remove
from tether.cli.main import app

NOW = datetime.now(UTC)


def _session(root: Path, session_id: str, days_ago: int, *, close: bool = True) -> Path:
    started = NOW - timedelta(days=days_ago)
    recorder = Recorder.start(session_id, RecordingMeta(agent="bot"), root=root, now=started)
    recorder.output(b"hello\r\n")
    recorder.transfer("/etc/motd", "download", 12, "0" * 64)
    if close:  # else an open session: its events on disk (each is flushed), no summary
        recorder.close(exit_status=0)
    return recorder.cast_path.parent


def _age(directory: Path, days: int) -> None:
    """Every file of ``directory`` last changed ``days`` ago (as a session that ended then)."""
    moment = time.time() - days * 86400
    for entry in directory.iterdir():
        os.utime(entry, (moment, moment))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "recordings"
    for n, days in enumerate((100, 100, 40, 10)):
        _age(_session(root, f"s-{n}", days), days)
    _age(_session(root, "crashed", 60, close=False), 60)  # no summary, untouched for long
    _session(root, "open", 50, close=False)  # no summary, still written today
    (root / "notes.txt").write_text("mine")
    (root / "2026" / "13" / "01").mkdir(parents=True)  # not a date: not the recorder's
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.cast.gz").write_bytes(b"x")
    linked = NOW - timedelta(days=200)
    month = root / f"{linked.year:04d}" / f"{linked.month:02d}"
    month.mkdir(parents=True, exist_ok=True)
    (month / f"{linked.day:02d}").symlink_to(elsewhere)
    return root


def _prune(*args: str) -> tuple[int, str, str]:
    done = CliRunner().invoke(app, ["sessions", "prune", *args])
    return done.exit_code, done.stdout, done.stderr


def _day(days_ago: int) -> str:
    return (NOW - timedelta(days=days_ago)).date().isoformat()


def test_a_dry_run_names_the_days_and_removes_nothing(root: Path) -> None:
    before = sorted(p for p in root.rglob("*"))
    code, out, _ = _prune("--recordings", str(root), "--before", "30d", "--dry-run", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["dry_run"] is True
    assert [d["day"] for d in report["removed"]] == [_day(100), _day(60), _day(40)]
    assert [d["sessions"] for d in report["removed"]] == [2, 1, 1]
    assert report["sessions"] == 4 and report["bytes"] > 0
    kept = {d["day"]: d["why"] for d in report["kept"]}
    assert kept[_day(50)] == IN_USE
    assert "symbolic link" in kept[_day(200)]
    assert sorted(p for p in root.rglob("*")) == before


def test_prune_removes_whole_days_and_leaves_the_rest(root: Path, tmp_path: Path) -> None:
    code, out, err = _prune("--recordings", str(root), "--before", "30d")
    assert code == 0, err
    assert out.startswith("removed 3 day(s) before ") and "4 session(s)" in out
    assert "in use" in err and "removed" in err  # the table of days
    left = {p.name for p in root.rglob("*.cast.gz")}
    assert left == {"s-3.cast.gz", "open.cast.gz"}  # 10 days ago; in use
    for days in (100, 60, 40):
        gone = NOW - timedelta(days=days)
        assert not (root / f"{gone.year:04d}" / f"{gone.month:02d}" / f"{gone.day:02d}").exists()
    assert (root / "notes.txt").read_text() == "mine" and (root / "2026" / "13" / "01").is_dir()
    linked = NOW - timedelta(days=200)
    link = root / f"{linked.year:04d}" / f"{linked.month:02d}" / f"{linked.day:02d}"
    assert link.is_symlink() and (tmp_path / "elsewhere" / "keep.cast.gz").exists()
    listed = CliRunner().invoke(app, ["sessions", "list", "--recordings", str(root), "--json"])
    assert {json.loads(line)["session_id"] for line in listed.stdout.splitlines()} == {
        "s-3", "open"}  # fmt: skip
    again = _prune("--recordings", str(root), "--before", "30d", "--json")
    assert again[0] == 0 and json.loads(again[1])["removed"] == []


def test_empty_month_and_year_directories_go_too(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    directory = _session(root, "only", 400)
    _age(directory, 400)
    code, _, err = _prune("--recordings", str(root), "--before", "300d")
    assert code == 0, err
    assert root.is_dir() and list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--before", "1h"], "less than a day ago: the recordings of the last day"),
        (["--before", "2099-01-01"], "less than a day ago"),
        (["--before", "last week"], "--before: 'last week' is not a time"),
        (["--recordings", "/nonexistent/recordings", "--before", "30d"], "no recordings dir"),
    ],
)
def test_refusals(root: Path, args: list[str], message: str) -> None:
    if "--recordings" not in args:
        args = ["--recordings", str(root), *args]
    before = sorted(p for p in root.rglob("*"))
    code, _, err = _prune(*args)
    assert code == 2 and message in err and "Traceback" not in err
    assert sorted(p for p in root.rglob("*")) == before


def test_a_day_that_cannot_be_removed_is_reported(tmp_path: Path) -> None:
    blocked = tmp_path / "2026" / "01" / "02"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where a day directory was planned")
    done = remove(tmp_path, [Day(date(2026, 1, 2), blocked, 1, 10)])
    assert len(done) == 1 and done[0].error is not None
    assert blocked.exists()


def test_plan_counts_only_regular_files(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    directory = _session(root, "s", 90)
    (directory / "link.cast.gz").symlink_to("/etc/hostname")
    _age(directory, 90)
    [day] = plan(root, NOW - timedelta(days=30), NOW)
    assert day.sessions == 1 and day.kept is None


def test_the_installed_command(root: Path, tether_bin: Path, clean_env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(tether_bin), "sessions", "prune", "--recordings", str(root), "--before", "90d"],
        capture_output=True, text=True, env=clean_env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed 1 day(s)") and "2 session(s)" in done.stdout


_NAME = st.sampled_from(["2026", "1999", "01", "12", "13", "00", "31", "30", "29", "x", "1"])


_KIND = st.sampled_from(["dir", "file", "link"])


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(st.tuples(st.lists(_NAME, min_size=1, max_size=4), _KIND), max_size=14),
    cutoff_days=st.integers(1, 20000),
)
def test_plan_picks_only_real_days_that_ended(
    tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[list[str], str]], cutoff_days: int
) -> None:
    """Any tree under the root (links at any level, inside days too): plan never fails and
    names only real dates reached without a link, each ended by the cutoff; removing them
    never reaches through a link."""
    root = tmp_path_factory.mktemp("tree")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "keep").write_text("not the recorder's")
    (outside / "01" / "01").mkdir(parents=True)  # a day, if a link above one were followed
    (outside / "01" / "01" / "keep").write_text("not the recorder's")
    for parts, kind in entries:
        path = root.joinpath(*parts)
        if path.exists() or path.is_symlink():
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir()
            elif kind == "file":
                path.write_text("x")
            else:
                path.symlink_to(outside)
        except (FileExistsError, NotADirectoryError):
            continue  # a file where a directory was wanted: the tree is what it is
    cutoff = NOW - timedelta(days=cutoff_days)
    days = plan(root, cutoff, NOW)
    for day in days:
        parts = (f"{day.day.year:04d}", f"{day.day.month:02d}", f"{day.day.day:02d}")
        assert day.path.relative_to(root).parts == parts
        ended = datetime(day.day.year, day.day.month, day.day.day, tzinfo=UTC) + timedelta(days=1)
        assert ended <= cutoff
        if day.path.is_symlink() or not day.path.is_dir():
            assert day.kept is not None
        assert not day.path.parent.is_symlink() and not day.path.parent.parent.is_symlink()
    remove(root, days)
    assert (outside / "keep").read_text() == "not the recorder's"
    assert (outside / "01" / "01" / "keep").read_text() == "not the recorder's"


def test_a_day_that_cannot_be_read_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Root reads any directory, so the failure is injected: a unit test of plan alone.)"""
    root = tmp_path / "recordings"
    directory = _session(root, "s", 90)
    _age(directory, 90)
    listing = Path.iterdir

    def refuse(self: Path) -> Any:
        if self == directory:
            raise PermissionError(13, "Permission denied")
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    [day] = plan(root, NOW - timedelta(days=30), NOW)
    assert day.kept == "cannot be read: Permission denied"
    assert remove(root, [day]) == [] and directory.is_dir()
