"""Solver results: the `Solution` pytree, a budget vector with its certificate."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._status import HasStatus, Status

__all__ = ["Solution", "masked_solution"]


class Solution(HasStatus):
    """A solver's answer with its certificate (one per batch member under `vmap`).

    Attributes:
        tokens: the continuous budgets $l^*$, shape `(..., N)`.
        objective: $J(l^*)$, eq. (7).
        status: a `Status` code (int32).
        residual: the scale-free projected KKT residual (see `kkt_residual`): the largest
            relative imbalance between a task's marginal accuracy value and its marginal latency
            cost, counting only directions the box allows.
        iterations: iterations the solver used.
        stats: solver-specific diagnostics (e.g. the contraction constant of Lemma 2).
    """

    tokens: Float[Array, "*b n"]
    objective: Float[Array, "*b"]
    status: Int[Array, "*b"]
    residual: Float[Array, "*b"]
    iterations: Int[Array, "*b"]
    stats: dict[str, Array] = eqx.field(default_factory=dict)

    STATUS: ClassVar[type[Status]] = Status

    @property
    def converged(self) -> Array:
        return self.status == Status.CONVERGED


def masked_solution(sol: Solution, ok_in, status_in) -> Solution:
    """`sol` with its rejected members (`ok_in` false) carrying their input status and NaN
    outputs."""
    nan = jnp.array(jnp.nan, sol.tokens.dtype)
    return Solution(
        tokens=jnp.where(ok_in[..., None], sol.tokens, nan),
        objective=jnp.where(ok_in, sol.objective, nan),
        status=jnp.where(ok_in, sol.status, status_in).astype(jnp.int32),
        residual=jnp.where(ok_in, sol.residual, nan),
        iterations=sol.iterations,
        stats={k: _mask(ok_in, v) for k, v in sol.stats.items()},
    )


def _mask(ok_in, v):
    if jnp.issubdtype(v.dtype, jnp.floating):
        return jnp.where(ok_in, v, jnp.array(jnp.nan, v.dtype))
    if v.dtype == jnp.bool_:
        return ok_in & v
    return v
