"""The ``identity`` section of the configuration, and how a node opens its identity service."""

from __future__ import annotations

import json
import re
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tether.config import ConfigError, load_settings
from tether.identity.jose import public_jwk
from tether.node import StartupError, default_issuer, open_identity
from tether.store import Store

FULL = """\
identity:
  issuer: https://tether.example.com
  audience: tether-prod
  trust_domain: prod.example
  token_lifetime: 300
  max_token_lifetime: 1800
  join_token_ttl: 120
  max_delegation_depth: 3
  certificate_lifetime: 240
  max_session_lifetime: 7200
  revocation_poll: 0.5
  workload_issuers:
    - name: cluster-a
      issuer: https://oidc.eks.example/id/ABC
      kind: kubernetes
      audiences: [tether]
      jwks_file: keys/cluster-a.json
      claim_map: {kubernetes.io.node.name: node}
      agents:
        system:serviceaccount:prod:billing: billing-bot
    - name: spire
      issuer: https://spire.example
      kind: spiffe
      audiences: [tether]
      jwks_url: https://spire.example/keys
      algorithms: [ES256]
      trust_domains: [prod.example]
      agents: {"spiffe://prod.example/ns/a/sa/b": ab-bot}
  user_issuers:
    - name: okta
      issuer: https://example.okta.com
      audiences: [tether]
      jwks_url: https://example.okta.com/oauth2/v1/keys
      user_claim: email
      groups_claim: groups
"""


def load(tmp_path: Path, text: str, **environ: str) -> object:
    path = tmp_path / "tether.yaml"
    path.write_text(text)
    return load_settings(path, environ=environ, cwd=tmp_path)


def refused(tmp_path: Path, text: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, **environ)
    return str(caught.value)


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(None, environ={}, cwd=tmp_path)
    identity = settings.identity.identity_settings("http://127.0.0.1:8765")
    assert (identity.issuer, identity.audience, identity.trust_domain) == (
        "http://127.0.0.1:8765",
        "tether",
        "tether.local",
    )
    assert (identity.token_lifetime, identity.max_token_lifetime) == (600, 3600)
    assert settings.identity.issuer_configs() == []


def test_every_key(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "tether.yaml"
    path.write_text(FULL)
    loaded = load_settings(path, environ={}, cwd=tmp_path)
    identity = loaded.identity.identity_settings("http://ignored")
    assert identity.issuer == "https://tether.example.com"
    assert (identity.token_lifetime, identity.max_token_lifetime, identity.join_token_ttl) == (
        300,
        1800,
        120,
    )
    assert (identity.max_delegation_depth, identity.certificate_lifetime) == (3, 240)
    assert (identity.max_session_lifetime, identity.revocation_poll) == (7200, 0.5)
    assert identity.workload_agents == {
        "cluster-a": {"system:serviceaccount:prod:billing": "billing-bot"},
        "spire": {"spiffe://prod.example/ns/a/sa/b": "ab-bot"},
    }
    cluster, spire, okta = loaded.identity.issuer_configs()
    assert cluster.jwks.path == tmp_path / "conf" / "keys" / "cluster-a.json"  # file-relative
    assert cluster.claim_map["kubernetes.io.node.name"] == "node"
    assert (spire.kind, spire.algorithms, spire.trust_domains) == (
        "spiffe",
        ("ES256",),
        ("prod.example",),
    )
    assert (okta.kind, okta.user_claim, okta.max_lifetime) == ("oidc", "email", timedelta(hours=1))


def test_environment_sets_identity_keys_and_leaves_other_variables_alone(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        environ={
            "TETHER_IDENTITY__TOKEN_LIFETIME": "120",
            "TETHER_MASTER_KEY": "x",
            "TETHER_ADMIN_TOKEN": "tat_x",
            "TETHER_SERVER": "http://x",
            "TETHER_DEBUG": "1",
        },
        cwd=tmp_path,
    )
    assert settings.identity.token_lifetime == 120
    unknown = "TETHER_IDENTITY__TOKEN_LIFE: identity.token_life: unknown setting"
    with pytest.raises(ConfigError, match=re.escape(unknown)):
        load_settings(None, environ={"TETHER_IDENTITY__TOKEN_LIFE": "1"}, cwd=tmp_path)


ISSUER = """\
identity:
  workload_issuers:
    - name: {name}
      issuer: https://k8s.example
      kind: kubernetes
      audiences: [tether]
      {jwks}
      {extra}
"""


@pytest.mark.parametrize(
    ("name", "jwks", "extra", "message"),
    [
        ("k8s", "", "", "give exactly one of jwks_url and jwks_file"),
        (
            "k8s",
            "jwks_url: https://a/k\n      jwks_file: k.json",
            "",
            "give exactly one of jwks_url and jwks_file",
        ),
        ("K8S!", "jwks_file: k.json", "", "name: must match"),
        ("k8s", "jwks_url: http://k8s.example/keys", "", "a JWKS url must be https"),
        ("k8s", "jwks_file: k.json", "algorithms: [HS256]", "'HS256' is never allowed"),
        ("k8s", "jwks_file: k.json", "algorithms: [none]", "'none' is never allowed"),
        ("k8s", "jwks_file: k.json", "claim_map: {sub: platform}", "label 'platform' is set by"),
        ("k8s", "jwks_file: k.json", "agents: {a: 'bad id'}", "an agent id is"),
        ("k8s", "jwks_file: k.json", "kind: oidc", "identity.workload_issuers.0.kind"),
        ("k8s", "jwks_file: k.json", "colour: blue", "identity.workload_issuers.0.colour: unknown"),
    ],
)
def test_bad_workload_issuers(
    tmp_path: Path, name: str, jwks: str, extra: str, message: str
) -> None:
    text = ISSUER.format(name=name, jwks=jwks, extra=extra).replace("      kind: kubernetes\n", "")
    if "kind:" not in extra:
        text = text.replace("      audiences", "      kind: kubernetes\n      audiences")
    error = refused(tmp_path, text)
    assert error.startswith(f"{tmp_path / 'tether.yaml'}: identity.workload_issuers")
    assert message in error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("identity: {token_lifetime: 4000}", "token_lifetime is above max_token_lifetime"),
        ("identity: {token_lifetime: 0}", "identity.token_lifetime: Input should be greater"),
        ("identity: {max_token_lifetime: 90000}", "identity.max_token_lifetime"),
        ("identity: {trust_domain: 'Prod Example'}", "is not a SPIFFE trust domain"),
        ("identity: {issuer: 'https://t.example/'}", "no query, fragment or trailing slash"),
        ("identity: {issuer: 'ftp://t.example'}", "expected an http(s) URL"),
        ("identity: {max_delegation_depth: 0}", "identity.max_delegation_depth"),
        ("identity: {certificate_lifetime: 7200}", "identity.certificate_lifetime"),
        ("identity: {jwks: x}", "identity.jwks: unknown setting"),
        (FULL.replace("name: spire", "name: cluster-a"), "its own name and issuer URL"),
    ],
)
def test_bad_identity_values(tmp_path: Path, text: str, message: str) -> None:
    assert message in refused(tmp_path, text)


