"""Regression: inputs that crashed tree-sitter-bash's scanner (a segfault, not an error).

Each check runs in a child process, so a regression fails this test instead of killing
the whole test run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CRASHERS = [
    "{\U000d02c3",
    "\xf5\x1cg\x87{\U000d02c3",
    "ls {\U0001f600",
    "echo '{\U0001f600' {\U00010000",
]

CHILD = """
import sys
from tether.policy import parse_command
from tether.policy.errors import ShellConstruct
for command in sys.argv[1:]:
    try:
        parse_command(command)
    except ShellConstruct:
        pass
print("survived")
"""


@pytest.mark.parametrize("command", CRASHERS)
def test_scanner_crashers_are_handled(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, command], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "survived"


def test_random_non_bmp_text_never_crashes() -> None:
    fuzz = """
import random
from tether.policy import parse_command
from tether.policy.errors import ShellConstruct
rng = random.Random(1)
alphabet = list("{}()$'\\";|&<> ab\\n\\t*~=") + [chr(c) for c in (0x80, 0xf5, 0xd02c3,
    0x10000, 0x1f600, 0x10ffff, 0x2028, 0xa0, 0x30000)]
for _ in range(20000):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
    try:
        parse_command(text)
    except ShellConstruct:
        pass
print("survived")
"""
    done = subprocess.run([sys.executable, "-c", fuzz], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "survived"
