"""SFTP and scp (SFTP mode) through the broker: every operation decided, transfers recorded."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.proxy_ssh.conftest import Env


def transfers(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [json.loads(str(e["action"])) for e in events]


async def test_put_get_list_and_remove(env: Env, tmp_path: Path) -> None:
    agent = await env.stack.agent()
    work = Path("/tmp") / f"tether-sftp-{os.getpid()}-{tmp_path.name}"
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(300_000))
    batch = (
        f"mkdir {work}\n"
        f"put {local} {work}/a.bin\n"
        f"ls {work}\n"
        f"get {work}/a.bin {tmp_path}/back.bin\n"
        f"rename {work}/a.bin {work}/b.bin\n"
        f"rm {work}/b.bin\n"
        f"rmdir {work}\n"
    )
    status, out, err = await agent.sftp("root@web-1", batch)
    assert status == 0, err
    assert b"a.bin" in out
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    assert not work.exists()
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    moved = transfers(await env.stack.events("file.transfer"))
    assert {"op": "write", "path": f"{work}/a.bin", "size": 300_000, "sha256": digest} in moved
    assert {"op": "read", "path": f"{work}/a.bin", "size": 300_000, "sha256": digest} in moved
    renamed = {"op": "rename", "path": f"{work}/a.bin", "size": None, "sha256": None,
               "to": f"{work}/b.bin"}  # fmt: skip
    assert renamed in moved


async def test_refused_operations(env: Env, tmp_path: Path) -> None:
    agent = await env.stack.agent()
    secret = tmp_path / "shadow"
    commands = [
        f"get /etc/shadow {secret}",
        "ls /etc",
        f"put {__file__} /etc/tether-owned",
        "rm /root/.bashrc",
        "ln -s /etc/shadow /tmp/link",
        "rename /tmp/x /etc/x",
    ]
    for command in commands:
        status, _, _ = await agent.sftp("root@web-1", command + "\n")
        assert status != 0, command
    assert not secret.exists() and not Path("/etc/tether-owned").exists()
    assert Path("/root/.bashrc").exists() or not Path("/root").exists()
    assert not Path("/tmp/link").is_symlink()
    denied = {
        json.loads(e["action"])["files"]["path"]
        for e in await env.stack.events("decision")
        if e["decision"] == "deny"
    }
    assert {"/etc/shadow", "/etc", "/etc/tether-owned", "/root/.bashrc", "/tmp/x"} <= denied
    assert await env.stack.events("file.transfer") == []


async def test_ambiguous_paths_are_refused(env: Env) -> None:
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        for path in ("/tmp/../etc/shadow", "/tmp//x", "/tmp/./x", "/tmp/x/"):
            try:
                await sftp.stat(path)
            except Exception as error:  # noqa: BLE001
                assert "ambiguous-path" in str(error), (path, error)
            else:
                raise AssertionError(f"{path} was not refused")
        assert await sftp.realpath("/tmp/../tmp") == "/tmp"
    reasons = {e["reason"] for e in await env.stack.events("decision")}
    assert reasons == {"ambiguous-path"}


async def test_relative_paths_resolve_against_home(env: Env, tmp_path: Path) -> None:
    agent = await env.stack.agent()
    name = f"tether-rel-{tmp_path.name}.txt"
    local = tmp_path / "x.txt"
    local.write_text("relative\n")
    status, _, err = await agent.sftp("root@web-1", f"put {local} {name}\nrm {name}\n")
    home = Path.home()
    assert status != 0  # delete is not allowed under /root
    assert (home / name).read_text() == "relative\n", err
    (home / name).unlink()
    moved = transfers(await env.stack.events("file.transfer"))
    assert moved[0]["path"] == f"{home}/{name}"


async def test_scp_uses_sftp_and_is_decided(env: Env, tmp_path: Path) -> None:
    agent = await env.stack.agent()
    local = tmp_path / "report.csv"
    local.write_bytes(b"a,b\n1,2\n" * 1000)
    remote = f"/tmp/tether-scp-{tmp_path.name}.csv"
    status, _, err = await agent.scp(str(local), f"root@web-1@127.0.0.1:{remote}")
    assert status == 0, err
    status, _, err = await agent.scp(f"root@web-1@127.0.0.1:{remote}", str(tmp_path / "back"))
    assert status == 0, err
    assert (tmp_path / "back").read_bytes() == local.read_bytes()
    Path(remote).unlink()
    status, _, err = await agent.scp("root@web-1@127.0.0.1:/etc/shadow", str(tmp_path / "s"))
    assert status != 0 and not (tmp_path / "s").exists()


async def test_large_transfer_keeps_its_digest(env: Env, tmp_path: Path) -> None:
    agent = await env.stack.agent()
    local = tmp_path / "big.bin"
    with local.open("wb") as handle:
        for _ in range(100):
            handle.write(os.urandom(1 << 20))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    remote = f"/tmp/tether-big-{tmp_path.name}.bin"
    batch = f"put {local} {remote}\nget {remote} {tmp_path}/big.back\nrm {remote}\n"
    status, _, err = await agent.sftp("root@web-1", batch)
    assert status == 0, err
    assert hashlib.sha256((tmp_path / "big.back").read_bytes()).hexdigest() == digest
    moved = transfers(await env.stack.events("file.transfer"))
    assert [(m["op"], m["size"], m["sha256"]) for m in moved[:2]] == [
        ("write", 100 << 20, digest),
        ("read", 100 << 20, digest),
    ]
