"""Operator-facing defects found by the s19 newcomer review: signals, config errors, the CLI."""

from __future__ import annotations

import datetime
import os
import pty
import re
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.cli.auditview import summary
from tether.config import ConfigError, load_settings
from tether.proxy.pg.tls import ListenerCertificateError, server_context
from tether.proxy.ssh.server import HostKeyError, load_or_create_host_key
from tether.store.nodelock import NodeLocked, lock_database
from tether.vault.target_input import TargetInputError, spec_from_document
from tether.yamlkeys import UniqueKeyLoader

RULE = """\
rules:
  - id: a
    effect: allow
    agents: [bot]
    targets: [github]
    mcp: {tools: ["search_*"]}
"""
SEARCH = {
    "agent": {"id": "bot"},
    "target": {"name": "github"},
    "action": {"mcp": {"tool": "search_code", "arguments": {}}},
}


def test_a_hangup_stops_the_node_cleanly_with_a_closing_checkpoint(
    tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    """A closed terminal sends SIGHUP to the whole process group (the node and its SQLite
    writer process). It killed the node at once: no closing checkpoint, sessions never
    audited as ended. Now it stops like SIGTERM, and the writer outlives the signal."""
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "a.yaml").write_text(RULE)
    args = [str(tether_bin), "serve", "-p", "pol", "-d", "data", "-l", "127.0.0.1:0"]
    process = subprocess.Popen(
        args, cwd=tmp_path, env=clean_env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        found = None
        while found is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"tether serving on (http://127\.0\.0\.1:\d+)", "".join(lines))
            time.sleep(0.05)
        assert found is not None, "".join(lines)
        with httpx.Client(base_url=found[1], timeout=5) as client:
            assert client.post("/v1/decide", json=SEARCH).json()["decision"] == "allow"
        os.killpg(process.pid, signal.SIGHUP)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=5)
    stderr = "".join(lines)
    assert "SIGHUP received, shutting down" in stderr
    assert "tether stopped" in stderr
    assert "Traceback" not in stderr
    with sqlite3.connect(tmp_path / "data" / "tether.db") as db:
        (last,) = db.execute("SELECT max(seq) FROM audit_events").fetchone()
        (anchored,) = db.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()
    assert last is not None and anchored == last


PG = "postgresql://tether:pw-not-shown@db.internal/tether"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sslmode=verify-full", "ssl=verify-full"),
        ("ssl=require", "ssl=require"),
        ("target_session_attrs=read-write", "target_session_attrs=read-write"),
        ("prepared_statement_cache_size=0", "prepared_statement_cache_size=0"),
    ],
)
def test_a_postgres_url_takes_libpq_sslmode(query: str, expected: str) -> None:
    """``?sslmode=require``, libpq's way to demand TLS, reached asyncpg.connect() as an
    unexpected keyword: the node started, then died with an internal error (exit 70)."""
    url = load_settings(environ={"TETHER_DATABASE_URL": f"{PG}?{query}"}).database_url
    assert url == f"postgresql+asyncpg://tether:pw-not-shown@db.internal/tether?{expected}"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("application_name=x", "unknown query parameter 'application_name'"),
        ("sslmode=on", "sslmode must be one of disable, allow, prefer, require"),
        ("sslmode=require&ssl=disable", "give one of sslmode and ssl"),
        ("ssl=require&ssl=disable", "query parameter 'ssl' is given twice"),
        ("prepared_statement_cache_size=lots", "prepared_statement_cache_size must be a number"),
    ],
)
def test_a_postgres_url_with_another_query_is_refused_at_start(query: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"TETHER_DATABASE_URL": f"{PG}?{query}"})
    assert message in str(raised.value)
    assert "pw-not-shown" not in str(raised.value)


def test_a_sqlite_url_keeps_its_query() -> None:
    url = load_settings(environ={"TETHER_DATABASE_URL": "sqlite:////tmp/t.db?timeout=5"})
    assert url.database_url == "sqlite+aiosqlite:////tmp/t.db?timeout=5"


def test_the_audit_table_says_what_a_completed_or_unparsed_statement_was() -> None:
    """`tether audit search` showed ``None`` as the action of every PostgreSQL session's
    ``completed`` event (its results) and of a statement that did not parse."""
    completed = {
        "kind": "sql.statement",
        "action": {
            "phase": "completed",
            "database": "analytics",
            "results": [
                {"seq": 52, "fingerprint": "f", "rows": 2, "duration_ms": 1.3},
                {"seq": 53, "fingerprint": "g", "rows": None, "duration_ms": 0.4, "error": "42P01"},
            ],
        },
    }
    assert summary(completed) == "completed: 2 statement(s), 2 row(s), 1 error(s)"
    unparsed = {"kind": "sql.statement", "action": {"phase": "decided", "query": None, "size": 17}}
    assert summary(unparsed) == "(unparsed, 17 bytes)"
    decided = {"kind": "sql.statement", "action": {"phase": "decided", "query": "SELECT ?"}}
    assert summary(decided) == "SELECT ?"


