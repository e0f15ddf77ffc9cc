"""Access-token issuance and verification rates, against raw Ed25519 in the same run.

Run: ``.venv/bin/python bench/token_issue.py [--json] [--budget SECONDS]``.

Everything runs in one thread (one core). Measurements:

=========================  ========================================================  ========
kind                       one operation                                             baseline
=========================  ========================================================  ========
raw-ed25519-sign           ``Ed25519PrivateKey.sign`` of a 600-byte message           -
raw-ed25519-verify         ``Ed25519PublicKey.verify`` of it                          -
issue                      ``TokenIssuer.issue`` of a DPoP-bound token                sign
verify-token-uncached      ``TokenVerifier.verify``, cache off                        verify
verify-dpop                ``DPoPVerifier.verify`` of a fresh proof with ``ath``      verify
verify-request-uncached    token verify (cache off) + DPoP proof verify               verify
verify-token-cached        ``TokenVerifier.verify`` of a token already verified      verify
verify-request-cached      cached token verify + DPoP proof verify (steady state)     verify
pyjwt-issue, pyjwt-verify  PyJWT ``encode``/``decode`` of the same claims, only if    sign /
                           PyJWT is installed: the comparison behind the choice of    verify
                           a minimal JWS implementation (see ``tether.identity.tokens``)
=========================  ========================================================  ========

Uncached series never present the same proof twice to one replay cache (each round gets
a fresh verifier); tokens and proofs are made before timing. The series run in
interleaved rounds with GC off, so a machine that gets busier or quieter moves every
series alike. ``per_second`` is total operations over total time; ``x_baseline`` is
``per_second`` over the baseline's: compare those ratios across machines, not the rates.

The goals (from the issue; informational, never an exit status): issuance >= 1,000/s,
uncached verification >= 5,000/s, a cached token recognised in <= 10 us. Uncached
verification of a request is two Ed25519 verifications (token and proof), so it is
bounded by half the raw verification rate of the machine.

``--json`` prints one object per measurement: ``kind``, ``per_second``, ``us_per_op``,
``goal``, ``met``, ``baseline``, ``x_baseline``, ``ops``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.identity import jose
from tether.identity.dpop import DPoPVerifier, make_proof
from tether.identity.keys import KeyRing, jwk_thumbprint
from tether.identity.replay import MemoryReplayCache
from tether.identity.tokens import Confirmation, Runtime, Task, TokenIssuer, TokenVerifier

ISS = "https://tether.example"
AUD = "tether"
URL = "https://api.example.com/v1/orders/17"
ROUNDS = 5
POOL = 1500  # tokens and proofs prepared per series; caps the operations per round
UNPOOLED = 200_000  # the cap of series that need no prepared pool


@dataclass(frozen=True)
class Series:
    kind: str
    baseline: str | None
    goal: tuple[str, Callable[[float], bool]] | None
    run: Callable[[int, int], None]  # (round, operations)
    max_ops: int = POOL  # per round: the size of the prepared pool, if any


@dataclass
class Result:
    series: Series
    ops: int = 0
    ns: int = 0

    @property
    def per_second(self) -> float:
        return self.ops / (self.ns / 1e9) if self.ns else 0.0


def build(now: float) -> list[Series]:
    clock = lambda: now  # noqa: E731
    ring = KeyRing.generate(now)
    agent = Ed25519PrivateKey.generate()
    jkt = jwk_thumbprint(jose.public_jwk(agent))
    issuer = TokenIssuer(ring, issuer=ISS, audience=AUD, clock=clock)

    def issue() -> str:
        token, _ = issuer.issue(
            subject="billing-bot-4",
            task=Task("task-17", "incident-response"),
            scope=["billing-svc-*", "billing-db"],
            runtime=Runtime("k8s:prod/billing-bot-4-7f9c", {"env": "prod", "team": "billing"}),
            cnf=Confirmation(jkt=jkt),
        )
        return token

    print(f"preparing {POOL} tokens and {3 * POOL} DPoP proofs...", file=sys.stderr)
    tokens = [issue() for _ in range(POOL)]
    # Pools 0 and 1: one proof per token (verify-dpop, verify-request-uncached);
    # pool 2: proofs for tokens[0], the token of the cached series.
    proofs = [
        [make_proof(agent, "GET", URL, now=now, access_token=t) for t in tokens] for _ in "01"
    ]
    proofs.append([make_proof(agent, "GET", URL, now=now, access_token=tokens[0]) for _ in tokens])
    message = tokens[0].encode()[:600]
    signature = ring.active.sign(message)
    public = ring.active.public_key

    uncached = TokenVerifier(ring, issuer=ISS, audience=AUD, clock=clock, cache_size=0)
    cached = TokenVerifier(ring, issuer=ISS, audience=AUD, clock=clock)
    cached.verify(tokens[0])
    dpops: dict[tuple[int, int], DPoPVerifier] = {}

    def dpop(pool: int, rnd: int) -> DPoPVerifier:
        if (pool, rnd) not in dpops:  # a fresh replay cache per round and pool
            dpops[(pool, rnd)] = DPoPVerifier(clock=clock, replay_cache=MemoryReplayCache(clock))
        return dpops[(pool, rnd)]

    def raw_sign(rnd: int, n: int) -> None:
        for _ in range(n):
            ring.active.private_key.sign(message)

    def raw_verify(rnd: int, n: int) -> None:
        for _ in range(n):
            public.verify(signature, message)

    def issue_n(rnd: int, n: int) -> None:
        for _ in range(n):
            issue()

    def token_uncached(rnd: int, n: int) -> None:
        for token in tokens[:n]:
            uncached.verify(token)

    def proofs_only(rnd: int, n: int) -> None:
        verifier = dpop(0, rnd)
        for token, proof in zip(tokens[:n], proofs[0][:n], strict=True):
            verifier.verify(proof, htm="GET", htu=URL, access_token=token, expected_jkt=jkt)

    def request_uncached(rnd: int, n: int) -> None:
        proof_verifier = dpop(1, rnd)
        for token, proof in zip(tokens[:n], proofs[1][:n], strict=True):
            claims = uncached.verify(token)
            proof_verifier.verify(
                proof, htm="GET", htu=URL, access_token=token, expected_jkt=claims.cnf.jkt
            )

    def request_cached(rnd: int, n: int) -> None:
        proof_verifier = dpop(2, rnd)
        token = tokens[0]
        for proof in proofs[2][:n]:
            claims = cached.verify(token)
            proof_verifier.verify(
                proof, htm="GET", htu=URL, access_token=token, expected_jkt=claims.cnf.jkt
            )

    def token_cached(rnd: int, n: int) -> None:
        token = tokens[0]
        for _ in range(n):
            cached.verify(token)

    series = [
        Series("raw-ed25519-sign", None, None, raw_sign, UNPOOLED),
        Series("raw-ed25519-verify", None, None, raw_verify, UNPOOLED),
        Series("issue", "raw-ed25519-sign", (">=1000/s", lambda r: r >= 1000), issue_n, UNPOOLED),
        Series(
            "verify-token-uncached",
            "raw-ed25519-verify",
            (">=5000/s", lambda r: r >= 5000),
            token_uncached,
        ),
        Series("verify-dpop", "raw-ed25519-verify", None, proofs_only),
        Series(
            "verify-request-uncached",
            "raw-ed25519-verify",
            (">=5000/s", lambda r: r >= 5000),
            request_uncached,
        ),
        Series(
            "verify-token-cached",
            "raw-ed25519-verify",
            ("<=10us", lambda r: r >= 100_000),
            token_cached,
            UNPOOLED,
        ),
        Series("verify-request-cached", "raw-ed25519-verify", None, request_cached),
    ]
    return series + pyjwt_series(ring, now, tokens)


def pyjwt_series(ring: KeyRing, now: float, tokens: list[str]) -> list[Series]:
    try:
        import jwt  # optional, for the comparison only
    except ImportError:
        print("PyJWT not installed: skipping the comparison", file=sys.stderr)
        return []
    payload = jose.json_object(jose.b64url_decode(tokens[0].split(".")[1]))
    key, public = ring.active.private_key, ring.active.public_key
    headers = {"kid": ring.active.kid, "typ": "at+jwt"}
    options: Any = {"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]}

    def encode(rnd: int, n: int) -> None:
        for _ in range(n):
            jwt.encode(payload, key, algorithm="EdDSA", headers=headers)

    def decode(rnd: int, n: int) -> None:
        for token in tokens[:n]:
            jwt.decode(
                token, public, algorithms=["EdDSA"], audience=AUD, issuer=ISS, options=options
            )

    del now
    return [
        Series("pyjwt-issue", "raw-ed25519-sign", None, encode, UNPOOLED),
        Series("pyjwt-verify", "raw-ed25519-verify", None, decode),
    ]


def measure(series: list[Series], budget: float) -> dict[str, Result]:
    results = {s.kind: Result(s) for s in series}
    per_round = budget / (ROUNDS * len(series))
    sizes: dict[str, int] = {}
    for s in series:  # warm up and calibrate
        start = time.perf_counter()
        s.run(-1, 50)
        per_op = (time.perf_counter() - start) / 50
        sizes[s.kind] = max(50, min(s.max_ops, int(per_round / per_op)))
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for rnd in range(ROUNDS):
            print(f"round {rnd + 1}/{ROUNDS}", file=sys.stderr)
            for s in series:
                n = sizes[s.kind]
                start = time.perf_counter_ns()
                s.run(rnd, n)
                results[s.kind].ns += time.perf_counter_ns() - start
                results[s.kind].ops += n
    finally:
        gc.enable()
    return results


def rows(results: dict[str, Result]) -> list[dict[str, Any]]:
    out = []
    for result in results.values():
        s, rate = result.series, result.per_second
        base = results[s.baseline].per_second if s.baseline else None
        out.append(
            {
                "kind": s.kind,
                "per_second": round(rate, 1),
                "us_per_op": round(1e6 / rate, 2),
                "goal": s.goal[0] if s.goal else None,
                "met": s.goal[1](rate) if s.goal else None,
                "baseline": s.baseline,
                "x_baseline": round(rate / base, 3) if base else None,
                "ops": result.ops,
            }
        )
    return out


def print_table(table: list[dict[str, Any]]) -> None:
    header = f"{'kind':<24} {'per s':>10} {'us/op':>8} {'x baseline':>22}  goal"
    print(header)
    print("-" * len(header))
    for r in table:
        ratio = (
            f"{r['x_baseline']:.2f}x {r['baseline'].removeprefix('raw-ed25519-')}"
            if r["baseline"]
            else "-"
        )
        goal = f"{r['goal']} {'✓' if r['met'] else '✗'}" if r["goal"] else "-"
        print(
            f"{r['kind']:<24} {r['per_second']:>10,.0f} {r['us_per_op']:>8.1f} {ratio:>22}  {goal}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--budget", type=float, default=12.0, help="timed seconds in all")
    args = parser.parse_args()
    started = time.perf_counter()
    results = measure(build(time.time()), args.budget)
    table = rows(results)
    if args.json:
        for row in table:
            print(json.dumps(row))
    else:
        print_table(table)
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
