"""Shell builtins that evaluate their literal arguments as code, for :mod:`tether.policy.shell`.

Quoting every word (the canonical text) stops the target's shell from expanding the command
line, but a few bash builtins expand a word themselves: a variable **name** with an array
subscript, ``a[...]``, has its subscript expanded and evaluated as arithmetic, command
substitution included, and arithmetic reads a variable's value as an expression again. So,
quoted or not, in bash 5.2::

    printf -v 'a[$(id)]' x       test -v 'a[$(id)]'       [ -v 'a[$(id)]' ]
    read 'a[$(id)]'              wait -n -p 'a[$(id)]'    'declare' 'a[$(id)]=1'
    let 'a[$(id)]'               read b; let b            'typeset' -i x=b

each run ``id`` (the last two with ``a[$(id)]`` on standard input). The policy judged
``printf``, ``test`` or ``read``; the target would run anything. Denied here, as
``shell-construct`` like the constructs they stand for (arithmetic, assignments):

* ``let`` (arithmetic evaluation of every argument);
* ``declare``, ``typeset``, ``local`` with an integer attribute (an option holding ``i``:
  every later assignment to the variable is evaluated, ``read`` included) or any argument
  holding ``[``;
* a name holding ``[`` given to ``printf -v``, ``read`` (its operands and ``-a``);
* any argument holding ``[`` for ``test`` and ``[`` (their ``-v`` operand; other operands
  are not told apart from it, a safe over-approximation), ``wait`` (``-p``), ``export``,
  ``readonly``, ``unset`` (older bash evaluated its subscripts too), ``mapfile``,
  ``readarray`` and ``getopts``.

bash finds a builtin by its bare name only (``/usr/bin/printf`` is another program, with no
``-v``), so the command name is compared exactly, after any ``builtin`` or ``command``
prefix (and its options) that would still run the builtin. A path-like name or ``exec``,
``env`` and other programs run the external command. These checks come on top of the
policy: a rule still has to allow the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tether.policy.errors import ShellConstruct

_PREFIXES: Final = frozenset({"builtin", "command"})
_DECLARATIONS: Final = frozenset({"declare", "typeset", "local"})
_ANY_SUBSCRIPT: Final = frozenset(
    {"test", "[", "wait", "export", "readonly", "unset", "mapfile", "readarray", "getopts"}
)
# Options of bash's `read` that take a value (getopt string "ersa:d:i:n:N:p:t:u:"); the
# value of `-a` is a name, the others are text or numbers.
_READ_VALUED: Final = frozenset("adinNptu")


def check_builtin(argv: Sequence[str]) -> None:
    """Raise :class:`ShellConstruct` if a builtin would evaluate a word of ``argv`` as code."""
    name, args = _builtin(argv)
    detail = f"bash evaluates an argument of {name!r} as code"
    if name == "let":
        raise ShellConstruct("arithmetic command 'let'")
    if name in _DECLARATIONS:
        if any(a[:1] in "-+" and "i" in a for a in args) or _subscript(args):
            raise ShellConstruct(detail + " (integer attribute or array subscript)")
    elif name in _ANY_SUBSCRIPT:
        if _subscript(args):
            raise ShellConstruct(detail + " (array subscript)")
    elif name == "printf":
        if _subscript(_printf_names(args)):
            raise ShellConstruct(detail + " (array subscript in the name of -v)")
    elif name == "read" and _subscript(_read_names(args)):
        raise ShellConstruct(detail + " (array subscript in a name)")


def _builtin(argv: Sequence[str]) -> tuple[str, Sequence[str]]:
    """The builtin ``argv`` runs and its arguments, past ``builtin`` and ``command``."""
    index = 0
    while index < len(argv) - 1 and argv[index] in _PREFIXES:
        index += 1
        while index < len(argv) - 1 and argv[index].startswith("-"):
            index += 1
            if argv[index - 1] == "--":
                break
    return argv[index], argv[index + 1 :]


def _subscript(words: Sequence[str]) -> bool:
    return any("[" in word for word in words)


def _printf_names(args: Sequence[str]) -> list[str]:
    """The operand of ``-v`` (``-v NAME`` or ``-vNAME``) among printf's leading options."""
    names: list[str] = []
    index = 0
    while index < len(args) and args[index].startswith("-") and args[index] != "-":
        arg = args[index]
        if arg == "--":
            break
        if arg.startswith("-v"):
            if len(arg) > 2:
                names.append(arg[2:])
            elif index + 1 < len(args):
                index += 1
                names.append(args[index])
        index += 1
    return names


def _read_names(args: Sequence[str]) -> list[str]:
    """The variable names ``read`` assigns: its operands and the value of ``-a``."""
    names: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            index -= 1
            break
        for position, letter in enumerate(arg[1:], start=2):
            if letter in _READ_VALUED:
                value = arg[position:]
                if not value and index < len(args):
                    value = args[index]
                    index += 1
                if letter == "a":
                    names.append(value)
                break
    return names + list(args[index:])
