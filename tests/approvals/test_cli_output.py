"""What ``tether approvals list|show`` print comes from agents (the action, the reason, the
task id): it reaches an approver's terminal as literal text, never as terminal escape
sequences, bidirectional overrides or Rich markup that could make the approver read an
action other than the one they approve. Run against the real API on loopback."""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from tests.approvals.conftest import Api
from tether.cli.approvals import app, shown

# Moves the cursor up a line, clears it and writes a harmless-looking action over the real one.
OVERWRITE = '\x1b[1A\x1b[2K  action    {"command": "systemctl restart app"}'
RLO = "\u202e"  # right-to-left override: shows the text after it reversed
C1_CSI = "\x9b"  # the 8-bit CSI a terminal may take as ESC [


async def test_agent_text_is_printed_literally(api: Api, tmp_path: Path) -> None:
    bot = await api.agent("bot")
    sam = await api.human("sam", "sre")
    token_file = tmp_path / "token"
    token_file.write_text(sam["Authorization"].removeprefix("Bearer "))
    command = f"systemctl restart '[conceal]x{RLO}yz'"
    reason = OVERWRITE + C1_CSI + "2J"
    body = {"target": "web", "action": {"ssh": {"command": command}}, "reason": reason}
    asked = await api.as_agent(bot, "POST", "/v1/access-requests", json=body)
    assert asked.status_code == 202, asked.text
    request_id = asked.json()["id"]
    where = ["--server", str(api.http.base_url), "--token-file", str(token_file)]

    runner = CliRunner()  # color: as on a terminal, where click leaves escape sequences in

    def invoke(*args: str) -> Result:
        return runner.invoke(app, [*args, *where], color=True)

    shown = await asyncio.to_thread(invoke, "show", request_id)
    listed = await asyncio.to_thread(invoke, "list")
    for result in (shown, listed):
        assert result.exit_code == 0, result.output
        out = result.output
        assert not any(c in out for c in ("\x1b", RLO, C1_CSI)), repr(out)
        assert "\\u202e" in out
        assert "[conceal]" in out  # markup shown, not applied
    assert "\\u001b[1A" in shown.output and "\\u009b2J" in shown.output  # visible as text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_shown_text_holds_nothing_a_terminal_would_act_on(value: str) -> None:
    out = shown(value)
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
               for c in out)  # fmt: skip
    if all(unicodedata.category(c)[0] in "LNPS" or c == " " for c in value):
        assert out == value  # visible text is left as it is