# --- the node's side --------------------------------------------------------------------------


def test_default_issuer_is_the_bound_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        assert default_issuer(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_open_identity_creates_keys_once(tmp_path: Path) -> None:
    settings = load_settings(
        None, environ={}, overrides={"data_dir": str(tmp_path / "d")}, cwd=tmp_path
    )
    store = await Store.open(settings.database)
    try:
        first = await open_identity(settings, store, "http://127.0.0.1:1")
        again = await open_identity(settings, store, "http://127.0.0.1:1")
    finally:
        await store.close()
    assert first.keys.ring.active.kid == again.keys.ring.active.kid
    assert (tmp_path / "d" / "master.key").stat().st_mode & 0o777 == 0o600
    assert first.settings.issuer == "http://127.0.0.1:1"


async def test_open_identity_refuses_unusable_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        None, environ={}, overrides={"data_dir": str(tmp_path / "d")}, cwd=tmp_path
    )
    store = await Store.open(settings.database)
    try:
        await open_identity(settings, store, "http://127.0.0.1:1")
        (tmp_path / "d" / "master.key").chmod(0o644)
        with pytest.raises(StartupError, match="mode 0644 lets group or others"):
            await open_identity(settings, store, "http://127.0.0.1:1")
        monkeypatch.setenv("TETHER_MASTER_KEY", "A" * 43)  # another key than the file's
        with pytest.raises(StartupError, match="signing keys unusable: encrypted under another"):
            await open_identity(settings, store, "http://127.0.0.1:1")
        monkeypatch.delenv("TETHER_MASTER_KEY")
        (tmp_path / "d" / "master.key").chmod(0o600)
        other = settings.model_copy(
            update={"identity": settings.identity.model_copy(update={"trust_domain": "b.example"})}
        )
        with pytest.raises(StartupError, match=re.escape("X.509 CA signs for 'tether.local'")):
            await open_identity(other, store, "http://127.0.0.1:1")
    finally:
        await store.close()


_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read JWKS file: No such file or directory"),
        (b"<html>not keys</html>", "JWKS"),
        (b'{"keys": []}', "no usable signing key"),
        (json.dumps({"keys": [{**public_jwk(_KEY.public_key()), "kid": "k1"}]}).encode(), None),
    ],
    ids=["missing", "malformed", "empty", "valid"],
)
async def test_open_identity_reads_each_jwks_file_once(
    tmp_path: Path, content: bytes | None, message: str | None
) -> None:
    """A missing or malformed ``jwks_file`` stopped nothing: the node started and refused
    every token of that issuer without a word to the operator."""
    if content is not None:
        (tmp_path / "keys.json").write_bytes(content)
    (tmp_path / "tether.yaml").write_text(
        "identity:\n  workload_issuers:\n    - name: ci\n      issuer: https://ci.example\n"
        "      kind: github-actions\n      audiences: [tether]\n      jwks_file: keys.json\n"
        '      agents: {"repo:a/b:ref:refs/heads/main": bot}\n'
    )
    settings = load_settings(
        tmp_path / "tether.yaml", environ={}, overrides={"data_dir": str(tmp_path / "d")},
        cwd=tmp_path,
    )  # fmt: skip
    store = await Store.open(settings.database)
    try:
        if message is None:
            await open_identity(settings, store, "http://127.0.0.1:1")
        else:
            with pytest.raises(
                StartupError, match=f"issuer ci: jwks_file .*keys.json: .*{message}"
            ):
                await open_identity(settings, store, "http://127.0.0.1:1")
    finally:
        await store.close()
