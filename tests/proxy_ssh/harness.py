"""A real Tether SSH broker on loopback, a real OpenSSH ``sshd`` target, and real clients.

``Stack`` holds a store (SQLite in the test's directory), the identity service with its CAs,
the audit trail, a policy set the test can replace, the vault (secrets and targets) and the
broker listening on an ephemeral port. ``Agent`` is an agent that joined, holds a task token
and an SSH certificate from Tether's agent-login CA, and runs ``ssh``/``sftp``/``scp`` against
the broker. The target ``sshd`` runs every command through a ``ForceCommand`` logger that
appends what it received (NUL-terminated) to ``received.log``, so tests assert on what the
target actually got.

The test ``sshd`` gets ``SetEnv SHLVL=1``: ``sshd`` runs every command through the login
shell, and Debian's bash sources ``~/.bashrc`` when started by ``sshd`` as a top-level shell;
on a machine whose ``.bashrc`` does slow work (``pyenv init`` takes 0.6 s here) every command,
direct or brokered, would pay it. With ``SHLVL`` set, bash is not top-level and skips it.

``USER_ISSUER`` is a trusted OIDC issuer (keys in memory) whose ID tokens ``Stack.delegate``
exchanges, with an agent's token as actor, for a delegated token, as a user signing in would.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm
from sqlalchemy import select, update

from tether.api.state import PolicyHolder
from tether.audit.config import AuditConfig
from tether.audit.emit import Auditor
from tether.audit.schema import audit_events
from tether.audit.startup import start_auditor
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity import exchange as ex
from tether.identity.claims import Claims
from tether.identity.dpop import make_proof
from tether.identity.jwks import JwksCache, JwksSource
from tether.identity.keystore import load_or_create
from tether.identity.service import IdentityService, IdentitySettings, IssuedToken
from tether.identity.workload import IssuerConfig, TrustedIssuers
from tether.policy.loader import PolicySource, load_policies
from tether.proxy.core import AgentLabels, Services
from tether.proxy.ssh.config import SshConfig
from tether.proxy.ssh.server import SshBroker
from tether.store import Store
from tether.store import agents as agent_store
from tether.store.schema import credentials
from tether.store.sealing import adopt
from tether.vault.secrets import SecretStore
from tether.vault.target_specs import parse_spec
from tether.vault.targets import TargetStore

ISSUER = "http://tether"
USER_ISSUER = "https://idp.test"
USER_KEY = ed25519.Ed25519PrivateKey.generate()
SFTP_SERVER = "/usr/lib/openssh/sftp-server"

LOGGER_SCRIPT = """\
#!/bin/sh
# ForceCommand: record what the target received, then do it.
printf '%s\\0' "${SSH_ORIGINAL_COMMAND-<shell>}" >> "$(dirname "$0")/received.log"
if [ "${SSH_ORIGINAL_COMMAND-}" = "internal-sftp" ] || [ "${SSH_ORIGINAL_COMMAND-}" = "sftp" ]; then
  exec {sftp}
fi
if [ -z "${SSH_ORIGINAL_COMMAND+x}" ]; then
  exec /bin/sh -i
fi
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


def policy(text: str) -> PolicyHolder:
    return PolicyHolder(load_policies([PolicySource("test.yaml", textwrap.dedent(text))]))


def logger_script(directory: Path) -> Path:
    path = directory / "force-command.sh"
    path.write_text(LOGGER_SCRIPT.replace("{sftp}", SFTP_SERVER))
    path.chmod(0o755)
    return path


def received(directory: Path) -> list[str]:
    """What the target's ForceCommand logger saw, in order."""
    log = directory / "received.log"
    if not log.exists():
        return []
    return [c for c in log.read_text().split("\0") if c]


