"""Throughput and latency of the HTTP broker, against baselines measured in the same run.

Run: ``.venv/bin/python bench/http_proxy.py [--json] [--duration SECONDS]``
(needs ``wrk`` and ``nginx`` from Debian: ``apt-get install -y wrk nginx``).

One small upstream (nginx, one worker, ``return 200``) is reached five ways, each loaded by
wrk at 1 connection (1 thread) and 16 connections (2 threads) for ``--duration`` seconds.
With ``--upstream-delay-ms D`` the upstream of every setup is instead a small asyncio
server in a process of its own that answers the same ``{"ok":true}`` D ms after each
request arrived, as a real API would take its time (``direct`` then measures it):

===============  =============================================================================
setup            what the requests go through
===============  =============================================================================
direct           nothing: wrk → upstream
nginx            nginx ``proxy_pass`` with upstream keep-alive (one worker)
bare             a forwarder on Tether's own stack (uvicorn + the broker's upstream client,
                 one process) with no authentication, policy or audit
bare-httptools   the same forwarder on uvicorn's httptools protocol, when httptools is
                 installed (Tether does not use it: it drops the request target's fragment
                 before the engine can refuse it); ``bare`` pins h11, Tether's protocol
tether           ``tether serve`` (one process): DPoP-bound token, a fresh proof per
                 request (made ahead and fed by a wrk Lua script), policy, audit trail
                 (SQLite, ``sqlite_synchronous: full``), credential injection
tether-pipelined the same, to a second target with ``pipeline_reads: true``: each GET goes
                 to the upstream while its decision event commits, its answer held back
                 until the commit (docs/http-broker.md, "Pipelined reads")
tether-cert      the same broker served over mutual TLS with a certificate-bound token
                 (RFC 8705). wrk has no client certificates, so this row is loaded by the
                 Python generator of this file (``--generator`` shows its own ceiling)
tether-stages    only when named in ``--setups``: the node's broker in a process of its own
                 with a timer around each stage of a request (``bench/http_stages.py``),
                 loaded like ``tether``; its rows add ``stages`` (p50/p90/mean per stage,
                 and the disk's fsync cost measured just before)
===============  =============================================================================

With ``--json`` it prints one object per (setup, connections): ``rps``, ``p50_ms``,
``p99_ms``, ``errors`` (non-2xx answers and socket errors), ``load1`` (the 1-minute load
average right after the measurement: the machine is shared), and the ratios
``rps_vs_direct``, ``rps_vs_bare``, ``p50_added_ms`` and ``p99_added_ms`` (over direct at
the same connection count); the rows of a server this script started also have
``cpu_us_per_req`` (that process's CPU time over the requests served, all threads) and,
when wrk loaded it, ``loop_cpu_us_per_req`` (its main thread's: the event loop). The
goals (informational, never an exit status): at 1 connection tether adds <= 1 ms p50 and
<= 3 ms p99 over direct; at 16 connections tether's rps >= 0.5 x bare's. Progress goes
to standard error. Exit 2 when wrk or nginx is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TETHER = ROOT / ".venv" / "bin" / "tether"
PATH = "/v1/items/7"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
WRK = shutil.which("wrk")
HTTPTOOLS = importlib.util.find_spec("httptools") is not None

LUA = """
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  proofs = {}
  count, idx = 0, 0
  local threads = tonumber(args[4])
  local i = 0
  for line in io.lines(args[1]) do
    if i % threads == id then count = count + 1; proofs[count] = line end
    i = i + 1
  end
  auth = "DPoP " .. args[2]
  path = args[3]
end
function request()
  idx = idx + 1
  if idx > count then idx = 1 end
  return wrk.format("GET", path, {["Authorization"] = auth, ["DPoP"] = proofs[idx]})
end
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 100000000;  # not nginx's default 1,000: a fast run closes mid-load
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{upstream};
           location / {{ default_type application/json; return 200 '{{"ok":true}}'; }} }}
  upstream up {{ server 127.0.0.1:{origin}; keepalive 32; }}
  server {{ listen 127.0.0.1:{proxy};
           location / {{ proxy_pass http://up; proxy_http_version 1.1;
                        proxy_set_header Connection ""; }} }}
}}
"""

POLICY = """
rules:
  - id: bench-read
    effect: allow
    agents: [bench-bot]
    targets: [bench, bench-reads]
    http: {methods: [GET], paths: ["/v1/items/{id}"]}
  - id: bench-no-admin
    effect: deny
    targets: [bench, bench-reads]
    http: {methods: ["*"], paths: ["/admin/**"]}
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"http_proxy: nothing listens on port {port} after {timeout} s")


