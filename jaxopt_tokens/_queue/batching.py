r"""A continuously batching LLM server (vLLM, SGLang, TensorRT-LLM) as a queueing model.

The engine runs in decode *steps*: a step with $n$ running requests takes
$\tau_0 + \tau_1 n$ seconds and gives each of them one token. A request of type k needs
$w_k = p_k + l_k + a_k$ steps of work: its prefill cost $p_k$ (in decode-step equivalents),
its thinking budget $l_k$ and its answer length $a_k$. At most `max_batch` requests run at
once; the rest wait in FIFO order and are admitted at step boundaries, as are new arrivals.
(The workload's `t0, c`, the M/G/1 service line, play no part here: the step time replaces
them; the accuracy curves, shares, arrival rate and alpha are the workload's.)

**Unlimited batch.** The server is a processor-sharing queue whose total service rate
$n / (\tau_0 + \tau_1 n)$ (tokens per second) depends on the number present: a symmetric
queue in Kelly's sense, so the number in system does not depend on the distribution of the
work, and with a linear step time it is negative binomial with shape
$r = \tau_0/\tau_1 + 1$ and parameter $q = \lambda \tau_1 E[w]$. By Little's law the mean
time in service is $(\tau_0 + \tau_1) E[w] / (1 - q)$, and $E[T \mid w]$ is proportional to
$w$. Stable iff $q < 1$.

**Step boundaries.** An arrival that finds $n \ge 1$ requests running waits for the current
step to end: on average half a step, $R = \tfrac12 \sum_{n \ge 1} P(n) (\tau_0 + \tau_1 n)$
(time-average $P$, by PASTA).

**Limited batch** (`max_batch` $= B$): an approximation. The number in system is taken as
the birth-death chain with death rate $\min(n, B) / (E[w] (\tau_0 + \tau_1 \min(n, B)))$
(exact in distribution for exponential work, and for any work when no request ever waits for
a slot). Its waiting-room delay $W_q$ is scaled by $(1 + c_w^2)/2$, $c_w$ the coefficient of
variation of the work (an M/G/c-style correction: the chain alone misses the waiting room's
dependence on the work's variability near capacity; the docs page shows both against the
simulator), the step residual is counted only for arrivals
that find a free slot, and the time in service is $E[\min(N, B)]/\lambda$. Stable iff
$\lambda E[w] (\tau_0 + \tau_1 B) / B < 1$. Per type,
$E[T_k] = W_q + R + w_k \cdot (\text{time in service}) / E[w]$. Checked against the
simulator (`simulate`) in the tests; docs: *Continuous batching*.

**Replicas** (`replicas` $= c$). `routing="random"`: every replica sees $\lambda / c$
(exact from the one-server model). `routing="shortest_queue"` (join the replica with the
fewest requests present) or `"least_loaded"` (the fewest decode steps of work outstanding):
an approximation, the *pooled* server, as if the $N$ requests present were always spread
evenly over the replicas. Its total rate is the balanced split's,
$\phi(n) = \sum_j \min(m_j, B)/(\tau_0 + \tau_1 \min(m_j, B))$ with the $m_j$ differing by at
most one; with a `max_batch` the chain on $n \le cB$ is solved exactly and a geometric tail
added (the waiting room corrected as above); unlimited, $\phi(n) = n / (\tau_0 + \tau_1
\max(1, n/c))$ (the balanced split at $n \le c$ and at multiples of $c$, Jensen's bound in
between), whose distribution is Poisson below $c$ and negative binomial above (regularized
incomplete beta tails). An arrival waits for a step boundary when the replica it joins,
holding $\lfloor n/c \rfloor$ requests, is busy. Measured against the simulator on the
docs page; with an unlimited batch the routing changes the mean by at most a fraction
$\tau_1 / (\tau_0 + \tau_1)$, with a binding `max_batch` it pools the waiting rooms.

Everything is a pure JAX function of the budgets, with gradients; an unstable configuration
gives `+inf`, never NaN. Left out: KV-cache preemption and swapping, speculative decoding,
prefill/decode disaggregation, chunked-prefill interference with decode steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._choices import DEFAULT_ANSWER_TOKENS, ROUTINGS
from .._errors import InputError
from .._workload import Workload
from .models import LatencyModel

__all__ = ["ContinuousBatching", "DEFAULT_ANSWER_TOKENS", "ROUTINGS"]


#: the most states of the birth-death chain the limited or state-routed model solves
#: (`max_batch` x `replicas`); larger servers are refused before anything is allocated
MAX_CHAIN_STATES = 1 << 20


def _number_setting(name: str, value, scalar: bool) -> np.ndarray | None:
    """A numeric setting as float64 values, `None` for a traced one; `InputError` naming
    `name` for booleans, strings, complex numbers and (with `scalar`) arrays."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.iscomplexobj(value):
        raise InputError(f"{name}: expected a number, got {value!r}")
    try:
        arr = np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise InputError(f"{name}: expected a number, got {value!r}")
    if scalar and arr.ndim:
        raise InputError(f"{name}: expected one number, got shape {arr.shape}")
    return arr.astype(np.float64)


