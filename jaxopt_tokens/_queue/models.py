r"""Latency models of the single server beyond the paper's FIFO M/G/1 with deterministic service.

The paper's objective (7) charges the mean system time of a FIFO M/G/1 queue whose service
time for type k is exactly $t_k(l_k)$ (eqs. (3)-(6)). The models here keep the Poisson
arrivals and the accuracy term and change the latency term $E[T] = \sum_k \pi_k E[T_k]$:

- `FIFO(service_cv)`: random service times with coefficient of variation $cv_k$ per type,
  $\mathrm{var}_k = (cv_k t_k)^2$, so $E[S^2] = \sum_k \pi_k t_k^2 (1 + cv_k^2)$ in the
  Pollaczek-Khinchine mean wait (5); `cv = 0` is the paper's model.
- `Priority(order, service_cv)`: non-preemptive priority by task type (Cobham's formula):
  with $\sigma_j$ the load of the classes served before or with class j,
  $E[W_j] = W_0 / ((1 - \sigma_{j-1})(1 - \sigma_j))$, $W_0 = \lambda E[S^2] / 2$.
- `ProcessorSharing()`: the server splits its rate equally among the queries present;
  $E[T_k] = t_k / (1 - \rho)$ (insensitive to the service-time distribution).

Each model gives per-type mean system times `system_times(tokens, w)`; `objective` is
$\alpha \sum_k \pi_k p_k(l_k) - \sum_k \pi_k E[T_k]$, and `solve_latency` maximises it by
spectral projected gradient (J need not be concave under priority). `simulate(...,
discipline=...)` simulates each model; the tests check the formulas against it.
Docs: *Latency models*.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._errors import InputError
from .._objective import mean_accuracy
from .._workload import Workload

__all__ = [
    "LatencyModel",
    "FIFO",
    "Priority",
    "ProcessorSharing",
    "latency_objective",
    "check_service_cv",
]


def _cv(service_cv, w: Workload):
    return jnp.broadcast_to(jnp.asarray(service_cv, w.dtype), w.A.shape)


class LatencyModel(eqx.Module):
    """Mean system time per task type as a function of the budgets."""

    @abc.abstractmethod
    def system_times(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
        """$E[T_k]$ per task type; `+inf` where the queue is unstable."""

    def objective(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        """J under this model (`latency_objective`)."""
        return latency_objective(tokens, w, self)

    def residual(
        self, tokens: Float[Array, " n"], upper: Float[Array, " n"], w: Workload
    ) -> Float[Array, ""]:
        """Scale-free projected KKT residual of J on the box $[0, u]$: per task, the imbalance
        between the marginal value of accuracy and the marginal latency cost relative to
        their size, in the directions the box allows (what `kkt_residual` is for FIFO)."""
        gain = jax.grad(lambda l: jnp.sum(w.alpha * mean_accuracy(l, w)))(tokens)
        cost = jax.grad(lambda l: jnp.sum(self.mean_system_time(l, w)))(tokens)
        g = gain - cost
        blocked = ((tokens <= 0) & (g <= 0)) | ((tokens >= upper) & (g >= 0))
        rel = jnp.abs(g) / (jnp.abs(gain) + jnp.abs(cost) + jnp.finfo(tokens.dtype).tiny)
        return jnp.max(jnp.where(blocked, 0, rel))

    def mean_system_time(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        r"""$\sum_k \pi_k E[T_k]$; `+inf` when the queue is unstable."""
        return jnp.sum(w.share * self.system_times(tokens, w), axis=-1)

    def integer_budgets(self, tokens: Float[Array, " n"], w: Workload) -> Float[Array, " n"]:
        """The best floor/ceil combination of `tokens` under this model's J (eq. (39) with the
        model's objective); more than 16 tasks: rounded to nearest."""
        n = w.num_tasks
        lo = jnp.floor(tokens)
        cap = jnp.floor(w.max_tokens)
        if n > 16:
            return jnp.clip(jnp.round(tokens), 0, cap)
        bits = (jnp.arange(2**n)[:, None] >> jnp.arange(n)[None, :]) & 1
        combos = jnp.clip(lo + bits.astype(tokens.dtype), 0, cap)
        values = jax.vmap(lambda l: self.objective(l, w))(combos)
        return combos[jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))]