async def live_session(port: int, agent: Agent, sshd_dir: Path) -> asyncio.subprocess.Process:
    """OpenSSH's ``ssh ... 'sleep 60'`` through the broker on ``port``, once the target has
    received the command: a live session for a revocation to end."""
    argv = ["ssh", "-p", str(port), *agent.ssh_args(), "root@web-1@127.0.0.1"]
    process = await asyncio.create_subprocess_exec(
        *argv, "sleep 60", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    for _ in range(200):
        if received(sshd_dir) == ["sleep 60"]:
            break
        await asyncio.sleep(0.05)
    assert received(sshd_dir) == ["sleep 60"]
    # The callers time how soon a revocation ends the session: a full collection of the
    # test process's heap (thousands of tests in, it takes seconds) must not fall in that
    # window (it did, at the same test of every full run).
    gc.collect()
    return process


def sshd_extra(directory: Path) -> str:
    return (
        f"ForceCommand {logger_script(directory)}\n"
        f"Subsystem sftp {SFTP_SERVER}\n"
        "MaxStartups 2000\n"
        "MaxSessions 100\n"
        "AllowTcpForwarding yes\n"
        "SetEnv SHLVL=1\n"  # no ~/.bashrc for commands: see the module docstring
    )


def known_hosts_line(directory: Path, port: int) -> str:
    key = asyncssh.read_private_key(str(directory / "host_ed25519"))
    public = key.export_public_key("openssh").decode().strip()
    return f"[127.0.0.1]:{port} {public}"


@dataclass
class Agent:
    """An agent holding a task token and an SSH certificate for its key."""

    id: str
    claims: Claims
    key_path: Path
    cert_path: Path
    public_key: str
    certificate: str
    stack: Stack
    extra_args: list[str] = field(default_factory=list)

    def ssh_args(self, *, port: int | None = None) -> list[str]:
        return [
            "-F", "/dev/null",
            "-i", str(self.key_path),
            "-o", f"CertificateFile={self.cert_path}",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=20",
            "-o", "LogLevel=ERROR",
            *self.extra_args,
        ]  # fmt: skip

    async def ssh(
        self, login: str, command: str | None, *, stdin: bytes = b"", args: Sequence[str] = ()
    ) -> tuple[int, bytes, bytes]:
        argv = ["ssh", "-p", str(self.stack.broker.port), *self.ssh_args(), *args]
        argv.append(f"{login}@127.0.0.1")
        if command is not None:
            argv += ["--", command]
        return await run(argv, stdin)

    def connect(self, login: str) -> Any:
        """An asyncssh client connection to the broker with this agent's certificate."""
        key = asyncssh.read_private_key(str(self.key_path))
        cert = asyncssh.import_certificate(self.certificate)
        return asyncssh.connect(
            "127.0.0.1", self.stack.broker.port, username=login, client_keys=[(key, cert)],
            known_hosts=None, agent_path=None, config=None,
        )  # fmt: skip

    async def sftp(self, login: str, batch: str) -> tuple[int, bytes, bytes]:
        argv = ["sftp", "-P", str(self.stack.broker.port), *self.ssh_args(), "-b", "-"]
        argv.append(f"{login}@127.0.0.1")
        return await run(argv, batch.encode())

    async def scp(self, *paths: str) -> tuple[int, bytes, bytes]:
        argv = ["scp", "-P", str(self.stack.broker.port), *self.ssh_args(), *paths]
        return await run(argv, b"")


async def run(
    argv: Sequence[str], stdin: bytes = b"", timeout: float = 120
) -> tuple[int, bytes, bytes]:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    assert process.returncode is not None
    return process.returncode, out, err


@dataclass
class Stack:
    directory: Path
    store: Store
    identity: IdentityService
    auditor: Auditor
    holder: PolicyHolder
    secrets: SecretStore
    targets: TargetStore
    services: Services
    broker: SshBroker
    _dpop_key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    _tokens: dict[str, str] = field(default_factory=dict)  # jti -> token, for delegation

    async def close(self) -> None:
        await self.broker.stop()
        await self.auditor.log.close()
        await self.store.close()

    async def agent(
        self,
        agent_id: str = "deploy-bot",
        *,
        principals: Sequence[str] = ("root",),
        task: str = "T-1",
        source: str | None = "127.0.0.1/32",
        purpose: str = "deploy",
        on_behalf_of: tuple[str, Sequence[str]] | None = None,
        through: Sequence[tuple[str, Sequence[str]]] = (),
        renewals: int = 0,
    ) -> Agent:
        """An agent holding a certificate for its task token, or, with ``on_behalf_of``
        (user, groups), for a token delegated to it by that user; with ``through``, that
        delegation's actor token is itself delegated by each of those users in turn (a
        delegation chain); with ``renewals``, its own token is first renewed that many
        times in a chain (each renewal from the previous one)."""
        engine = self.store.engine
        async with engine.begin() as conn:
            if await agent_store.get_agent(conn, agent_id) is None:
                await agent_store.create_agent(
                    conn, self.identity.sealer, id=agent_id, owner="alice", now=datetime.now(UTC)
                )
        claims = await self.join(agent_id, task, purpose)
        for _ in range(renewals):
            claims = (await self.renew(claims)).claims
        for user, groups in (*through, *([on_behalf_of] if on_behalf_of else [])):
            claims = (await self.delegate(claims, user, groups)).claims
        key = asyncssh.generate_private_key("ssh-ed25519")
        public = key.export_public_key("openssh").decode().strip()
        certificate = await self.identity.ssh_certificate(claims, public, list(principals), source)
        name = f"{agent_id}-{secrets.token_hex(4)}"
        key_path = self.directory / name
        key_path.write_bytes(key.export_private_key("openssh"))
        key_path.chmod(0o600)
        cert_path = self.directory / f"{name}-cert.pub"
        cert_path.write_text(certificate + "\n")
        return Agent(agent_id, claims, key_path, cert_path, public, certificate, self)

    async def join(self, agent_id: str, task: str, purpose: str = "deploy") -> Claims:
        text, _ = await self.identity.create_join_token(agent_id)
        form = {
            "grant_type": ex.GRANT_TYPE,
            "subject_token": text,
            "subject_token_type": ex.JOIN_TOKEN,
            "task_id": task,
            "task_purpose": purpose,
        }
        issued = await self._exchange(form, None)
        return issued.claims

    async def renew(self, held: Claims) -> IssuedToken:
        """A renewal of the token of ``held`` (same task), as the SDK makes it."""
        token = self._tokens[held.jti]
        form = {
            "grant_type": ex.GRANT_TYPE,
            "subject_token": token,
            "subject_token_type": ex.ACCESS_TOKEN,
            "task_id": held.task.id,
            "task_purpose": held.task.purpose,
        }
        return await self._exchange(form, token)

    async def delegate(self, actor: Claims, user: str, groups: Sequence[str]) -> IssuedToken:
        """A token for ``actor``'s agent acting for ``user``, from the user's ID token."""
        now = int(datetime.now(UTC).timestamp())
        body = {"iss": USER_ISSUER, "aud": "tether", "sub": user, "iat": now, "exp": now + 600}
        id_token = jwt.encode(
            {**body, "groups": list(groups)}, USER_KEY, algorithm="EdDSA", headers={"kid": "u1"}
        )
        actor_token = self._tokens[actor.jti]
        form = {
            "grant_type": ex.GRANT_TYPE,
            "subject_token": id_token,
            "subject_token_type": ex.ID_TOKEN,
            "actor_token": actor_token,
            "actor_token_type": ex.ACCESS_TOKEN,
            "task_id": actor.task.id,
            "task_purpose": actor.task.purpose,
        }
        return await self._exchange(form, actor_token)

    async def _exchange(self, form: dict[str, str], ath: str | None) -> IssuedToken:
        url = ISSUER + "/oauth/token"
        now = datetime.now(UTC).timestamp()
        proof = make_proof(self._dpop_key, "POST", url, now=now, access_token=ath)
        issued = await self.identity.exchange(form, dpop=proof, url=url, address="127.0.0.1")
        self._tokens[issued.claims.jti] = issued.token
        return issued

    async def add_target(
        self, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None
    ) -> None:
        await self.targets.add(name, "ssh", parse_spec("ssh", spec), labels or {})

    async def old_records(self, where: Any, **values: Any) -> None:
        """Rewrite the credential records matching ``where`` as an earlier Tether recorded
        them (``values``), then seal them as ``tether store seal`` adopts such rows."""
        async with self.store.engine.begin() as conn:
            await conn.execute(update(credentials).where(where).values(**values, seal=None))
        await adopt(self.store.engine, self.identity.sealer)

    async def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        table = audit_events
        query = select(table).order_by(table.c.seq)
        if kind is not None:
            query = query.where(table.c.kind == kind)
        async with self.store.engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(query)).mappings()]


