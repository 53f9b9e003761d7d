"""Batched solve throughput: jaxopt_tokens vs scipy, cvxpy + Clarabel and jaxopt, in one run.

    python benchmarks/solve_throughput.py            # sizes 1e3, 1e4, 1e5
    python benchmarks/solve_throughput.py --quick    # sizes 1e3, 1e4 (smaller peer samples)

Random stable workloads (N = 6, float64) from `random_workloads` (loads up to 0.98 of the
zero-token stability limit, alpha in [1e-2, 1e4], b over five decades). Peers that solve one
instance at a time are timed on a sample and extrapolated per instance.
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _timing import best_of  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402


def member(w, i):
    return jax.tree.map(lambda x: np.asarray(x[i]), w)


def numpy_value_grad(w):
    A, b, D, t0, c, pi = (np.asarray(getattr(w, f)) for f in ("A", "b", "D", "t0", "c", "share"))
    lam, alpha = float(w.arrival_rate), float(w.alpha)

    def f(l):
        t = t0 + c * l
        m1, m2 = pi @ t, pi @ (t * t)
        d = 1 - lam * m1
        if d <= 0:
            return 1e300, np.zeros_like(l)
        ebl = np.exp(-b * l)
        J = alpha * pi @ (A * (1 - ebl) + D) - lam * m2 / (2 * d) - m1
        g = pi * (alpha * A * b * ebl - c * (1 + lam * t / d + lam**2 * m2 / (2 * d * d)))
        return -J, -g

    return f


def scipy_per_instance(w, sample):
    import scipy.optimize

    t = time.perf_counter()
    worst = 0.0
    for i in range(sample):
        wi = member(w, i)
        res = scipy.optimize.minimize(
            numpy_value_grad(wi),
            np.zeros(6),
            jac=True,
            method="L-BFGS-B",
            bounds=[(0, float(wi.max_tokens))] * 6,
            options={"maxiter": 15000, "ftol": 1e-15, "gtol": 1e-12},
        )
        wj = jax.tree.map(jnp.asarray, wi)
        worst = max(worst, float(jt.kkt_residual(jnp.asarray(res.x), wj)))
    return (time.perf_counter() - t) / sample, worst


def cvxpy_per_instance(w, sample):
    import cvxpy as cp

    t = time.perf_counter()
    worst = 0.0
    for i in range(sample):
        wi = member(w, i)
        A, b, D, t0, c, pi = (
            np.asarray(getattr(wi, f)) for f in ("A", "b", "D", "t0", "c", "share")
        )
        lam, alpha, lmax = float(wi.arrival_rate), float(wi.alpha), float(wi.max_tokens)
        l = cp.Variable(6)
        tt = t0 + cp.multiply(c, l)
        m1 = pi @ tt
        wait = sum(
            cp.quad_over_lin(np.sqrt(lam * pi[k] / 2) * tt[k], 1 - lam * m1) for k in range(6)
        )
        acc = pi @ (cp.multiply(A, 1 - cp.exp(-cp.multiply(b, l))) + D)
        prob = cp.Problem(cp.Maximize(alpha * acc - wait - m1), [l >= 0, l <= lmax])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                prob.solve(solver=cp.CLARABEL)
                x = np.clip(l.value, 0, lmax)
                worst = max(
                    worst, float(jt.kkt_residual(jnp.asarray(x), jax.tree.map(jnp.asarray, wi)))
                )
            except Exception:
                worst = np.inf
    return (time.perf_counter() - t) / sample, worst


def jaxopt_batch(w, maxiter):
    try:
        from jaxopt import ProjectedGradient
        from jaxopt.projection import projection_box
    except Exception as e:  # jaxopt is unmaintained; it may not import on a new JAX
        return None, f"jaxopt unavailable: {e}"

    def one(wi):
        pg = ProjectedGradient(
            fun=lambda l, w_: -jt.objective(l, w_),
            projection=projection_box,
            maxiter=maxiter,
            tol=1e-12,
            implicit_diff=False,
        )
        upper = jt.theory.provable_box(wi)
        return pg.run(jnp.zeros(6), hyperparams_proj=(jnp.zeros(6), upper), w_=wi).params

    f = jax.jit(jax.vmap(one))
    try:
        jax.block_until_ready(f(w))
    except Exception as e:
        return None, f"jaxopt failed: {type(e).__name__}: {e}"
    seconds = best_of(lambda: f(w), 2)
    res = jt.kkt_residual(f(w), w)
    return seconds, float(jnp.max(res)), float(jnp.mean(res <= 1e-9))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    console = Console(width=150)
    solve = jax.jit(jt.solve)  # batches of >= 2048 members are solved in stages (_solver/staged.py)
    # members solved one by one under vmap: each iterates as long as the slowest
    plain = jax.jit(jax.vmap(jt.solve))
    value_grad = jax.jit(jax.vmap(jax.value_and_grad(jt.objective)))
    table = Table(
        title=f"Batched solve, N=6, float64, {jax.devices()[0].platform} x{jax.device_count()}"
    )
    for col in (
        "instances",
        "first call (s)",
        "solve (s)",
        "plain vmap (s)",
        "us/instance",
        "eval-equivalents",
        "max iters",
        "converged",
        "max residual",
    ):
        table.add_column(col, justify="right")
    per_instance_ours = None
    for n in sizes:
        w = jt.random_workloads(jax.random.key(n), n, 6)
        t = time.perf_counter()
        sol = jax.block_until_ready(solve(w))
        first = time.perf_counter() - t
        seconds = best_of(lambda: solve(w))
        jax.block_until_ready(plain(w))
        plain_seconds = best_of(lambda: plain(w))
        ev = best_of(lambda: value_grad(sol.tokens, w), 5)
        table.add_row(
            f"{n:,}",
            f"{first:.2f}",
            f"{seconds:.3f}",
            f"{plain_seconds:.3f}",
            f"{seconds / n * 1e6:.2f}",
            f"{seconds / ev:.0f}",
            str(int(sol.iterations.max())),
            f"{float(jnp.mean(sol.status == 0)):.4%}",
            f"{float(jnp.max(sol.residual)):.1e}",
        )
        per_instance_ours = seconds / n
    console.print(table)

    w = jt.random_workloads(jax.random.key(7), 10_000, 6)
    peers = Table(
        title="Peers on the same kind of instances (per instance; extrapolated where sampled)"
    )
    for col in ("method", "s/instance", "ours is faster by", "worst residual", "note"):
        peers.add_column(col, justify="right")
    sp_t, sp_res = scipy_per_instance(w, 50 if args.quick else 200)
    peers.add_row(
        "scipy L-BFGS-B loop (numpy f, grad)",
        f"{sp_t:.2e}",
        f"{sp_t / per_instance_ours:,.0f}x",
        f"{sp_res:.1e}",
        "sampled",
    )
    cv_t, cv_res = cvxpy_per_instance(w, 10 if args.quick else 30)
    peers.add_row(
        "cvxpy + Clarabel",
        f"{cv_t:.2e}",
        f"{cv_t / per_instance_ours:,.0f}x",
        f"{cv_res:.1e}",
        "sampled",
    )
    out = jaxopt_batch(jax.tree.map(lambda x: x[:1000], w), 2000)
    if out[0] is None:
        peers.add_row("jaxopt ProjectedGradient (vmap)", "-", "-", "-", out[1][:60])
    else:
        s, res, frac = out
        peers.add_row(
            "jaxopt ProjectedGradient (vmap, 2000 it)",
            f"{s / 1000:.2e}",
            f"{s / 1000 / per_instance_ours:,.0f}x",
            f"{res:.1e}",
            f"{frac:.1%} reach 1e-9",
        )
    console.print(peers)


if __name__ == "__main__":
    main()
