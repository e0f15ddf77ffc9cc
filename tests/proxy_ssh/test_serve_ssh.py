"""End to end: ``tether serve`` with the SSH broker on, set up with the CLI, used by the SDK's
certificate and the real ``ssh`` client against a real ``sshd`` trusting ``tether target ssh-ca``.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import asyncssh

from tests.identity.conftest_sshd import running_sshd
from tests.identity_e2e.test_e2e_serve import TOKEN, Cluster, closed_port
from tests.proxy_ssh.harness import known_hosts_line, received, run, sshd_extra
from tether.client import TetherClient

POLICY = """\
rules:
  - id: echo
    effect: allow
    agents: [bot]
    targets: [web-1]
    ssh: {commands: ["echo **"]}
"""


def test_node_serves_ssh(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> None:
    ssh_port = closed_port()
    env = {
        **clean_env,
        "TETHER_SSH__ENABLED": "true",
        "TETHER_SSH__LISTEN": f"127.0.0.1:{ssh_port}",
    }
    cluster = Cluster(tmp_path, tether_bin, env)
    (tmp_path / "pol" / "a.yaml").write_text(POLICY)
    try:
        node = cluster.start()
        admin = TOKEN.findall(node.stderr)[0]
        ca = cluster.cli("target", "ssh-ca", "--data-dir", "data")
        assert ca.returncode == 0, ca.stderr
        assert re.fullmatch(r"ssh-ed25519 \S+ tether-ssh-ca:target-session\n", ca.stdout)
        again = cluster.cli("target", "ssh-ca", "--data-dir", "data")
        assert again.stdout == ca.stdout  # created once, then read back
        sshd_dir = tmp_path / "sshd"
        sshd_dir.mkdir()
        with running_sshd(
            sshd_dir, trusted_ca_keys=[ca.stdout.strip()], principals=["root"],
            extra_config=sshd_extra(sshd_dir),
        ) as sshd:  # fmt: skip
            spec = tmp_path / "web-1.json"
            spec.write_text(json.dumps({
                "kind": "ssh", "host": "127.0.0.1", "port": sshd.port, "users": ["root"],
                "known_hosts": known_hosts_line(sshd_dir, sshd.port),
                "credential": {"type": "certificate"},
            }))  # fmt: skip
            added = cluster.cli("target", "add", "web-1", "--from-file", str(spec), token=admin)
            assert added.returncode == 0, added.stderr
            assert (
                cluster.cli("agent", "create", "bot", "--owner", "a", token=admin).returncode == 0
            )
            join = cluster.cli("agent", "join-token", "bot", token=admin).stdout.strip()
            key = asyncssh.generate_private_key("ssh-ed25519")
            with TetherClient(cluster.url) as tether:
                session = tether.join(join, task_id="T-9", purpose="deploy")
                public = key.export_public_key("openssh").decode().strip()
                certificate = session.ssh_certificate(public, ["root"])
            (tmp_path / "id").write_bytes(key.export_private_key("openssh"))
            (tmp_path / "id").chmod(0o600)
            (tmp_path / "id-cert.pub").write_text(certificate + "\n")
            argv = [
                "ssh", "-F", "/dev/null", "-p", str(ssh_port), "-i", str(tmp_path / "id"),
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR",
                "root@web-1@127.0.0.1", "echo", "through", "tether",
            ]  # fmt: skip
            status, out, err = asyncio.run(run(argv))
            assert (status, out) == (0, b"through tether\n"), err
            assert received(sshd_dir) == ["echo through tether"]
            status, _, err = asyncio.run(run([*argv[:-3], "id"]))
            assert status == 1 and err.startswith(b"Tether: denied: default-deny")
        staged = cluster.cli("target", "ssh-ca", "--rotate", "--data-dir", "data")
        assert staged.returncode == 0 and "staged" in staged.stderr, staged.stderr
        old, new = staged.stdout.splitlines()
        assert old == ca.stdout.strip() and new != old and new.endswith("target-session")
        listed = cluster.cli("target", "ssh-ca", "--data-dir", "data")
        assert listed.stdout.splitlines() == [old, new]  # both, while the rotation runs
        promoted = cluster.cli("target", "ssh-ca", "--rotate", "--data-dir", "data")
        assert promoted.returncode == 0 and "promoted" in promoted.stderr
        assert promoted.stdout.splitlines() == [new]
        after = cluster.cli("target", "ssh-ca", "--data-dir", "data")
        assert after.stdout.splitlines() == [new]
        node.process.terminate()
        node.process.wait(timeout=20)
        assert node.process.returncode == 0
    finally:
        cluster.stop()
