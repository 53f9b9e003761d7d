"""Integer token budgets from the continuous optimum, Section III-E, eqs. (39)-(41)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._errors import InputError
from ._objective import mean_system_time, objective, pk_wait, task_accuracy
from ._workload import Workload

__all__ = [
    "round_budgets",
    "best_floor_ceil",
    "local_search_budgets",
    "integer_budgets",
    "integer_lower_bound",
    "paper_integer_lower_bound",
    "MAX_EXHAUSTIVE_TASKS",
]

MAX_EXHAUSTIVE_TASKS = 16


def _cap(w: Workload) -> Array:
    return jnp.floor(w.max_tokens)[..., None]


def round_budgets(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
    r"""Component-wise rounding (40), kept inside $[0, \lfloor l_{\max} \rfloor]$.

    Args:
        tokens: continuous budgets, one per task on the last axis.
        w: the workload.

    Returns:
        The rounded budgets, shaped like `tokens`.
    """
    return jnp.clip(jnp.round(tokens), 0, _cap(w))


def best_floor_ceil(
    tokens: Float[Array, " n"], w: Workload, *, max_tasks: int = MAX_EXHAUSTIVE_TASKS
) -> Float[Array, " n"]:
    """The best of the $2^N$ floor/ceil combinations (39), all evaluated in one vectorised pass.

    Raises `ValueError` (at trace time) when N exceeds `max_tasks`: the search would need
    $2^N$ evaluations; use `local_search_budgets` (or `integer_budgets(method="auto")`).

    Args:
        tokens: continuous budgets of one workload, one per task.
        w: the workload (unbatched).
        max_tasks: the most tasks the search takes.

    Returns:
        The best integer budgets, one per task.
    """
    n = tokens.shape[-1]
    if tokens.ndim != 1:
        raise InputError("best_floor_ceil takes one workload; vmap it over a batch")
    if n > max_tasks:
        raise InputError(
            f"the floor/ceil search (39) over N={n} tasks needs 2^{n} evaluations, above the "
            f"limit max_tasks={max_tasks}; use method='local' (rounding + coordinate search) "
            "or raise max_tasks"
        )
    lo = jnp.clip(jnp.floor(tokens), 0, _cap(w))
    hi = jnp.clip(jnp.ceil(tokens), 0, _cap(w))
    bits = ((jnp.arange(2**n)[:, None] >> jnp.arange(n)[None, :]) & 1).astype(tokens.dtype)
    # J is separable but for the two moments: per-task floor/ceil terms once (2N exps), then
    # every combination's accuracy and moments as one small matrix product
    pi = w.share
    t_lo, t_hi = w.t0 + w.c * lo, w.t0 + w.c * hi
    p_lo, p_hi = task_accuracy(lo, w), task_accuracy(hi, w)
    acc = jnp.sum(pi * p_lo) + bits @ (pi * (p_hi - p_lo))
    m1 = jnp.sum(pi * t_lo) + bits @ (pi * (t_hi - t_lo))
    m2 = jnp.sum(pi * t_lo * t_lo) + bits @ (pi * (t_hi * t_hi - t_lo * t_lo))
    values = w.alpha * acc - (pk_wait(w.arrival_rate, m1, m2) + m1)
    return jnp.where(bits[jnp.argmax(values)] == 1, hi, lo)


def local_search_budgets(
    tokens: Float[Array, " n"], w: Workload, *, sweeps: int = 4
) -> Float[Array, " n"]:
    r"""Rounding (40) followed by coordinate local search: each sweep tries $\pm 1$ on every
    task in turn and keeps any change that raises J. Never worse than rounding; O(N) per sweep.

    Args:
        tokens: continuous budgets of one workload, one per task.
        w: the workload (unbatched).
        sweeps: passes over the tasks.

    Returns:
        The integer budgets, one per task.
    """
    start = round_budgets(tokens, w)
    cap = jnp.floor(w.max_tokens)
    n = tokens.shape[-1]

    def visit(k, state):
        x, val = state
        best_x, best_val = x, val
        for delta in (-1.0, 1.0):
            cand = x.at[k % n].add(delta)
            ok = (cand[k % n] >= 0) & (cand[k % n] <= cap)
            cval = jnp.where(ok, objective(cand, w), -jnp.inf)
            better = cval > best_val
            best_x = jnp.where(better, cand, best_x)
            best_val = jnp.where(better, cval, best_val)
        return best_x, best_val

    x, _ = jax.lax.fori_loop(0, sweeps * n, visit, (start, objective(start, w)))
    return x


def integer_budgets(
    tokens: Float[Array, " n"],
    w: Workload,
    method: str = "auto",
    *,
    max_tasks: int = MAX_EXHAUSTIVE_TASKS,
) -> Float[Array, " n"]:
    r"""Integer budgets from continuous ones: `"exhaustive"` (39), `"round"` (40), `"local"`
    (rounding + coordinate search), or `"auto"` (exhaustive up to `max_tasks` tasks, else local).

    Args:
        tokens: continuous budgets of one workload, one per task.
        w: the workload (unbatched; `vmap` for a batch).
        method: `"auto"`, `"exhaustive"`, `"round"` or `"local"`.
        max_tasks: the most tasks the exhaustive search takes.

    Returns:
        Integer-valued budgets (in the dtype of `tokens`) inside $[0, \lfloor l_{\max} \rfloor]$.
    """
    if method == "round":
        return round_budgets(tokens, w)
    if method == "local":
        return local_search_budgets(tokens, w)
    if method == "exhaustive" or (method == "auto" and tokens.shape[-1] <= max_tasks):
        return best_floor_ceil(tokens, w, max_tasks=max_tasks)
    if method == "auto":
        return local_search_budgets(tokens, w)
    raise InputError(f"unknown method {method!r}; choose auto, exhaustive, round or local")


def integer_lower_bound(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
    r"""A rigorous lower bound on J at any integer vector within one token of `tokens`.

    Any $l^{\rm int}$ with $|l^{\rm int}_k - l_k| \le 1$ inside the box has accuracy at least
    that of $\max(l - 1, 0)$ and, E[T] being increasing in every budget, system time at most
    that of $\min(l + 1, l_{\max})$. So $J(l^{\rm int}) \ge \alpha \bar p(l^-) - E[T](l^+)$
    (`-inf` if $l^+$ is unstable). This is what (41) intends; see `paper_integer_lower_bound`.

    Args:
        tokens: continuous budgets, one per task on the last axis.
        w: the workload.

    Returns:
        The lower bound on J, with the batch shape.
    """
    lower = jnp.maximum(tokens - 1, 0)
    upper = jnp.minimum(tokens + 1, w.max_tokens[..., None])
    acc = jnp.sum(w.share * task_accuracy(lower, w), axis=-1)
    return w.alpha * acc - mean_system_time(upper, w)


def paper_integer_lower_bound(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
    r"""The paper's bound (41), exactly as printed; `-inf` where $\lambda(E[S] + c_{\max}) \ge 1$.

    $\bar J = \alpha\sum_k \pi_k(A_k(1-e^{-b_k(l_k-1)}) + D_k)
    - (\lambda E[S^2] + 2c_{\max}) / (2(1 - \lambda(E[S] + c_{\max}))) - E[S]$.
    Its queueing term adds $2c_{\max}$ (seconds per token) to $\lambda E[S^2]$ (seconds) and its
    last term omits the growth of E[S], so it is not a valid bound in general; the tests
    measure how often it holds. Use `integer_lower_bound` for a guaranteed one.

    Args:
        tokens: continuous budgets, one per task on the last axis.
        w: the workload.

    Returns:
        (41)'s value, with the batch shape.
    """
    t = w.t0 + w.c * tokens
    m1 = jnp.sum(w.share * t, -1)
    m2 = jnp.sum(w.share * t * t, -1)
    cmax = jnp.max(w.c, -1)
    acc = jnp.sum(w.share * (w.A * (1 - jnp.exp(-w.b * (tokens - 1))) + w.D), -1)
    lam = w.arrival_rate
    gap = 1 - lam * (m1 + cmax)
    ok = gap > 0
    wait = (lam * m2 + 2 * cmax) / (2 * jnp.where(ok, gap, 1))
    return jnp.where(ok, w.alpha * acc - wait - m1, -jnp.inf)
