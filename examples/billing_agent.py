"""An agent calling the demo billing API through Tether's HTTP broker (README quickstart).

    .venv/bin/python examples/billing_agent.py "$(.venv/bin/tether agent join-token billing-bot)"

It joins with the one-time join token (a DPoP-bound token, its key never leaves this
process), then makes three calls through ``/t/billing-api/...``: one the policy allows, one
it denies and one that needs a human approval (examples/policies/http.yaml). It never sees
the API key: Tether injects it. TETHER_SERVER overrides the server (http://127.0.0.1:8765).
"""

from __future__ import annotations

import os
import sys

from tether.client import TetherClient, TetherError, TetherRefused


def main(join_token: str) -> int:
    server = os.environ.get("TETHER_SERVER", "http://127.0.0.1:8765")
    with TetherClient(server) as tether:
        session = tether.join(join_token, task_id="invoice-check", purpose="quickstart")
        invoice = session.request("GET", "/t/billing-api/v1/invoices/7").json()
        print(f"allowed: GET /v1/invoices/7 -> {invoice}")
        for method, path in (("GET", "/admin/stats"), ("POST", "/v1/invoices/7/refund")):
            try:
                session.request(method, f"/t/billing-api{path}")
            except TetherRefused as refused:
                print(f"refused: {method} {path} -> {refused.status} {refused.detail}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: billing_agent.py JOIN_TOKEN")
    try:
        sys.exit(main(sys.argv[1]))
    except TetherError as error:
        sys.exit(f"billing_agent: {error}")
