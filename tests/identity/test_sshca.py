"""Tether's SSH user CA: what it signs, what it refuses, and what a real OpenSSH makes of it."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest
from asyncssh.public_key import CERT_TYPE_USER
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.identity.conftest_sshd import Sshd, running_sshd, write_key_pair
from tether.identity.sshca import (
    BACKDATE_SECONDS,
    CaPurpose,
    SshCaError,
    SshUserCA,
    describe_certificate,
    format_key_id,
)

NOW = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
KEY_ID = format_key_id(agent="billing-bot", task="T-118", jti="9f2c")


def fixed(at: datetime) -> SshUserCA:
    return SshUserCA.generate(clock=lambda: at)


@pytest.fixture(scope="module")
def ca() -> SshUserCA:
    return SshUserCA.generate(clock=lambda: datetime.now(UTC))


@pytest.fixture(scope="module")
def agent_pub() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


def _pub(algorithm: str, key_size: int | None = None) -> str:
    extra = {} if key_size is None else {"key_size": key_size}
    return asyncssh.generate_private_key(algorithm, None, **extra).export_public_key().decode()


# --- what is signed ---------------------------------------------------------------------------


def test_certificate_carries_principals_key_id_and_backdated_validity(agent_pub: str) -> None:
    cert = fixed(NOW).issue(
        agent_pub, principals=["ops", "deploy"], key_id=KEY_ID, validity_seconds=300
    )
    info = describe_certificate(cert)
    assert cert.startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert info.key_id == "agent=billing-bot task=T-118 jti=9f2c"
    assert info.principals == ("ops", "deploy")
    assert info.cert_type == CERT_TYPE_USER
    assert info.valid_after == NOW - timedelta(seconds=BACKDATE_SECONDS)
    assert info.valid_before == NOW + timedelta(seconds=300)


def test_only_pty_by_default_and_no_source_restriction_unless_asked(agent_pub: str) -> None:
    info = describe_certificate(
        fixed(NOW).issue(agent_pub, principals=["ops"], key_id=KEY_ID, validity_seconds=60)
    )
    assert info.extensions == ("permit-pty",)
    assert info.critical_options == {}


def test_each_permission_is_granted_only_when_asked(agent_pub: str) -> None:
    cert = fixed(NOW).issue(
        agent_pub,
        principals=["ops"],
        key_id=KEY_ID,
        validity_seconds=60,
        allow_pty=False,
        allow_port_forwarding=True,
        allow_agent_forwarding=True,
        allow_x11=True,
    )
    assert set(describe_certificate(cert).extensions) == {
        "permit-port-forwarding",
        "permit-agent-forwarding",
        "permit-X11-forwarding",
    }


def test_source_address_is_a_critical_option(agent_pub: str) -> None:
    cert = fixed(NOW).issue(
        agent_pub,
        principals=["ops"],
        key_id=KEY_ID,
        validity_seconds=60,
        source_address=["10.0.0.0/8", "2001:db8::/32"],
    )
    assert describe_certificate(cert).critical_options == {
        "source-address": "10.0.0.0/8,2001:db8::/32"
    }


def test_asyncssh_parses_and_validates_what_was_issued(ca: SshUserCA, agent_pub: str) -> None:
    line = ca.issue(
        agent_pub,
        principals=["ops"],
        key_id=KEY_ID,
        validity_seconds=120,
        source_address=["127.0.0.1/32"],
    )
    cert = asyncssh.import_certificate(line)
    assert isinstance(cert, asyncssh.public_key.SSHOpenSSHCertificate)
    assert cert.principals == ["ops"]
    assert cert.options["permit-pty"] is True
    source_address: list[object] = cert.options["source-address"]  # type: ignore[assignment]
    assert [str(n) for n in source_address] == ["127.0.0.1/32"]
    assert "permit-port-forwarding" not in cert.options
    assert "permit-user-rc" not in cert.options
    assert (
        cert.signing_key.export_public_key().decode().split()[:2]
        == (ca.ca_public_key_openssh().split()[:2])
    )
    assert cert.key.public_data == asyncssh.import_public_key(agent_pub).public_data
    cert.validate(CERT_TYPE_USER, "ops")  # real clock, inside the window
    with pytest.raises(ValueError, match="principal"):
        cert.validate(CERT_TYPE_USER, "root")


def test_ssh_keygen_reads_what_was_issued(tmp_path: Path, agent_pub: str) -> None:
    ca = fixed(NOW)
    path = tmp_path / "agent-cert.pub"
    path.write_text(
        ca.issue(
            agent_pub,
            principals=["ops"],
            key_id=KEY_ID,
            validity_seconds=600,
            source_address=["192.0.2.0/24"],
        )
        + "\n"
    )
    out = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    ).stdout
    assert "ssh-ed25519-cert-v01@openssh.com user certificate" in out
    assert 'Key ID: "agent=billing-bot task=T-118 jti=9f2c"' in out
    assert "Valid: from 2026-11-29T09:59:00 to 2026-11-29T10:10:00" in out
    section = re.search(
        r"Principals:\s*\n(.*?)\n\s*Critical Options:(.*?)Extensions:(.*)", out, re.S
    )
    assert section is not None
    principals, critical, extensions = (part.split() for part in section.groups())
    assert principals == ["ops"]
    assert critical == ["source-address", "192.0.2.0/24"]
    assert extensions == ["permit-pty"]
    fingerprint = describe_certificate(path.read_text()).signing_ca
    assert f"Signing CA: ED25519 {fingerprint}" in out


def test_serials_are_random(agent_pub: str) -> None:
    ca = fixed(NOW)
    serials = {
        describe_certificate(
            ca.issue(agent_pub, principals=["ops"], key_id=KEY_ID, validity_seconds=60)
        ).serial
        for _ in range(8)
    }
    assert len(serials) == 8 and 0 not in serials


@pytest.mark.parametrize("algorithm", ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384"])
def test_ecdsa_keys_are_certified(algorithm: str) -> None:
    cert = fixed(NOW).issue(_pub(algorithm), principals=["ops"], key_id=KEY_ID, validity_seconds=60)
    assert cert.startswith(f"{algorithm}-cert-v01@openssh.com ")


def test_rsa_2048_is_certified_with_a_sha2_signature_by_an_ed25519_ca() -> None:
    cert = fixed(NOW).issue(
        _pub("ssh-rsa", key_size=2048), principals=["ops"], key_id=KEY_ID, validity_seconds=60
    )
    assert cert.startswith("ssh-rsa-cert-v01@openssh.com ")


# --- what is refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (lambda: _pub("ssh-dss"), "ssh-dss is not accepted"),
        (lambda: _pub("ssh-rsa", key_size=1024), "RSA key of 1024 bits refused"),
        (lambda: "ssh-ed25519 AAAAnotbase64!!", "malformed public key"),
        (lambda: "", "malformed public key"),
        (lambda: _pub("ssh-ed25519") + "\n" + _pub("ssh-ed25519"), "one OpenSSH public key line"),
        (
            lambda: asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode(),
            "one OpenSSH public key line",
        ),
    ],
    ids=["dsa", "rsa-1024", "garbage", "empty", "two-keys", "private-key"],
)
def test_weak_or_malformed_public_keys_are_refused(key: object, reason: str) -> None:
    with pytest.raises(SshCaError, match=reason):
        fixed(NOW).issue(key(), principals=["ops"], key_id=KEY_ID, validity_seconds=60)  # type: ignore[operator]


def test_a_certificate_is_not_accepted_as_a_public_key(agent_pub: str) -> None:
    ca = fixed(NOW)
    cert = ca.issue(agent_pub, principals=["ops"], key_id=KEY_ID, validity_seconds=60)
    with pytest.raises(SshCaError, match="malformed public key"):
        ca.issue(cert, principals=["ops"], key_id=KEY_ID, validity_seconds=60)


def test_the_ca_refuses_to_certify_its_own_key() -> None:
    ca = fixed(NOW)
    with pytest.raises(SshCaError, match="own key"):
        ca.issue(ca.ca_public_key_openssh(), principals=["ops"], key_id=KEY_ID, validity_seconds=60)


@pytest.mark.parametrize(
    "principals",
    [[], ["a,b"], ["two words"], ["-oProxyCommand=x"], ["ops\n"], ["x" * 65], "ops", ["ops"] * 33],
)
def test_bad_principals_are_refused(agent_pub: str, principals: list[str]) -> None:
    with pytest.raises(SshCaError, match="principal"):
        fixed(NOW).issue(agent_pub, principals=principals, key_id=KEY_ID, validity_seconds=60)


@pytest.mark.parametrize("key_id", ["", "agent=x\nFake log line", " padded", "x" * 257, "é"])
def test_bad_key_ids_are_refused(agent_pub: str, key_id: str) -> None:
    with pytest.raises(SshCaError, match="key id"):
        fixed(NOW).issue(agent_pub, principals=["ops"], key_id=key_id, validity_seconds=60)


@pytest.mark.parametrize("field", ["agent", "task", "jti"])
@pytest.mark.parametrize("value", ["", "a b", "a=b", "x\n"])
def test_format_key_id_refuses_ambiguous_values(field: str, value: str) -> None:
    fields = {"agent": "a", "task": "t", "jti": "j", field: value}
    with pytest.raises(SshCaError, match=field):
        format_key_id(**fields)


@pytest.mark.parametrize(
    ("purpose", "seconds"),
    [
        (CaPurpose.AGENT_LOGIN, 0),
        (CaPurpose.AGENT_LOGIN, -5),
        (CaPurpose.AGENT_LOGIN, 3601),
        (CaPurpose.AGENT_LOGIN, True),
        (CaPurpose.TARGET_SESSION, 601),
    ],
)
def test_validity_outside_the_purpose_cap_is_refused(
    agent_pub: str, purpose: CaPurpose, seconds: int
) -> None:
    ca = SshUserCA.generate(clock=lambda: NOW, purpose=purpose)
    with pytest.raises(SshCaError, match="validity_seconds"):
        ca.issue(agent_pub, principals=["ops"], key_id=KEY_ID, validity_seconds=seconds)


@pytest.mark.parametrize("source", [[], ["10.0.0.1/8"], ["not-an-ip"], "10.0.0.0/8"])
def test_bad_source_addresses_are_refused(agent_pub: str, source: list[str]) -> None:
    with pytest.raises(SshCaError, match="source_address"):
        fixed(NOW).issue(
            agent_pub, principals=["ops"], key_id=KEY_ID, validity_seconds=60, source_address=source
        )


# --- keys of the CA ---------------------------------------------------------------------------


def test_private_key_round_trips_and_keeps_signing_as_the_same_ca(agent_pub: str) -> None:
    ca = fixed(NOW)
    loaded = SshUserCA.from_private_key_bytes(ca.private_key_bytes(), clock=lambda: NOW)
    assert loaded.ca_public_key_openssh() == ca.ca_public_key_openssh()
    assert ca.ca_public_key_openssh().startswith("ssh-ed25519 ")
    assert ca.ca_public_key_openssh().endswith(" tether-ssh-ca:agent-login")
    cert = loaded.issue(agent_pub, principals=["ops"], key_id=KEY_ID, validity_seconds=60)
    assert (
        describe_certificate(cert).signing_ca
        == describe_certificate(
            ca.issue(agent_pub, principals=["ops"], key_id=KEY_ID, validity_seconds=60)
        ).signing_ca
    )


def test_a_key_generated_for_one_purpose_is_refused_for_the_other() -> None:
    target_ca = SshUserCA.generate(clock=lambda: NOW, purpose=CaPurpose.TARGET_SESSION)
    with pytest.raises(SshCaError, match="must not share a key"):
        SshUserCA.from_private_key_bytes(target_ca.private_key_bytes(), clock=lambda: NOW)


def test_a_brought_key_with_its_own_comment_is_accepted_for_either_purpose() -> None:
    data = asyncssh.generate_private_key("ssh-ed25519", comment="ops@host").export_private_key()
    for purpose in CaPurpose:
        assert SshUserCA.from_private_key_bytes(data, clock=lambda: NOW, purpose=purpose)


def test_a_weak_or_broken_ca_key_is_refused() -> None:
    with pytest.raises(SshCaError, match="does not load"):
        SshUserCA.from_private_key_bytes(
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nxx", clock=lambda: NOW
        )
    weak = asyncssh.generate_private_key("ssh-rsa", key_size=1024).export_private_key()
    with pytest.raises(SshCaError, match="1024 bits"):
        SshUserCA.from_private_key_bytes(weak, clock=lambda: NOW)


def test_repr_does_not_show_the_private_key() -> None:
    ca = fixed(NOW)
    assert "PRIVATE" not in repr(ca) and "SSHKey" not in repr(ca)


# --- garbage never crashes --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.hex())))
def test_garbage_public_keys_raise_only_ssh_ca_error(line: str) -> None:
    ca = fixed(NOW)
    for candidate in (line, "ssh-ed25519 " + line, "ssh-rsa " + line):
        with pytest.raises(SshCaError):
            ca.issue(candidate, principals=["ops"], key_id=KEY_ID, validity_seconds=60)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_garbage_certificates_raise_only_ssh_ca_error(line: str) -> None:
    for candidate in (line, "ssh-ed25519-cert-v01@openssh.com " + line):
        with pytest.raises(SshCaError):
            describe_certificate(candidate)


# --- end to end with OpenSSH ------------------------------------------------------------------

PRINCIPAL = "tether-ops"


@pytest.fixture(scope="module")
def sshd(ca: SshUserCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    directory = tmp_path_factory.mktemp("sshd")
    with running_sshd(
        directory, trusted_ca_keys=[ca.ca_public_key_openssh()], principals=[PRINCIPAL]
    ) as server:
        yield server


@pytest.fixture
def agent_key(tmp_path: Path) -> tuple[Path, str]:
    return write_key_pair(tmp_path, "agent")


def _cert_file(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "agent-cert.pub"
    path.write_text(line + "\n")
    return path


def _refused(sshd: Sshd, key: Path, cert: Path, reason: str) -> None:
    mark = sshd.mark()
    result = sshd.ssh(key, cert)
    assert result.returncode == 255 and "ok" not in result.stdout
    assert "Permission denied (publickey)" in result.stderr
    sshd.wait_for_log(reason, since=mark)


def test_real_ssh_logs_in_with_an_issued_certificate(
    sshd: Sshd, ca: SshUserCA, agent_key: tuple[Path, str], tmp_path: Path
) -> None:
    key, pub = agent_key
    key_id = format_key_id(agent="billing-bot", task="T-118", jti="e2e-ok")
    cert = _cert_file(
        tmp_path,
        ca.issue(
            pub,
            principals=[PRINCIPAL],
            key_id=key_id,
            validity_seconds=300,
            source_address=["127.0.0.0/8"],
        ),
    )
    mark = sshd.mark()
    result = sshd.ssh(key, cert)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    sshd.wait_for_log(rf"Accepted publickey for {sshd.user} .* ID {key_id} \(serial", since=mark)


def test_real_sshd_refuses_the_key_without_its_certificate(
    sshd: Sshd, agent_key: tuple[Path, str]
) -> None:
    mark = sshd.mark()
    result = sshd.ssh(agent_key[0], None)
    assert result.returncode == 255 and "Permission denied (publickey)" in result.stderr
    sshd.wait_for_log(r"Connection closed by authenticating user", since=mark)


def test_real_sshd_refuses_an_expired_certificate(
    sshd: Sshd, ca: SshUserCA, agent_key: tuple[Path, str], tmp_path: Path
) -> None:
    past = SshUserCA(ca.ca_private_key, lambda: datetime.now(UTC) - timedelta(hours=2))
    line = past.issue(agent_key[1], principals=[PRINCIPAL], key_id=KEY_ID, validity_seconds=3600)
    _refused(sshd, agent_key[0], _cert_file(tmp_path, line), "Certificate invalid: expired")


def test_real_sshd_refuses_a_certificate_not_yet_valid(
    sshd: Sshd, ca: SshUserCA, agent_key: tuple[Path, str], tmp_path: Path
) -> None:
    future = SshUserCA(ca.ca_private_key, lambda: datetime.now(UTC) + timedelta(minutes=10))
    line = future.issue(agent_key[1], principals=[PRINCIPAL], key_id=KEY_ID, validity_seconds=60)
    _refused(sshd, agent_key[0], _cert_file(tmp_path, line), "Certificate invalid: not yet valid")


def test_real_sshd_refuses_a_certificate_from_a_foreign_ca(
    sshd: Sshd, agent_key: tuple[Path, str], tmp_path: Path
) -> None:
    foreign = SshUserCA.generate(clock=lambda: datetime.now(UTC))
    line = foreign.issue(agent_key[1], principals=[PRINCIPAL], key_id=KEY_ID, validity_seconds=60)
    fingerprint = re.escape(describe_certificate(line).signing_ca)
    _refused(
        sshd,
        agent_key[0],
        _cert_file(tmp_path, line),
        f"Failed publickey .* CA ED25519 {fingerprint}",
    )


def test_real_sshd_refuses_a_source_address_that_excludes_loopback(
    sshd: Sshd, ca: SshUserCA, agent_key: tuple[Path, str], tmp_path: Path
) -> None:
    line = ca.issue(
        agent_key[1],
        principals=[PRINCIPAL],
        key_id=KEY_ID,
        validity_seconds=60,
        source_address=["10.0.0.0/8"],
    )
    _refused(sshd, agent_key[0], _cert_file(tmp_path, line), "not from a permitted source address")


def test_real_sshd_refuses_a_principal_it_does_not_list(
    sshd: Sshd, ca: SshUserCA, agent_key: tuple[Path, str], tmp_path: Path
) -> None:
    line = ca.issue(agent_key[1], principals=["someone-else"], key_id=KEY_ID, validity_seconds=60)
    _refused(
        sshd,
        agent_key[0],
        _cert_file(tmp_path, line),
        "Certificate does not contain an authorized principal",
    )


def test_a_target_trusting_the_target_ca_refuses_agent_login_certificates(
    ca: SshUserCA, agent_key: tuple[Path, str], tmp_path: Path
) -> None:
    target_ca = SshUserCA.generate(
        clock=lambda: datetime.now(UTC), purpose=CaPurpose.TARGET_SESSION
    )
    key, pub = agent_key
    with running_sshd(
        tmp_path / "target",
        trusted_ca_keys=[target_ca.ca_public_key_openssh()],
        principals=[PRINCIPAL],
    ) as target:
        agent_cert = ca.issue(pub, principals=[PRINCIPAL], key_id=KEY_ID, validity_seconds=60)
        _refused(target, key, _cert_file(tmp_path, agent_cert), "Failed publickey")
        session = target_ca.issue(
            pub, principals=[PRINCIPAL], key_id="session=s-1 jti=j", validity_seconds=120
        )
        result = target.ssh(key, _cert_file(tmp_path, session))
        assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