@contextmanager
def process(args: list[str], **kw: Any) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, text=True, **kw)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- load ---------------------------------------------------------------------------------


def cpu_seconds(pid: int, *, main_thread: bool = False) -> float:
    """User + system CPU time of process ``pid`` so far, in seconds: all its threads, or
    only its main thread (the event loop's; not the audit writer's or aiosqlite's)."""
    stat = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    fields = Path(stat).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str,
    connections: int,
    duration: int,
    script: list[str] | None = None,
    pid: int | None = None,
) -> dict[str, Any]:
    """One wrk run; with ``pid`` (the server's process) also its CPU µs per request."""
    threads = 1 if connections == 1 else 2
    args = [WRK or "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script is not None:
        args += ["-s", script[0], url, "--", *script[1:], str(threads)]
    else:
        args.append(url)
    before = (cpu_seconds(pid), cpu_seconds(pid, main_thread=True)) if pid else (0.0, 0.0)
    spy = profiler(pid, f"x{connections}-{pid}", duration) if pid else None
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    if spy is not None:
        spy.wait()
    row = parse_wrk(out)
    if pid is not None and row["requests"]:
        used = cpu_seconds(pid) - before[0], cpu_seconds(pid, main_thread=True) - before[1]
        row["cpu_us_per_req"] = round(used[0] * 1e6 / row["requests"], 1)
        row["loop_cpu_us_per_req"] = round(used[1] * 1e6 / row["requests"], 1)
    return row


def profiler(pid: int, name: str, duration: int) -> subprocess.Popen[bytes] | None:
    """With ``BENCH_PYSPY=DIR`` in the environment (and py-spy installed), a py-spy sampling
    of process ``pid`` for the run, written to ``DIR/NAME.txt`` (collapsed stacks, the
    subprocesses too): where a setup's CPU goes. Sampling costs the node a few per cent."""
    folder = os.environ.get("BENCH_PYSPY")
    if not folder or shutil.which("py-spy") is None:
        return None
    out = Path(folder) / f"{name}.txt"
    extra = os.environ.get("BENCH_PYSPY_ARGS", "").split()  # e.g. --native
    argv = ["py-spy", "record", "-p", str(pid), "-d", str(duration), "-r", "250", *extra,
            "--subprocesses", "-f", "raw", "-o", str(out)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def parse_wrk(out: str) -> dict[str, Any]:
    def latency(label: str) -> float:
        found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if found is None:
            raise SystemExit(f"http_proxy: no {label} latency in wrk's output:\n{out}")
        value, unit = float(found.group(1)), found.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors is not None:
        errors += sum(int(n) for n in socket_errors.groups())
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(requests.group(1)) if requests else 0,
        "p50_ms": latency("50%"),
        "p99_ms": latency("99%"),
        "errors": errors,
        "load1": round(os.getloadavg()[0], 2),
    }


# --- the bare forwarder -------------------------------------------------------------------


def serve_slow(port: int, delay_ms: float) -> None:
    """The upstream of ``--upstream-delay-ms``: HTTP/1.1 keep-alive, every request answered
    like nginx's ``return 200``, ``delay_ms`` after its head arrived (request bodies are not
    expected: every setup sends GET)."""
    import asyncio

    import uvloop

    body = b'{"ok":true}'
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending = b""
        while data := await reader.read(65536):
            pending += data
            while b"\r\n\r\n" in pending:
                _, pending = pending.split(b"\r\n\r\n", 1)
                await asyncio.sleep(delay_ms / 1000)
                writer.write(answer)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def serve_bare(port: int, upstream: int, http: str = "auto") -> None:
    """A forwarder on the broker's own stack: uvicorn + UpstreamPool, nothing else
    (``http``: uvicorn's HTTP protocol implementation, ``auto``, ``h11`` or ``httptools``)."""

    import uvicorn
    import uvloop

    from tether.proxy.http.forward import ClientLimits, Forwarder, Outcome, Plan
    from tether.proxy.http.headers import request_headers, response_headers
    from tether.proxy.http.upstream import Origin, UpstreamPool

    pool = UpstreamPool()
    plan = Plan(Origin("127.0.0.1", upstream, None), "", f"127.0.0.1:{upstream}".encode(),
                5.0, 60.0, None)  # fmt: skip
    limits = ClientLimits(30.0, 30.0)

    async def live() -> None:
        return None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        out = Outcome()
        forwarder = Forwarder(pool, plan, limits, live)
        headers = request_headers(scope["headers"], "bare")
        target = scope["raw_path"] + (
            b"?" + scope["query_string"] if scope["query_string"] else b""
        )
        connection, response = await forwarder.open(
            scope["method"].encode(), target, headers, receive, out
        )
        out.status = response.status
        shown = response_headers(response.headers, "bare", path_prefix=None)
        await forwarder.stream_response(connection, send, shown, out)

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=http,
                            access_log=False, lifespan="off", server_header=False,
                            proxy_headers=False)  # as the node by default  # fmt: skip
    uvloop.run(uvicorn.Server(config).serve())  # the same loop as the node


