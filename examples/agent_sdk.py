"""An agent using Tether's Python SDK (docs/identity.md).

Against `make run`'s server, from the top of the repository:

    export TETHER_ADMIN_TOKEN=tat_...        # printed once by the server's first start
    .venv/bin/tether agent create report-bot --owner alice --purpose "nightly report"
    .venv/bin/python examples/agent_sdk.py "$(.venv/bin/tether agent join-token report-bot)"

It joins with the one-time join token, shows who the server says it is, obtains an SSH
certificate and an X.509 client certificate for keys it generates, and narrows its token
to a second task. TETHER_SERVER overrides the server URL (default http://127.0.0.1:8765).
"""

from __future__ import annotations

import os
import sys

import asyncssh

from tether.client import TetherClient, TetherError


def main(join_token: str) -> int:
    server = os.environ.get("TETHER_SERVER", "http://127.0.0.1:8765")
    with TetherClient(server) as tether:
        session = tether.join(join_token, task_id="report-2026-11", purpose="nightly report")
        me = session.whoami()
        print(f"joined as {me['sub']} for task {me['task']['id']} (runtime {me['runtime']['id']})")
        print(f"token expires at {session.expires_at}, scope {' '.join(session.scope)}")

        ssh_key = asyncssh.generate_private_key("ssh-ed25519")
        certificate = session.ssh_certificate(ssh_key.export_public_key().decode(), ["report"])
        print(f"SSH certificate: {certificate.split()[0]}")

        client_cert = session.x509_certificate()
        print(f"X.509 client certificate: {len(client_cert.certificate)} bytes of PEM")

        upload = session.for_task("upload-2026-11", "upload the report", scope=["reports-*"])
        print(f"second task {upload.claims['task']['id']} with scope {upload.scope}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: agent_sdk.py JOIN_TOKEN")
    try:
        sys.exit(main(sys.argv[1]))
    except TetherError as error:
        sys.exit(f"agent_sdk: {error}")
