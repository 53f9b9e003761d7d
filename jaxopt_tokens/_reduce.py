"""Several reductions over the task axis in one pass.

`task_reduce(sums, maxima)` reduces each term over the last axis with one variadic
`lax.reduce` instead of one `jnp.sum` / `jnp.max` each. XLA compiles the variadic reduce to a
single loop that computes every term and every reduction together; separate reductions each
get their own pass over the per-task arrays (and on CPU are handed one by one to a library
kernel that is slow for rows as short as a workload's task axis; the difference for the
default solver's step is measured in `benchmarks/README.md`). The sums are the same as
sequential sums up to the order of addition. Used inside the solvers' steps, which are never
differentiated (a variadic reduce has no derivative rule). The compiler drops the reduction
of an output nobody uses, and a reduce left with one output can go back to the library
kernel: the default solver's residual reduces its two directions, both used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["task_reduce"]


def task_reduce(
    sums: tuple[Float[Array, "*b n"], ...], maxima: tuple[Float[Array, "*b n"], ...] = ()
) -> tuple[tuple[Float[Array, "*b"], ...], tuple[Float[Array, "*b"], ...]]:
    """`(tuple(jnp.sum(x, -1) for x in sums), tuple(jnp.max(x, -1) for x in maxima))`,
    computed in one pass (module docstring); the terms must share a shape and dtype."""
    terms = (*sums, *maxima)
    init = tuple(jnp.zeros((), x.dtype) for x in sums) + tuple(
        jnp.full((), -jnp.inf, x.dtype) for x in maxima
    )
    k = len(sums)

    def combine(a, b):
        return tuple(
            x + y if i < k else jnp.maximum(x, y) for i, (x, y) in enumerate(zip(a, b, strict=True))
        )

    out = jax.lax.reduce(terms, init, combine, (terms[0].ndim - 1,))
    return tuple(out[:k]), tuple(out[k:])
