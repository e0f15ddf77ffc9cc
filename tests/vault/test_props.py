"""Property tests: the vault's parsers never crash and never accept what they must refuse.

Names, target specs of every kind (from arbitrary JSON data and from mutations of valid
specs), the value checks, the credential shorthand, target files, and the cache's
freshness rule.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.vault.cache import TtlCache
from tether.vault.names import (
    InvalidName,
    check_labels,
    check_secret_name,
    check_target_name,
    is_reserved,
    is_secret_name,
    is_target_name,
)
from tether.vault.spec_checks import (
    check_base_url,
    check_host,
    check_known_hosts,
    check_pem_bundle,
    check_ssh_public_key,
    check_token_url,
)
from tether.vault.target_input import TargetInputError, parse_credential, spec_from_document
from tether.vault.target_specs import (
    HttpTargetSpec,
    PostgresTargetSpec,
    SpecError,
    SshTargetSpec,
    TargetSpec,
    parse_spec,
    secret_names,
)

SOME = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAME_CHARS = st.sampled_from("aZ09._/-:@ \x00\n%T")
name_like = st.text(NAME_CHARS, max_size=140) | st.text(max_size=40)
json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
json_data = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
VALID: dict[str, dict[str, Any]] = {
    "http": {
        "base_url": "https://api.example.com/v1",
        "credential": {"type": "header", "secret": "s", "header_name": "X-Key"},
    },
    "ssh": {
        "host": "h.example",
        "users": ["deploy"],
        "known_hosts": f"h.example {KEY}\n",
        "credential": {"type": "private_key", "secret": "k"},
    },
    "postgres": {
        "host": "10.0.0.1",
        "database": "app",
        "credential": {
            "type": "dynamic",
            "admin_username": "admin",
            "admin_secret": "pg/admin",
            "parent_role": "readers",
        },
    },
}
FIELDS = {
    "http": list(HttpTargetSpec.model_fields),
    "ssh": list(SshTargetSpec.model_fields),
    "postgres": list(PostgresTargetSpec.model_fields),
}


def invariants(spec: TargetSpec, data: Any) -> None:
    """What holds of every accepted spec, whatever the input."""
    assert parse_spec(_kind(spec), spec.model_dump(mode="json")) == spec  # stable round trip
    for name in secret_names(spec):
        assert is_secret_name(name) and not is_reserved(name)
    if isinstance(spec, HttpTargetSpec):
        parts = urlsplit(spec.base_url)
        assert parts.scheme in ("http", "https") and "@" not in parts.netloc
        assert not parts.query and not parts.fragment
        if not spec.tls_verify:  # verification is off only when the input said so, literally
            assert isinstance(data, dict) and data.get("tls_verify") is False
    if isinstance(spec, SshTargetSpec):
        assert spec.known_hosts is not None or spec.host_ca is not None
        assert spec.users and all(not user.startswith("-") for user in spec.users)
    if isinstance(spec, PostgresTargetSpec) and spec.tls_mode != "verify-full":
        assert isinstance(data, dict) and data.get("tls_mode") == spec.tls_mode


def _kind(spec: TargetSpec) -> str:
    return {HttpTargetSpec: "http", SshTargetSpec: "ssh", PostgresTargetSpec: "postgres"}[
        type(spec)
    ]


# --- names --------------------------------------------------------------------------------


@SOME
@given(name_like)
def test_secret_names(text: str) -> None:
    try:
        accepted = check_secret_name(text)
    except InvalidName:
        accepted = None
    if accepted is not None:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}", accepted)
        assert all(segment not in ("", ".", "..") for segment in accepted.split("/"))
        assert not accepted.lower().startswith("tether/")
    assert is_secret_name(text) == (
        accepted is not None or (is_reserved(text) and is_secret_name(text))
    )


@SOME
@given(st.text(st.sampled_from("az09-A_."), max_size=70) | st.text(max_size=20))
def test_target_names(text: str) -> None:
    try:
        check_target_name(text)
    except InvalidName:
        assert not is_target_name(text)
        return
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", text) and len(text) <= 63


@SOME
@given(st.dictionaries(st.text(max_size=70), st.text(max_size=300), max_size=70))
def test_labels(labels: dict[str, str]) -> None:
    try:
        checked = check_labels(labels)
    except InvalidName:
        return
    assert len(checked) <= 64 and all(len(v) <= 256 for v in checked.values())


# --- specs --------------------------------------------------------------------------------


@SOME
@given(st.sampled_from(["http", "ssh", "postgres", "ftp"]), json_data)
def test_arbitrary_data_never_crashes(kind: str, data: Any) -> None:
    try:
        spec = parse_spec(kind, data)
    except SpecError:
        return
    invariants(spec, data)


@SOME
@given(st.sampled_from(["http", "ssh", "postgres"]), st.data())
def test_mutated_valid_specs(kind: str, draw: st.DataObject) -> None:
    data = json.loads(json.dumps(VALID[kind]))
    for _ in range(draw.draw(st.integers(1, 3))):
        key = draw.draw(st.sampled_from([*FIELDS[kind], "credential.type", "extra"]))
        value = draw.draw(json_data | st.sampled_from(["tether/x", "http://a@b", "-oX", "a\nb"]))
        if key.startswith("credential."):
            credential = data["credential"] if isinstance(data["credential"], dict) else {}
            data["credential"] = {**credential, key.split(".")[1]: value}
        else:
            data[key] = value
    try:
        spec = parse_spec(kind, data)
    except SpecError as error:
        assert str(error).startswith("spec")
        return
    invariants(spec, data)


@FEW
@given(st.text(max_size=300) | st.text(st.sampled_from("ab:/@?#[]%. \t\n0-"), max_size=60))
def test_value_checks_are_total(text: str) -> None:
    for check in (
        check_base_url,
        check_token_url,
        check_host,
        check_pem_bundle,
        check_ssh_public_key,
        check_known_hosts,
    ):
        with contextlib.suppress(ValueError):
            check(text)


@SOME
@given(st.sampled_from(["http", "ssh", "postgres", "x"]), st.text(max_size=60))
def test_credential_shorthand(kind: str, text: str) -> None:
    try:
        credential = parse_credential(kind, text)
    except TargetInputError:
        return
    assert credential["type"] == text.split(":")[0]
    assert all(value != "" for value in credential.values())


@FEW
@given(st.text(max_size=200) | json_data.map(json.dumps))
def test_target_documents(text: str) -> None:
    def no_files(path: Path) -> str:
        raise TargetInputError(f"cannot read {path}")

    try:
        kind, spec, labels = spec_from_document(text, name="t", base=Path(), read_text=no_files)
    except TargetInputError:
        return
    assert kind in ("http", "ssh", "postgres")
    assert labels is None or all(isinstance(v, str) for v in labels.values())
    with contextlib.suppress(SpecError):
        parse_spec(kind, spec)


# --- cache --------------------------------------------------------------------------------


@SOME
@given(
    st.lists(
        st.tuples(st.sampled_from(["get", "put", "invalidate", "tick"]), st.integers(0, 3)),
        max_size=40,
    )
)
def test_cache_never_serves_stale_or_invalidated(steps: list[tuple[str, int]]) -> None:
    now = [0.0]
    cache: TtlCache[int] = TtlCache(1.0, clock=lambda: now[0], max_entries=2)
    truth: dict[str, tuple[int, float]] = {}  # what was put, and when
    version = 0
    for op, which in steps:
        name = f"n{which}"
        if op == "tick":
            now[0] += which * 0.4
        elif op == "put":
            version += 1
            cache.put(name, version, cache.generation)
            truth[name] = (version, now[0])
        elif op == "invalidate":
            cache.invalidate(name)
            truth.pop(name, None)
        else:
            hit, value = cache.get(name)
            if hit:
                assert name in truth and truth[name][0] == value
                assert now[0] - truth[name][1] < 1.0
