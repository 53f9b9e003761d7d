"""The objective of the queueing paper, eqs. (1)-(7), as pure JAX functions.

Every function takes `(tokens, workload)` with `tokens` of shape `(..., N)` and is safe to
`jit`, `vmap`, `grad` and `hessian`. Outside the stability region (utilization >= 1) the
mean wait is `+inf` and J is `-inf`; gradients there are zero, never NaN ("double where").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._workload import Workload

__all__ = [
    "service_times",
    "service_moments",
    "utilization",
    "mean_wait",
    "mean_system_time",
    "task_accuracy",
    "mean_accuracy",
    "objective",
    "pk_wait",
]


def service_times(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
    """Per-type service time $t_k = t_{0k} + c_k l_k$, eq. (1).

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        The service time of each task type (seconds), shaped like `tokens`.
    """
    return w.t0 + w.c * tokens


def service_moments(
    tokens: Float[Array, "*b n"], w: Workload
) -> tuple[Float[Array, "*b"], Float[Array, "*b"]]:
    """$(E[S], E[S^2])$ of the service-time mixture, eq. (3); `+inf` for budgets outside the
    model (negative or NaN), so the latencies built on them are never negative.

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        `(E[S], E[S^2])`, each with the batch shape.
    """
    t = service_times(tokens, w)
    outside = jnp.any(~(tokens >= 0), axis=-1)
    m1 = jnp.where(outside, jnp.inf, jnp.sum(w.share * t, axis=-1))
    return m1, jnp.where(outside, jnp.inf, jnp.sum(w.share * t * t, axis=-1))


def utilization(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
    r"""Server utilization $\rho = \lambda E[S]$; the queue is stable iff $\rho < 1$, eq. (4).

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        The server's utilization, with the batch shape.
    """
    return w.arrival_rate * service_moments(tokens, w)[0]


def pk_wait(lam, m1, m2):
    """The Pollaczek-Khinchine mean wait from the arrival rate and the service moments, eq. (5)."""
    rho = lam * m1
    stable = rho < 1
    gap = jnp.where(stable, 1 - rho, 1)  # double where: the untaken branch stays finite
    return jnp.where(stable, lam * m2 / (2 * gap), jnp.inf)


def mean_wait(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
    r"""Pollaczek-Khinchine mean wait $E[W] = \lambda E[S^2] / (2(1-\rho))$, eq. (5); `+inf` if
    unstable.

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        The mean wait in seconds, with the batch shape.
    """
    m1, m2 = service_moments(tokens, w)
    return pk_wait(w.arrival_rate, m1, m2)


def mean_system_time(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
    """Mean time in system $E[T] = E[W] + E[S]$, eq. (6).

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        The mean time in system in seconds, with the batch shape.
    """
    m1, m2 = service_moments(tokens, w)
    return pk_wait(w.arrival_rate, m1, m2) + m1


@jax.custom_jvp
def _saturation(x):
    """$1 - e^{-x}$, accurate for small x (`expm1`) and with the derivative $e^{-x}$ itself:
    JAX's rule for `expm1` differentiates as `expm1(-x) + 1`, which cancels for large x (a
    relative error of eps / e^{-x}, 1e-7 at x = 23) and would corrupt gradients and the
    certificate of budgets deep in the flat part of a curve."""
    return -jnp.expm1(-x)


@_saturation.defjvp
def _saturation_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return _saturation(x), jnp.exp(-x) * dx


def task_accuracy(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
    """Per-type accuracy $p_k = A_k (1 - e^{-b_k l_k}) + D_k$, eq. (2).

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        The accuracy of each task type, shaped like `tokens`.
    """
    return w.A * _saturation(w.b * tokens) + w.D


def mean_accuracy(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
    r"""Share-weighted mean accuracy $\sum_k \pi_k p_k(l_k)$.

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        The mean accuracy, with the batch shape.
    """
    return jnp.sum(w.share * task_accuracy(tokens, w), axis=-1)


def objective(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
    r"""$J(l) = \alpha \sum_k \pi_k p_k(l_k) - E[W] - E[S]$, eq. (7); `-inf` when unstable.

    Strictly concave on the stability region (Lemma 1): `jax.grad` gives eq. (10)/(15) and
    `jax.hessian` eq. (11)/(33).

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        $J$, with the batch shape.
    """
    return w.alpha * mean_accuracy(tokens, w) - mean_system_time(tokens, w)
