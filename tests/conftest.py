"""Shared helpers of the top-level tests."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer, PostgresUnavailable


@pytest.fixture
def tether_bin() -> Path:
    """The installed ``tether`` console script of the interpreter running the tests."""
    path = Path(sys.executable).parent / "tether"
    assert path.exists(), f"{path} missing: run `make venv`"
    return path


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment without TETHER_* variables, for subprocesses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


# --- PostgreSQL: a real server for the store's tests (tests/pg.py) -----------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, started on first use; stopped at the end."""
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server: PostgresServer) -> str:
    """The asyncpg URL of the session's database ``tether_test`` (state is shared)."""
    pg_server.create_database("tether_test")
    return pg_server.url("tether_test")


@pytest.fixture
def pg_fresh_url(pg_server: PostgresServer) -> Iterator[str]:
    """The asyncpg URL of a new empty database, dropped after the test."""
    name = f"t_{secrets.token_hex(8)}"
    pg_server.create_database(name)
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL on each backend in turn: a fresh SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}"
    url: str = request.getfixturevalue("pg_fresh_url")
    return url
