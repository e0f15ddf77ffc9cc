"""scope: rule grant raised for target web-1 (what the approver sees) also allows web-2."""

from __future__ import annotations

from tests.approvals.conftest import World
from tether.approvals.service import ApprovalService
from tether.policy import PolicySource, load_policies

RULES = """
rules:
  - id: restart-any
    effect: allow
    agents: [bot]
    targets: ["web-*"]
    ssh: {commands: ["systemctl restart *"]}
    approval: {approvers: ["group:sre"], valid_for: 10m, scope: rule}
"""


def _ssh(target: str) -> dict:
    return {
        "agent": {"id": "bot"},
        "task": {"id": "T-1"},
        "target": {"name": target},
        "action": {"ssh": {"command": "systemctl restart nginx"}},
    }


async def test_rule_scope_grant_stays_on_its_target(world: World) -> None:
    policy_set = load_policies([PolicySource("r.yaml", RULES)])
    service = ApprovalService(
        world.store.engine, lambda: policy_set, world.approvals.sealer, clock=world.clock
    )
    sam = await world.user("sam", "sre")
    _, pending = await service.decide(_ssh("web-1"))
    assert pending is not None and pending.target == "web-1"
    await service.approve(pending.id, sam, "restart web-1")
    assert (await service.decide(_ssh("web-1")))[0].allowed
    other, _ = await service.decide(_ssh("web-2"))
    assert not other.allowed, "an approval shown for web-1 allowed web-2"
