"""s19 newcomer review: a ``/v1/decide`` event says its subject is the body's word only."""

from __future__ import annotations

from tests.audit.test_api_events import Api, api, decide_body

__all__ = ["api"]  # the fixture, imported for this module's tests


async def test_a_decide_event_is_marked_unauthenticated_with_its_real_peer(api: Api) -> None:
    """``POST /v1/decide`` takes no credential, yet its event recorded the agent, runtime,
    task and ``source_ip`` the body named, like a broker's decision and with nothing to tell
    them apart: anyone reaching the listener could plant "bot from 10.1.2.3" in the trail."""
    answered = await api.http.post("/v1/decide", json=decide_body("/v1/invoices/7"))
    assert answered.json()["decision"] == "allow"
    (event,) = await api.events("decision")
    assert (event["runtime"], event["source_ip"]) == ("k8s/prod/b-1", "10.1.2.3")  # as asked
    assert event["detail"]["unauthenticated"] is True
    assert event["detail"]["peer"] == "127.0.0.1"  # the test transport's client address