def test_a_setting_given_twice_in_a_yaml_config_is_refused(tmp_path: Path) -> None:
    """A second ``audit:`` section appended at the bottom silently replaced the first (and
    its SIEM sinks): YAML keeps the last value of a repeated key without a word."""
    config = tmp_path / "tether.yaml"
    config.write_text(
        "audit:\n  sinks:\n    - {name: siem, kind: jsonl, path: /tmp/siem.jsonl}\n"
        "listen: 127.0.0.1:8765\naudit:\n  checkpoint_every: 10\n"
    )
    with pytest.raises(ConfigError, match=r"tether\.yaml:5: invalid YAML: duplicate key 'audit'"):
        load_settings(config)


def test_a_merge_key_may_still_be_overridden(tmp_path: Path) -> None:
    config = tmp_path / "tether.yaml"
    config.write_text("audit:\n  <<: {checkpoint_every: 5, max_batch: 3}\n  checkpoint_every: 7\n")
    loaded = load_settings(config)
    assert (loaded.audit.checkpoint_every, loaded.audit.max_batch) == (7, 3)


def test_a_field_given_twice_in_a_target_file_is_refused(tmp_path: Path) -> None:
    """``tls_verify: true`` then ``tls_verify: false`` further down: the last won unseen."""
    text = "kind: http\nbase_url: https://a.example\ntls_verify: true\ntls_verify: false\n"
    with pytest.raises(TargetInputError, match=r"\(line 4\): duplicate key 'tls_verify'"):
        spec_from_document(text, name="a", base=tmp_path)


_SCALARS = st.sampled_from(["a", "b", "c", "1", "true", "'a'", '"b"'])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_SCALARS, st.sampled_from(["1", "x", "[1]", "{k: v}"])), max_size=6))
def test_the_loader_refuses_exactly_the_repeated_keys(pairs: list[tuple[str, str]]) -> None:
    """Never a crash; a document whose keys are unique loads as the plain safe loader reads
    it, and one with a key repeated is refused."""
    text = "".join(f"{key}: {value}\n" for key, value in pairs)
    keys = [yaml.safe_load(key) for key, _ in pairs]
    if len(set(keys)) == len(keys):
        assert yaml.load(text, Loader=UniqueKeyLoader) == yaml.safe_load(text)
    else:
        with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key"):
            yaml.load(text, Loader=UniqueKeyLoader)


def _encrypted_key_and_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_path, cert_path = directory / "broker.key", directory / "broker.crt"
    encryption = serialization.BestAvailableEncryption(b"a passphrase")
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


PROBE = """
import sys
from pathlib import Path
from tether.proxy.pg.tls import ListenerCertificateError, server_context
try:
    server_context(Path(sys.argv[1]), Path(sys.argv[2]), None)
except ListenerCertificateError as error:
    print("refused:", error)
"""


def test_an_encrypted_pg_broker_key_is_refused_not_prompted_for(tmp_path: Path) -> None:
    """With an encrypted ``pg_proxy.tls_key``, OpenSSL asked for its passphrase on the
    node's terminal (``Enter PEM pass phrase:``) and the start waited there for ever."""
    cert, key = _encrypted_key_and_certificate(tmp_path)
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of its own, as an operator's shell gives
        os.execv(sys.executable, [sys.executable, "-c", PROBE, str(cert), str(key)])
    output = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif b"refused:" in output or b"pass phrase" in output:
            break
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    assert "pass phrase" not in text
    assert "not a PEM certificate chain and its unencrypted private key" in text


def test_an_unusable_pg_broker_certificate_names_its_files(tmp_path: Path) -> None:
    with pytest.raises(ListenerCertificateError, match=r"nope\.crt: no such file"):
        server_context(tmp_path / "nope.crt", tmp_path / "nope.key", None)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ListenerCertificateError, match="not a PEM certificate chain"):
        server_context(junk, junk, None)


def test_an_unusable_ssh_host_key_is_a_clear_error(tmp_path: Path) -> None:
    """A host key file that is not a key, or is encrypted, was an internal error (exit 70)."""
    junk = tmp_path / "junk_key"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    with pytest.raises(HostKeyError, match="junk_key: not an unencrypted SSH private key"):
        load_or_create_host_key(junk)
    encrypted = tmp_path / "encrypted_key"
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase"),
    )
    encrypted.write_bytes(pem)
    encrypted.chmod(0o600)
    with pytest.raises(HostKeyError, match="encrypted_key: not an unencrypted SSH private key"):
        load_or_create_host_key(encrypted)


def test_a_data_dir_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    """``--data-dir`` naming a file read "cannot open the lock ...: File exists"."""
    data_dir = tmp_path / "data"
    data_dir.write_text("not a directory\n")
    with pytest.raises(NodeLocked, match=r"data: not a directory \(it holds the database\)"):
        lock_database(f"sqlite:///{data_dir / 'tether.db'}", "tether serve")
    with pytest.raises(NodeLocked, match=r"data/sub: Not a directory"):
        lock_database(f"sqlite:///{data_dir / 'sub' / 'tether.db'}", "tether serve")