def user_issuer() -> TrustedIssuers:
    """The trusted OIDC issuer of the test's users (its JWKS served from memory)."""
    jwk = OKPAlgorithm.to_jwk(USER_KEY.public_key(), as_dict=True)
    document = json.dumps({"keys": [{**jwk, "kid": "u1", "use": "sig"}]}).encode()

    async def fetch() -> bytes:
        return document

    config = IssuerConfig(
        name="idp", issuer=USER_ISSUER, audiences=["tether"],
        jwks=JwksSource(url="https://idp.test/jwks"), kind="oidc",
    )  # fmt: skip
    return TrustedIssuers([(config, JwksCache(fetch, clock=lambda: datetime.now(UTC)))])


async def build_stack(directory: Path, rules: str, **config: Any) -> Stack:
    store = await Store.open(f"sqlite+aiosqlite:///{directory / 'tether.db'}")
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    settings = IdentitySettings(issuer=ISSUER, audience="tether", trust_domain="tether.test")
    keys = await load_or_create(
        store.engine, cipher, clock=lambda: datetime.now(UTC),
        trust_domain=settings.trust_domain, overlap=3600.0,
    )  # fmt: skip
    identity = IdentityService(store.engine, keys, cipher, settings, issuers=user_issuer())
    await identity.refresh_revocations()
    auditor = await start_auditor(
        AuditConfig(sqlite_synchronous="normal"), store.engine, lambda: keys.ring.active
    )
    holder = policy(rules)
    vault = SecretStore(store.engine, cipher)
    targets = TargetStore(store.engine, cipher.sealer)
    services = Services(
        holder, identity, vault, targets, AgentLabels(store.engine, cipher.sealer), auditor
    )
    ssh_config = SshConfig(enabled=True, listen="127.0.0.1:0", **config)
    broker = SshBroker(services, ssh_config, directory / "data")
    await broker.start()
    return Stack(directory, store, identity, auditor, holder, vault, targets, services, broker)


async def plain_key_stack(directory: Path, beside: Stack, rules: str) -> Stack:
    """Another broker, with ``ssh.allow_plain_keys``, to the target ``web-1`` of ``beside``
    (and the target CA its sshd trusts); the caller closes it."""
    stack = await build_stack(directory, rules, allow_plain_keys=True)
    spec = await beside.targets.get("web-1")
    assert spec is not None
    await stack.add_target("web-1", spec.spec.model_dump(mode="json"), {"env": "test"})
    ca_key = await beside.secrets.get("tether/ssh-target-ca")
    await stack.secrets.put("tether/ssh-target-ca", ca_key)
    return stack
