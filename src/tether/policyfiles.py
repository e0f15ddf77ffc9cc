"""Reading a policy directory from disk, so that the policy package itself stays pure.

A policy directory holds ``*.yaml`` and ``*.yml`` files, found recursively and read in the
lexical order of their paths relative to the directory (``a.yaml`` < ``b/c.yaml`` < ``d.yaml``);
that relative path is the file's name in every error message. Names starting with ``.`` are
skipped, files and directories alike: editors' temporary files, ``.git``, and the ``..data``
directory behind a Kubernetes ConfigMap mount (whose visible files are symlinks, which are
followed). Symlinked directories are followed too, except one that leads back to a directory
being read (a cycle, which would never end); they were skipped, and with them, silently, the
deny rules of a team's directory linked in. A file named ``*.YAML`` or ``*.Yml`` is a load
error rather than silently left out: its author meant it to be read.

A directory with no policy file is an error rather than an empty policy set: it is almost always
a wrong path, and an empty set would deny everything without saying why. A policy file (or
the target of its link) that is not a regular file is a load error: a named pipe blocked the
read for ever (a node never started, a reload never ended and no later one ran) and a link
to a device such as ``/dev/zero`` read without end.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from tether.policy import PolicySet, PolicySource, load_policies
from tether.policy.errors import PolicyLoadError

POLICY_SUFFIXES: Final = frozenset({".yaml", ".yml"})


def is_policy_file(relative: Path) -> bool:
    """Whether a path (relative to the policy directory) names a policy file that is read."""
    hidden = any(part.startswith(".") for part in relative.parts)
    return not hidden and relative.suffix in POLICY_SUFFIXES


def read_policy_dir(path: Path) -> list[PolicySource]:
    """The policy files under ``path`` in lexical order; raises :class:`PolicyLoadError`."""
    if not path.exists():
        raise PolicyLoadError("policy directory not found", file=str(path))
    if not path.is_dir():
        raise PolicyLoadError("not a directory", file=str(path))
    files = sorted(
        _policy_files(path, path, frozenset({path.resolve()})),
        key=lambda file: file.relative_to(path).as_posix(),
    )
    if not files:
        raise PolicyLoadError("no policy files (*.yaml, *.yml) in the directory", file=str(path))
    return [_read_source(file, file.relative_to(path).as_posix()) for file in files]


def load_policy_dir(path: Path) -> PolicySet:
    """The policy set of a directory: :func:`read_policy_dir` then ``load_policies``."""
    return load_policies(read_policy_dir(path))


def _policy_files(directory: Path, root: Path, reading: frozenset[Path]) -> list[Path]:
    """The policy files under ``directory``; ``reading`` holds the real paths of the
    directories being read (``directory`` and its ancestors), so a link cycle is cut."""
    try:
        entries = list(directory.iterdir())
    except OSError as error:
        raise PolicyLoadError(_os_message(error), file=str(directory)) from None
    found: list[Path] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        relative = entry.relative_to(root)
        if entry.is_dir():
            real = entry.resolve()
            if real not in reading:
                found.extend(_policy_files(entry, root, reading | {real}))
        elif is_policy_file(relative):
            found.append(entry)
        elif relative.suffix.lower() in POLICY_SUFFIXES:
            raise PolicyLoadError(
                "not read: policy files are named *.yaml or *.yml, in lower case",
                file=relative.as_posix(),
            )
    return found


def _read_source(file: Path, name: str) -> PolicySource:
    try:
        data = _read_regular(file)
    except OSError as error:
        raise PolicyLoadError(_os_message(error), file=name) from None
    if data is None:
        raise PolicyLoadError("not a regular file", file=name)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        byte = data[error.start]
        raise PolicyLoadError(
            f"not valid UTF-8 (byte 0x{byte:02x})", file=name, line=line
        ) from None
    return PolicySource(name=name, text=text)


def _read_regular(file: Path) -> bytes | None:
    """The bytes of ``file``, or None when it is not a regular file. Opened without blocking
    (a named pipe would wait for a writer) and checked on the open file, so a file swapped
    for a pipe between a check and the open is caught too."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read()


def _os_message(error: OSError) -> str:
    return f"cannot read: {(error.strerror or str(error)).lower()}"
