"""Random workloads for tests, benchmarks and sensitivity studies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

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
    dtype=None,
) -> Workload:
    r"""A batch of `num` random valid workloads with `num_tasks` tasks each (leading axis `num`).

    `alpha`, `b`, `c` and `max_tokens` are log-uniform on their ranges, `t0` uniform, shares
    Dirichlet(1), `A` uniform on [0.05, 0.95] and `D` uniform on [0, 1 - A]. The arrival rate
    is `load` (uniform) times the zero-token stability limit $1/\sum_k \pi_k t_{0k}$, so every
    member is stable at zero tokens.
    """
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
    return Workload(
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
