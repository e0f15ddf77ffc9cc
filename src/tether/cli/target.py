"""``tether target``: the target registry, over the admin API.

``add`` takes a target's spec as flags or as a YAML/JSON file (``--from-file``; the only way
to describe OAuth 2.0 client credentials), validates it locally for an immediate message
(:mod:`tether.vault.target_input`, :mod:`tether.vault.target_specs`) and sends it; the
server validates it again. What weakens verification (``--insecure-skip-tls-verify``, a
PostgreSQL ``tls_mode`` that does not verify, a credential over plain http) is printed as a
warning on standard error when the target is added, and shown by ``list`` and ``show``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.cli.agent import parse_labels
from tether.cli.apiclient import DEFAULT_SERVER as _DEFAULT
from tether.cli.apiclient import AdminClient, AsJson, Server, TokenFile, admin_token
from tether.cli.common import fail
from tether.vault.names import KINDS, InvalidName, check_labels, check_target_name
from tether.vault.target_input import (
    Flags,
    TargetInputError,
    read_text_file,
    spec_from_document,
    spec_from_flags,
)

app = typer.Typer(
    help="Add, list, show and remove targets: what agents reach through Tether.",
    no_args_is_help=True,
    add_completion=False,
)

TargetName = Annotated[str, typer.Argument(help="The target's name (a DNS label).")]


def _opt(*names: str, help: str, metavar: str | None = None) -> Any:
    return typer.Option(*names, help=help, metavar=metavar, show_default=False)


@app.command("add")
def add(
    name: TargetName,
    kind: Annotated[str | None, _opt("--kind", "-k", help="http, ssh or postgres.")] = None,
    from_file: Annotated[
        Path | None, _opt("--from-file", help="A YAML/JSON target file.", metavar="FILE")
    ] = None,
    url: Annotated[str | None, _opt("--url", help="(http) Base URL.", metavar="URL")] = None,
    ca_bundle: Annotated[
        Path | None, _opt("--ca-bundle", help="(http, postgres) PEM CA bundle.", metavar="FILE")
    ] = None,
    insecure_skip_tls_verify: Annotated[
        bool,
        typer.Option(
            "--insecure-skip-tls-verify", help="(http) Do NOT verify the upstream certificate."
        ),
    ] = False,
    credential: Annotated[
        str | None,
        _opt("--credential", "-c", help="Which secret to use and how (docs/targets.md)."),
    ] = None,
    connect_timeout: Annotated[
        float | None, _opt("--connect-timeout", help="(http, ssh) Seconds.", metavar="SECONDS")
    ] = None,
    read_timeout: Annotated[
        float | None, _opt("--read-timeout", help="(http) Seconds.", metavar="SECONDS")
    ] = None,
    max_body: Annotated[
        int | None, _opt("--max-body", help="(http) Request body limit.", metavar="BYTES")
    ] = None,
    pipeline_reads: Annotated[
        bool,
        typer.Option(
            "--pipeline-reads",
            help="(http) Send GET/HEAD while their audit event commits (docs/targets.md).",
        ),
    ] = False,
    host: Annotated[str | None, _opt("--host", help="(ssh, postgres) Host name or IP.")] = None,
    port: Annotated[int | None, _opt("--port", help="(ssh, postgres) TCP port.")] = None,
    user: Annotated[
        list[str] | None, _opt("--user", "-u", help="(ssh) A login allowed (repeat).")
    ] = None,
    known_hosts: Annotated[
        Path | None, _opt("--known-hosts", help="(ssh) known_hosts file.", metavar="FILE")
    ] = None,
    host_ca: Annotated[
        Path | None, _opt("--host-ca", help="(ssh) Host CA public key file.", metavar="FILE")
    ] = None,
    database: Annotated[str | None, _opt("--database", help="(postgres) Database.")] = None,
    tls_mode: Annotated[
        str | None, _opt("--tls-mode", help="(postgres) verify-full|verify-ca|require|disable.")
    ] = None,
    default_schema: Annotated[
        str | None, _opt("--default-schema", help="(postgres) Default: public.")
    ] = None,
    label: Annotated[
        list[str] | None, _opt("--label", "-l", help="NAME=VALUE (repeat).", metavar="NAME=VALUE")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the target if it exists.")
    ] = False,
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Register a target from flags or --from-file. Exits 6 if the name is taken."""
    flags = Flags(
        url, ca_bundle, insecure_skip_tls_verify, credential, connect_timeout, read_timeout,
        max_body, host, port, tuple(user or ()), known_hosts, host_ca, database, tls_mode,
        default_schema, pipeline_reads,
    )  # fmt: skip
    from tether.vault.target_specs import SpecError, parse_spec  # pydantic: only when adding

    name = _valid_name(name)
    labels = parse_labels(label)
    try:
        if from_file is not None:
            kind, spec, file_labels = _from_file(from_file, name, kind, flags, labels)
            labels = file_labels if file_labels is not None else labels
        elif kind is None:
            fail("give --kind (http, ssh or postgres) or --from-file")
        else:
            spec = spec_from_flags(kind, flags, read_text_file)
        parse_spec(kind, spec)
        check_labels(labels)
    except (TargetInputError, SpecError, InvalidName) as error:
        fail(str(error))
    client = AdminClient(server, admin_token(token_file))
    body = {"kind": kind, "spec": spec, "labels": labels}
    if replace:
        target = client.call("PUT", f"/v1/targets/{name}", body)
    else:
        target = client.call("POST", "/v1/targets", {"name": name, **body})
    if as_json:
        _print_json(target)
        _warn(target)  # on standard error, JSON or not: an opt-out of TLS is never quiet
        return
    typer.echo(f"target {target['name']} ({target['kind']}) {'replaced' if replace else 'added'}")
    _warn(target)


