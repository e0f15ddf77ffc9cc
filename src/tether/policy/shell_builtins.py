"""Shell builtins that evaluate their literal arguments as code, for :mod:`tether.policy.shell`.

Quoting every word (the canonical text) stops the target's shell from expanding the command
line, but some builtins of bash and zsh expand a word themselves: a variable **name** with an
array subscript, ``a[...]``, has its subscript expanded and evaluated as arithmetic, command
substitution included, and arithmetic reads a variable's value as an expression again. So,
quoted or not::

    printf -v 'a[$(id)]' x       test -v 'a[$(id)]'       [ -v 'a[$(id)]' ]      (bash)
    read 'a[$(id)]'              wait -n -p 'a[$(id)]'    'declare' 'a[$(id)]=1'
    let 'a[$(id)]'               read b; let b            'typeset' -i x=b
    print -v 'a[$(id)]' x        zparseopts 'a=a[$(id)]'  zformat -f 'a[$(id)]' x (zsh)

each run ``id`` (``read b`` with ``a[$(id)]`` on standard input; bash 5.2, zsh 5.9). The
policy judged ``printf``, ``test`` or ``read``; the target would run anything. Denied here,
as ``shell-construct`` like the constructs they stand for (arithmetic, assignments):

* ``let``, and zsh's ``integer`` and ``float`` (arithmetic evaluation of their arguments);
* ``declare``, ``typeset``, ``local``, ``private`` with an integer attribute (an option
  holding ``i``: every later assignment to the variable is evaluated) or any argument
  holding ``[``;
* a name holding ``[`` given to ``printf -v``, and for zsh's ``print`` any argument holding
  ``[`` once an option holds ``v``;
* any argument holding ``[`` for the builtins that take a variable name among their
  arguments: ``read`` (bash and zsh read their options differently), ``test`` and ``[``
  (their ``-v`` operand), ``wait`` (``-p``), ``export``, ``readonly``, ``unset`` (older
  bash evaluated its subscripts too), ``mapfile``, ``readarray``, ``getopts``, and zsh's
  ``zparseopts``, ``zstyle``, ``zformat``, ``strftime``, ``getln``, ``zregexparse``,
  ``zstat``, ``sysread`` and ``vared``. Their other operands are not told apart from the
  name: a safe over-approximation (``read -p '[y/n]' x`` is denied too).

A shell finds a builtin by its bare name only (``/usr/bin/printf`` is another program, with
no ``-v``), so the command name is compared exactly, after any ``builtin`` or ``command``
prefix (and its options) that would still run the builtin; ``exec``, ``env`` and other
programs run the external command. Builtins that run code by design (``eval``, ``trap``,
``source``, ``emulate -c``, ``zmodload`` ...) are left to the rules, and ``tether policy
check`` warns when one is allowed with open arguments. These checks come on top of the
policy: a rule still has to allow the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tether.policy.errors import ShellConstruct

_PREFIXES: Final = frozenset({"builtin", "command"})
_ARITHMETIC: Final = frozenset({"let", "integer", "float"})
_DECLARATIONS: Final = frozenset({"declare", "typeset", "local", "private"})
_ANY_SUBSCRIPT: Final = frozenset(
    {
        "read", "test", "[", "wait", "export", "readonly", "unset", "mapfile", "readarray",
        "getopts", "zparseopts", "zstyle", "zformat", "strftime", "getln", "zregexparse",
        "zstat", "sysread", "vared",
    }
)  # fmt: skip


def check_builtin(argv: Sequence[str]) -> None:
    """Raise :class:`ShellConstruct` if a builtin would evaluate a word of ``argv`` as code."""
    name, args = _builtin(argv)
    detail = f"the shell evaluates an argument of {name!r} as code"
    if name in _ARITHMETIC:
        raise ShellConstruct(f"arithmetic command {name!r}")
    if name in _DECLARATIONS:
        if any(a[:1] in "-+" and "i" in a for a in args) or _subscript(args):
            raise ShellConstruct(detail + " (integer attribute or array subscript)")
    elif name in _ANY_SUBSCRIPT:
        if _subscript(args):
            raise ShellConstruct(detail + " (array subscript)")
    elif name == "printf":
        if _subscript(_printf_names(args)):
            raise ShellConstruct(detail + " (array subscript in the name of -v)")
    elif name == "print" and _subscript(args) and any(_print_v(args)):
        raise ShellConstruct(detail + " (array subscript with -v)")


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


def _print_v(args: Sequence[str]) -> list[bool]:
    """For each of zsh ``print``'s leading option words: does it hold ``v``?"""
    flags: list[bool] = []
    for arg in args:
        if arg in ("-", "--") or not arg.startswith("-"):
            break
        flags.append("v" in arg)
    return flags
