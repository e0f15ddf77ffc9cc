"""Strict JSON reading for policy requests (the decide API and ``tether policy eval``).

Stricter than :func:`json.loads` on purpose: a request is a security decision's input, so
anything two readers could understand differently is refused rather than guessed at —
invalid UTF-8, duplicate object keys (RFC 7493), and ``NaN``/``Infinity`` (not JSON at all).
"""

from __future__ import annotations

import json
from typing import Any

from tether.policy import Decision, PolicySet
from tether.policy.model import DENY, INVALID_REQUEST


class JsonInputError(ValueError):
    """Input that is not acceptable JSON; says why and where, without echoing the input."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        self.problem = problem
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return self.problem
        column = f" column {self.column}" if self.column is not None else ""
        return f"{self.problem} (line {self.line}{column})"

    def on_line(self, line: int) -> JsonInputError:
        """The same error, for input that was line ``line`` of a larger input."""
        return JsonInputError(self.problem, line, self.column)


def parse_json(data: bytes | str) -> Any:
    """The JSON value in ``data``; raises :class:`JsonInputError`."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise JsonInputError(f"not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise JsonInputError(f"not JSON: {error.msg}", error.lineno, error.colno) from None
    except RecursionError:
        raise JsonInputError("not JSON: nested too deeply") from None
    except ValueError as error:  # duplicate key, constant, or an integer too long to convert
        raise JsonInputError(str(error)) from None


def invalid_request(policy_set: PolicySet, detail: str) -> Decision:
    """The contract's answer to a request that could not even be read: deny, invalid-request."""
    return Decision(
        decision=DENY,
        rule=None,
        reason=INVALID_REQUEST,
        detail=detail,
        policy_version=policy_set.version,
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name} is not a JSON value")
