"""``IdentityService.exchange`` and what it issues: joins, workloads, re-scoping, renewal,
delegation, certificates, key rotation, revocations at start. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import insert, update

from tests.identity_e2e.conftest import (
    OTHER_IDP_ISS,
    TOKEN_URL,
    Agent,
    Stack,
    build_service,
    delegate_form,
    join_form,
    rescope_form,
)
from tether.identity import exchange as ex
from tether.identity.errors import TokenRevoked
from tether.identity.exchange import ExchangeError
from tether.identity.sshca import describe_certificate
from tether.store import agents as agent_store
from tether.store import credentials as cred_store
from tether.store.schema import revocation_ledger, revocations, runtimes
from tether.store.sealing import adopt
from tether.users.service import UserService


async def refused(stack: Stack, agent: Agent, form: dict[str, str], **kw: str) -> ExchangeError:
    with pytest.raises(ExchangeError) as caught:
        await stack.exchange(agent, form, **kw)
    return caught.value


# --- joining ----------------------------------------------------------------------------------


async def test_join_records_runtime_and_credential(stack: Stack, bot: Agent) -> None:
    assert bot.claims is not None
    async with stack.engine.connect() as conn:
        runtime = await agent_store.get_runtime(conn, bot.claims.runtime.id)
        held = await cred_store.list_credentials(conn, agent_id="bot")
    assert runtime is not None and runtime.address == "10.0.0.7"
    assert [(c.jti, c.kind, c.task_id) for c in held] == [(bot.claims.jti, "access_token", "T-1")]


async def test_replayed_join_token(stack: Stack) -> None:
    agent = await stack.new_agent()
    text, _ = await stack.service.create_join_token("bot")
    await stack.exchange(agent, join_form(text))
    error = await refused(stack, agent, join_form(text))
    assert (error.error, error.status) == ("invalid_grant", 400)


async def test_join_token_with_a_wrong_secret_or_shape(stack: Stack) -> None:
    agent = await stack.new_agent()
    text, _ = await stack.service.create_join_token("bot")
    for forged in (text[:-2] + "xx", "tjt_nothing", "not-a-join-token"):
        assert (await refused(stack, agent, join_form(forged))).error == "invalid_grant"
    await stack.exchange(agent, join_form(text))  # the real one still works once


async def test_expired_join_token(stack: Stack) -> None:
    agent = await stack.new_agent()
    text, _ = await stack.service.create_join_token("bot", ttl=60)
    stack.clock.advance(61)
    assert (await refused(stack, agent, join_form(text))).error == "invalid_grant"


async def test_disabled_agent_cannot_join(stack: Stack) -> None:
    agent = await stack.new_agent()
    text, _ = await stack.service.create_join_token("bot")
    await stack.service.set_agent_state("bot", "disabled")
    assert (await refused(stack, agent, join_form(text))).error == "invalid_grant"


async def test_lifetime_above_the_cap_refused_without_burning_the_join_token(
    stack: Stack,
) -> None:
    agent = await stack.new_agent()
    text, _ = await stack.service.create_join_token("bot")
    error = await refused(stack, agent, join_form(text, requested_lifetime="3601"))
    assert (error.error, error.description) == (
        "invalid_request",
        "requested_lifetime is above the cap",
    )
    issued = await stack.exchange(agent, join_form(text, requested_lifetime="3600"))
    assert issued.claims.exp - issued.claims.iat == 3600


@pytest.mark.parametrize("task", ["", "T 1 jti=forged", "x" * 129, "tâche"])
async def test_task_ids_are_identifiers(stack: Stack, task: str) -> None:
    agent = await stack.new_agent()
    text, _ = await stack.service.create_join_token("bot")
    assert (await refused(stack, agent, join_form(text, task))).error == "invalid_request"


# --- re-scoping and renewal -------------------------------------------------------------------


async def test_rescope_narrows_and_keeps_the_expiry(stack: Stack) -> None:
    agent = await stack.new_agent()
    await stack.join(agent, extra={"scope": "billing-* crm"})
    stack.clock.advance(100)
    issued = await stack.exchange(
        agent, rescope_form(agent.token, "T-2", scope="billing-api"), ath=agent.token
    )
    assert agent.claims is not None
    assert (issued.claims.task.id, issued.claims.scope) == ("T-2", ("billing-api",))
    assert issued.claims.exp == agent.claims.exp  # never outlives its source
    assert issued.claims.cnf == agent.claims.cnf


@pytest.mark.parametrize("scope", ["prod-db", "billing-* prod-db", "*", "billing*"])
async def test_requested_scope_wider_than_held(stack: Stack, scope: str) -> None:
    agent = await stack.new_agent()
    await stack.join(agent, extra={"scope": "billing-*"})
    form = rescope_form(agent.token, "T-2", scope=scope)
    assert (await refused(stack, agent, form, ath=agent.token)).error == "invalid_scope"


async def test_rescope_lifetime_cannot_outlive_the_source(stack: Stack, bot: Agent) -> None:
    stack.clock.advance(300)
    form = rescope_form(bot.token, "T-2", requested_lifetime="400")
    error = await refused(stack, bot, form, ath=bot.token)
    assert error.description == "requested_lifetime outlives its source"


async def test_renewal_outlives_the_token_within_the_session(stack: Stack, bot: Agent) -> None:
    assert bot.claims is not None
    stack.clock.advance(500)
    renewed = await stack.exchange(bot, rescope_form(bot.token, "T-1"), ath=bot.token)
    assert renewed.claims.exp == bot.claims.exp + 500
    assert renewed.claims.jti != bot.claims.jti
    assert renewed.claims.runtime == bot.claims.runtime


async def test_renewal_stops_at_the_session_cap(store_url: str, stack: Stack) -> None:
    service = await build_service(stack.store, stack.clock, stack.cipher, max_session_lifetime=900)
    stack.service = service
    agent = await stack.new_agent()
    await stack.join(agent)
    start = int(stack.clock.now)
    for _ in range(2):
        stack.clock.advance(400)
        issued = await stack.exchange(agent, rescope_form(agent.token, "T-1"), ath=agent.token)
        agent.token, agent.claims = issued.token, issued.claims
    assert agent.claims is not None
    assert agent.claims.exp == start + 900  # capped at the attestation + 900 s
    stack.clock.advance(agent.claims.exp - stack.clock.now)
    error = await refused(stack, agent, rescope_form(agent.token, "T-1"), ath=agent.token)
    assert error.description == "the presented token has expired"


async def test_rescope_of_a_revoked_task_is_refused(stack: Stack, bot: Agent) -> None:
    await stack.service.revoke("task", "T-1", reason="incident", by="admin")
    with pytest.raises(TokenRevoked, match="the task is revoked"):
        await stack.exchange(bot, rescope_form(bot.token, "T-1"), ath=bot.token)


async def test_a_revocation_on_another_node_stops_issuing_at_once(stack: Stack, bot: Agent) -> None:
    """Issuing reads the revocations other nodes added, not only what its poll last saw."""
    other = await build_service(stack.store, stack.clock, stack.cipher)  # another node
    await other.revoke("task", "T-9", reason="incident", by="admin")
    error = await refused(stack, bot, rescope_form(bot.token, "T-9"), ath=bot.token)
    assert (error.error, error.description) == ("invalid_grant", "the task is revoked")
    await other.revoke("task", "T-1", reason="incident", by="admin")
    assert bot.claims is not None
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    with pytest.raises(TokenRevoked, match="the task is revoked"):
        await stack.service.ssh_certificate(bot.claims, public, ["deploy"], None)


# --- workload tokens --------------------------------------------------------------------------


def workload_form(token: str) -> dict[str, str]:
    return {**join_form(token), "subject_token_type": ex.JWT}


async def test_workload_token_attests_a_mapped_agent(stack: Stack) -> None:
    agent = await stack.new_agent("billing")
    issued = await stack.exchange(agent, workload_form(stack.workload_token()))
    assert issued.claims.sub == "billing"
    assert issued.claims.runtime.id == "k8s/prod/billing-7f9c"
    assert issued.claims.runtime.labels["namespace"] == "prod"


async def test_workload_of_an_unknown_or_inactive_agent(stack: Stack) -> None:
    agent = Agent("billing")  # mapped by configuration, but not created
    error = await refused(stack, agent, workload_form(stack.workload_token()))
    assert (error.error, error.description) == ("invalid_grant", "the agent is not active")
    await stack.new_agent("billing")
    await stack.service.set_agent_state("billing", "disabled")
    assert (await refused(stack, agent, workload_form(stack.workload_token()))).error == (
        "invalid_grant"
    )


async def test_runtime_of_another_agent_is_refused(stack: Stack) -> None:
    agent = await stack.new_agent("billing")
    await stack.new_agent("other")
    async with stack.engine.begin() as conn:
        await agent_store.upsert_runtime(
            conn,
            stack.service.sealer,
            id="k8s/prod/billing-7f9c",
            agent_id="other",
            platform="kubernetes",
            attested_by="cluster",
            now=stack.clock(),
        )
    error = await refused(stack, agent, workload_form(stack.workload_token()))
    assert error.description == "this runtime was attested for another agent"


async def test_unmapped_workload(stack: Stack) -> None:
    agent = await stack.new_agent("billing")
    token = stack.workload_token(
        sub="system:serviceaccount:prod:other",
        **{
            "kubernetes.io": {
                "namespace": "prod",
                "pod": {"name": "p", "uid": "u"},
                "serviceaccount": {"name": "other", "uid": "s"},
            }
        },
    )
    error = await refused(stack, agent, workload_form(token))
    assert error.description == "no agent is mapped to this workload"


# --- delegation -------------------------------------------------------------------------------


async def test_delegation_names_the_agent_as_actor(stack: Stack, bot: Agent) -> None:
    form = delegate_form(stack.user_token("alice"), bot.token, scope="billing-*")
    issued = await stack.exchange(bot, form, ath=bot.token)
    claims = issued.claims
    assert (claims.sub, claims.agent, claims.act and claims.act.sub) == ("alice", "bot", "bot")
    assert claims.groups == ("finance",)
    assert bot.claims is not None and claims.exp <= bot.claims.exp
    # Re-scoped, a delegated token keeps its user's groups and its actor.
    delegated = Agent("bot", key=bot.key, token=issued.token)
    again = await stack.exchange(delegated, rescope_form(issued.token, "T-2"), ath=issued.token)
    assert (again.claims.groups, again.claims.act) == (("finance",), claims.act)


async def test_delegation_depth_exceeded(stack: Stack, bot: Agent) -> None:
    first = await stack.exchange(
        bot, delegate_form(stack.user_token("alice"), bot.token), ath=bot.token
    )
    second = await stack.exchange(
        bot, delegate_form(stack.user_token("bob"), first.token), ath=first.token
    )
    assert second.claims.act is not None and second.claims.act.act is not None  # depth 2
    form = delegate_form(stack.user_token("carol"), second.token)
    error = await refused(stack, bot, form, ath=second.token)
    assert (error.error, error.description) == ("invalid_request", "delegation chain too deep")


async def test_disabling_a_user_revokes_what_they_delegated(stack: Stack, bot: Agent) -> None:
    users = UserService(stack.engine, stack.cipher, clock=stack.clock)
    await users.add("alice", password=None)
    form = delegate_form(stack.user_token("alice"), bot.token)
    issued = await stack.exchange(bot, form, ath=bot.token)
    _, revoked = await users.disable("alice", by="admin")
    assert revoked == [issued.claims.jti]
    await stack.service.refresh_revocations()  # what another node's watcher does
    delegated = Agent("bot", key=bot.key, token=issued.token)
    with pytest.raises(TokenRevoked, match="the token is revoked"):
        await stack.present(delegated)
    error = await refused(stack, bot, delegate_form(stack.user_token("alice"), bot.token),
                          ath=bot.token)  # fmt: skip
    assert (error.error, error.description) == ("invalid_grant", "the user is disabled")
    await stack.present(bot)  # the agent's own token is not the user's


async def test_user_token_from_an_unconfigured_issuer(stack: Stack, bot: Agent) -> None:
    form = delegate_form(stack.user_token("mallory", iss=OTHER_IDP_ISS), bot.token)
    error = await refused(stack, bot, form, ath=bot.token)
    assert (error.error, error.description) == (
        "invalid_grant",
        "user token refused: unknown issuer",
    )


async def test_delegation_cannot_widen_the_scope(stack: Stack) -> None:
    agent = await stack.new_agent()
    await stack.join(agent, extra={"scope": "billing-*"})
    form = delegate_form(stack.user_token(), agent.token, scope="prod-db")
    assert (await refused(stack, agent, form, ath=agent.token)).error == "invalid_scope"


# --- certificates -----------------------------------------------------------------------------


async def test_ssh_certificate_is_bound_to_agent_task_token_and_recorded(
    stack: Stack, bot: Agent
) -> None:
    assert bot.claims is not None
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode()
    cert = await stack.service.ssh_certificate(bot.claims, public, ["deploy"], "10.0.0.7/32")
    info = describe_certificate(cert)
    assert info.key_id == f"agent=bot task=T-1 jti={bot.claims.jti}"
    assert info.principals == ("deploy",)
    assert info.critical_options == {"source-address": "10.0.0.7/32"}
    assert "permit-port-forwarding" not in info.extensions
    async with stack.engine.connect() as conn:
        held = await cred_store.list_credentials(conn, agent_id="bot")
    assert [c.serial for c in held if c.kind == "ssh_certificate"] == [str(info.serial)]


async def test_ssh_certificate_never_outlives_its_token(stack: Stack, bot: Agent) -> None:
    assert bot.claims is not None
    stack.clock.advance(550)
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    cert = await stack.service.ssh_certificate(bot.claims, public, ["deploy"], None)
    assert int(describe_certificate(cert).valid_before.timestamp()) == bot.claims.exp


async def test_certificates_for_a_disabled_agent_are_refused(stack: Stack, bot: Agent) -> None:
    assert bot.claims is not None
    await stack.service.set_agent_state("bot", "disabled")
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    with pytest.raises(TokenRevoked):
        await stack.service.ssh_certificate(bot.claims, public, ["deploy"], None)


async def test_x509_certificate_names_the_agent(stack: Stack, bot: Agent) -> None:
    assert bot.claims is not None
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    pem = await stack.service.x509_certificate(bot.claims, csr.public_bytes(Encoding.PEM).decode())
    cert = x509.load_pem_x509_certificate(pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://tether.test/agent/bot"
    ]
    async with stack.engine.connect() as conn:
        held = await cred_store.list_credentials(conn, agent_id="bot")
    assert [c.serial for c in held if c.kind == "x509_certificate"] == [
        format(cert.serial_number, "x")
    ]


# --- keys and revocations across restarts -----------------------------------------------------


async def test_key_rotation_keeps_old_tokens_valid_across_a_restart(
    stack: Stack, bot: Agent
) -> None:
    old_kid = stack.service.keys.ring.active.kid
    new_kid = await stack.service.rotate_keys()
    assert new_kid != old_kid
    assert (await stack.present(bot)).jti == (bot.claims.jti if bot.claims else "")
    restarted = await build_service(stack.store, stack.clock, stack.cipher)
    assert restarted.keys.ring.active.kid == new_kid
    assert {k["kid"] for k in restarted.keys.ring.jwks(stack.clock.now)["keys"]} == {
        old_kid,
        new_kid,
    }
    stack.service = restarted
    assert (await stack.present(bot)).sub == "bot"
    other = await stack.new_agent("other")
    issued = await stack.join(other)
    assert issued.token.split(".")[0] != bot.token.split(".")[0]  # signed under the new kid
    stack.clock.advance(3600)  # past the overlap, the old key is gone
    after = await build_service(stack.store, stack.clock, stack.cipher)
    assert {k["kid"] for k in after.keys.ring.jwks(stack.clock.now)["keys"]} == {new_kid}


async def test_start_loads_every_revocation(stack: Stack, bot: Agent) -> None:
    rows = [
        {
            "kind": "task",
            "value": f"old-{n}",
            "reason": "r",
            "revoked_by": "a",
            "revoked_at": stack.clock(),
        }
        for n in range(2500)
    ]
    rows.append({**rows[0], "value": "T-1"})
    async with stack.engine.begin() as conn:
        await conn.execute(insert(revocations), rows)
    restarted = await build_service(stack.store, stack.clock, stack.cipher)
    assert len(restarted.revoked) == 2502  # and the use of bot's join token
    stack.service = restarted
    # Rows written behind Tether's back: its revocation ledger does not account for them.
    with pytest.raises(TokenRevoked, match="the revocation list does not verify"):
        await stack.present(bot)
    async with stack.engine.begin() as conn:  # an operator who checked them adopts them
        await conn.execute(update(revocation_ledger).values(seal=None))
    assert await adopt(stack.engine, stack.cipher.sealer) == {
        "revocation_ledger": ["revocations=2502"]
    }
    stack.service = await build_service(stack.store, stack.clock, stack.cipher)
    assert len(stack.service.revoked) == 2502
    with pytest.raises(TokenRevoked, match="the task is revoked"):
        await stack.present(bot)


async def test_exchange_needs_the_token_endpoint_url(stack: Stack) -> None:
    agent = await stack.new_agent()
    text, _ = await stack.service.create_join_token("bot")
    proof = stack.proof(agent, "POST", "http://tether/elsewhere")
    from tether.identity.errors import DPoPInvalid

    with pytest.raises(DPoPInvalid, match="htu"):
        await stack.service.exchange(join_form(text), dpop=proof, url=TOKEN_URL)


async def test_a_renewal_bound_pushed_forward_in_the_database_is_refused(
    stack: Stack, bot: Agent
) -> None:
    # The cap counts from the runtime's last attestation: a writer moving it forward in the
    # database would let the task renew past it. The row's seal no longer verifies.
    later = stack.clock() + dt.timedelta(days=30)
    async with stack.engine.begin() as conn:
        await conn.execute(
            update(runtimes)
            .where(runtimes.c.id == bot.claims.runtime.id)
            .values(last_seen_at=later)
        )
    error = await refused(stack, bot, rescope_form(bot.token, "T-1"), ath=bot.token)
    assert error.description == "the token's runtime is unknown"
