"""``tether login --oidc`` against a real ``tether serve`` configured with a provider on
loopback: the CLI prints the URL, the test plays the browser, the CLI stores the token."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.test_serve import Node
from tests.users.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider, confirm_in


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    sock = socket.create_server(("127.0.0.1", 0))
    idp = Provider(f"http://127.0.0.1:{sock.getsockname()[1]}", lambda: datetime.now(UTC))
    idp.groups = ["sre"]
    server = uvicorn.Server(uvicorn.Config(idp, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield idp
    finally:
        server.should_exit = True
        await task


async def test_login_oidc_through_a_running_node(
    provider: Provider, tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "a.yaml").write_text("rules: []\n")
    port = socket.create_server(("127.0.0.1", 0))
    listen = f"127.0.0.1:{port.getsockname()[1]}"
    port.close()
    config = {
        "identity": {"user_issuers": [{
            "name": "corp", "issuer": provider.issuer, "audiences": [CLIENT_ID],
            "jwks_url": provider.issuer + "/jwks", "user_claim": "preferred_username",
        }]},
        "users": {"oidc": {"issuer": provider.issuer, "client_id": CLIENT_ID,
                           "client_secret_env": "OIDC_SECRET", "roles": {"sre": ["approver"]}}},
    }  # fmt: skip
    (tmp_path / "tether.yaml").write_text(json.dumps(config))
    env = {**clean_env, "OIDC_SECRET": CLIENT_SECRET, "XDG_CONFIG_HOME": str(tmp_path / "home")}
    args = [str(tether_bin), "serve", "--config", "tether.yaml", "--policies", "pol",
            "--data-dir", "data", "--listen", listen]  # fmt: skip
    node = Node(args, tmp_path, env)
    try:
        await asyncio.to_thread(node.wait_for_log, r"serving on http://", 60)
        url = f"http://{listen}"
        login = subprocess.Popen(
            [str(tether_bin), "login", "--oidc", "--no-browser", "--server", url],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert login.stderr is not None
        line = ""
        while "http" not in line:
            line = await asyncio.to_thread(login.stderr.readline)
            assert line or login.poll() is None, "tether login ended early"
        authorize = re.search(r"(http\S+)", line)
        assert authorize is not None
        async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
            page = await confirm_in(browser, await browser.get(authorize.group(1)))
        assert "Signed in to Tether as alice" in page.text
        out, err = await asyncio.to_thread(login.communicate, timeout=60)
        assert login.returncode == 0, err
        assert "signed in to" in out and "as alice" in out
        stored = json.loads((tmp_path / "home" / "tether" / "login.json").read_text())
        me = httpx.get(url + "/v1/me", headers={"Authorization": f"Bearer {stored['token']}"})
        assert me.json()["groups"] == ["sre"] and me.json()["roles"] == ["approver"]
    finally:
        await asyncio.to_thread(node.stop)
