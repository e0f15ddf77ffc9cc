"""Platform shapes and labels of verified external tokens, for :mod:`tether.identity.workload`.

The claims reaching this module have verified signatures and standard claims
(:mod:`tether.identity.workload_jwt`); what is checked here is step 6, the platform's shape: the
claims that make the runtime id must be present and well-formed. Kubernetes tokens name a
runtime only when bound to a pod, GitHub Actions tokens by repository and run, SPIFFE
JWT-SVIDs by their SPIFFE ID in a trust domain the issuer vouches for.

Runtime labels come from the platform shape (``platform`` and ``issuer`` are set by Tether and
cannot be mapped) and from the issuer's ``claim_map``. A mapped claim that is present but is not a
short printable scalar refuses the token: dropping it silently could let a workload slip past a
deny rule written on that label.

User tokens (delegation) give a user name and groups only from short printable strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tether.identity.workload_issuers import IssuerConfig
from tether.identity.workload_jwt import WorkloadTokenError, printable
from tether.identity.x509ca import X509CaError, parse_spiffe_id

_K8S_SUB = re.compile(r"system:serviceaccount:([a-z0-9-]{1,63}):([a-z0-9.-]{1,253})")
_K8S_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_GH_REPO = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}")


def kubernetes_runtime(claims: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """``k8s/<namespace>/<pod>``: only pod-bound projected tokens name a runtime."""
    match = _K8S_SUB.fullmatch(claims["sub"])
    k8s = claims.get("kubernetes.io")
    if match is None or not isinstance(k8s, dict):
        raise WorkloadTokenError("not a Kubernetes service-account token")
    namespace = k8s.get("namespace")
    account, pod = k8s.get("serviceaccount"), k8s.get("pod")
    if not isinstance(account, dict) or not isinstance(pod, dict):
        raise WorkloadTokenError("Kubernetes token is not bound to a pod")
    pod_name = pod.get("name")
    if (namespace, account.get("name")) != match.groups():
        raise WorkloadTokenError("Kubernetes sub does not match its namespace and account")
    if not isinstance(pod_name, str) or not _K8S_NAME.fullmatch(pod_name):
        raise WorkloadTokenError("Kubernetes pod name missing or malformed")
    return f"k8s/{namespace}/{pod_name}", {"platform": "kubernetes"}


def github_actions_runtime(claims: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """``gha/<owner>/<repo>/<run_id>``."""
    repository, run_id = claims.get("repository"), claims.get("run_id")
    if not isinstance(repository, str) or not _GH_REPO.fullmatch(repository):
        raise WorkloadTokenError("GitHub Actions repository missing or malformed")
    if not isinstance(run_id, str) or not run_id.isdecimal() or not run_id.isascii():
        raise WorkloadTokenError("GitHub Actions run_id missing or malformed")
    return f"gha/{repository}/{run_id}", {"platform": "github-actions"}


def spiffe_runtime(config: IssuerConfig, subject: str) -> tuple[str, dict[str, str]]:
    """The SPIFFE ID itself, if in a trust domain this issuer vouches for."""
    try:
        spiffe_id = parse_spiffe_id(subject)
    except X509CaError:
        raise WorkloadTokenError("sub is not a SPIFFE ID") from None
    if not spiffe_id.path:
        raise WorkloadTokenError("sub is a trust domain, not a workload")
    if spiffe_id.trust_domain not in config.trust_domains:
        raise WorkloadTokenError("SPIFFE trust domain not vouched for by this issuer")
    return str(spiffe_id), {"platform": "spiffe", "trust_domain": spiffe_id.trust_domain}


# --- claims to labels -------------------------------------------------------------------------


def mapped_labels(config: IssuerConfig, claims: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for path, label in config.claim_map.items():
        value = resolve_claim(claims, path)
        if value is None:
            continue
        text = _label_value(value)
        if text is None:
            raise WorkloadTokenError(f"claim {path} cannot be the label {label}")
        labels[label] = text
    return labels


def resolve_claim(claims: Mapping[str, Any], path: str) -> object:
    """The claim at a dotted ``path``; a member whose own name holds dots matches whole.

    ``kubernetes.io.namespace`` finds ``claims["kubernetes.io"]["namespace"]``; when two readings
    exist, the longest member name wins. None when absent.
    """
    if path in claims:
        return claims[path]
    candidates = [k for k in claims if isinstance(k, str) and path.startswith(k + ".")]
    for name in sorted(candidates, key=len, reverse=True):
        inner = claims[name]
        if isinstance(inner, Mapping):
            found = resolve_claim(inner, path[len(name) + 1 :])
            if found is not None:
                return found
    return None


def _label_value(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return printable(value)


def groups(config: IssuerConfig, claims: Mapping[str, Any]) -> tuple[str, ...]:
    if config.groups_claim is None or claims.get(config.groups_claim) is None:
        return ()
    groups = claims[config.groups_claim]
    if not isinstance(groups, list) or len(groups) > 1024:
        raise WorkloadTokenError(f"claim {config.groups_claim} is not a list of groups")
    names = tuple(printable(g) for g in groups)
    if any(n is None for n in names):
        raise WorkloadTokenError(f"claim {config.groups_claim} is not a list of groups")
    return tuple(n for n in names if n is not None)
