"""Probes of a review driving the real ``tether`` CLI against a real node: each failed
before its fix (a secret cut at 64 KiB, a CA bundle holding a private key stored, secrets
in configuration errors, a token echoed by the HTTP library, terminal escapes in a secret's
description, a TLS opt-out quiet under --json, a world-readable database, a YAML alias bomb,
internal errors where a clear one was due). Docstrings say what happened before."""

from __future__ import annotations

import datetime
import http.server
import resource
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import Node, clean_env, run


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def ca_and_key() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "review-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


# --- 1. stdin value silently truncated at 64 KiB ----------------------------------------


def test_oversized_stdin_value_is_refused_not_truncated(node: Node) -> None:
    """64 KiB + CRLF + more on stdin: read_value reads MAX+2 bytes, sees a trailing CRLF,
    strips it and stores the first 64 KiB. Should exit 2 'larger than 65536 bytes'."""
    value = b"a" * 65536 + b"\r\nTAIL-OF-THE-REAL-SECRET\r\n"
    done = node.cli("secret", "set", "review/trunc", stdin=value)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert b"larger than 65536" in done.stderr


# --- 2. a CA bundle holding a private key is accepted and stored in clear ----------------


def test_ca_bundle_with_private_key_is_refused(node: Node) -> None:
    """cert.pem + key.pem concatenated (a common mistake) passes check_pem_bundle, and the
    private key is stored unencrypted in targets.spec and returned by the API."""
    cert, key = ca_and_key()
    (node.root / "combined.pem").write_bytes(cert + key)
    done = node.cli(
        "target", "add", "review-ca", "--kind", "http", "--url", "https://h.example/",
        "--ca-bundle", "combined.pem",
    )  # fmt: skip
    shown = node.cli("target", "show", "review-ca", "--json")
    assert b"PRIVATE KEY" not in shown.stdout, "private key returned by GET /v1/targets/..."
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)


# --- 3. config errors print secrets -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (
            "approvals:\n  webhooks:\n    - url: https://hooks.example.com/sre\n"
            "      secret: WEBHOOK-HMAC-SECRET-123\n",
            "WEBHOOK-HMAC-SECRET-123",
        ),
        (
            "audit:\n  sinks:\n    - kind: hecc\n      url: https://splunk.example.com:8088\n"
            "      token: HEC-TOKEN-SECRET-456\n",
            "HEC-TOKEN-SECRET-456",
        ),
        (
            "users:\n  oidc:\n    issuer: https://idp.example.com\n"
            "    client_secret: OIDC-CLIENT-SECRET-789\n",
            "OIDC-CLIENT-SECRET-789",
        ),
    ],
)
def test_config_error_does_not_print_secrets(tmp_path: Path, text: str, secret: str) -> None:
    """config._describe_error appends `got {input!r}`; for a missing field or a bad union
    tag the input is the whole mapping, secrets included (tether serve prints it too)."""
    (tmp_path / "c.yaml").write_text(text)
    done = run("store", "verify", "--config", "c.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert secret.encode() not in done.stderr, done.stderr


# --- 4. admin token echoed / exit 70 for a malformed token -------------------------------


def test_token_file_with_two_lines_does_not_print_the_token(node: Node, tmp_path: Path) -> None:
    """A token file with a comment line: httpx refuses the header and the CLI prints
    'cannot reach the Tether server ...: illegal header value b'bearer tat_...'' with
    exit 3. Should exit 2 saying the token file is malformed, without the token."""
    token = "tat_0123456789ab.SECRETpartOfTheToken" + "a" * 24
    (tmp_path / "tok").write_text(token + "\n# prod admin token\n")
    done = run("secret", "list", "--token-file", "tok", "--server", node.url,
               cwd=tmp_path)  # fmt: skip
    assert b"secretpartofthetoken" not in done.stderr.lower(), done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)


def test_non_ascii_admin_token_is_a_clear_error(tmp_path: Path) -> None:
    """A token with a non-ASCII character: UnicodeEncodeError, exit 70 (internal error)."""
    env = {**clean_env(), "TETHER_ADMIN_TOKEN": "tat_é0123", "TETHER_SERVER": closed_port_url()}
    done = run("secret", "list", cwd=tmp_path, env=env)
    assert done.returncode == 2, (done.returncode, done.stderr)


# --- 5. other exit-70s on bad input ----------------------------------------------------


