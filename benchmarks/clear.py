"""Throughput of `clear.allocate` (MATH.md section 2): one batch of 1e6 queries, after compile.

Run: python benchmarks/clear.py [--n 1000000] [--repeats 5]. Target: < 1 s per clearing on CPU.
Reports float32 and float64, without and with a per-query cap, plus a (1000, 1000) batch of
independent budgets.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from jaxopt_tokens import clear  # noqa: E402


def numpy_peer(tau, budget, inv_beta, iterations=60):
    """The first clearing stage in numpy + scipy.special.lambertw (same bisection, vectorised).

    The peer a user would write without JAX; returns (seconds, admitted count at the price)."""
    from scipy.special import lambertw

    t0 = time.perf_counter()
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mu = (lo + hi) / 2
        w = lambertw(np.e * mu).real
        admit = tau * w < inv_beta * (1 - w) ** 2
        demand = np.sum(np.where(admit, tau + (1 - w) * inv_beta, 0.0))
        lo, hi = (mu, hi) if demand > budget else (lo, mu)
    w = lambertw(np.e * hi).real
    admitted = int(np.sum(tau * w < inv_beta * (1 - w) ** 2))
    return time.perf_counter() - t0, admitted


def _time(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tau = rng.lognormal(6.5, 0.8, args.n)
    print(f"clear.allocate on {args.n:,} queries (devices: {jax.devices()})")
    for dtype in (np.float32, np.float64):
        t = tau.astype(dtype)
        budget = dtype(256.0 * args.n)
        for cap in (None, 8192.0):
            fn = jax.jit(lambda t, b, cap=cap: clear.allocate(t, b, query_cap=cap).tokens)
            best, median = _time(fn, t, budget, repeats=args.repeats)
            a = clear.allocate(t, budget, query_cap=cap)
            print(
                f"  {np.dtype(dtype).name:8s} cap={str(cap):7s} "
                f"best {best:.3f} s  median {median:.3f} s  "
                f"status {int(a.status)}  admitted {int(a.admitted.sum()):,}  "
                f"unused {float(a.unused):.3g} of {float(budget):.3g} tokens"
            )
    budget = 256.0 * args.n
    inv_beta = float(clear.adaptive_inverse_decay(tau, budget))
    peer_s, peer_admitted = numpy_peer(tau, budget, inv_beta)
    fn = jax.jit(lambda t, b: clear.allocate(t, b).tokens)
    best, _ = _time(fn, tau, budget, repeats=args.repeats)
    ours_admitted = int(clear.allocate(tau, budget).admitted.sum())
    print(
        f"  peer: numpy + scipy lambertw, first stage only (60 bisection steps), "
        f"float64: {peer_s:.3f} s "
        f"(admitted {peer_admitted:,}; ours {ours_admitted:,}); ours, both stages: {best:.3f} s, "
        f"{peer_s / best:.1f}x faster"
    )
    side = int(round(np.sqrt(args.n)))
    tb = tau[: side * side].reshape(side, side)
    bb = rng.uniform(128, 2048, side) * side
    fn = jax.jit(lambda t, b: clear.allocate(t, b).tokens)
    best, median = _time(fn, tb, bb, repeats=args.repeats)
    print(
        f"  float64  batch {side}x{side} (independent budgets)  "
        f"best {best:.3f} s  median {median:.3f} s"
    )


if __name__ == "__main__":
    main()
