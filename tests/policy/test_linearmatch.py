"""The globs' regular expressions are matched without backtracking (tether.policy.linearmatch).

Python's ``re`` takes O(n^k) steps for a pattern with k wildcards on a subject that almost
matches; the subject is the agent's. The automaton must answer exactly as ``re`` does, and
in time linear in the subject, through every kind of glob the engine compiles.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.policy.linearmatch import compile_fullmatch, compile_nfa, compile_star_glob

ALPHABET = "ab./:\x01é"
_atoms = st.one_of(
    st.sampled_from(["a", "b", "é", ":", "/"]).map(re.escape),
    st.just(r"\."),
    st.just("."),
    st.sampled_from([r"[^/\x01\x02]", r"[^\x01\x02]", "[^.]", "[^.:]"]),
)


@st.composite
def _sources(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        if depth < 2 and draw(st.integers(0, 5)) == 0:
            inner = draw(_sources(depth + 1))
            # No star over a starred group: the oracle (re) backtracks exponentially on
            # one ((?:.*b*)*)*, holding the suite for hours; the automaton has no such case.
            quantifiers = ["?", ""] if "*" in inner else ["?", "*", ""]
            parts.append(f"(?:{inner})" + draw(st.sampled_from(quantifiers)))
        else:
            parts.append(draw(_atoms) + draw(st.sampled_from(["", "*", "?"])))
    flag = "(?s)" if depth == 0 and draw(st.booleans()) else ""
    return flag + "".join(parts)


@settings(max_examples=600, deadline=None)
@given(_sources(), st.lists(st.text(ALPHABET, max_size=10), min_size=1, max_size=8))
def test_the_automaton_answers_as_re_does(source: str, subjects: list[str]) -> None:
    expected = re.compile(source, re.DOTALL)
    nfa, chosen = compile_nfa(source), compile_fullmatch(source)
    for subject in subjects:
        answer = expected.fullmatch(subject) is not None
        assert nfa(subject) == answer, (source, subject)
        assert chosen(subject) == answer, (source, subject)


@settings(max_examples=800, deadline=None)
@given(
    st.lists(st.text("ab.:é", max_size=3), min_size=1, max_size=6),
    st.sampled_from([".", "[^.]", "[^.:]"]),
    st.lists(st.text("ab.:é", max_size=12), min_size=1, max_size=8),
)
def test_a_one_class_glob_answers_as_backtracking_does(
    pieces: list[str], star: str, subjects: list[str]
) -> None:
    """Leftmost atomic pieces (no backtracking) against the plain backtracking expression."""
    backtracking = re.compile(f"{star}*".join(re.escape(p) for p in pieces), re.DOTALL)
    linear = compile_star_glob(pieces, star)
    for subject in subjects:
        assert linear(subject) == (backtracking.fullmatch(subject) is not None), (
            pieces, star, subject,
        )  # fmt: skip


def test_only_the_supported_constructs_compile() -> None:
    for source in ("a|b", "a+", "(a)", "^a", "[ab]", r"\d", "a{2}", "a)"):
        try:
            compile_fullmatch(source)
        except ValueError:
            continue
        raise AssertionError(f"{source!r} compiled")


# Each glob kind, written by a policy author with many wildcards, and an agent's subject
# that almost matches it: with backtracking, each takes hours; linear, milliseconds.
_PROBE = textwrap.dedent(
    """
    import time
    from tests.policy.conftest import policies, request

    STARS = "a*" * 12
    LONG = "a" * 4000
    ps = policies('''
    rules:
      - id: everything
        effect: allow
        agents: ["*"]
        sql: {statements: ["*"], tables: ["*.*"]}
      - id: files
        effect: allow
        agents: ["*"]
        ssh: {commands: ["cat /d/%(stars)sb", "ls /**/%(stars)s/**/b"]}
      - id: tools
        effect: allow
        agents: ["*"]
        mcp: {tools: ["%(stars)sb"]}
      - id: paths
        effect: allow
        agents: ["*"]
        http: {methods: [GET], paths: ["/v1/%(stars)sb"]}
      - id: tables
        effect: deny
        agents: ["*"]
        sql: {statements: ["*"], tables: ["*.%(stars)sb"]}
    ''' % {"stars": STARS})
    started = time.perf_counter()
    for kind, action in (
        ("ssh", {"command": "cat /d/" + LONG}),
        ("ssh", {"command": "ls /" + "/a" * 1500 + "/c"}),
        ("mcp", {"tool": LONG, "arguments": {}}),
        ("http", {"method": "GET", "path": "/v1/" + LONG}),
        ("sql", {"query": 'SELECT * FROM "' + "a" * 60 + '"'}),
    ):
        decision = ps.decide(request(kind, action)).decision
        assert decision == ("allow" if kind == "sql" else "deny"), (kind, decision)
    print(round(time.perf_counter() - started, 3))
    """
)


def test_many_wildcards_on_a_hostile_subject_take_linear_time() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 10  # seconds, all five (backtracking: hours)
