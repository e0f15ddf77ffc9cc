"""Certificate-bound tokens (RFC 8705) through the broker over real mutual TLS: the token
works with its own client certificate only."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from .certs import make_pki
from .conftest import Harness
from .upstream import Upstream


def test_certificate_bound_token(tmp_path: Path, upstream: Upstream) -> None:
    node = Harness(tmp_path, tls=make_pki())
    try:
        node.add_target("api", base_url=upstream.url)
        agent = node.agent()
        credential = node.last_session.x509_certificate(bind_token=True)
        node.agent(task="T-2")
        other = node.last_session.x509_certificate()
        assert credential.bound_token is not None
        files = {}
        for name, cred in (("mine", credential), ("other", other)):
            (tmp_path / f"{name}.crt").write_text(cred.certificate)
            (tmp_path / f"{name}.key").write_text(cred.private_key_pem)
            files[name] = (str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"))
        verify = node.client_tls()
        assert isinstance(verify, ssl.SSLContext)
        url = f"{node.url}/t/api/v1/items"
        bearer = {"Authorization": f"Bearer {credential.bound_token}"}
        with httpx.Client(verify=_with_cert(verify, files["mine"])) as client:
            assert client.get(url, headers=bearer).status_code == 200
            # The DPoP-bound token still works over the same TLS connection.
            assert client.get(url, headers=agent.headers("GET", url)).status_code == 200
        with httpx.Client(verify=_with_cert(node.client_tls(), files["other"])) as client:
            refused = client.get(url, headers=bearer)
            assert refused.status_code == 401
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        with httpx.Client(verify=node.client_tls()) as client:
            assert client.get(url, headers=bearer).status_code == 401  # no certificate
        assert len(upstream.seen) == 2
        assert upstream.seen[0].header("authorization") == []
    finally:
        node.stop()


def _with_cert(context: ssl.SSLContext | bool, files: tuple[str, str]) -> ssl.SSLContext:
    assert isinstance(context, ssl.SSLContext)
    context.load_cert_chain(*files)
    return context
