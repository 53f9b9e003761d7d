"""The randomness of one replication, query by query: Poisson arrivals or a prepared trace,
task types, service-time noise and correctness draws (docs: *Simulation*).

Each replication `r` uses `fold_in(key, r)`, split into separate streams for the arrival gaps,
the task types, the service-time noise and the per-query correctness draws. Every policy in
one call sees the *same* streams (common random numbers), so differences between policies are
not blurred by sampling noise.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._errors import InputError
from .._traffic.replay import PreparedReplay
from .._validate import check_int, check_memory
from .._workload import Workload

__all__ = ["Stream", "NoiseKind", "NOISE_KINDS", "sample_query_stream", "replay_stream"]

NoiseKind = Literal["lognormal", "gamma"]
NOISE_KINDS = ("lognormal", "gamma")


class Stream(eqx.Module):
    """The policy-independent randomness of one replication, query by query.

    `gaps[i]` is the time between arrivals i-1 and i (`gaps[0]` is the first arrival time),
    `task[i]` the query's type, `noise[i]` its mean-one service-time factor and `uniform[i]`
    the uniform draw that decides whether it is answered correctly. `window[i]` (None
    unless budgets change with time) is the window whose budgets query i gets.
    """

    gaps: Float[Array, " q"]
    task: Int[Array, " q"]
    noise: Float[Array, " q"]
    uniform: Float[Array, " q"]
    window: Int[Array, " q"] | None = None

    def budgets(self, tokens: Float[Array, "k n"]) -> Float[Array, " q"]:
        """Each query's value of a per-task (per-window) array of shape `(K, N)`."""
        return tokens[0 if self.window is None else self.window, self.task]

    @property
    def arrival_times(self) -> Float[Array, " q"]:
        return jnp.cumsum(self.gaps)


def _noise(key, num: int, cv, kind: NoiseKind, dtype):
    """Mean-one factors with coefficient of variation `cv` (per query)."""
    cv = jnp.asarray(cv, dtype)
    if kind == "lognormal":
        sigma2 = jnp.log1p(cv * cv)
        z = jax.random.normal(key, (num,), dtype)
        return jnp.exp(jnp.sqrt(sigma2) * z - sigma2 / 2)
    if kind == "gamma":
        positive = cv > 0
        shape = jnp.where(positive, 1 / jnp.where(positive, cv * cv, 1), 1.0)
        g = jax.random.gamma(key, shape, (num,), dtype) / shape
        return jnp.where(positive, g, 1.0)
    raise InputError(f"noise: unknown kind {kind!r}; choose 'lognormal' or 'gamma'")


def sample_query_stream(
    key: PRNGKeyArray,
    w: Workload,
    num_queries: int,
    *,
    service_cv: ArrayLike = 0.0,
    noise: NoiseKind = "lognormal",
) -> Stream:
    r"""Draw one replication's arrivals (Poisson, rate $\lambda$), types (shares $\pi$), noise.

    `service_cv` is a scalar or one value per task type: the coefficient of variation of the
    service time of that type (0 gives the paper's deterministic $t_k(l_k)$).

    Args:
        key: the random key.
        w: a single workload.
        num_queries: queries in the stream.
        service_cv: the service time's coefficient of variation, scalar or per task.
        noise: the service-time noise, `"lognormal"` or `"gamma"`.

    Returns:
        The `Stream`: gaps, task types and service-time factors.
    """
    num_queries = check_int("num_queries", num_queries, 1)
    check_memory(
        8.0 * 4 * num_queries, f"a stream of {num_queries:,} queries", "draw fewer queries"
    )
    dtype = w.dtype
    k_arr, k_type, k_noise, k_correct = (jax.random.fold_in(key, s) for s in range(4))
    gaps = jax.random.exponential(k_arr, (num_queries,), dtype) / w.arrival_rate
    task = jax.random.categorical(k_type, jnp.log(w.share), shape=(num_queries,))
    cv = jnp.broadcast_to(jnp.asarray(service_cv, dtype), (w.num_tasks,))[task]
    return Stream(
        gaps=gaps,
        task=task,
        noise=_noise(k_noise, num_queries, cv, noise, dtype),
        uniform=jax.random.uniform(k_correct, (num_queries,), dtype),
    )


def replay_stream(
    key: PRNGKeyArray,
    w: Workload,
    replay: PreparedReplay,
    *,
    service_cv: ArrayLike = 0.0,
    noise: NoiseKind = "lognormal",
) -> Stream:
    """One replication's stream on a prepared recorded arrival sequence: the gaps (and task
    types, work factors where the trace gives them) are the trace's; task types are drawn by
    the shares otherwise, and noise and correctness draws are random as in
    `sample_query_stream`."""
    dtype = w.dtype
    k_type, k_noise, k_correct = (jax.random.fold_in(key, s) for s in (1, 2, 3))
    q = replay.num_queries
    if replay.task is None:
        task = jax.random.categorical(k_type, jnp.log(w.share), shape=(q,))
    else:
        task = replay.task
    if replay.work is None:
        cv = jnp.broadcast_to(jnp.asarray(service_cv, dtype), (w.num_tasks,))[task]
        factor = _noise(k_noise, q, cv, noise, dtype)
    else:
        factor = replay.work
    return Stream(
        gaps=replay.gaps,
        task=task,
        noise=factor,
        uniform=jax.random.uniform(k_correct, (q,), dtype),
        window=replay.window,
    )