def _from_file(
    path: Path, name: str, kind: str | None, flags: Flags, labels: dict[str, str]
) -> tuple[str, dict[str, Any], dict[str, str] | None]:
    if flags.given():
        raise TargetInputError("--from-file takes the whole spec: give no spec flags with it")
    text = read_text_file(path)
    found, spec, file_labels = spec_from_document(text, name=name, base=path.parent)
    if kind is not None and kind != found:
        raise TargetInputError(f"--kind {kind!r} but the file says kind {found!r}")
    if labels and file_labels is not None:
        raise TargetInputError("labels are in the file: give no --label with --from-file")
    return found, spec, file_labels


@app.command("list")
def list_command(
    kind: Annotated[str | None, _opt("--kind", "-k", help="Only targets of this kind.")] = None,
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """List targets: name, kind, where, credential, labels, warnings."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind {kind!r}: expected http, ssh or postgres")
    params: dict[str, str] | None = {"kind": kind} if kind is not None else None
    client = AdminClient(server, admin_token(token_file))
    targets = client.call("GET", "/v1/targets", params=params)["targets"]
    if as_json:
        _print_json(targets)
        return
    table = Table("name", "kind", "where", "credential", "labels", "warnings")
    for target in targets:
        table.add_row(
            Text(target["name"]),
            Text(target["kind"]),
            Text(where(target)),
            Text(credential_text(target["spec"].get("credential"))),
            Text(",".join(f"{k}={v}" for k, v in sorted(target["labels"].items())) or "-"),
            Text(_flag(target["warnings"]), style="bold red"),
        )
    console = _console()
    console.print(table)
    for target in targets:
        for warning in target["warnings"]:
            console.print(Text(f"WARNING {target['name']}: {warning}", style="bold red"))


@app.command("show")
def show(
    name: TargetName,
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Show a target's spec, labels, warnings and the secrets it names that are missing."""
    name = _valid_name(name)
    target = AdminClient(server, admin_token(token_file)).call("GET", f"/v1/targets/{name}")
    if as_json:
        _print_json(target)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_row(Text("name"), Text(target["name"]))
    grid.add_row(Text("kind"), Text(target["kind"]))
    for key, value in target["spec"].items():
        grid.add_row(Text(key), Text(_field_text(key, value)))
    labels = ",".join(f"{k}={v}" for k, v in sorted(target["labels"].items()))
    grid.add_row(Text("labels"), Text(labels or "-"))
    grid.add_row(Text("updated_at"), Text(target["updated_at"]))
    for warning in target["warnings"]:
        grid.add_row(Text("WARNING", style="bold red"), Text(warning, style="bold red"))
    for missing in target.get("missing_secrets", []):
        grid.add_row(Text("WARNING", style="bold red"), Text(f"secret {missing} does not exist"))
    _console().print(grid)


@app.command("remove")
def remove(name: TargetName, server: Server = _DEFAULT, token_file: TokenFile = None) -> None:
    """Remove a target (the secrets it names stay in the vault)."""
    name = _valid_name(name)
    AdminClient(server, admin_token(token_file)).call("DELETE", f"/v1/targets/{name}")
    typer.echo(f"target {name} removed")


@app.command("ssh-ca")
def ssh_ca(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="TETHER_CONFIG",
            show_default=False,
            help="The node's config file (for its database and master key).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", "-d", show_default=False, help="The node's data directory."),
    ] = None,
    rotate: Annotated[
        bool,
        typer.Option(
            "--rotate",
            help="Stage a new CA key (first run) or promote the staged one (second run).",
        ),
    ] = False,
) -> None:
    """Print the public key(s) of Tether's target-facing SSH CA, for TrustedUserCAKeys."""
    import asyncio

    from tether.config import ConfigError, load_settings
    from tether.crypto.envelope import DecryptionError
    from tether.crypto.masterkey import MasterKeyError
    from tether.proxy.ssh.ca_line import target_ca_public_key
    from tether.store import StoreError
    from tether.vault.secrets import SecretError

    try:
        settings = load_settings(config, overrides={"data_dir": data_dir and str(data_dir)})
        rotation = asyncio.run(target_ca_public_key(settings, rotate=rotate))
    except (ConfigError, MasterKeyError, StoreError, DecryptionError, SecretError) as error:
        fail(str(error))
    typer.echo("\n".join(rotation.trusted_lines))
    if rotation.step == "staged":
        typer.echo("staged a new CA key: trust both lines on every host, then --rotate", err=True)
    elif rotation.step == "promoted":
        typer.echo(
            "promoted: hosts must trust the old key 11 more minutes, then this one only", err=True
        )


