"""Solver results: the `Solution` pytree and the `Status` enumeration it carries."""

from __future__ import annotations

import enum

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

__all__ = ["Solution", "Status"]


class Status(enum.IntEnum):
    """Outcome of a solve, stored per batch member as an int32 in `Solution.status`."""

    CONVERGED = 0
    MAX_ITERATIONS = 1
    NOT_CONTRACTIVE = 2
    UNSTABLE_INPUT = 3
    NONFINITE_INPUT = 4
    INVALID_INPUT = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.CONVERGED: "converged: the projected KKT residual is below the tolerance",
    Status.MAX_ITERATIONS: "stopped at the iteration limit before reaching the tolerance",
    Status.NOT_CONTRACTIVE: (
        "the fixed-point map left the stability region or stalled: it is not a contraction "
        "here (use the default solver)"
    ),
    Status.UNSTABLE_INPUT: "the queue is unstable even with zero tokens (arrival_rate * E[S] >= 1)",
    Status.NONFINITE_INPUT: "the workload holds NaN or infinite values",
    Status.INVALID_INPUT: "the workload holds values outside the model (see Workload.validate)",
}


class Solution(eqx.Module):
    """A solver's answer with its certificate (one per batch member under `vmap`).

    - `tokens`: the continuous budgets $l^*$, shape `(..., N)`.
    - `objective`: $J(l^*)$, eq. (7).
    - `status`: a `Status` code (int32).
    - `residual`: the scale-free projected KKT residual (see `kkt_residual`): the largest
      relative imbalance between a task's marginal accuracy value and its marginal latency
      cost, counting only directions the box allows.
    - `iterations`: iterations the solver used.
    - `stats`: solver-specific diagnostics (e.g. the contraction constant of Lemma 2).
    """

    tokens: Float[Array, "*b n"]
    objective: Float[Array, "*b"]
    status: Int[Array, "*b"]
    residual: Float[Array, "*b"]
    iterations: Int[Array, "*b"]
    stats: dict[str, Array] = eqx.field(default_factory=dict)

    @property
    def converged(self) -> Array:
        return self.status == Status.CONVERGED

    def messages(self) -> np.ndarray:
        """Human-readable status message per member (host side)."""
        codes = np.asarray(self.status)
        return np.vectorize(lambda s: Status(int(s)).message, otypes=[object])(codes)


def input_status(w) -> Int[Array, "*b"]:
    """The per-member input status a solver reports before iterating (jit/vmap safe)."""
    fields = (w.A, w.b, w.D, w.t0, w.c, w.share)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(f), axis=-1) for f in fields]), axis=0)
    finite &= jnp.isfinite(w.arrival_rate) & jnp.isfinite(w.alpha) & ~jnp.isnan(w.max_tokens)
    valid = (
        jnp.all((w.A >= 0) & (w.D >= 0) & (w.b > 0) & (w.c > 0) & (w.t0 >= 0) & (w.share >= 0), -1)
        & (w.arrival_rate > 0)
        & (w.alpha > 0)
        & (w.max_tokens >= 0)
    )
    rho0 = w.arrival_rate * jnp.sum(w.share * w.t0, axis=-1)
    status = jnp.where(rho0 < 1, Status.CONVERGED, Status.UNSTABLE_INPUT)
    status = jnp.where(valid, status, Status.INVALID_INPUT)
    return jnp.where(finite, status, Status.NONFINITE_INPUT).astype(jnp.int32)


def default_rtol(dtype, rtol: float | None) -> float:
    """The solvers' default target residual: 1e-9 in float64, 1e-4 in float32."""
    if rtol is not None:
        return rtol
    return 1e-9 if dtype == jnp.float64 else 1e-4


def prepare(w):
    """`(status_in, ok_in, safe)`: the input status per member, whether it may be solved, and the
    workload with rejected members swapped for a harmless one so the loops stay finite."""
    status_in = input_status(w)
    ok_in = status_in == Status.CONVERGED
    return status_in, ok_in, sanitise(w, ok_in)


def finish(ok_in, status_in, status, tokens, objective, residual, iterations, stats) -> "Solution":
    """A `Solution` whose rejected members carry their input status and NaN outputs."""
    nan = jnp.array(jnp.nan, tokens.dtype)
    return Solution(
        tokens=jnp.where(ok_in[..., None], tokens, nan),
        objective=jnp.where(ok_in, objective, nan),
        status=jnp.where(ok_in, status, status_in).astype(jnp.int32),
        residual=jnp.where(ok_in, residual, nan),
        iterations=iterations,
        stats={k: (jnp.where(ok_in, v, nan) if jnp.issubdtype(v.dtype, jnp.floating) else v) for k, v in stats.items()},
    )


def sanitise(w: Workload, ok) -> Workload:
    """Replace a rejected member by a small stable workload (its result is masked out)."""
    one = jnp.ones_like(w.A)
    n = w.num_tasks

    def pick(x, good):
        return jnp.where(ok if x.ndim == ok.ndim else ok[..., None], x, good)

    return w.replace(
        A=pick(w.A, 0.5 * one),
        b=pick(w.b, 1e-3 * one),
        D=pick(w.D, 0 * one),
        t0=pick(w.t0, 0.1 * one),
        c=pick(w.c, 0.01 * one),
        share=pick(w.share, one / n),
        arrival_rate=pick(w.arrival_rate, jnp.ones_like(w.arrival_rate) * 0.1),
        alpha=pick(w.alpha, jnp.ones_like(w.alpha)),
        max_tokens=pick(w.max_tokens, jnp.ones_like(w.max_tokens) * 1000),
    )
