"""CEL ``when`` conditions (spec section 6), compiled at load, failing closed at run time.

A condition is checked at load for syntax, for the variables it names (only
those of spec 6) and for the functions it calls (CEL's standard functions and
macros): a typo is a load error, not a runtime surprise. At run time anything
but a boolean result (an error, a missing field, a wrong type, a non-boolean)
is reported as :data:`ERROR`; the engine then treats an allow rule as not
matching and a deny rule as matching.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Final

from tether.policy.errors import PatternError

VARIABLES: Final = frozenset(
    {"agent", "runtime", "delegation", "task", "target", "source_ip", "time", "request"}
)

# CEL's standard functions and macros as implemented by the `cel` engine. Operators
# are reported by the compiler as names like ``_==_``, ``!_`` or ``@in``.
FUNCTIONS: Final = frozenset(
    {
        "has", "all", "exists", "exists_one", "map", "filter",
        "int", "uint", "double", "string", "bytes", "bool", "timestamp", "duration", "dyn",
        "type", "size", "contains", "startsWith", "endsWith", "matches",
        "getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate",
        "getDayOfWeek", "getHours", "getMinutes", "getSeconds", "getMilliseconds",
        "max", "min",
    }
)  # fmt: skip

ERROR: Final = object()

# The timestamp accessors. CEL also defines them with a time-zone argument
# (``time.getHours("Europe/Paris")``), which the ``cel`` engine does not implement: every
# evaluation of such a call errs, so it is refused at load rather than failing at run time.
_TIME_ACCESSORS: Final = (
    "getFullYear|getMonth|getDayOfYear|getDayOfMonth|getDate|getDayOfWeek"
    "|getHours|getMinutes|getSeconds|getMilliseconds"
)
_ZONED_ACCESSOR: Final = re.compile(rf"\.\s*({_TIME_ACCESSORS})\s*\(\s*[^\s)]")
# CEL string and bytes literals (any quoting, optional r/b prefixes), blanked before looking
# for calls so that text inside a string is never taken for one.
_STRING_LITERAL: Final = re.compile(
    # raw: a backslash is an ordinary character
    r"(?:[rR][bB]?|[bB][rR])(?:'''.*?'''"
    r'|""".*?"""'
    r"|'[^'\n]*'"
    r'|"[^"\n]*")'
    # cooked: a backslash escapes the next character
    r"|[bB]?(?:'''(?:\\.|[^\\])*?'''"
    r'|"""(?:\\.|[^\\])*?"""'
    r"|'(?:\\.|[^'\\\n])*'"
    r'|"(?:\\.|[^"\\\n])*")',
    re.DOTALL,
)

# Comprehension macros bind a variable: ``list.all(x, x > 0)``.
_MACRO_BINDING: Final = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,"
)


def _cel() -> Any:
    """The ``cel`` module, imported on first use: importing it costs ~0.4 s (it pulls in its
    own command line), which every ``tether`` command would otherwise pay at start-up."""
    return importlib.import_module("cel")


def _is_operator(name: str) -> bool:
    return name.startswith(("_", "@", "!", "-")) or name in {"in"}


@dataclass(frozen=True, slots=True)
class Condition:
    source: str
    program: Any
    uses_time: bool

    @classmethod
    def compile(cls, source: str) -> Condition:
        if not isinstance(source, str) or not source.strip():
            raise PatternError("'when' must be a non-empty CEL expression")
        try:
            program = _cel().compile(source)
            variables = set(program.variables())
            functions = set(program.functions())
        except (ValueError, RuntimeError) as error:
            raise PatternError(f"CEL does not compile: {_first_line(error)}") from None
        unknown = variables - VARIABLES - set(_MACRO_BINDING.findall(source))
        if unknown:
            raise PatternError(
                f"CEL names unknown variable(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(VARIABLES))})"
            )
        unknown = {f for f in functions if not _is_operator(f)} - FUNCTIONS
        if unknown:
            raise PatternError(f"CEL calls unknown function(s) {', '.join(sorted(unknown))}")
        if "-_" in functions:  # the engine wraps -(-2**63) instead of failing: closed here
            raise PatternError("CEL: negate a value with 0 - x (unary minus wraps on overflow)")
        zoned = _ZONED_ACCESSOR.search(_STRING_LITERAL.sub('""', source))
        if zoned is not None:
            raise PatternError(
                f"CEL: {zoned.group(1)}() with a time zone is not supported "
                "(time is in UTC: compare UTC hours, or shift time by a duration)"
            )
        return cls(source, program, "time" in variables)

    def evaluate(self, context: dict[str, Any]) -> object:
        """``True``/``False``, or :data:`ERROR` for anything else (never raises)."""
        try:
            result = self.program.execute(context)
        except Exception:  # noqa: BLE001 - every evaluation failure fails closed
            return ERROR
        if result is True or result is False:
            return result
        return ERROR


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
