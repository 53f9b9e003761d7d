"""Random workloads for tests, benchmarks and sensitivity studies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import PRNGKeyArray

from ._validate import check_int, check_memory
from ._workload import Workload

__all__ = ["random_workloads"]


def random_workloads(
    key: PRNGKeyArray,
    num: int,
    num_tasks: int = 6,
    *,
    load: tuple[float, float] = (0.01, 0.98),
    alpha: tuple[float, float] = (1e-2, 1e4),
    b: tuple[float, float] = (1e-5, 1.0),
    c: tuple[float, float] = (1e-3, 5e-2),
    t0: tuple[float, float] = (0.01, 0.3),
    max_tokens: tuple[float, float] = (100.0, 32768.0),
    corners: float = 0.0,
    dtype: DTypeLike | None = None,
) -> Workload:
    r"""A batch of `num` random valid workloads with `num_tasks` tasks each (leading axis `num`).

    `alpha`, `b`, `c` and `max_tokens` are log-uniform on their ranges, `t0` uniform, shares
    Dirichlet(1), `A` uniform on [0.05, 0.95] and `D` uniform on [0, 1 - A]. The arrival rate
    is `load` (uniform) times the zero-token stability limit $1/\sum_k \pi_k t_{0k}$, so every
    member is stable at zero tokens.

    `corners`: the fraction of members turned into one of the degenerate corners a solver must
    also handle (the same corner for a given key): every `t0 = 0` (the arrival rate then
    loads the server to `load` at 100 tokens per query), some `t0 = 0`, an arrival rate near
    the dtype's smallest normal number, `alpha = 1e12`, a tiny `c`, a huge `b`, or `A = 0`
    on some tasks. Every member stays valid.

    Args:
        key: the random key.
        num: how many workloads.
        num_tasks: tasks per workload.
        load: range of the arrival rate as a fraction of the zero-token stability limit.
        alpha: range of the accuracy weight (log-uniform).
        b: range of the accuracy rates (log-uniform).
        c: range of the seconds per token (log-uniform).
        t0: range of the zero-token service times (uniform).
        max_tokens: range of the budget cap (log-uniform).
        corners: the fraction of degenerate members (above).
        dtype: the floating dtype (default: JAX's default float).

    Returns:
        A `Workload` with batch shape `(num,)`.
    """
    num = check_int("num", num, 1)
    num_tasks = check_int("num_tasks", num_tasks, 1)
    check_memory(
        8.0 * 12 * num * num_tasks,
        f"{num:,} random workloads of {num_tasks:,} tasks",
        "draw fewer at a time",
    )
    dtype = dtype or jnp.result_type(float)
    ks = jax.random.split(key, 9)
    shape = (num, num_tasks)

    def loguniform(k, lo_hi, shp):
        lo, hi = jnp.log(jnp.asarray(lo_hi, dtype))
        return jnp.exp(jax.random.uniform(k, shp, dtype, lo, hi))

    A = jax.random.uniform(ks[0], shape, dtype, 0.05, 0.95)
    D = jax.random.uniform(ks[1], shape, dtype) * (1 - A)
    share = jax.random.dirichlet(ks[2], jnp.ones(num_tasks, dtype), (num,)).astype(dtype)
    share = share / jnp.sum(share, -1, keepdims=True)
    t0_ = jax.random.uniform(ks[3], shape, dtype, *t0)
    lam = jax.random.uniform(ks[4], (num,), dtype, *load) / jnp.sum(share * t0_, -1)
    w = Workload(
        A=A,
        b=loguniform(ks[5], b, shape),
        D=D,
        t0=t0_,
        c=loguniform(ks[6], c, shape),
        share=share,
        arrival_rate=lam,
        alpha=loguniform(ks[7], alpha, (num,)),
        max_tokens=jnp.round(loguniform(ks[8], max_tokens, (num,))),
    )
    return _with_corners(jax.random.fold_in(key, 1), w, corners, load) if corners > 0 else w


NUM_CORNERS = 7


def _with_corners(key, w: Workload, fraction: float, load) -> Workload:
    k_pick, k_kind, k_task, k_load = jax.random.split(key, 4)
    num, n = w.A.shape
    dtype = w.A.dtype
    kind = jnp.where(
        jax.random.uniform(k_pick, (num,)) < fraction,
        jax.random.randint(k_kind, (num,), 0, NUM_CORNERS),
        -1,
    )
    some = jax.random.uniform(k_task, (num, n)) < 0.5  # the tasks a partial corner touches
    col = kind[:, None]
    t0 = jnp.where((col == 0) | ((col == 1) & some), 0.0, w.t0)
    # every t0 = 0: no zero-token limit; load the server to `load` at 100 tokens per query
    lam_all_zero = jax.random.uniform(k_load, (num,), dtype, *load) / jnp.sum(
        w.share * w.c * 100.0, -1
    )
    lam = jnp.where(kind == 0, lam_all_zero, w.arrival_rate)
    lam = jnp.where(kind == 2, 16 * jnp.finfo(dtype).tiny, lam)
    alpha = jnp.where(kind == 3, 1e12, w.alpha)
    c = jnp.where((col == 4) & some, 1e-9, w.c)
    b = jnp.where((col == 5) & some, 1e6, w.b)
    A = jnp.where((col == 6) & some, 0.0, w.A)
    return w.replace(A=A, b=b, c=c, t0=t0, arrival_rate=lam, alpha=alpha)
