"""The shapes of the identifiers Tether writes into credentials.

An agent id ends up in an SSH certificate's key id (``agent=<id> task=<task> jti=<jti>``,
logged by every ``sshd``), in a SPIFFE ID path segment and in audit events; a task id in the
key id too. Both are therefore plain identifiers: no white space (which would let a task id
forge a ``jti=`` field in the key id), no ``=``, nothing a log or a URI would have to escape.
Human text belongs in an agent's ``purpose`` or a task's ``purpose``, which are free.
"""

from __future__ import annotations

import re
from typing import Final

#: An agent id: also a SPIFFE path segment (``[A-Za-z0-9._-]``), starting with a letter or digit.
AGENT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
AGENT_ID_TEXT: Final = "1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"

#: A task id: what an SSH certificate's key id accepts (``[A-Za-z0-9._:@/+-]``).
TASK_ID: Final = re.compile(r"[A-Za-z0-9._:@/+-]{1,128}")
TASK_ID_TEXT: Final = "1-128 characters of A-Z a-z 0-9 . _ : @ / + -"


def is_agent_id(value: object) -> bool:
    """Whether ``value`` is a well-formed agent id."""
    return isinstance(value, str) and AGENT_ID.fullmatch(value) is not None


def is_task_id(value: object) -> bool:
    """Whether ``value`` is a well-formed task id."""
    return isinstance(value, str) and TASK_ID.fullmatch(value) is not None
