"""End to end: a real ``tether serve``, the ``tether secret`` and ``tether target`` commands.

The value of a secret goes in on standard input or from a file and never shows again: not
in any command's output, not in the node's log, not in the database file on disk (only its
envelope ciphertext is). Targets of every kind are added from flags and from a file,
listed, shown with their warnings, replaced and removed; refusals exit with their codes.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.identity_e2e.test_e2e_serve import Cluster
from tests.test_serve import Node

from .conftest import ca_pem, ssh_public_key

TOKEN = re.compile(r"tat_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")
VALUE = "sk_live_E2E-value-0123456789"


class PatientCluster(Cluster):
    """Waits longer for the node to start: the test machine is shared and often loaded."""

    def start(self) -> Node:
        node = Node(self.serve_args(), self.root, self.env)
        self.nodes.append(node)
        node.wait_for_log("tether serving on", timeout=90)
        return node


@pytest.fixture
def cluster(tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]) -> Cluster:
    made = PatientCluster(tmp_path, tether_bin, clean_env)
    yield made  # type: ignore[misc]
    made.stop()


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("tether: error: ")
    assert text in done.stderr


def cli_in(
    cluster: Cluster, token: str, stdin: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.tether), *args],
        cwd=cluster.root,
        env={**cluster.env, "TETHER_SERVER": cluster.url, "TETHER_ADMIN_TOKEN": token},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_secrets_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]

    created = cli_in(
        cluster, admin, VALUE + "\n", "secret", "set", "billing/stripe", "-d", "Stripe"
    )
    assert ok(created) == "secret billing/stripe created\n"
    again = cli_in(cluster, admin, VALUE + "-2\n", "secret", "set", "billing/stripe")
    assert ok(again) == "secret billing/stripe rotated to version 2\n"
    (tmp_path / "key").write_bytes(b"-----BEGIN KEY-----\nabc\n-----END KEY-----\n")
    rotated = cluster.cli("secret", "rotate", "billing/stripe", "--file", "key", token=admin)
    assert ok(rotated) == "secret billing/stripe rotated to version 3\n"

    listed = ok(cluster.cli("secret", "list", token=admin))
    assert "billing/stripe" in listed and "Stripe" in listed and " 3 " in listed
    as_json = json.loads(ok(cluster.cli("secret", "list", "--json", token=admin)))
    assert [(s["name"], s["version"]) for s in as_json] == [("billing/stripe", 3)]

    refused(cli_in(cluster, admin, "v", "secret", "rotate", "absent"), 5, "no secret named")
    refused(cli_in(cluster, "tat_000000000000.x", "v", "secret", "set", "x"), 4, "admin token")
    assert ok(cluster.cli("secret", "delete", "billing/stripe", token=admin)).endswith("deleted\n")
    refused(cluster.cli("secret", "delete", "billing/stripe", token=admin), 5, "no secret")

    node.stop()
    database = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*.db*"))
    assert b"sk_live_E2E" not in database and b"BEGIN KEY" not in database
    assert VALUE not in node.stderr


def test_targets_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.start()
    admin = TOKEN.findall(node.stderr)[0]
    (tmp_path / "ca.pem").write_text(ca_pem())
    (tmp_path / "known_hosts").write_text(f"bastion.internal {ssh_public_key(tmp_path)}\n")
    (tmp_path / "host_ca.pub").write_text(ssh_public_key(tmp_path) + "\n")

    http = cluster.cli(
        "target", "add", "payments", "--kind", "http", "--url", "https://api.example.com/v1",
        "--ca-bundle", "ca.pem", "--credential", "header:X-Api-Key:payments/key",
        "--label", "env=prod", "--read-timeout", "30", "--max-body", "1048576",
        "--pipeline-reads", token=admin,
    )  # fmt: skip
    assert ok(http) == "target payments (http) added\n"
    assert "secret payments/key does not exist yet" in http.stderr
    assert "pipeline_reads: GET and HEAD are sent before their audit event commits" in http.stderr
    insecure = cluster.cli(
        "target", "add", "legacy", "-k", "http", "--url", "https://legacy.internal",
        "--insecure-skip-tls-verify", "-c", "basic:svc:legacy/pw", token=admin,
    )  # fmt: skip
    ok(insecure)
    assert "tether: warning: target legacy: insecure: upstream TLS certificates are NOT" in (
        insecure.stderr
    )
    ssh = cluster.cli(
        "target", "add", "bastion", "-k", "ssh", "--host", "bastion.internal", "-u", "deploy",
        "-u", "ops", "--known-hosts", "known_hosts", "--host-ca", "host_ca.pub",
        "-c", "certificate:300", token=admin,
    )  # fmt: skip
    ok(ssh)
    pg = cluster.cli(
        "target", "add", "billing-db", "-k", "postgres", "--host", "10.0.0.5", "--port", "6432",
        "--database", "billing", "--ca-bundle", "ca.pem",
        "-c", "dynamic:tether_admin:billing/pg-admin:billing_readers", token=admin,
    )  # fmt: skip
    ok(pg)
    (tmp_path / "idp.yaml").write_text(
        "kind: http\nlabels: {team: data}\nbase_url: https://data.example.com\n"
        "ca_bundle_file: ca.pem\ncredential:\n  type: oauth2_client_credentials\n"
        "  token_url: https://idp.example.com/oauth/token\n  client_id: tether\n"
        "  secret: data/client-secret\n  scope: read write\n  auth_method: client_secret_post\n"
    )
    ok(cluster.cli("target", "add", "data", "--from-file", "idp.yaml", token=admin))
    refused(
        cluster.cli("target", "add", "data", "--from-file", "idp.yaml", token=admin), 6, "exists"
    )

    table = ok(cluster.cli("target", "list", token=admin))
    for name in ("payments", "legacy", "bastion", "billing-db", "data"):
        assert name in table
    assert "NOT verified" in table
    assert "WARNING payments: pipeline_reads" in table and "INSECURE" in table
    only_ssh = json.loads(ok(cluster.cli("target", "list", "--kind", "ssh", "--json", token=admin)))
    assert [t["name"] for t in only_ssh] == ["bastion"]
    assert only_ssh[0]["spec"]["users"] == ["deploy", "ops"]
    assert only_ssh[0]["spec"]["credential"] == {"type": "certificate", "validity_seconds": 300}

    payments = json.loads(ok(cluster.cli("target", "show", "payments", "--json", token=admin)))
    assert payments["spec"]["pipeline_reads"] is True
    shown = json.loads(ok(cluster.cli("target", "show", "data", "--json", token=admin)))
    assert shown["spec"]["pipeline_reads"] is False
    assert shown["spec"]["credential"]["auth_method"] == "client_secret_post"
    assert shown["spec"]["ca_bundle"].startswith("-----BEGIN CERTIFICATE-----")
    assert shown["labels"] == {"team": "data"}
    assert shown["missing_secrets"] == ["data/client-secret"]
    text = ok(cluster.cli("target", "show", "legacy", token=admin))
    assert "WARNING" in text and "NOT verified" in text and "tls_verify" in text
    pg_text = ok(cluster.cli("target", "show", "billing-db", token=admin))
    assert "dynamic admin_username=tether_admin" in pg_text and "ca_bundle" in pg_text

    replaced = cluster.cli(
        "target", "add", "legacy", "-k", "http", "--url", "https://legacy.internal",
        "--replace", token=admin,
    )  # fmt: skip
    assert ok(replaced) == "target legacy (http) replaced\n" and replaced.stderr == ""
    refused(
        cluster.cli("target", "add", "nope", "-k", "http", "--url", "https://x", "--replace",
                    token=admin),
        5,
        "no target named",
    )  # fmt: skip
    assert ok(cluster.cli("target", "remove", "legacy", token=admin)) == "target legacy removed\n"
    refused(cluster.cli("target", "show", "legacy", token=admin), 5, "no target named")
    refused(cluster.cli("target", "remove", "legacy", token=admin), 5, "no target named")