# --- tether -------------------------------------------------------------------------------


class Node:
    """``tether serve`` with the bench target, and an agent's DPoP key and token."""

    def __init__(self, tmp: Path, upstream: int, synchronous: str) -> None:
        self.tmp, self.upstream = tmp, upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "pol").mkdir()
        (tmp / "pol" / "bench.yaml").write_text(POLICY)
        (tmp / "tether.yaml").write_text(
            f"listen: 127.0.0.1:{self.port}\ndata_dir: data\npolicies: pol\n"
            "log_level: warning\npolicy_watch: false\n"
            f"audit: {{sqlite_synchronous: {synchronous}}}\n"
        )
        for name, extra in (("bench", ""), ("bench-reads", "pipeline_reads: true\n")):
            (tmp / f"{name}.yaml").write_text(
                f"kind: http\nname: {name}\nbase_url: http://127.0.0.1:{upstream}\n"
                "credential: {type: header, secret: bench-key, header_name: X-Api-Key}\n" + extra
            )

    def cli(self, *args: str, stdin: str | None = None) -> str:
        env = {**os.environ, "TETHER_SERVER": self.url, "TETHER_ADMIN_TOKEN": self.admin}
        env.pop("TETHER_CONFIG", None)
        done = subprocess.run([str(TETHER), *args], input=stdin, capture_output=True, text=True,
                              env=env, cwd=self.tmp, check=False)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"http_proxy: tether {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def setup(self, stderr: Path) -> Any:
        from tether.client import TetherClient

        deadline = time.monotonic() + 90
        while "tat_" not in stderr.read_text():
            if time.monotonic() > deadline:
                raise SystemExit(f"http_proxy: tether did not start:\n{stderr.read_text()}")
            time.sleep(0.1)
        self.admin = re.findall(r"tat_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}", stderr.read_text())[0]
        wait_port(self.port)
        self.cli("secret", "set", "bench-key", stdin="bench-api-key\n")
        for name in ("bench", "bench-reads"):
            self.cli("target", "add", name, "--from-file", f"{name}.yaml")
        self.cli("agent", "create", "bench-bot", "--owner", "bench")
        join = self.cli("agent", "join-token", "bench-bot")
        self.client = TetherClient(self.url)
        return self.client.join(join, task_id="bench", purpose="bench", lifetime=3600)


def proofs(key: Any, token: str, url: str, count: int, path: Path) -> None:
    from tether.identity.dpop import make_proof

    now = time.time()
    lines = [make_proof(key, "GET", url, now=now, access_token=token) for _ in range(count)]
    path.write_text("\n".join(lines) + "\n")


# --- certificate-bound tokens over mutual TLS ----------------------------------------------


