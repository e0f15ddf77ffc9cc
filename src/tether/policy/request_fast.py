"""A fast path for :func:`tether.policy.request.normalize`, for the shapes requests usually have.

The decision's hot path (``PolicySet.decide``) spends most of its time validating the request.
:func:`normalize` here returns exactly what :func:`~tether.policy.request.normalize` returns (an
equal :class:`~tether.policy.request.Request`, or the same exception with the same reason and
detail), only sooner for the usual shapes.

Security decisions:

* The fast path never validates *less*. It checks the same things inline and, at the first
  doubt (a value of another type, a subclass of ``str`` or ``dict``, an unusual method, a long
  or non-plain path, headers, any field it does not handle inline), it hands the *whole* value
  to the full validator, which then raises its precise error or builds the request itself.
* The fast path raises only from the full validator's own helpers, called in the same order
  as the full validator calls them and only once everything the full validator checks before
  them has passed, so an error is the one the full validator would have raised.
* Property tests (``tests/policy/test_request_fast_props.py``) check, for arbitrary values,
  that both paths give equal requests (the CEL ``request`` view included) or equal errors.
"""

from __future__ import annotations

from typing import Any, Final

from tether.policy import httpmatch, request_action, request_fields
from tether.policy import request as req
from tether.policy.httpmethods import may_override_method
from tether.policy.request_model import HttpPart, Request

# Methods that are RFC 9110 tokens (checked by a test): no regular expression for these.
_COMMON_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_IDENTITY_KEYS: Final = {"id": frozenset({"id", "labels"}), "name": frozenset({"name", "labels"})}
_AGENT_KEYS: Final = _IDENTITY_KEYS["id"]
_TARGET_KEYS: Final = _IDENTITY_KEYS["name"]
_MAX_ID: Final = 1024
_NO_APPROVALS: Final = frozenset[str]()


def normalize(value: object, *, default_schema: str = "public") -> Request:
    """:func:`tether.policy.request.normalize`, faster for the common request shapes."""
    if type(value) is dict:
        request = _fast(value, default_schema)
        if request is not None:
            return request
    return req.normalize(value, default_schema=default_schema)


def _labels(obj: dict[str, Any]) -> dict[str, str] | None:
    """The ``labels`` of an identity object as the full validator returns them, or None."""
    labels = obj.get("labels")
    if labels is None:
        return {}
    if type(labels) is not dict:
        return None
    for k, v in labels.items():
        if type(k) is not str or type(v) is not str:
            return None
    return labels


def _fast(value: dict[str, Any], default_schema: str) -> Request | None:
    """The request, or None to let the full validator decide (see the module docstring)."""
    if not value.keys() <= request_fields.TOP_KEYS:
        return None
    agent = value.get("agent")
    if type(agent) is not dict or not agent.keys() <= _AGENT_KEYS:
        return None
    agent_id = agent.get("id")
    if type(agent_id) is not str or not agent_id or len(agent_id) > _MAX_ID:
        return None
    agent_labels = _labels(agent)
    if agent_labels is None:
        return None
    runtime_id: str | None = None
    runtime_labels: dict[str, str] = {}
    if value.get("runtime") is not None:  # checked before the target, as the full validator does
        runtime_id, runtime_labels = request_fields.identity(value, "runtime", required=False)
    target = value.get("target")
    if type(target) is not dict or not target.keys() <= _TARGET_KEYS:
        return None
    target_name = target.get("name")
    if type(target_name) is not str or not target_name or len(target_name) > _MAX_ID:
        return None
    target_labels = _labels(target)
    if target_labels is None:
        return None
    action = value.get("action")
    if type(action) is not dict or len(action) != 1:
        return None
    ((kind, body),) = action.items()
    if type(body) is not dict or kind not in request_action.KINDS:
        return None
    # Everything the full validator checks before these helpers has passed: the same order.
    get = value.get
    delegation = get("delegation")
    task = get("task")
    scope = get("scope")
    source_ip = get("source_ip")
    when = get("time")
    approvals = get("approvals")
    request = Request(
        agent_id,
        agent_labels,
        runtime_id,
        runtime_labels,
        None if delegation is None else request_fields.delegation(delegation),
        {} if task is None else request_fields.task(task),
        None if scope is None else request_fields.scope(scope),
        target_name,
        target_labels,
        kind,
        (),
        {},
        None if source_ip is None else request_fields.optional_str(value, "source_ip"),
        None if when is None else request_fields.timestamp(when),
        _NO_APPROVALS if approvals is None else request_fields.approvals(approvals),
        value,
    )
    if kind == "http":
        if not _http(request, body):
            request_action.normalize_http(request, body)
    elif kind == "sql":
        request_action.normalize_sql(request, body, default_schema)
    else:
        request_action.NORMALIZERS[kind](request, body)
    return request


def _http(request: Request, body: dict[str, Any]) -> bool:
    """The parts of a plain HTTP action (method and path only); False to use the full check."""
    if len(body) != 2:  # headers, or a missing or unknown field
        return False
    method = body.get("method")
    path = body.get("path")
    if type(method) is not str or method not in _COMMON_METHODS:
        return False
    if type(path) is not str or len(path) > httpmatch.MAX_TARGET:
        return False
    canonical = httpmatch.canonicalize_path(path)  # raises exactly as in the full check
    if canonical.query and may_override_method(canonical.query):
        return False  # a `_method` parameter, perhaps: the full check reads it
    request.parts = (HttpPart(method, canonical),)
    request.view_builder = lambda: request_action.http_view(method, canonical, {})
    return True
