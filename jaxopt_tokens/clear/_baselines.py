r"""Baseline allocations the CLEAR paper compares (Appendix A.2), and an exact integer optimum.

Every baseline maps `(thresholds, budget, ...)` to an allocation array of shape `(n,)` with
`sum <= budget` (docs: *CLEAR*). They are written with `jax.numpy` on one batch (`jit`-able,
`vmap` them for batches):

- `uniform_allocation`: $B/n$ each (A.2.1).
- `predictor_allocation`: $B\,\tau_i/\sum_j \tau_j$, no abandonment (A.2.2).
- `heuristic_allocation`: if $B/n < \bar\tau$ keep only the queries with $\tau_i$ at or below
  the median and share the budget among them with the affine rule (A.2.4).
- `auction_allocation`: admit queries by increasing $\tau$ while their thresholds fit in $B$,
  then share with the affine rule (A.2.5).
- `oracle_allocation`: true lengths $L_i$ of solvable queries, shortest first, exactly $L_i$
  each while the budget lasts (A.2.6).

The affine rule (the paper's eq. 25 was lost in extraction; our choice): selected queries get
$\tau_i + s$ with $s = (B - \sum_S \tau)/|S|$ when $s \ge 0$, else $\tau_i B/\sum_S\tau$, so
they use exactly $B$ (before caps).

`exact_allocation` is an exact dynamic programme over whole tokens maximising the same surge
utility $\sum_i U_i(x_i)$, $\sum_i x_i \le B$, for small instances (NumPy, $O(n B^2)$): the
ground truth for the non-concave problem that the Lambert-W policy solves heuristically.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .._errors import InputError
from .._validate import as_float_array
from ._allocate import valid_batch

__all__ = [
    "uniform_allocation",
    "predictor_allocation",
    "heuristic_allocation",
    "auction_allocation",
    "oracle_allocation",
    "exact_allocation",
    "BASELINES",
]


def _prep(thresholds, budget):
    tau = as_float_array("thresholds", thresholds)
    if tau.ndim != 1 or tau.shape[0] == 0:
        raise InputError(
            f"thresholds: a baseline takes one non-empty batch (shape (n,)), got {tau.shape}; "
            "vmap it over batches"
        )
    b = as_float_array("budget", budget).astype(tau.dtype)
    if b.ndim != 0:
        raise InputError(f"budget: a baseline takes one budget (a scalar), got shape {b.shape}")
    return tau, b


def _checked(x, tau, budget, query_cap=None):
    """`x` where the batch is valid (`valid_batch`, as for `allocate`), NaN tokens otherwise."""
    ok = valid_batch(tau, budget, query_cap)
    return jnp.where(ok, x, jnp.array(jnp.nan, x.dtype))


def _cap(x, query_cap):
    return x if query_cap is None else jnp.minimum(x, query_cap)


def _affine_share(tau, selected, budget):
    """Selected queries use exactly `budget`: tau + equal surplus, or tau scaled down."""
    k = jnp.maximum(jnp.sum(selected), 1)
    need = jnp.sum(jnp.where(selected, tau, 0.0))
    s = (budget - need) / k
    scale = budget / jnp.where(need > 0, need, 1.0)
    x = jnp.where(s >= 0, tau + s, tau * scale)
    return jnp.where(selected, x, 0.0)


def uniform_allocation(
    thresholds: Float[ArrayLike, " n"],
    budget: Float[ArrayLike, ""],
    *,
    query_cap: Optional[float] = None,
) -> Float[Array, " n"]:
    """$B/n$ tokens each (the paper's Uniform, eq. 19), capped at `query_cap`.

    Args:
        thresholds: the predicted thresholds, one per query.
        budget: the total budget.
        query_cap: the per-query cap (None: no cap).

    Returns:
        The tokens of each query.
    """
    tau, b = _prep(thresholds, budget)
    return _checked(_cap(jnp.full_like(tau, b / tau.shape[-1]), query_cap), tau, b, query_cap)


def predictor_allocation(
    thresholds: Float[ArrayLike, " n"],
    budget: Float[ArrayLike, ""],
    *,
    query_cap: Optional[float] = None,
) -> Float[Array, " n"]:
    """Proportional to the predicted thresholds, no abandonment (eq. 20); uniform if all are 0.

    Args:
        thresholds: the predicted thresholds, one per query.
        budget: the total budget.
        query_cap: the per-query cap (None: no cap).

    Returns:
        The tokens of each query.
    """
    tau, b = _prep(thresholds, budget)
    total = jnp.sum(tau)
    x = jnp.where(total > 0, b * tau / jnp.where(total > 0, total, 1.0), b / tau.shape[-1])
    return _checked(_cap(x, query_cap), tau, b, query_cap)


def heuristic_allocation(
    thresholds: Float[ArrayLike, " n"],
    budget: Float[ArrayLike, ""],
    *,
    query_cap: Optional[float] = None,
) -> Float[Array, " n"]:
    r"""CLEAR (Heuristic), A.2.4: when $B/n < \bar\tau$ drop the queries above the median
    threshold (the harder half); the rest share $B$ by the affine rule.

    Args:
        thresholds: the predicted thresholds, one per query.
        budget: the total budget.
        query_cap: the per-query cap (None: no cap).

    Returns:
        The tokens of each query.
    """
    tau, b = _prep(thresholds, budget)
    scarce = b / tau.shape[-1] < jnp.mean(tau)
    selected = jnp.where(scarce, tau <= jnp.median(tau), True)
    return _checked(_cap(_affine_share(tau, selected, b), query_cap), tau, b, query_cap)


def auction_allocation(
    thresholds: Float[ArrayLike, " n"],
    budget: Float[ArrayLike, ""],
    *,
    query_cap: Optional[float] = None,
) -> Float[Array, " n"]:
    r"""CLEAR (Auction), A.2.5: the longest prefix by increasing $\tau$ whose thresholds fit in
    $B$ is admitted; the survivors share $B$ by the affine rule.

    Args:
        thresholds: the predicted thresholds, one per query.
        budget: the total budget.
        query_cap: the per-query cap (None: no cap).

    Returns:
        The tokens of each query.
    """
    tau, b = _prep(thresholds, budget)
    order = jnp.argsort(tau)
    fits_sorted = jnp.cumsum(tau[order]) <= b
    selected = jnp.zeros(tau.shape, bool).at[order].set(fits_sorted)
    return _checked(_cap(_affine_share(tau, selected, b), query_cap), tau, b, query_cap)


def oracle_allocation(
    true_lengths: Float[ArrayLike, " n"],
    budget: Float[ArrayLike, ""],
    *,
    solvable: Optional[Bool[ArrayLike, " n"]] = None,
    query_cap: Optional[float] = None,
) -> Float[Array, " n"]:
    r"""Oracle, A.2.6: exactly $L_i$ tokens to solvable queries, shortest first, while they fit
    (and $L_i \le$ `query_cap`). Uses ground truth, so it is an upper-bound reference.

    Args:
        true_lengths: the tokens each query really needs.
        budget: the total budget.
        solvable: which queries can be solved at all (default: all).
        query_cap: the per-query cap (None: no cap).

    Returns:
        The tokens of each query.
    """
    length, b = _prep(true_lengths, budget)
    ok = jnp.ones(length.shape, bool) if solvable is None else jnp.asarray(solvable, bool)
    if query_cap is not None:
        ok = ok & (length <= query_cap)
    key = jnp.where(ok, length, jnp.inf)
    order = jnp.argsort(key)
    sorted_len = jnp.where(ok[order], length[order], 0.0)
    take_sorted = ok[order] & (jnp.cumsum(sorted_len) <= b)
    take = jnp.zeros(length.shape, bool).at[order].set(take_sorted)
    return _checked(jnp.where(take, length, 0.0), length, b, query_cap)


BASELINES = {
    "uniform": uniform_allocation,
    "predictor": predictor_allocation,
    "heuristic": heuristic_allocation,
    "auction": auction_allocation,
}


def exact_allocation(
    thresholds: ArrayLike,
    budget: int,
    *,
    beta: float,
    velocity: float = 1.0,
    query_cap: Optional[int] = None,
) -> tuple[np.ndarray, float]:
    r"""Exact optimum over whole tokens of $\sum_i U_i(x_i)$ s.t. $\sum_i x_i \le B$, $0 \le x_i
    \le x_{\max}$, by dynamic programming over the budget (NumPy, $O(n B^2)$ time, small
    instances only: $B \le 4000$; memory $O(B^2)$).

    Args:
        thresholds: the thresholds, one per query.
        budget: the total budget (whole tokens).
        beta: the decay $\beta$.
        velocity: the velocity $v$.
        query_cap: the per-query cap (None: the budget).

    Returns:
        `(tokens, utility)`: an optimal integer allocation and its total utility.
    """
    tau = np.asarray(thresholds, dtype=float)
    budget_int = int(np.floor(budget))
    if budget_int < 0:
        raise InputError(f"budget: must be >= 0, got {budget}")
    if budget_int > 4000:
        raise InputError(f"budget: exact_allocation is O(n B^2); B = {budget_int} is too large")
    if tau.ndim != 1 or tau.size == 0 or not np.all(np.isfinite(tau)) or np.any(tau < 0):
        raise InputError("thresholds: need a non-empty 1-D array of finite values >= 0")
    xmax = budget_int if query_cap is None else min(budget_int, int(query_cap))
    grid = np.arange(budget_int + 1, dtype=float)
    value = np.zeros(budget_int + 1)  # best utility of the queries so far using at most b tokens
    choices = []
    # diff[b, x] = b - x: tokens left for earlier queries when this one gets x (x <= b).
    b_idx, x_idx = np.meshgrid(np.arange(budget_int + 1), np.arange(budget_int + 1), indexing="ij")
    feasible = (x_idx <= b_idx) & (x_idx <= xmax)
    for t in tau:
        z = np.maximum(grid - t, 0.0)
        u = np.where(grid >= t, velocity * z * np.exp(-beta * z), 0.0)
        cand = np.where(feasible, value[np.clip(b_idx - x_idx, 0, None)] + u[x_idx], -np.inf)
        best = np.argmax(cand, axis=1)
        choices.append(best)
        value = cand[np.arange(budget_int + 1), best]
    tokens = np.zeros(tau.size, dtype=int)
    b = budget_int
    for i in range(tau.size - 1, -1, -1):
        tokens[i] = choices[i][b]
        b -= tokens[i]
    return tokens, float(value[budget_int])