def _moments(tokens, w: Workload, service_cv):
    t = w.t0 + w.c * tokens
    cv = _cv(service_cv, w)
    return t, w.arrival_rate[..., None] * w.share * t, w.share * t * t * (1 + cv * cv)


class FIFO(LatencyModel):
    """First come, first served; service time of type k has coefficient of variation
    `service_cv`."""

    service_cv: ArrayLike = 0.0

    def system_times(self, tokens, w):
        t, rho_k, m2_k = _moments(tokens, w, self.service_cv)
        rho = jnp.sum(rho_k, -1, keepdims=True)
        stable = rho < 1
        wait = jnp.where(
            stable,
            w.arrival_rate[..., None]
            * jnp.sum(m2_k, -1, keepdims=True)
            / (2 * jnp.where(stable, 1 - rho, 1)),
            jnp.inf,
        )
        return wait + t


class Priority(LatencyModel):
    """Non-preemptive priority by task type, FIFO within a type (Cobham's formula).

    `order`: task indices from highest to lowest priority (static), e.g. `(5, 1, 4, 0, 2, 3)`.
    Stable iff the total load is below 1; a class whose cumulative load reaches 1 waits forever.
    """

    order: tuple[int, ...] = eqx.field(static=True)
    service_cv: ArrayLike = 0.0

    def check(self, num_tasks: int) -> None:
        """`InputError` unless `order` is a permutation of the `num_tasks` task indices."""
        if sorted(self.order) != list(range(num_tasks)):
            raise InputError(
                f"order: must be a permutation of the {num_tasks} task indices, got {self.order}"
            )

    def system_times(self, tokens, w):
        self.check(w.num_tasks)
        t, rho_k, m2_k = _moments(tokens, w, self.service_cv)
        perm = jnp.asarray(self.order)
        sigma = jnp.cumsum(rho_k[..., perm], -1)  # load served before or with each class, in order
        before = sigma - rho_k[..., perm]
        W0 = w.arrival_rate[..., None] * jnp.sum(m2_k, -1, keepdims=True) / 2
        ok = sigma < 1
        denom = jnp.where(ok, (1 - before) * (1 - sigma), 1)
        wait_sorted = jnp.where(ok, W0 / denom, jnp.inf)
        wait = jnp.zeros_like(wait_sorted).at[..., perm].set(wait_sorted)
        return wait + t


class ProcessorSharing(LatencyModel):
    r"""Egalitarian processor sharing: $E[T_k] = t_k / (1 - \rho)$ (M/G/1-PS)."""

    def system_times(self, tokens, w):
        t, rho_k, _ = _moments(tokens, w, 0.0)
        rho = jnp.sum(rho_k, -1, keepdims=True)
        stable = rho < 1
        return jnp.where(stable, t / jnp.where(stable, 1 - rho, 1), jnp.inf)


def latency_objective(
    tokens: Float[Array, "*b n"], w: Workload, model: LatencyModel
) -> Float[Array, "*b"]:
    r"""$J(l) = \alpha \sum_k \pi_k p_k(l_k) - \sum_k \pi_k E[T_k](l)$ under `model` (eq. (7)
    generalised)."""
    return w.alpha * mean_accuracy(tokens, w) - model.mean_system_time(tokens, w)


def check_service_cv(service_cv, num_tasks: int) -> np.ndarray:
    """Validate a scalar or per-task coefficient of variation; raise `InputError` naming the
    field."""
    cv = np.asarray(service_cv, dtype=float)
    if cv.ndim > 1 or (cv.ndim == 1 and cv.shape[0] != num_tasks):
        raise InputError(
            f"service_cv: a scalar or one value per task ({num_tasks}), got shape {cv.shape}"
        )
    if not np.all(np.isfinite(cv)) or np.any(cv < 0):
        raise InputError(f"service_cv: must be finite and >= 0, got {service_cv!r}")
    return cv