def _concrete(x) -> np.ndarray | None:
    try:
        return np.asarray(x, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class ContinuousBatching(LatencyModel):
    r"""An iteration-level (continuously) batching server (module docstring).

    Attributes:
        step_time: `(tau0, tau1)` seconds: a decode step with `n` running requests takes
            `tau0 + tau1 * n` (fit it with `fit_step_time`).
        max_batch: the most requests running at once (static; `None`: unlimited).
        answer_tokens: decode steps of the answer after the thinking, scalar or per task.
        prefill: prefill cost of the prompt in decode-step equivalents, scalar or per task.
        replicas: identical servers (static).
        routing: how an arrival picks a replica (static): `"random"` (each replica sees
            `lambda / replicas`), `"shortest_queue"` (the fewest requests present) or
            `"least_loaded"` (the fewest decode steps of work outstanding).
    """

    step_time: tuple[ArrayLike, ArrayLike] = (0.02, 0.0005)
    max_batch: int | None = eqx.field(static=True, default=None)
    answer_tokens: ArrayLike = DEFAULT_ANSWER_TOKENS
    prefill: ArrayLike = 0.0
    replicas: int = eqx.field(static=True, default=1)
    routing: str = eqx.field(static=True, default="random")
    discipline: ClassVar[str] = "batching"

    def __check_init__(self):
        if self.routing not in ROUTINGS:
            raise InputError(f"routing: one of {', '.join(ROUTINGS)}, got {self.routing!r}")
        if self.max_batch is not None and (
            isinstance(self.max_batch, bool)
            or not isinstance(self.max_batch, (int, np.integer))
            or self.max_batch < 1
        ):
            raise InputError(f"max_batch: a positive integer or None, got {self.max_batch!r}")
        if (
            isinstance(self.replicas, bool)
            or not isinstance(self.replicas, (int, np.integer))
            or self.replicas < 1
        ):
            raise InputError(f"replicas: a positive integer, got {self.replicas!r}")
        if not isinstance(self.step_time, (tuple, list)) or len(self.step_time) != 2:
            raise InputError(f"step_time: expected (tau0, tau1) in seconds, got {self.step_time!r}")
        tau = [
            _number_setting(f"step_time: {n}", t, True)
            for n, t in zip(("tau0", "tau1"), self.step_time)
        ]
        if all(t is not None for t in tau):
            tau0, tau1 = (float(t) for t in tau)  # type: ignore[arg-type]
            if not (math.isfinite(tau0) and tau0 >= 0):
                raise InputError(f"step_time: tau0 must be finite and >= 0 seconds, got {tau0}")
            if not (math.isfinite(tau1) and tau1 > 0):
                raise InputError(f"step_time: tau1 must be finite and > 0 seconds, got {tau1}")
        for name in ("answer_tokens", "prefill"):
            v = _number_setting(name, getattr(self, name), False)
            if v is not None and (v.ndim > 1 or not np.all(np.isfinite(v)) or np.any(v < 0)):
                raise InputError(f"{name}: finite and >= 0 (a scalar or one per task), got {v}")
        pooled = self.replicas > 1 and self.routing != "random"
        states = (self.max_batch or 1) * (self.replicas if pooled else 1)
        if (self.max_batch is not None or pooled) and states > MAX_CHAIN_STATES:
            if self.max_batch is None:
                what, hint = "replicas", "route them at random, or model fewer of them"
            else:
                what = "max_batch x replicas" if pooled else "max_batch"
                hint = "a batch limit that large never binds: use max_batch=None (unlimited)"
            raise InputError(
                f"{what}: the model's chain would have {states:,} states (at most "
                f"{MAX_CHAIN_STATES:,}); {hint}"
            )

    def check(self, w: Workload) -> None:
        """`InputError` unless the per-task fields fit the workload's tasks and the step time
        is representable in the workload's dtype (a `tau1` that is zero or subnormal there
        would make every load zero)."""
        tiny = float(jnp.finfo(w.dtype).tiny)
        for name, t in zip(("tau0", "tau1"), self.step_time):
            v = _concrete(t)
            if v is not None and 0 < float(np.max(v)) < tiny:
                raise InputError(
                    f"step_time: {name} = {float(np.max(v)):g} s is below the smallest normal "
                    f"{jnp.dtype(w.dtype).name} number ({tiny:g}); use seconds of a larger unit "
                    "or float64"
                )
        num_tasks = w.num_tasks
        for name in ("answer_tokens", "prefill"):
            v = np.shape(getattr(self, name))
            if v not in ((), (num_tasks,)):
                raise InputError(f"{name}: a scalar or one value per task ({num_tasks}), got {v}")

    @property
    def unlimited(self) -> bool:
        return self.max_batch is None

    @property
    def structure(self) -> str:
        """`"mean_work"` with an unlimited batch (E[T] depends on the budgets only through the
        mean work: `BatchingNewton`), else `"general"`."""
        return "mean_work" if self.unlimited else "general"

    def effective_workload(self, w: Workload) -> Workload:
        """`w` with neutral `t0 = 0`, `c = 1`: the step time replaces the M/G/1 service line,
        which plays no part (and gets zero derivatives)."""
        return w.replace(t0=jnp.zeros_like(w.t0), c=jnp.ones_like(w.c))

    def relaxation(self) -> ContinuousBatching:
        """The same server without the batch limit (its optimum starts the general solver)."""
        return self.replace(max_batch=None)

    def replace(self, **changes) -> ContinuousBatching:
        """A copy with some settings changed (e.g. `replicas=4`)."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- ingredients

    def step_coefficients(self, dtype) -> tuple[Array, Array]:
        """`(tau0, tau1)` as arrays of `dtype`."""
        return (jnp.asarray(self.step_time[0], dtype), jnp.asarray(self.step_time[1], dtype))

    def work(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
        """Decode steps of work per request of each type: prefill + budget + answer."""
        extra = jnp.asarray(self.prefill, w.dtype) + jnp.asarray(self.answer_tokens, w.dtype)
        return tokens + extra

    @property
    def pooled(self) -> bool:
        """Whether arrivals are routed by the replicas' state (the pooled approximation)."""
        return self.replicas > 1 and self.routing != "random"

    def replica_arrival_rate(self, w: Workload):
        """The arrival rate one replica sees (on average, under state-dependent routing)."""
        return w.arrival_rate / self.replicas

    def capacity(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        """The largest total arrival rate (all replicas) the server sustains at these budgets."""
        tau0, tau1 = self.step_coefficients(w.dtype)
        m = jnp.sum(w.share * self.work(tokens, w), -1)
        B = self.max_batch
        if B is None:
            return self.replicas / (tau1 * m)
        return self.replicas * B / (m * (tau0 + tau1 * B))

    def load(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        """Arrival rate over capacity: the stability margin (stable iff < 1); `+inf` for
        budgets outside the model (negative or NaN)."""
        inside = jnp.all(tokens >= 0, axis=-1)
        return jnp.where(inside, w.arrival_rate / self.capacity(tokens, w), jnp.inf)

    def stats(self, tokens: Float[Array, "*b n"], w: Workload) -> dict[str, Array]:
        """The model's mean quantities at these budgets (`+inf` where unstable): `system_time`,
        `queue_wait` (waiting for a batch slot), `step_residual` (waiting for a step boundary),
        `service_time` (admission to departure, averaged over requests), `running` (mean batch
        size), `in_system` (mean number present per replica), `load`, `capacity`."""
        out, stable = self._finite_stats(tokens, w)
        inf = jnp.asarray(jnp.inf, out["system_time"].dtype)
        out = {k: jnp.where(stable, v, inf) for k, v in out.items()}
        out["load"] = self.load(tokens, w)
        out["capacity"] = self.capacity(tokens, w)
        return out

    def _finite_stats(self, tokens, w: Workload) -> tuple[dict[str, Array], Array]:
        """The means with finite stand-ins where unstable, and the stability mask (callers
        mask them, so gradients stay finite)."""
        work = self.work(tokens, w)
        m = jnp.sum(w.share * work, -1)
        cw2 = jnp.sum(w.share * work * work, -1) / (m * m) - 1
        return self.stats_of_work(m, cw2, w), self.load(tokens, w) < 1

    def stats_of_work(self, m: Array, cw2: Array, w: Workload) -> dict[str, Array]:
        """The means (as in `stats`) as functions of the mean work `m` and its squared
        coefficient of variation `cw2` (unused with an unlimited batch), finite where
        unstable."""
        tau0, tau1 = self.step_coefficients(w.dtype)
        B, c = self.max_batch, self.replicas
        # random routing: one replica at lambda / c; pooled: the whole system at lambda
        lam, servers = (w.arrival_rate, c) if self.pooled else (self.replica_arrival_rate(w), 1)
        if B is None and servers == 1:
            q = lam * tau1 * m
            q = jnp.where(q < 1, q, 0.5)
            r = tau0 / tau1 + 1
            in_system = r * q / (1 - q)
            p0 = jnp.exp(r * jnp.log1p(-q))
            residual = 0.5 * (tau0 * (1 - p0) + tau1 * in_system)
            service = (tau0 + tau1) * m / (1 - q)
            queue, running = jnp.zeros_like(m), in_system
        elif B is None:
            residual, in_system = _pooled_unlimited(lam, m, tau0, tau1, servers)
            service = in_system / lam
            queue, running = jnp.zeros_like(m), in_system / servers
            in_system = running
        else:
            queue, residual, service, running, in_system = _pooled_limited(
                lam, m, cw2, tau0, tau1, B, servers
            )
        return {
            "system_time": queue + residual + service,
            "queue_wait": queue,
            "step_residual": residual,
            "service_time": service,
            "running": running,
            "in_system": in_system,
        }

    def system_times(self, tokens, w):
        s, stable = self._finite_stats(tokens, w)
        work = self.work(tokens, w)
        m = jnp.sum(w.share * work, -1, keepdims=True)
        before = (s["queue_wait"] + s["step_residual"])[..., None]
        per_work = s["service_time"][..., None] / m
        return jnp.where(stable[..., None], before + work * per_work, jnp.inf)


def _balanced_rates(tau0, tau1, B: int, c: int, dtype):
    """Total service rate (tokens/s) with n = 1..cB requests spread evenly over c replicas."""
    n = np.arange(1, c * B + 1)
    k, s = n // c, n % c  # s replicas hold k + 1 requests, c - s hold k
    k1, k0 = jnp.asarray(k + 1, dtype), jnp.asarray(k, dtype)
    return jnp.asarray(s, dtype) * k1 / (tau0 + tau1 * k1) + jnp.asarray(c - s, dtype) * k0 / (
        tau0 + tau1 * k0
    )


def _pooled_limited(lam, m, cw2, tau0, tau1, B: int, c: int):
    """The birth-death chain of c pooled replicas with at most B running on each (module
    docstring; c = 1 is one replica). Returns per-request queue wait, step residual and time
    in service, and per-replica mean numbers running and present."""
    dtype = m.dtype
    n = jnp.arange(c * B + 1, dtype=dtype)
    lam_, m_ = lam[..., None], m[..., None]
    top_rate = c * B / (tau0 + tau1 * B)
    rho = lam * m / top_rate
    stable = rho < 1
    rho = jnp.where(stable, rho, 0.5)
    # log u_n = sum_{i <= n} log(lam m / phi(i)), the geometric tail beyond cB: u_cB rho/(1-rho)
    log_phi = jnp.log(_balanced_rates(tau0, tau1, B, c, dtype))
    head = jnp.zeros(m.shape + (1,), dtype)
    log_u = jnp.concatenate(
        [head, jnp.cumsum(jnp.log(jnp.maximum(lam_ * m_, jnp.finfo(dtype).tiny)) - log_phi, -1)],
        axis=-1,
    )
    rho_ = rho[..., None]
    log_tail = log_u[..., -1:] + jnp.log(rho_) - jnp.log1p(-rho_)
    top = jnp.maximum(jnp.max(log_u, -1, keepdims=True), log_tail)
    u = jnp.exp(log_u - top)
    tail = jnp.exp(log_tail - top)
    Z = jnp.sum(u, -1, keepdims=True) + tail
    p = u / Z  # P(N = n), n <= cB
    p_tail = (tail / Z)[..., 0]  # P(N > cB)
    running = jnp.sum(n * p, -1) + c * B * p_tail
    waiting = p[..., -1] * rho / (1 - rho) ** 2  # E[number waiting for a slot]
    queue = waiting / lam * (1 + cw2) / 2
    # an arrival that finds a free slot joins a replica holding floor(n / c) and, if that one
    # is busy, waits for its current step to end
    k = jnp.asarray(np.arange(c * B + 1) // c, dtype)
    busy_free = (k >= 1) & (n < c * B)
    residual = 0.5 * jnp.sum(jnp.where(busy_free, p * (tau0 + tau1 * k), 0), -1)
    service = running / lam
    return queue, residual, service, running / c, (running + waiting) / c


def _pooled_unlimited(lam, m, tau0, tau1, c: int):
    """The pooled unlimited server (module docstring): step residual and mean number present
    in the whole system. The distribution is Poisson with mean x = lam m (tau0 + tau1) below
    c and proportional to a negative binomial NB(r, q), r = c tau0/tau1 + 1,
    q = lam m tau1 / c, from c on."""
    dtype = m.dtype
    tiny = jnp.finfo(dtype).tiny  # no work at all: keep the logs finite
    q = jnp.maximum(lam * m * tau1 / c, tiny)
    q = jnp.where(q < 1, q, 0.5)
    x = jnp.maximum(lam * m * (tau0 + tau1), tiny)
    r = c * tau0 / tau1 + 1
    cf = jnp.asarray(c, dtype)
    n = jnp.arange(c, dtype=dtype)
    x_ = x[..., None]
    log_u = n * jnp.log(x_) - jax.lax.lgamma(n + 1)  # n < c
    log_uc = cf * jnp.log(x) - jax.lax.lgamma(cf + 1)
    log_fc = (
        jax.lax.lgamma(r + cf)
        - jax.lax.lgamma(r)
        - jax.lax.lgamma(cf + 1)
        + cf * jnp.log(q)
        + r * jnp.log1p(-q)
    )
    log_k = log_uc - log_fc  # u_n = K f(n) for n >= c, f the NB pmf
    above = jax.scipy.special.betainc(cf, r, q)  # P_NB(N >= c)
    nb_mean = r * q / (1 - q)
    mean_above = nb_mean * jax.scipy.special.betainc(cf - 1, r + 1, q) if c > 1 else nb_mean
    top = jnp.maximum(jnp.max(log_u, -1), log_k)
    below = jnp.exp(log_u - top[..., None])
    scale = jnp.exp(log_k - top)
    Z = jnp.sum(below, -1) + scale * above
    p_above = scale * above / Z
    in_system = (jnp.sum(n * below, -1) + scale * mean_above) / Z
    # the joined replica holds floor(n / c) >= 1 from n = c on: E[floor(N/c); N >= c]
    floor_mean = jnp.maximum((scale * mean_above / Z) / cf - (cf - 1) / (2 * cf) * p_above, p_above)
    residual = 0.5 * (tau0 * p_above + tau1 * floor_mean)
    return residual, in_system
