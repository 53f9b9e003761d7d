"""`solve`: one entry point for every solver of the token-allocation problem (9)."""

from __future__ import annotations

import math

import equinox as eqx
import jax

import jax.numpy as jnp

from ._aggregate import AggregateNewton
from ._fixed_point import FixedPoint
from ._implicit import attach_implicit_gradient
from ._objective import objective
from ._pga import ProjectedGradient
from ._solution import Solution, Status, sanitise
from ._staged import MIN_STAGED_BATCH, staged_solve
from ._workload import Workload

__all__ = ["solve", "METHODS"]

METHODS = ("default", "fixed-point", "pga", "pga-safeguarded")


def _solver(method: str, rtol, max_steps):
    kw = {}
    if rtol is not None:
        kw["rtol"] = rtol
    if max_steps is not None:
        kw["max_steps"] = max_steps
    if method == "default":
        return AggregateNewton(**kw)
    if method == "fixed-point":
        return FixedPoint(**kw)
    if method == "pga":
        return ProjectedGradient(safeguarded=False, **kw)
    if method == "pga-safeguarded":
        return ProjectedGradient(safeguarded=True, **kw)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def _differentiable(solver, w: Workload) -> Solution:
    """Solve without differentiating the iterations, then attach the implicit derivative."""
    return _with_gradient(solver(jax.lax.stop_gradient(w)), w)


def _with_gradient(sol: Solution, w: Workload) -> Solution:
    """`sol` (computed without gradients) with the implicit derivative of its budgets attached."""
    ok = sol.status == Status.CONVERGED
    safe = sanitise(w, ok)  # finite stand-ins so that masked members give zero, not NaN, gradients
    tokens = attach_implicit_gradient(safe, jnp.where(ok, sol.tokens, 0), ok)
    return Solution(
        tokens=jnp.where(ok, tokens, sol.tokens),
        objective=jnp.where(ok, objective(tokens, safe), sol.objective),
        status=sol.status,
        residual=sol.residual,
        iterations=sol.iterations,
        stats=sol.stats,
    )


@eqx.filter_jit
def _run(solver, w):
    size = math.prod(w.batch_shape)
    if isinstance(solver, AggregateNewton) and size >= MIN_STAGED_BATCH:
        # large batches: iterate each member only as long as it needs (see _staged.py)
        shape = w.batch_shape
        flat = jax.tree_util.tree_map(lambda x: x.reshape(size, *x.shape[len(shape):]), w)
        sol = jax.vmap(_with_gradient)(staged_solve(solver, jax.lax.stop_gradient(flat)), flat)
        return jax.tree_util.tree_map(lambda x: x.reshape(*shape, *x.shape[1:]), sol)
    fn = lambda member: _differentiable(solver, member)  # noqa: E731
    for _ in w.batch_shape:
        fn = jax.vmap(fn)
    return fn(w)


def solve(
    workload: Workload,
    method: str = "default",
    *,
    rtol: float | None = None,
    max_steps: int | None = None,
) -> Solution:
    """Optimal continuous token budgets $l^*$ of problem (9), with a certificate.

    **Arguments:**

    - `workload`: a `Workload`; leading batch axes are solved member by member (vmapped).
    - `method`: `"default"` (bracketed Newton on the aggregate prices, converges on every
      instance stable at zero tokens), `"fixed-point"` (the paper's (24)), `"pga"` (the
      paper's (29) with step $1/L_J$), or `"pga-safeguarded"` (backtracking).
    - `rtol`: target projected KKT residual (see `kkt_residual`); `max_steps`.

    **Returns:** a `Solution` (tokens, objective, status, residual, iterations, stats). Never
    raises for bad values: members the model rejects get a status and NaN outputs. Works
    under `jit` and `vmap`; compiled once per workload shape, dtype and method.

    Differentiable with respect to every workload field: derivatives of `tokens` (and of
    anything computed from them, such as `objective`) come from the KKT conditions at the
    solution (implicit differentiation, see `_implicit.py`), not from the iterations; budgets
    held at a bound have zero derivative (at `max_tokens`, they follow `max_tokens`). Members
    that did not converge get zero derivatives.
    """
    if not isinstance(workload, Workload):
        raise TypeError(f"solve expects a Workload, got {type(workload).__name__}")
    return _run(_solver(method, rtol, max_steps), workload)
