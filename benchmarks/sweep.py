"""A 1e6-point (arrival rate x alpha) sweep of the default workload: time, peak memory, points/s,
against scipy L-BFGS-B extrapolated from a timed sample, in one run.

    python benchmarks/sweep.py [--side 1000]     # side x side points
"""

from __future__ import annotations

import argparse
import resource
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402


def scipy_seconds_per_point(w, rates, alphas, sample=200):
    rng = np.random.default_rng(0)
    A, b, D, t0, c, pi = (np.asarray(getattr(w, f)) for f in ("A", "b", "D", "t0", "c", "share"))
    t = time.perf_counter()
    for _ in range(sample):
        lam, alpha = rng.choice(rates), rng.choice(alphas)

        def f(l):
            tt = t0 + c * l
            m1, m2 = pi @ tt, pi @ (tt * tt)
            d = 1 - lam * m1
            if d <= 0:
                return 1e300, np.zeros(6)
            e = np.exp(-b * l)
            J = alpha * pi @ (A * (1 - e) + D) - lam * m2 / (2 * d) - m1
            return -J, -(
                pi * (alpha * A * b * e - c * (1 + lam * tt / d + lam**2 * m2 / (2 * d * d)))
            )

        scipy.optimize.minimize(
            f, np.zeros(6), jac=True, method="L-BFGS-B", bounds=[(0, float(w.max_tokens))] * 6
        )
    return (time.perf_counter() - t) / sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=1000)
    side = ap.parse_args().side
    w = jt.default_workload()
    rates, alphas = np.linspace(0.01, 0.5, side), np.geomspace(1, 100, side)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    df = jt.sweeps.sweep(
        w, arrival_rate=rates, alpha=alphas, quiet=True, warm_start=True
    )  # includes compiling the chunk solver
    cold = time.perf_counter() - t
    t = time.perf_counter()
    df = jt.sweeps.sweep(w, arrival_rate=rates, alpha=alphas, quiet=True, warm_start=True)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    # the same sweep with every point started cold (no coarse-to-fine warm start)
    # the default at this size; its first run compiles (for the same chunk size)
    rows = min(side, -(-65_536 // side))
    t = time.perf_counter()
    jt.sweeps.sweep(w, arrival_rate=rates[:rows], alpha=alphas, quiet=True, warm_start=False)
    first_cold = time.perf_counter() - t
    t = time.perf_counter()
    df_cold = jt.sweeps.sweep(w, arrival_rate=rates, alpha=alphas, quiet=True, warm_start=False)
    seconds_cold = time.perf_counter() - t
    sp = scipy_seconds_per_point(w, rates, alphas)
    table = Table(
        title=f"Sweep of the default workload: {side} arrival rates x {side} alphas = "
        f"{side * side:,} points"
    )
    for col in (
        "method",
        "first run (s)",
        "wall time (s)",
        "points/s",
        "peak RSS (GiB)",
        "converged",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        "jaxopt_tokens.sweeps.sweep, warm_start=True (incl. integer budgets, DataFrame)",
        f"{cold:.1f}",
        f"{seconds:.1f}",
        f"{side * side / seconds:,.0f}",
        f"{peak:.2f} (before: {rss0 / 1024**2:.2f})",
        f"{(df['status'] == 'converged').mean():.4%}",
    )
    table.add_row(
        "  the same, every point started cold (warm_start=False, the default below 4e6 points)",
        f"{first_cold:.1f} (one chunk)",
        f"{seconds_cold:.1f}",
        f"{side * side / seconds_cold:,.0f}",
        "-",
        f"{(df_cold['status'] == 'converged').mean():.4%}",
    )
    table.add_row(
        "scipy L-BFGS-B loop (extrapolated from 200 points)",
        "-",
        f"{sp * side * side:,.0f}",
        f"{1 / sp:,.0f}",
        "-",
        "-",
    )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