def where(target: dict[str, Any]) -> str:
    """Where a target is: its URL, or ``host:port`` (``/database`` for PostgreSQL)."""
    spec = target["spec"]
    if target["kind"] == "http":
        return str(spec["base_url"])
    place = f"{spec['host']}:{spec['port']}"
    return place + (f"/{spec['database']}" if target["kind"] == "postgres" else "")


def credential_text(credential: dict[str, Any] | None) -> str:
    """A credential in one line: its type and the secret names it uses."""
    if credential is None:
        return "none"
    parts = [str(credential["type"])]
    for key in ("header_name", "param", "username", "admin_username", "secret", "admin_secret"):
        if key in credential:
            parts.append(f"{key}={credential[key]}")
    return " ".join(parts)


def _field_text(key: str, value: Any) -> str:
    if key == "credential":
        return credential_text(value)
    if isinstance(value, str) and "\n" in value.strip():
        return f"({len(value.strip().splitlines())} lines)"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return "-" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _flag(warnings: list[str]) -> str:
    """The list's warnings cell: INSECURE when verification is weakened."""
    if any(warning.startswith("insecure:") for warning in warnings):
        return "INSECURE (below)"
    return "see below" if warnings else "-"


def _warn(target: dict[str, Any]) -> None:
    for warning in target["warnings"]:
        typer.echo(f"tether: warning: target {target['name']}: {warning}", err=True)
    for missing in target.get("missing_secrets", []):
        typer.echo(
            f"tether: warning: target {target['name']}: secret {missing} does not exist yet "
            f"(tether secret set {missing})",
            err=True,
        )


def _valid_name(name: str) -> str:
    try:
        return check_target_name(name)
    except InvalidName as error:
        fail(str(error))


def _console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))
