"""Errors of the policy package.

::

    PolicyError
    ├── PolicyLoadError      a policy set that cannot be loaded (file, rule id, line)
    ├── PatternError         a bad glob or pattern, raised while compiling a rule
    └── RequestError         a request that cannot be decided; carries its deny reason
        ├── InvalidRequest   reason ``invalid-request``
        ├── AmbiguousPath    reason ``ambiguous-path``   (spec 5.1, 5.5)
        ├── ShellConstruct   reason ``shell-construct``  (spec 5.2)
        └── SqlParseError    reason ``sql-parse-error``  (spec 5.3)

A ``RequestError`` never escapes the engine: ``decide`` turns it into a deny
with the error's reason and detail.
"""

from __future__ import annotations


class PolicyError(Exception):
    """Base of every error raised by the policy package."""


class PolicyLoadError(PolicyError):
    """A policy set did not load; names the file, the rule id and the line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        rule: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.rule = rule
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<policies>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        if self.rule is not None:
            where = f"{where}: rule {self.rule!r}"
        return f"{where}: {self.message}"


class PatternError(PolicyError, ValueError):
    """A glob, path pattern or command pattern that does not compile."""


class RequestError(PolicyError):
    """A request (or one part of it) that cannot be decided: it is denied with ``reason``."""

    reason = "invalid-request"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class InvalidRequest(RequestError):
    reason = "invalid-request"


class AmbiguousPath(RequestError):
    reason = "ambiguous-path"


class ShellConstruct(RequestError):
    reason = "shell-construct"


class SqlParseError(RequestError):
    reason = "sql-parse-error"
