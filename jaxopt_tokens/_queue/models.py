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
$\alpha \sum_k \pi_k p_k(l_k) - \sum_k \pi_k E[T_k]$, and `solve(w, model=...)` maximises
it (J need not be concave under priority). `simulate(w, tokens, model=...)` simulates each
model; the tests check the formulas against it. Docs: *Latency models*.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._errors import InputError
from .._implicit import dense_tangent, mg1_tangent
from .._integer import MAX_EXHAUSTIVE_TASKS
from .._kkt import kkt_residual, objective_gradient, residual_floor
from .._objective import mean_accuracy, objective, service_moments
from .._validate import is_concrete
from .._workload import Workload

__all__ = [
    "AbstractSingleServer",
    "LatencyModel",
    "FIFO",
    "Priority",
    "ProcessorSharing",
    "Kingman",
    "TimeVarying",
    "latency_objective",
    "check_service_cv",
]


def _cv(service_cv, w: Workload):
    return jnp.broadcast_to(jnp.asarray(service_cv, w.dtype), w.A.shape)


class LatencyModel(eqx.Module):
    r"""A server's mean system time per task type as a function of the budgets.

    A model is part of the *problem* a solver is given (`solve(w, model=...)`), never a
    setting of the solver. Besides `system_times` (the one method a model must define) it
    supplies what the solvers and the implicit derivative need, each with a default that
    holds for any smooth model:

    - `check(w)`: eager checks of the model against a workload (`InputError`);
    - `effective_workload(w)`: the workload the model reads (e.g. a batching server ignores
      the M/G/1 service line);
    - `objective`, `value_and_grad`, `mean_system_time`: J and its gradient;
    - `load(tokens, w)`: the server's load; the model is stable where it is below 1 (validity
      requires it at zero tokens);
    - `residual`, `residual_floor`: the certificate on the box $[0, l_{\max}]$ and the rounding
      floor below which it cannot be pushed;
    - `implicit_tangent`: the derivative of the optimal budgets (dense KKT system);
    - `structure`: how J couples the tasks, which decides the default solver;
    - `relaxation()`: a simpler model whose optimum starts the general solver.

    Docs: *Latency models*.
    """

    #: which simulator `simulate` runs for this model (`"fifo"`, `"priority"`, `"ps"` or
    #: `"batching"`)
    discipline: ClassVar[str] = ""
    #: whether the model describes a recorded arrival process (simulated only on a trace)
    describes_arrivals: ClassVar[bool] = False

    @abc.abstractmethod
    def system_times(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
        """$E[T_k]$ per task type; `+inf` where the queue is unstable."""

    @property
    def structure(self) -> str:
        """How J couples the tasks: `"mg1"` (through $E[S]$ and $E[S^2]$ as in eq. (7): the
        budgets are closed-form given two prices), `"mean_work"` (through the mean work alone:
        one price) or `"general"`."""
        return "general"

    def check(self, w: Workload) -> None:
        """Raise `InputError` when the model cannot serve `w` (shape or settings)."""

    def valid(self, w: Workload):
        """Whether the model's own parameters are in its domain, per member (they may be
        traced: an invalid member is then `INVALID_INPUT`, never solved); True by default."""
        return jnp.asarray(True)

    def effective_workload(self, w: Workload) -> Workload:
        """The workload this model reads: `w` itself by default."""
        return w

    def objective(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        """J under this model (`latency_objective`)."""
        return latency_objective(tokens, w, self)

    def value_and_grad(
        self, tokens: Float[Array, " n"], w: Workload
    ) -> tuple[Float[Array, ""], Float[Array, " n"]]:
        """J and its gradient in the budgets at `tokens` (one member)."""
        return jax.value_and_grad(self.objective)(tokens, w)

    def mean_system_time(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        r"""$\sum_k \pi_k E[T_k]$; `+inf` when the queue is unstable."""
        return jnp.sum(w.share * self.system_times(tokens, w), axis=-1)

    def load(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        r"""The server's load: $\lambda E[S]$ of the M/G/1 service line by default. Stable
        where below 1."""
        return w.arrival_rate * service_moments(tokens, w)[0]

    def residual(self, tokens: Float[Array, " n"], w: Workload) -> Float[Array, ""]:
        r"""Scale-free projected KKT residual of J on the box $[0, l_{\max}]$: per task, the
        imbalance between the marginal value of accuracy and the marginal latency cost relative
        to their size, in the directions the box allows (what `kkt_residual` is for the
        paper's model); `+inf` where J is not finite."""
        gain = jax.grad(lambda l: jnp.sum(w.alpha * mean_accuracy(l, w)))(tokens)
        cost = jax.grad(lambda l: jnp.sum(self.mean_system_time(l, w)))(tokens)
        g = gain - cost
        blocked = ((tokens <= 0) & (g <= 0)) | ((tokens >= w.max_tokens) & (g >= 0))
        rel = jnp.abs(g) / (jnp.abs(gain) + jnp.abs(cost) + jnp.finfo(tokens.dtype).tiny)
        res = jnp.max(jnp.where(blocked, 0, rel))
        finite = jnp.isfinite(self.mean_system_time(tokens, w))
        return jnp.where(finite & jnp.isfinite(res), res, jnp.inf)

    def residual_floor(self, tokens: Float[Array, " n"], w: Workload) -> Float[Array, ""]:
        """The smallest residual the dtype can certify at `tokens` (0 by default)."""
        return jnp.zeros((), jnp.result_type(tokens, w.dtype))

    def implicit_tangent(self, w: Workload, tokens, ok, w_dot: Workload) -> Float[Array, " n"]:
        r"""$\dot l^*$ in the direction `w_dot` at the optimum `tokens` of one member (zero where
        `ok` is false): the dense Newton system of $\nabla_l J = 0$ on the free budgets."""
        return dense_tangent(self.objective, w, tokens, ok, w_dot)

    def relaxation(self) -> LatencyModel:
        """A model with a closed-form structure whose optimum starts the general solver: the
        paper's (`FIFO()`) by default."""
        return FIFO()

    def integer_budgets(self, tokens: Float[Array, " n"], w: Workload) -> Float[Array, " n"]:
        """The best floor/ceil combination of `tokens` under this model's J (eq. (39) with the
        model's objective); above `MAX_EXHAUSTIVE_TASKS` tasks: rounded to nearest."""
        n = w.num_tasks
        lo = jnp.floor(tokens)
        cap = jnp.floor(w.max_tokens)
        if n > MAX_EXHAUSTIVE_TASKS:
            return jnp.clip(jnp.round(tokens), 0, cap)
        bits = (jnp.arange(2**n)[:, None] >> jnp.arange(n)[None, :]) & 1
        combos = jnp.clip(lo + bits.astype(tokens.dtype), 0, cap)
        values = jax.vmap(lambda l: self.objective(l, w))(combos)
        return combos[jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))]


def _check_scv(value) -> None:
    """A concrete `arrival_scv`: a real, finite scalar >= 0 (not a bool, string or complex)."""
    if not is_concrete(value):
        return  # traced: judged per member by `Kingman.valid`
    bad = isinstance(value, (bool, str, bytes, np.bool_)) or np.iscomplexobj(value)
    if not bad:
        try:
            ca = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            bad = True
        else:
            bad = ca.ndim != 0 or not (np.isfinite(ca) and ca >= 0) or ca.dtype == np.bool_
    if bad:
        raise InputError(f"arrival_scv: a finite real scalar >= 0, got {value!r}")


def _outside_inf(tokens, times):
    """`times` with `+inf` for every member whose budgets leave the model (a negative or NaN
    budget): such a member has no finite latency, never a negative one."""
    outside = jnp.any(~(tokens >= 0), axis=-1, keepdims=True)
    return jnp.where(outside, jnp.inf, times)


def _moments(tokens, w: Workload, service_cv):
    t = w.t0 + w.c * tokens
    cv = _cv(service_cv, w)
    return t, w.arrival_rate[..., None] * w.share * t, w.share * t * t * (1 + cv * cv)


class AbstractSingleServer(LatencyModel):
    """One server with a queue discipline (`discipline`: what `simulate` runs event by
    event) and service times of coefficient of variation `service_cv` per task type. FIFO,
    Kingman, Priority, ProcessorSharing and TimeVarying are single servers; the batching
    server is not.

    Attributes:
        service_cv: the coefficient of variation of each task type's service time (a scalar or
            one per task).
    """

    service_cv: eqx.AbstractVar[ArrayLike]

    def priority_order(self, w: Workload) -> tuple[int, ...]:
        """Task indices from the first served to the last (all equal here: task order)."""
        return tuple(range(w.num_tasks))


class FIFO(AbstractSingleServer):
    """First come, first served; service time of type k has coefficient of variation
    `service_cv` (a scalar or one value per task).

    `FIFO()` (deterministic service) is the paper's model, eq. (7), and the default of
    every solver: its objective, gradient, certificate and implicit derivative are the
    closed forms of eqs. (10)-(17), and its default solver is `AggregateNewton`.

    Attributes:
        service_cv: the coefficient of variation of each task type's service time (a scalar or
            one per task; 0 is deterministic service).
    """

    service_cv: ArrayLike = 0.0
    discipline: ClassVar[str] = "fifo"

    @property
    def deterministic(self) -> bool:
        """Whether the service is deterministic (`service_cv` a Python zero): the paper's model."""
        cv = self.service_cv
        return isinstance(cv, (int, float)) and not isinstance(cv, bool) and cv == 0

    @property
    def structure(self) -> str:
        return "mg1" if self.deterministic else "general"

    def check(self, w: Workload) -> None:
        if is_concrete(self.service_cv):
            check_service_cv(self.service_cv, w.num_tasks)

    def objective(self, tokens, w):
        if self.deterministic:
            return objective(tokens, w)
        return super().objective(tokens, w)

    def value_and_grad(self, tokens, w):
        if self.deterministic:
            return objective(tokens, w), objective_gradient(tokens, w)
        return super().value_and_grad(tokens, w)

    def residual(self, tokens, w):
        if self.deterministic:
            return kkt_residual(tokens, w)
        return super().residual(tokens, w)

    def residual_floor(self, tokens, w):
        if self.deterministic:
            return residual_floor(tokens, w)
        return super().residual_floor(tokens, w)

    def implicit_tangent(self, w, tokens, ok, w_dot):
        if self.deterministic:
            return mg1_tangent(w, tokens, ok, w_dot)
        return super().implicit_tangent(w, tokens, ok, w_dot)

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
        return _outside_inf(tokens, wait + t)


class Priority(AbstractSingleServer):
    """Non-preemptive priority by task type, FIFO within a type (Cobham's formula).

    `order`: task indices from highest to lowest priority (static), e.g. `(5, 1, 4, 0, 2, 3)`.
    Stable iff the total load is below 1; a class whose cumulative load reaches 1 waits forever.

    Attributes:
        order: task indices from the highest priority to the lowest.
        service_cv: the coefficient of variation of each task type's service time.
    """

    order: tuple[int, ...] = eqx.field(static=True)
    service_cv: ArrayLike
    discipline: ClassVar[str] = "priority"

    def __init__(self, order, service_cv: ArrayLike = 0.0):
        """`order` (task indices, highest priority first) and `service_cv`."""
        self.order = order
        self.service_cv = service_cv

    def check(self, w: Workload) -> None:
        """`InputError` unless `order` is a permutation of the task indices (and the
        coefficients of variation are valid)."""
        n = w.num_tasks
        if sorted(self.order) != list(range(n)):
            raise InputError(
                f"order: must be a permutation of the {n} task indices, got {self.order}"
            )
        if is_concrete(self.service_cv):
            check_service_cv(self.service_cv, n)

    def priority_order(self, w: Workload) -> tuple[int, ...]:
        """`order`: the task indices from the highest priority to the lowest."""
        return tuple(self.order)

    def system_times(self, tokens, w):
        if sorted(self.order) != list(range(w.num_tasks)):
            self.check(w)
        t, rho_k, m2_k = _moments(tokens, w, self.service_cv)
        perm = jnp.asarray(self.order)
        sigma = jnp.cumsum(rho_k[..., perm], -1)  # load served before or with each class, in order
        before = sigma - rho_k[..., perm]
        W0 = w.arrival_rate[..., None] * jnp.sum(m2_k, -1, keepdims=True) / 2
        ok = sigma < 1
        denom = jnp.where(ok, (1 - before) * (1 - sigma), 1)
        wait_sorted = jnp.where(ok, W0 / denom, jnp.inf)
        wait = jnp.zeros_like(wait_sorted).at[..., perm].set(wait_sorted)
        return _outside_inf(tokens, wait + t)


class ProcessorSharing(AbstractSingleServer):
    r"""Egalitarian processor sharing: $E[T_k] = t_k / (1 - \rho)$ (M/G/1-PS).

    The mean does not depend on the service-time distribution; `service_cv` (the coefficient
    of variation of the service times, scalar or per task) matters only to the simulator and
    the tails.

    Attributes:
        service_cv: the coefficient of variation of each task type's service time.
    """

    service_cv: ArrayLike = 0.0
    discipline: ClassVar[str] = "ps"

    def check(self, w: Workload) -> None:
        if is_concrete(self.service_cv):
            check_service_cv(self.service_cv, w.num_tasks)

    def system_times(self, tokens, w):
        t, rho_k, _ = _moments(tokens, w, 0.0)
        rho = jnp.sum(rho_k, -1, keepdims=True)
        stable = rho < 1
        return _outside_inf(tokens, jnp.where(stable, t / jnp.where(stable, 1 - rho, 1), jnp.inf))


def latency_objective(
    tokens: Float[Array, "*b n"], w: Workload, model: LatencyModel
) -> Float[Array, "*b"]:
    r"""$J(l) = \alpha \sum_k \pi_k p_k(l_k) - \sum_k \pi_k E[T_k](l)$ under `model` (eq. (7)
    generalised).

    Args:
        tokens: the budgets, one per task on the last axis.
        w: the workload.
        model: the latency model giving each task's mean system time.

    Returns:
        J under `model`, with the batch shape.
    """
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


class Kingman(AbstractSingleServer):
    r"""First come, first served under renewal (non-Poisson) arrivals: Kingman's GI/G/1
    approximation (Allen-Cunneen for one server).

    $E[W] \approx \frac{c_a^2 + c_s^2}{2} \frac{\rho}{1-\rho} E[S]
    = \lambda \frac{E[S^2] + (c_a^2 - 1) E[S]^2}{2(1-\rho)}$, with $c_a^2$ = `arrival_scv`
    the squared coefficient of variation of the inter-arrival times and $c_s^2$ that of the
    service time (the task mix and `service_cv`). With `arrival_scv=1` it is the
    Pollaczek-Khinchine mean wait of `FIFO(service_cv)`. `arrival_scv` may be measured from a
    trace (`arrival_scv`); docs *Real traffic* say at which time scale, and where it holds.

    Attributes:
        service_cv: the coefficient of variation of each task type's service time.
        arrival_scv: $c_a^2$, the squared coefficient of variation of the inter-arrival times.
    """

    service_cv: ArrayLike = 0.0
    arrival_scv: ArrayLike = 1.0
    discipline: ClassVar[str] = "fifo"
    describes_arrivals: ClassVar[bool] = True

    def __check_init__(self):
        _check_scv(self.arrival_scv)

    def check(self, w: Workload) -> None:
        if is_concrete(self.service_cv):
            check_service_cv(self.service_cv, w.num_tasks)
        _check_scv(self.arrival_scv)

    def valid(self, w: Workload):
        ca = jnp.asarray(self.arrival_scv)
        return jnp.isfinite(ca) & (ca >= 0)

    def system_times(self, tokens, w):
        t, rho_k, m2_k = _moments(tokens, w, self.service_cv)
        lam = w.arrival_rate[..., None]
        rho = jnp.sum(rho_k, -1, keepdims=True)
        mean = jnp.sum(w.share * t, -1, keepdims=True)
        ca2 = jnp.asarray(self.arrival_scv, t.dtype)
        second = jnp.sum(m2_k, -1, keepdims=True) + (ca2 - 1) * mean * mean
        stable = rho < 1
        wait = jnp.where(stable, lam * second / (2 * jnp.where(stable, 1 - rho, 1)), jnp.inf)
        return _outside_inf(tokens, wait + t)


def _check_single_server(base) -> None:
    """`InputError` unless `base` is a single server other than a `TimeVarying`."""
    if not isinstance(base, AbstractSingleServer) or isinstance(base, TimeVarying):
        raise InputError(
            "base: FIFO, Kingman, Priority or ProcessorSharing (a single server), got "
            f"{type(base).__name__}"
        )


class TimeVarying(AbstractSingleServer):
    r"""A piecewise-stationary server: the arrival rate is $f_j \lambda$ in window j, and a
    request sees the steady state of `base` at its window's rate.

    $E[T_k] = \sum_j q_j E[T_k]^{\text{base}}(\lambda f_j)$ with $q_j$ the share of requests
    that arrive in window j (`weights`); `+inf` when any window with requests is overloaded.
    It holds when windows are long against the queue's relaxation time and the rate within a
    window is steady, and rates differ between windows by more than their counting noise
    (docs *Real traffic*, where it is measured against replay). `TimeVarying.from_trace`
    measures $f_j$, $q_j$. The workload's `arrival_rate` is the mean rate $\lambda$;
    $\sum_j q_j f_j^{-1}$ need not be 1 (windows of different activity).

    Attributes:
        rate_factors: $f_j$, each window's rate over the mean rate.
        weights: $q_j$, the share of requests in each window (normalised to sum to 1).
        base: the single server each window runs (default `FIFO()`).
    """

    rate_factors: Float[Array, " k"]
    weights: Float[Array, " k"]
    base: AbstractSingleServer
    describes_arrivals: ClassVar[bool] = True

    def __init__(self, rate_factors, weights, base: AbstractSingleServer | None = None):
        """Check and store the windows: finite, non-negative factors and weights, one each
        per window; windows without requests are dropped and the weights normalised."""
        base = FIFO() if base is None else base
        _check_single_server(base)
        for name, value in (("rate_factors", rate_factors), ("weights", weights)):
            if isinstance(value, (str, bytes)) or np.asarray(value).dtype.kind not in "iuf":
                raise InputError(f"{name}: real numbers, one per window, got {value!r}")
        f = np.asarray(rate_factors, dtype=float)
        q = np.asarray(weights, dtype=float)
        if f.ndim != 1 or f.shape != q.shape or f.size == 0:
            raise InputError(
                f"rate_factors, weights: one value per window each, got {f.shape} and {q.shape}"
            )
        if not (np.all(np.isfinite(f)) and np.all(f >= 0)):
            raise InputError("rate_factors: must be finite and >= 0")
        if not (np.all(np.isfinite(q)) and np.all(q >= 0) and q.sum() > 0):
            raise InputError("weights: must be finite, >= 0 and not all zero")
        keep = q > 0  # windows without requests do not count
        q = q[keep] / q[keep].max()  # scaled first: a sum of huge weights would overflow
        self.rate_factors = jnp.asarray(f[keep])
        self.weights = jnp.asarray(q / q.sum())
        self.base = base

    def __check_init__(self):
        _check_single_server(self.base)

    @classmethod
    def from_trace(
        cls, trace, window: float, base: AbstractSingleServer | None = None
    ) -> TimeVarying:
        """The windows of `trace` (a `Trace`) of `window` seconds: each one's rate over the
        trace's mean rate, weighted by its requests."""
        if not hasattr(trace, "window_rates"):
            raise InputError(f"trace: expected a Trace (read_trace), got {type(trace).__name__}")
        rates, weights = trace.window_rates(window)
        return cls(
            rate_factors=rates / trace.mean_rate,
            weights=weights,
            base=FIFO() if base is None else base,
        )

    @property
    def service_cv(self):  # type: ignore[override]
        """The base server's coefficient of variation of service (what the simulator uses)."""
        return self.base.service_cv

    @property
    def discipline(self) -> str:  # type: ignore[override]
        """The base server's discipline: the simulator runs the base's queue."""
        return self.base.discipline

    def priority_order(self, w: Workload) -> tuple[int, ...]:
        """The base server's order of service."""
        return self.base.priority_order(w)

    def check(self, w: Workload) -> None:
        self.base.check(w)

    def system_times(self, tokens, w):
        f = jnp.asarray(self.rate_factors, w.dtype)
        q = jnp.asarray(self.weights, w.dtype)
        per = jax.vmap(
            lambda fj: self.base.system_times(tokens, w.replace(arrival_rate=w.arrival_rate * fj))
        )(f)
        return jnp.tensordot(q, per, axes=1)

    def load(self, tokens, w):
        f = jnp.asarray(self.rate_factors, w.dtype)
        return jnp.max(f) * self.base.load(tokens, w)
