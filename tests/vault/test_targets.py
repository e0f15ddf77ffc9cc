"""The target registry on SQLite and PostgreSQL: validation, cache, fail-closed reads."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError

from tether.vault.schema import targets
from tether.vault.target_specs import (
    BearerCredential,
    HttpTargetSpec,
    SshTargetSpec,
    parse_spec,
    warnings,
)
from tether.vault.targets import TargetError, TargetExists, TargetNotFound, seal_columns

from .conftest import T0, Vault

HTTP = {"base_url": "https://api.example.com", "credential": {"type": "bearer", "secret": "t"}}


async def test_add_get_list_replace_remove(vault: Vault) -> None:
    added = await vault.targets.add("api", "http", HTTP, {"team": "ops"})
    assert added.spec == HttpTargetSpec(
        base_url="https://api.example.com", credential=BearerCredential(type="bearer", secret="t")
    )
    assert (added.kind, dict(added.labels), added.created_at) == ("http", {"team": "ops"}, T0)
    fetched = await vault.targets.get("api")
    assert fetched == added
    with pytest.raises(TargetExists):
        await vault.targets.add("api", "http", HTTP)

    ssh_spec = SshTargetSpec(
        host="h", users=("root",), host_ca=_host_ca(), credential={"type": "certificate"}
    )
    await vault.targets.add("box", "ssh", ssh_spec)
    assert [t.name for t in await vault.targets.list()] == ["api", "box"]
    assert [t.name for t in await vault.targets.list("ssh")] == ["box"]
    assert await vault.targets.list("postgres") == []

    vault.clock.advance(30)
    replaced = await vault.targets.replace("api", "http", {**HTTP, "tls_verify": False})
    assert replaced.created_at == T0 and replaced.updated_at > T0
    assert replaced.spec.tls_verify is False and dict(replaced.labels) == {}
    assert (await vault.targets.get("api")) == replaced  # this node: at once

    await vault.targets.remove("api")
    assert await vault.targets.get("api") is None
    with pytest.raises(TargetNotFound):
        await vault.targets.remove("api")
    with pytest.raises(TargetNotFound):
        await vault.targets.replace("api", "http", HTTP)


@pytest.mark.parametrize(
    ("name", "kind", "spec", "labels", "message"),
    [
        ("Api", "http", HTTP, {}, "invalid target name"),
        ("api", "ftp", HTTP, {}, "unknown target kind"),
        ("api", "ssh", HTTP, {}, "spec.host: Field required"),
        ("api", "http", {**HTTP, "tls_verify": 0}, {}, "spec.tls_verify"),
        ("api", "http", HTTP, {"a": "x\ny"}, "label 'a'"),
    ],
)
async def test_refusals(
    vault: Vault,
    name: str,
    kind: str,
    spec: dict[str, object],
    labels: dict[str, str],
    message: str,
) -> None:
    with pytest.raises(TargetError, match=message):
        await vault.targets.add(name, kind, spec, labels)
    assert await vault.targets.list() == []


async def test_a_model_of_another_kind_is_refused(vault: Vault) -> None:
    spec = HttpTargetSpec(base_url="https://x")
    with pytest.raises(TargetError, match="not a spec of kind 'ssh'"):
        await vault.targets.add("x", "ssh", spec)


async def test_cache_across_nodes(vault: Vault) -> None:
    _, other = vault.other_node()
    assert await other.get("late") is None  # absent names are cached too
    await vault.targets.add("late", "http", HTTP)
    assert await vault.targets.get("late") is not None
    assert await other.get("late") is None
    vault.ticker.now += 1.0
    assert (found := await other.get("late")) is not None and found.spec.tls_verify
    await vault.targets.replace("late", "http", {**HTTP, "tls_verify": False})
    assert (await other.get("late")).spec.tls_verify  # type: ignore[union-attr]
    vault.ticker.now += 1.0
    assert not (await other.get("late")).spec.tls_verify  # type: ignore[union-attr]


async def test_rows_that_no_longer_validate_fail_closed(vault: Vault) -> None:
    # Sealed by Tether (the seal verifies) but invalid: validation still refuses it. Rows
    # changed without the master key are refused by their seal (tests/seal).
    await vault.targets.add("api", "http", HTTP)
    row = {"name": "api", "kind": "http", "labels": {}, "spec": {**HTTP, "tls_verify": "no"},
           "revision": 1}  # fmt: skip
    seal = vault.cipher.sealer.seal("targets", seal_columns(row))
    async with vault.store.engine.begin() as conn:
        await conn.execute(
            update(targets).where(targets.c.name == "api").values(spec=row["spec"], seal=seal)
        )
    _, fresh = vault.other_node()
    with pytest.raises(TargetError, match="stored target 'api' is invalid"):
        await fresh.get("api")


async def test_the_database_refuses_an_unknown_kind(vault: Vault) -> None:
    row = {"name": "x", "kind": "ftp", "labels": {}, "spec": {}, "created_at": T0, "updated_at": T0}
    with pytest.raises(IntegrityError):
        async with vault.store.engine.begin() as conn:
            await conn.execute(insert(targets).values(row))


async def test_malformed_names_are_absent(vault: Vault) -> None:
    for name in ("", "UPPER", "a" * 64, "a.b", "-a", "../x"):
        assert await vault.targets.get(name) is None


def _host_ca() -> str:
    return "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ca"


def test_an_opt_out_that_covers_the_oauth_client_secret_says_so() -> None:
    oauth = {"type": "oauth2_client_credentials", "token_url": "https://idp.example/token",
             "client_id": "c", "secret": "s"}  # fmt: skip
    spec = parse_spec("http", {"base_url": "https://api.example", "credential": oauth,
                               "tls_verify": False})  # fmt: skip
    # The token endpoint is reached with the target's TLS settings, so the client secret
    # went to it unverified while the warnings spoke only of the upstream.
    assert "insecure: the OAuth client secret goes to token_url unverified" in warnings(spec)
    verified = parse_spec("http", {"base_url": "https://api.example", "credential": oauth})
    assert warnings(verified) == ()
