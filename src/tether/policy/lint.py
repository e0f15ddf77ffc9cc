"""``tether policy check``: findings about a policy set that loaded (spec section 7).

Lint is advice about a set that is already valid. It reports:

* ``unreachable`` — a rule that can never match (a human rule with
  ``on_behalf_of: none``: human rules only apply to delegated requests).
* ``shadowed`` — an allow rule that a deny rule without ``when`` always
  overrides (judged conservatively, from the rules' written patterns: a finding
  is certain, silence is not proof of reachability).
* ``arbitrary-code`` — an allow rule that lets a wrapper which runs arbitrary
  code (``sh``, ``bash``, ``env``, ``xargs``, ``find``, ``sudo``, interpreters...)
  take open arguments: it allows every command, whatever the other rules say.
* ``allows-everything`` — an HTTP allow rule over every method and path without
  a target, subject or condition.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.policy.engine import PolicySet
from tether.policy.rules import HUMAN, Rule

WRAPPERS = frozenset(
    {
        "sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox",
        "env", "xargs", "find", "sudo", "su", "doas", "pkexec", "runuser", "chroot", "nsenter",
        "nice", "nohup", "timeout", "time", "watch", "setsid", "stdbuf", "ionice", "taskset",
        "strace", "ltrace", "gdb", "script", "flock", "parallel", "ssh", "eval", "exec", "command",
        "builtin", "trap", "source", ".", "emulate", "zmodload", "hash", "enable",
        "python", "python2", "python3", "perl", "ruby", "node", "nodejs", "php", "lua", "tclsh",
        "awk", "gawk", "mawk", "nawk", "sed", "vim", "vi", "less", "more", "man", "git",
        "make", "docker", "kubectl", "psql", "mysql", "sqlite3", "rsync", "tar", "ansible",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LintFinding:
    severity: str  # "warning" | "error"
    code: str
    rule: str
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity}: {self.code}: rule {self.rule!r}: " + (
            self.message
        )


def lint(policy_set: PolicySet) -> list[LintFinding]:
    findings: list[LintFinding] = []
    denies = [r for r in policy_set.rules if r.deny and r.when is None]
    for rule in policy_set.rules:
        findings.extend(_unreachable(rule))
        findings.extend(_arbitrary_code(rule))
        findings.extend(_allows_everything(rule))
        if not rule.deny:
            shadow = next((d for d in denies if d.kind == rule.kind and _covers(d, rule)), None)
            if shadow is not None:
                findings.append(
                    _finding(
                        rule,
                        "warning",
                        "shadowed",
                        f"always overridden by deny rule "
                        f"{shadow.id!r} ({shadow.file}:{shadow.line})",
                    )
                )
    return findings


def _finding(rule: Rule, severity: str, code: str, message: str) -> LintFinding:
    return LintFinding(severity, code, rule.id, rule.file, rule.line, message)


def _unreachable(rule: Rule) -> list[LintFinding]:
    if rule.subject == HUMAN and rule.on_behalf_of.mode == "none":
        return [
            _finding(
                rule, "warning", "unreachable",
                "a rule for humans only applies to delegated requests; on_behalf_of: none "
                "excludes them",
            )
        ]  # fmt: skip
    return []


def _arbitrary_code(rule: Rule) -> list[LintFinding]:
    if rule.deny or rule.kind != "ssh":
        return []
    out = []
    for pattern in _list(rule.source["ssh"], "commands"):
        try:
            words = shlex.split(pattern)
        except ValueError:
            continue
        name = words[0].rsplit("/", 1)[-1] if words else ""
        base = name.rstrip("0123456789.")
        open_args = any(("*" in w or "?" in w) for w in words[1:])
        if (name in WRAPPERS or base in WRAPPERS) and open_args:
            out.append(
                _finding(
                    rule, "warning", "arbitrary-code",
                    f"{pattern!r}: {name} runs arbitrary code and its arguments are open",
                )
            )  # fmt: skip
    return out


def _allows_everything(rule: Rule) -> list[LintFinding]:
    if rule.deny or rule.kind != "http" or rule.when is not None:
        return []
    body = rule.source["http"]
    if (
        "*" in _list(body, "methods")
        and "/**" in _list(body, "paths")
        and rule.targets is None
        and rule.subject == "any"
    ):
        return [_finding(rule, "warning", "allows-everything", "any method, any path, anyone")]
    return []


# --- coverage (deny rule d always overrides allow rule a) --------------------------------------


def _covers(d: Rule, a: Rule) -> bool:
    return (
        _subject_covers(d, a)
        and _selector_covers(d.source.get("runtimes"), a.source.get("runtimes"))
        and _selector_covers(d.source.get("targets"), a.source.get("targets"))
        and d.on_behalf_of.mode == "any"
        and _ACTION_COVERS[a.kind](d.source[d.kind], a.source[a.kind])
    )


def _subject_covers(d: Rule, a: Rule) -> bool:
    if d.subject == "any":
        return True
    if d.subject != a.subject:
        return False
    return all(
        _selector_covers(d.source.get(k), a.source.get(k)) for k in ("agents", "users", "groups")
    )


def _selector_covers(deny: Any, allow: Any) -> bool:
    if deny is None:
        return True
    if allow is None:
        return False
    if isinstance(deny, list) and isinstance(allow, list):
        return "*" in deny or set(allow) <= set(deny)
    if isinstance(deny, Mapping) and isinstance(allow, Mapping):
        dl, al = deny.get("labels", {}), allow.get("labels", {})
        return all(k in al and (v == "*" or v == al[k]) for k, v in dl.items())
    return False


def _list(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    return value if isinstance(value, list) else []


def _patterns_cover(deny: list[str], allow: list[str], catch_all: set[str]) -> bool:
    return bool(catch_all & set(deny)) or set(allow) <= set(deny)


def _http_covers(d: Mapping[str, Any], a: Mapping[str, Any]) -> bool:
    methods = "*" in _list(d, "methods") or set(_list(a, "methods")) <= set(_list(d, "methods"))
    return methods and _patterns_cover(_list(d, "paths"), _list(a, "paths"), {"/**"})


def _ssh_covers(d: Mapping[str, Any], a: Mapping[str, Any]) -> bool:
    deny_cmds = _list(d, "commands")
    catch_all = {f"{c.split()[0]} **" for c in _list(a, "commands") if c.split()}
    commands = (
        all(
            c in deny_cmds or f"{c.split()[0]} **" in deny_cmds
            for c in _list(a, "commands")
            if c.split()
        )
        if catch_all
        else True
    )
    shell = not a.get("shell", False) or d.get("shell", False)
    forwards = _patterns_cover(_list(d, "forwards"), _list(a, "forwards"), {"*"})
    return commands and shell and forwards


def _sql_covers(d: Mapping[str, Any], a: Mapping[str, Any]) -> bool:
    statements = "*" in _list(d, "statements") or set(_list(a, "statements")) <= set(
        _list(d, "statements")
    )
    return statements and "tables" not in d and "functions" not in d


def _mcp_covers(d: Mapping[str, Any], a: Mapping[str, Any]) -> bool:
    return _patterns_cover(_list(d, "tools"), _list(a, "tools"), {"*"}) and _patterns_cover(
        _list(d, "resources"), _list(a, "resources"), {"**"}
    )


def _files_covers(d: Mapping[str, Any], a: Mapping[str, Any]) -> bool:
    return all(_patterns_cover(_list(d, op), _list(a, op), {"/**"}) for op in a)


_ACTION_COVERS = {
    "http": _http_covers,
    "ssh": _ssh_covers,
    "sql": _sql_covers,
    "mcp": _mcp_covers,
    "files": _files_covers,
}