def stages(
    tmp: Path, node: Node, session: Any, counts: list[int], duration: int
) -> list[dict[str, Any]]:
    """``tether-stages`` rows: a timed broker process per connection count (its proofs
    are made for the node's URL, the issuer, which is the htu the broker expects)."""
    rows: list[dict[str, Any]] = []
    for connections in counts:
        port, out = free_port(), tmp / f"stages-{connections}.json"
        serve = [sys.executable, __file__, "--serve-stages", str(tmp / "tether.yaml"),
                 str(port), node.url, str(out)]  # fmt: skip
        with process(serve, cwd=tmp) as proc:
            wait_port(port)
            log(f"tether-stages x{connections} ... (making proofs)")
            proofs(session.key, session.token, f"{node.url}/t/bench{PATH}", 3000 * duration,
                   tmp / "proofs.txt")  # fmt: skip
            script = [str(tmp / "bench.lua"), str(tmp / "proofs.txt"), session.token,
                      f"/t/bench{PATH}"]  # fmt: skip
            row = wrk(
                f"http://127.0.0.1:{port}/t/bench{PATH}", connections, duration, script, proc.pid
            )
        if not out.exists():
            raise SystemExit("http_proxy: the timed broker wrote no stage timings")
        rows.append({"setup": "tether-stages", "connections": connections, **row,
                     "stages": json.loads(out.read_text())})  # fmt: skip
    return rows


def cert_bound(
    tmp: Path, node: Node, session: Any, upstream: int, counts: list[int], duration: int
) -> list[dict[str, Any]]:
    """``tether-cert`` rows (and ``pygen-direct``, the Python generator's own ceiling)."""
    import asyncio
    import ssl

    credential = session.x509_certificate(bind_token=True)
    tls = tmp / "tls"
    tls.mkdir()
    server_cert, server_key = self_signed()
    for name, text in (("server.crt", server_cert), ("server.key", server_key),
                       ("clients.pem", credential.ca), ("agent.crt", credential.certificate),
                       ("agent.key", credential.private_key_pem)):  # fmt: skip
        (tls / name).write_text(text)
    port = free_port()
    context = ssl.create_default_context(cadata=server_cert)
    context.load_cert_chain(tls / "agent.crt", tls / "agent.key")
    request = (f"GET /t/bench{PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: Bearer {credential.bound_token}\r\n\r\n").encode()  # fmt: skip
    direct = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    rows: list[dict[str, Any]] = []
    serve = [sys.executable, __file__, "--serve-tls", str(tmp / "tether.yaml"), str(port),
             node.url, str(tls)]  # fmt: skip
    with process(serve, cwd=tmp) as proc:
        wait_port(port)
        for connections in counts:
            log(f"pygen-direct x{connections} ...")
            rows.append(
                {
                    "setup": "pygen-direct",
                    "connections": connections,
                    **asyncio.run(pygen(upstream, direct, None, connections, duration)),
                }
            )
            log(f"tether-cert x{connections} ...")
            before = cpu_seconds(proc.pid)
            row = asyncio.run(pygen(port, request, context, connections, duration))
            if row["requests"]:
                used = cpu_seconds(proc.pid) - before
                row["cpu_us_per_req"] = round(used * 1e6 / row["requests"], 1)
            rows.append({"setup": "tether-cert", "connections": connections, **row})
    return rows


def self_signed() -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM).decode(), pem.decode()