@pytest.mark.parametrize("suffix", ["yaml", "toml"])
def test_deeply_nested_config_is_a_clear_error(tmp_path: Path, suffix: str) -> None:
    """RecursionError escapes read_config_file: 'internal error: RecursionError', exit 70."""
    sep = ": " if suffix == "yaml" else " = "
    (tmp_path / f"c.{suffix}").write_text("a" + sep + "[" * 100000 + "]" * 100000 + "\n")
    done = run("store", "verify", "--config", f"c.{suffix}", cwd=tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)


def test_deeply_nested_target_file_is_a_clear_error(tmp_path: Path) -> None:
    """RecursionError escapes spec_from_document / parse_spec: exit 70."""
    text = "kind: http\nbase_url: https://h.example/\nx: " + "[" * 50000 + "]" * 50000 + "\n"
    (tmp_path / "t.yaml").write_text(text)
    done = run("target", "add", "t", "--from-file", "t.yaml", "--server", closed_port_url(),
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stderr)


def _limit_memory() -> None:
    cap = 3 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_yaml_alias_bomb_target_file_is_refused_quickly(tmp_path: Path) -> None:
    """A 600-byte target file of nested YAML aliases: parse_spec json.dumps it, expanding
    10**8 items (unbounded: 15 GB RSS and > 60 s here). Capped at 3 GB address space in this
    test. Should be refused (exit 2) in a moment."""
    lines = ["kind: http", "base_url: https://h.example/", "a: &a [x,x,x,x,x,x,x,x,x,x]"]
    for prev, cur in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    (tmp_path / "t.yaml").write_text("\n".join(lines) + "\n")
    try:
        done = run("target", "add", "t", "--from-file", "t.yaml", "--server",
                   closed_port_url(), cwd=tmp_path, timeout=30,
                   preexec_fn=_limit_memory)  # fmt: skip
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"no answer in 30 s: {error!r}")
    assert done.returncode == 2, (done.returncode, done.stderr[-300:])


@pytest.fixture
def not_tether() -> Iterator[str]:
    """An HTTP server answering 200 with an HTML page to everything."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>login portal</html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_non_json_answer_is_not_an_internal_error(tmp_path: Path, not_tether: str) -> None:
    """--server pointing at something that is not Tether (a proxy's login page): exit 70,
    'internal error: JSONDecodeError' (AdminClient.call: response.json() unguarded)."""
    env = {**clean_env(), "TETHER_ADMIN_TOKEN": "tat_x.y"}
    done = run("secret", "list", "--server", not_tether, cwd=tmp_path, env=env)
    assert done.returncode not in (0, 70), (done.returncode, done.stderr)


def test_malformed_server_url_is_not_an_internal_error(tmp_path: Path) -> None:
    """--server 'http://[::1' : httpx.InvalidURL raised by httpx.Client() outside the try."""
    env = {**clean_env(), "TETHER_ADMIN_TOKEN": "tat_x.y"}
    done = run("secret", "list", "--server", "http://[::1", cwd=tmp_path, env=env)
    assert done.returncode == 2, (done.returncode, done.stderr)


# --- 6. terminal escapes from a description ---------------------------------------------


def test_secret_list_does_not_emit_terminal_escapes(node: Node) -> None:
    """A description was any text up to 500 characters, and `secret list` printed ESC
    sequences raw (rich strips BEL/BS/CR only): window title, clear screen... Refused now
    (and a description stored before is printed with ``?`` for them)."""
    desc = "\x1b]0;pwned\x1b\\\x1b[2Jinnocent"
    made = node.cli("secret", "set", "review/esc", "-d", desc, stdin=b"v\n")
    assert made.returncode == 2 and b"no control characters" in made.stderr, made.stderr
    listed = node.cli("secret", "list")
    assert listed.returncode == 0 and b"\x1b" not in listed.stdout


# --- 7. --json hides the insecure warning ------------------------------------------------


def test_target_add_json_still_warns_on_stderr(node: Node) -> None:
    """docs/targets.md: `tether target add` prints a warning on standard error for
    --insecure-skip-tls-verify; with --json nothing is printed on stderr."""
    done = node.cli(
        "target", "add", "review-insecure", "--kind", "http", "--url", "https://h.example/",
        "--insecure-skip-tls-verify", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"NOT verified" in done.stderr, done.stderr


# --- 8. the database file is world-readable in a data dir the operator made --------------


def test_database_file_is_not_world_readable(tmp_path: Path) -> None:
    """data_dir made by the operator (mode 0755, as `install -d` or systemd's StateDirectory
    default): tether.db is created 0644 (umask), while `store backup` writes the same
    content 0600. It holds password hashes, token hashes, the audit trail, target specs."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    done = run("admin-token", "create", "--data-dir", str(data), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    mode = stat.S_IMODE((data / "tether.db").stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)
