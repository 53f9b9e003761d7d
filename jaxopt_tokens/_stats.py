"""Statistics shared by the simulator's confidence intervals and the fits' Wald intervals."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ._programs import call

__all__ = ["student_t_quantile", "replication_interval"]


@jax.jit
def student_t_quantile(p: ArrayLike, df: ArrayLike) -> Array:
    r"""Quantile of Student's t distribution with `df` degrees of freedom (for `0.5 <= p < 1`).

    Bisection on the CDF $1 - \tfrac12 I_{df/(df+t^2)}(df/2, 1/2)$ (regularised incomplete
    beta), in float64 if enabled, else float32; accurate to the dtype's precision.
    """
    p = jnp.asarray(p, jnp.result_type(float))
    df = jnp.asarray(df, p.dtype)

    def cdf(t):
        return 1 - 0.5 * jax.scipy.special.betainc(df / 2, 0.5, df / (df + t * t))

    def body(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        below = cdf(mid) < p
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 200, body, (jnp.zeros_like(p), jnp.full_like(p, 1e4)))
    return (lo + hi) / 2


@functools.lru_cache(maxsize=64)
def _t_quantile(p: float, df: int, dtype: str) -> float:
    del dtype  # part of the key: float32 without x64, float64 with it
    # once per (level, replications), a program kept ahead of time where programs are kept
    return float(call("t-quantile", student_t_quantile, np.asarray(p), np.asarray(df)))


def replication_interval(x, level: float = 0.95):
    """(mean, lower, upper) over the last axis (independent replications): a Student-t
    interval at confidence `level`; NaN bounds with fewer than two replications."""
    x = np.asarray(x, dtype=np.float64)
    r = x.shape[-1]
    mean = x.mean(axis=-1)
    if r < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    q = _t_quantile(0.5 + level / 2, r - 1, str(jax.dtypes.canonicalize_dtype(float)))
    half = q * x.std(axis=-1, ddof=1) / math.sqrt(r)
    return mean, mean - half, mean + half
