"""``tether serve`` with ``tls``: HTTPS on the node's listener, certificate-bound tokens over it
(plain requests and a WebSocket tunnel), and clear startup errors for unusable files."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from websockets.sync.client import connect

from tests.test_serve import Node
from tether.client import TetherClient
from tether.config import ConfigError, load_settings
from tether.proxy.http.config import ListenerTlsConfig
from tether.proxy.http.tlsserver import ListenerTlsError, server_context

from .certs import Pki, make_pki
from .upstream import Upstream
from .wsupstream import WsUpstream

POLICY = """
rules:
  - id: read
    effect: allow
    agents: [bot]
    http: {methods: [GET], paths: ["/v1/**", "/echo"]}
"""


def _config(tmp_path: Path, tls: str) -> None:
    (tmp_path / "pol").mkdir(exist_ok=True)
    (tmp_path / "pol" / "p.yaml").write_text(POLICY)
    (tmp_path / "tether.yaml").write_text(
        "listen: 127.0.0.1:0\ndata_dir: data\npolicies: pol\npolicy_watch: false\n" + tls
    )


def _start(tmp_path: Path, tether_bin: Path, env: dict[str, str]) -> Node:
    return Node([str(tether_bin), "serve", "--config", "tether.yaml"], tmp_path, env)


def _client_context(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.ca_pem)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def test_certificate_bound_token_over_the_nodes_tls(
    tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    pki = make_pki()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "node.crt").write_bytes(pki.cert_pem)
    (tmp_path / "node.key").write_bytes(pki.key_pem)
    # cert_file relative to data_dir; key_file absolute.
    _config(tmp_path, f"tls:\n  cert_file: node.crt\n  key_file: {tmp_path / 'node.key'}\n")
    upstream, ws_upstream = Upstream().start(), WsUpstream().start()
    node = _start(tmp_path, tether_bin, clean_env)
    try:
        url = (
            "https://"
            + node.wait_for_log(r"tether serving on https://(127\.0\.0\.1:\d+)", timeout=90)[1]
        )
        admin = re.findall(r"tat_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}", node.stderr)[0]
        verify = _client_context(pki)
        with httpx.Client(base_url=url, verify=verify,
                          headers={"Authorization": f"Bearer {admin}"}) as api:  # fmt: skip
            assert api.post("/v1/agents", json={"id": "bot", "owner": "alice"}).status_code == 201
            for name, base in (("api", upstream.url), ("ws", ws_upstream.url)):
                added = api.post("/v1/targets", json={"name": name, "kind": "http",
                                                      "spec": {"base_url": base}})  # fmt: skip
                assert added.status_code == 201, added.text
            join = api.post("/v1/agents/bot/join-tokens", json={}).json()["join_token"]
        with TetherClient(url, http=httpx.Client(verify=verify)) as client:
            session = client.join(join, task_id="T-1", purpose="tls test")
            credential = session.x509_certificate(bind_token=True)
        assert credential.bound_token is not None
        (tmp_path / "agent.crt").write_text(credential.certificate)
        (tmp_path / "agent.key").write_text(credential.private_key_pem)
        mine = _client_context(pki, (tmp_path / "agent.crt", tmp_path / "agent.key"))
        bearer = {"Authorization": f"Bearer {credential.bound_token}"}

        with httpx.Client(verify=mine) as agent:
            answer = agent.get(f"{url}/t/api/v1/items", headers=bearer)
            assert answer.status_code == 200, answer.text
        assert upstream.seen[-1].target == "/v1/items"
        with httpx.Client(verify=_client_context(pki)) as without_certificate:
            refused = without_certificate.get(f"{url}/t/api/v1/items", headers=bearer)
            assert refused.status_code == 401
        # The same token opens a WebSocket tunnel over the node's TLS, with its certificate.
        with connect(f"wss://{url.removeprefix('https://')}/t/ws/echo", ssl=mine,
                     additional_headers=bearer, proxy=None, open_timeout=10) as ws:  # fmt: skip
            ws.send("over mutual TLS")
            assert ws.recv(timeout=10) == "over mutual TLS"
        assert len(upstream.seen) == 1 and len(ws_upstream.seen) == 1
    finally:
        code = node.stop()
        upstream.stop()
        ws_upstream.stop()
    assert code == 0, node.stderr
    assert "Traceback" not in node.stderr


def test_a_missing_file_stops_the_start(
    tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    _config(tmp_path, "tls:\n  cert_file: missing.pem\n")
    node = _start(tmp_path, tether_bin, clean_env)
    assert node.process.wait(timeout=60) == 2
    node._reader.join(timeout=5)
    expected = f"tether: error: tls.cert_file: {tmp_path / 'data' / 'missing.pem'}: no such file"
    assert node.stderr.strip().splitlines()[-1] == expected, node.stderr
    assert "Traceback" not in node.stderr


def _files(tmp_path: Path, **files: bytes) -> None:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)


@pytest.mark.parametrize(
    ("config", "files", "message"),
    [
        (
            {"cert_file": "node.crt", "key_file": "nokey.pem"},
            {"node.crt": b"x"},
            r"^tls\.key_file: \S*nokey\.pem: no such file$",
        ),
        (
            {"cert_file": "node.crt"},
            {"node.crt": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
            r"^tls\.cert_file, tls\.key_file: \S*node\.crt: not a PEM certificate chain and its "
            r"unencrypted private key",
        ),
        (
            {"cert_file": "node.crt", "key_file": "node.key"},
            {"node.crt": make_pki().cert_pem, "node.key": make_pki().key_pem},  # not its key
            r"not a PEM certificate chain and its unencrypted private key",
        ),
    ],
)
def test_unusable_files_are_refused_naming_the_key(
    tmp_path: Path, config: dict[str, str], files: dict[str, bytes], message: str
) -> None:
    _files(tmp_path, **files)
    with pytest.raises(ListenerTlsError, match=message):
        server_context(ListenerTlsConfig(**config), tmp_path, make_pki().ca_pem)


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path) -> None:
    pki = make_pki()
    key = serialization.load_pem_private_key(pki.key_pem, None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )  # fmt: skip
    _files(tmp_path, **{"node.crt": pki.cert_pem, "node.key": encrypted})
    with pytest.raises(ListenerTlsError, match="unencrypted private key"):
        server_context(ListenerTlsConfig(cert_file=Path("node.crt"), key_file=Path("node.key")),
                       tmp_path, pki.ca_pem)  # fmt: skip


def test_key_file_alone_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tether.yaml").write_text("tls:\n  key_file: node.key\n")
    with pytest.raises(ConfigError, match=r"tls: tls\.key_file is set but tls\.cert_file is not"):
        load_settings(tmp_path / "tether.yaml", environ={}, cwd=tmp_path)


def test_client_certificates_off_asks_for_none(tmp_path: Path) -> None:
    pki = make_pki()
    _files(tmp_path, **{"node.crt": pki.cert_pem + pki.key_pem})  # key in the cert file
    on = server_context(ListenerTlsConfig(cert_file=Path("node.crt")), tmp_path, pki.ca_pem)
    off = server_context(
        ListenerTlsConfig(cert_file=Path("node.crt"), client_certificates="off"),
        tmp_path, pki.ca_pem,
    )  # fmt: skip
    assert on.verify_mode == ssl.CERT_OPTIONAL and off.verify_mode == ssl.CERT_NONE
    assert on.minimum_version >= ssl.TLSVersion.TLSv1_2
