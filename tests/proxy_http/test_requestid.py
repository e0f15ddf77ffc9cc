"""Request ids: 16 hex digits, never repeated, across buffer refills and forks."""

from __future__ import annotations

import os
import re

from tether.proxy.http.requestid import RequestIds


def test_ids_are_hex_and_distinct_across_refills() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(3 * 512 + 7)]  # three refills and a partial one
    assert all(re.fullmatch(r"[0-9a-f]{16}", one) for one in made)
    assert len(set(made)) == len(made)


def test_two_generators_do_not_share_bytes() -> None:
    first, second = RequestIds(), RequestIds()
    assert {first.new() for _ in range(600)}.isdisjoint({second.new() for _ in range(600)})


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    ids = RequestIds()
    ids.new()  # the buffer is filled: without the fork hook the child would continue it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit at once
        try:
            os.write(write, " ".join(ids.new() for _ in range(20)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {ids.new() for _ in range(20)}
    assert len(child) == 20
    assert child.isdisjoint(parent)