async def pygen(
    port: int, request: bytes, tls: Any, connections: int, duration: int
) -> dict[str, Any]:
    """Closed-loop keep-alive load: each connection sends ``request`` again as soon as the
    previous answer (``Content-Length`` framed) is read."""
    import asyncio

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + duration

    async def one_connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionResetError):  # the server closed
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
                continue
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 2"):
                errors += 1
        writer.close()

    began = time.monotonic()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    elapsed = time.monotonic() - began
    latencies.sort()
    count = len(latencies)
    return {
        "rps": round(count / elapsed, 2),
        "requests": count,
        "p50_ms": round(latencies[count // 2] * 1000, 3) if count else 0.0,
        "p99_ms": round(latencies[min(count - 1, int(count * 0.99))] * 1000, 3) if count else 0.0,
        "errors": errors,
        "load1": round(os.getloadavg()[0], 2),
    }


def serve_tls(config: str, port: int, issuer: str, tls: str) -> None:
    """The node's API and broker over mutual TLS (what ``tether serve`` would run with TLS),
    on the same database as the bench's ``tether serve``, one process."""
    import ssl

    import uvicorn
    import uvloop

    from http_stages import node_parts
    from tether.api import create_app
    from tether.proxy.http.broker import BrokerMiddleware
    from tether.proxy.http.tlsserver import TlsH11Protocol

    async def main() -> None:
        _, state, broker = await node_parts(config, issuer)
        app = BrokerMiddleware(create_app(state), broker)  # outermost, as the node
        server = uvicorn.Config(
            app, host="127.0.0.1", port=port, http=TlsH11Protocol, log_level="warning",
            access_log=False, lifespan="off", server_header=False,
            ssl_certfile=f"{tls}/server.crt", ssl_keyfile=f"{tls}/server.key",
            ssl_ca_certs=f"{tls}/clients.pem", ssl_cert_reqs=ssl.CERT_OPTIONAL,
        )  # fmt: skip
        await uvicorn.Server(server).serve()

    uvloop.run(main())  # the same loop as the node


# --- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument(
        "--setups",
        default="direct,nginx,bare,tether,tether-pipelined,tether-cert",
        help="comma-separated setups to run (default: all but bare-httptools)",
    )
    parser.add_argument("--connections", default="1,16", help="comma-separated (default 1,16)")
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("full", "normal"),
        default="full",
        help="tether's audit.sqlite_synchronous (default: full, the default)",
    )
    parser.add_argument(
        "--upstream-delay-ms",
        type=float,
        default=0.0,
        help="answer every request this long after it arrived, from a small asyncio upstream "
        "instead of nginx's return 200 (default 0: nginx)",
    )
    parser.add_argument("--serve-bare", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve-slow", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve-tls", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--serve-stages", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 <= args.upstream_delay_ms <= 10_000:
        parser.error("--upstream-delay-ms must be between 0 and 10000")
    if args.serve_slow:
        serve_slow(int(args.serve_slow[0]), float(args.serve_slow[1]))
        return 0
    if args.serve_bare:
        port, upstream, http = args.serve_bare
        serve_bare(int(port), int(upstream), http)
        return 0
    if args.serve_stages:
        from http_stages import serve

        config, port, issuer, out = args.serve_stages
        serve(config, int(port), issuer, out)
        return 0
    if args.serve_tls:
        config, port, issuer, tls = args.serve_tls
        serve_tls(config, int(port), issuer, tls)
        return 0
    missing = [name for name, found in (("wrk", WRK), ("nginx", NGINX)) if found is None]
    if missing:
        print(f"http_proxy: {' and '.join(missing)} not installed: apt-get install -y wrk nginx",
              file=sys.stderr)  # fmt: skip
        return 2
    results = run_all(
        args.duration,
        args.setups.split(","),
        [int(c) for c in args.connections.split(",")],
        args.sqlite_synchronous,
        args.upstream_delay_ms,
    )
    report(results, as_json=args.json)
    return 0


def run_all(
    duration: int,
    setups: list[str],
    connection_counts: list[int],
    synchronous: str,
    delay_ms: float = 0.0,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as name:
        tmp = Path(name)
        nginx_origin, proxy, bare, bare_ht = free_port(), free_port(), free_port(), free_port()
        # Every setup reaches ``upstream``: nginx's return 200, or the delayed one.
        upstream = free_port() if delay_ms else nginx_origin
        conf = NGINX_CONF.format(tmp=tmp, upstream=nginx_origin, origin=upstream, proxy=proxy)
        (tmp / "nginx.conf").write_text(conf)
        (tmp / "bench.lua").write_text(LUA)
        node = Node(tmp, upstream, synchronous)
        stderr = tmp / "tether.log"
        slow = [sys.executable, __file__, "--serve-slow", str(upstream), str(delay_ms)]
        with (
            process([str(NGINX), "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                    stderr=subprocess.DEVNULL),
            process(slow) if delay_ms else contextlib.nullcontext(),
            process([sys.executable, __file__, "--serve-bare", str(bare), str(upstream),
                     "h11"]) as bare_proc,
            process([sys.executable, __file__, "--serve-bare", str(bare_ht), str(upstream),
                     "httptools" if HTTPTOOLS else "h11"]) as bare_ht_proc,
            stderr.open("w") as log_file,
            process([str(TETHER), "serve", "--config", str(tmp / "tether.yaml")], cwd=tmp,
                    stderr=log_file, env={k: v for k, v in os.environ.items()
                                          if not k.startswith("TETHER_")}) as node_proc,
        ):  # fmt: skip
            for port in (nginx_origin, upstream, proxy, bare, bare_ht):
                wait_port(port)
            session = node.setup(stderr)
            key, token = session.key, session.token
            for connections in connection_counts:
                for setup, url, pid in (
                    ("direct", f"http://127.0.0.1:{upstream}{PATH}", None),
                    ("nginx", f"http://127.0.0.1:{proxy}{PATH}", None),
                    ("bare", f"http://127.0.0.1:{bare}{PATH}", bare_proc.pid),
                    ("bare-httptools", f"http://127.0.0.1:{bare_ht}{PATH}", bare_ht_proc.pid),
                ):
                    if setup not in setups and setup != "direct":
                        continue
                    if setup == "bare-httptools" and not HTTPTOOLS:
                        log("bare-httptools skipped: httptools is not installed")
                        continue
                    log(f"{setup} x{connections} ...")
                    results.append({"setup": setup, "connections": connections,
                                    **wrk(url, connections, duration, pid=pid)})  # fmt: skip
                for setup, target in (("tether", "bench"), ("tether-pipelined", "bench-reads")):
                    if setup not in setups:
                        continue
                    log(f"{setup} x{connections} ... (making proofs)")
                    # Proofs live 60 s: made just before the run, enough for ~3,000 req/s.
                    url = f"{node.url}/t/{target}{PATH}"
                    proofs(key, token, url, 3000 * duration, tmp / "proofs.txt")
                    script = [str(tmp / "bench.lua"), str(tmp / "proofs.txt"), token,
                              f"/t/{target}{PATH}"]  # fmt: skip
                    results.append({"setup": setup, "connections": connections,
                                    **wrk(url, connections, duration, script,
                                          node_proc.pid)})  # fmt: skip
            if "tether-stages" in setups:
                results += stages(tmp, node, session, connection_counts, duration)
            if "tether-cert" in setups:
                results += cert_bound(tmp, node, session, upstream, connection_counts, duration)
    return with_ratios(results)


def with_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["setup"], r["connections"]): r for r in results}
    for row in results:
        direct = by[("direct", row["connections"])]
        bare = by.get(("bare", row["connections"]))
        row["rps_vs_direct"] = round(row["rps"] / direct["rps"], 4) if direct["rps"] else None
        row["rps_vs_bare"] = round(row["rps"] / bare["rps"], 4) if bare and bare["rps"] else None
        row["p50_added_ms"] = round(row["p50_ms"] - direct["p50_ms"], 3)
        row["p99_added_ms"] = round(row["p99_ms"] - direct["p99_ms"], 3)
    return results


def report(results: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        for row in results:
            print(json.dumps(row))
        return
    print(f"{'setup':<14}{'conns':>6}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'x direct':>10}{'x bare':>8}{'+p50':>8}{'+p99':>8}{'load':>7}"
          f"{'cpu us':>8}")  # fmt: skip
    for r in results:
        bare = f"{r['rps_vs_bare']:.2f}" if r["rps_vs_bare"] is not None else "-"
        print(f"{r['setup']:<14}{r['connections']:>6}{r['rps']:>10.0f}{r['p50_ms']:>9.3f}"
              f"{r['p99_ms']:>9.3f}{r['errors']:>8}{r['rps_vs_direct']:>10.3f}{bare:>8}"
              f"{r['p50_added_ms']:>8.2f}{r['p99_added_ms']:>8.2f}{r['load1']:>7.1f}"
              f"{r.get('cpu_us_per_req', '-'):>8}")  # fmt: skip
    for r in results:
        if "stages" in r:
            print(f"\ntether-stages x{r['connections']}: {'stage':<15}{'count':>7}{'p50 ms':>9}"
                  f"{'p90 ms':>9}{'mean ms':>9}")  # fmt: skip
            for stage, t in r["stages"].items():
                print(f"{'':<19}{stage:<15}{t['count']:>7}{t['p50_ms']:>9.3f}{t['p90_ms']:>9.3f}"
                      f"{t['mean_ms']:>9.3f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
