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
variation of the work (an M/G/c-style correction: the chain alone is off by up to 35-40%
at loads above 0.9 of capacity with $B = 8$), the step residual is counted only for arrivals
that find a free slot, and the time in service is $E[\min(N, B)]/\lambda$. Stable iff
$\lambda E[w] (\tau_0 + \tau_1 B) / B < 1$. Per type,
$E[T_k] = W_q + R + w_k \cdot (\text{time in service}) / E[w]$. Checked against the
simulator (`simulate_batching`) in the tests; docs: *Continuous batching*.

**Replicas** (`replicas` $= c$, random routing): every replica sees $\lambda / c$.

Everything is a pure JAX function of the budgets, with gradients; an unstable configuration
gives `+inf`, never NaN. Left out: KV-cache preemption and swapping, speculative decoding,
prefill/decode disaggregation, chunked-prefill interference with decode steps.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._errors import InputError
from .._workload import Workload
from .models import LatencyModel

__all__ = ["ContinuousBatching", "DEFAULT_ANSWER_TOKENS"]

DEFAULT_ANSWER_TOKENS = 256.0  # decode steps of the visible answer (the export's reserve)


def _concrete(x) -> np.ndarray | None:
    try:
        return np.asarray(x, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class ContinuousBatching(LatencyModel):
    r"""An iteration-level (continuously) batching server (module docstring).

    **Arguments:**

    - `step_time`: `(tau0, tau1)` seconds: a decode step with `n` running requests takes
      `tau0 + tau1 * n` (fit it with `fit_step_time`).
    - `max_batch`: the most requests running at once (static; `None`: unlimited).
    - `answer_tokens`: decode steps of the answer after the thinking, scalar or per task.
    - `prefill`: prefill cost of the prompt in decode-step equivalents, scalar or per task.
    - `replicas`: identical servers with random routing (static).
    """

    step_time: tuple[ArrayLike, ArrayLike] = (0.02, 0.0005)
    max_batch: int | None = eqx.field(static=True, default=None)
    answer_tokens: ArrayLike = DEFAULT_ANSWER_TOKENS
    prefill: ArrayLike = 0.0
    replicas: int = eqx.field(static=True, default=1)

    def __check_init__(self):
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
        tau = [_concrete(t) for t in self.step_time]
        if all(t is not None for t in tau):
            tau0, tau1 = (float(np.asarray(t).reshape(-1)[0]) for t in tau)  # type: ignore[union-attr]
            if not (math.isfinite(tau0) and tau0 >= 0):
                raise InputError(f"step_time: tau0 must be finite and >= 0 seconds, got {tau0}")
            if not (math.isfinite(tau1) and tau1 > 0):
                raise InputError(f"step_time: tau1 must be finite and > 0 seconds, got {tau1}")
        for name in ("answer_tokens", "prefill"):
            v = _concrete(getattr(self, name))
            if v is not None and (v.ndim > 1 or not np.all(np.isfinite(v)) or np.any(v < 0)):
                raise InputError(f"{name}: finite and >= 0 (a scalar or one per task), got {v}")

    def check(self, num_tasks: int) -> None:
        """`InputError` unless the per-task fields fit `num_tasks` tasks."""
        for name in ("answer_tokens", "prefill"):
            v = np.shape(getattr(self, name))
            if v not in ((), (num_tasks,)):
                raise InputError(f"{name}: a scalar or one value per task ({num_tasks}), got {v}")

    @property
    def unlimited(self) -> bool:
        return self.max_batch is None

    def replace(self, **changes) -> ContinuousBatching:
        """A copy with some settings changed (e.g. `replicas=4`)."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- ingredients

    def _tau(self, dtype):
        return (jnp.asarray(self.step_time[0], dtype), jnp.asarray(self.step_time[1], dtype))

    def work(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
        """Decode steps of work per request of each type: prefill + budget + answer."""
        extra = jnp.asarray(self.prefill, w.dtype) + jnp.asarray(self.answer_tokens, w.dtype)
        return tokens + extra

    def arrival_rate(self, w: Workload):
        """The arrival rate one replica sees."""
        return w.arrival_rate / self.replicas

    def capacity(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        """The largest total arrival rate (all replicas) the server sustains at these budgets."""
        tau0, tau1 = self._tau(w.dtype)
        m = jnp.sum(w.share * self.work(tokens, w), -1)
        B = self.max_batch
        if B is None:
            return self.replicas / (tau1 * m)
        return self.replicas * B / (m * (tau0 + tau1 * B))

    def load(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        """Arrival rate over capacity: the stability margin (stable iff < 1)."""
        return w.arrival_rate / self.capacity(tokens, w)

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
        shares = w.share
        work = self.work(tokens, w)
        m = jnp.sum(shares * work, -1)
        cw2 = jnp.sum(shares * work * work, -1) / (m * m) - 1
        lam = self.arrival_rate(w)
        tau0, tau1 = self._tau(w.dtype)
        load = self.load(tokens, w)
        stable = load < 1
        B = self.max_batch
        if B is None:
            q = jnp.where(stable, lam * tau1 * m, 0.5)
            r = tau0 / tau1 + 1
            in_system = r * q / (1 - q)
            p0 = jnp.exp(r * jnp.log1p(-q))
            residual = 0.5 * (tau0 * (1 - p0) + tau1 * in_system)
            service = (tau0 + tau1) * m / (1 - q)
            queue = jnp.zeros_like(m)
            running = in_system
        else:
            queue, residual, service, running, in_system = _limited(
                lam, m, cw2, tau0, tau1, B, stable
            )
        total = queue + residual + service
        out = {
            "system_time": total,
            "queue_wait": queue,
            "step_residual": residual,
            "service_time": service,
            "running": running,
            "in_system": in_system,
        }
        return out, stable

    def system_times(self, tokens, w):
        s, stable = self._finite_stats(tokens, w)
        work = self.work(tokens, w)
        m = jnp.sum(w.share * work, -1, keepdims=True)
        before = (s["queue_wait"] + s["step_residual"])[..., None]
        per_work = s["service_time"][..., None] / m
        return jnp.where(stable[..., None], before + work * per_work, jnp.inf)


def _limited(lam, m, cw2, tau0, tau1, B: int, stable):
    """Birth-death approximation with at most B running (module docstring)."""
    dtype = m.dtype
    n = jnp.arange(B + 1, dtype=dtype)
    a = tau0 / tau1
    lam_, m_ = lam[..., None], m[..., None]
    # log of the unnormalised probabilities u_n, n <= B: prod_{i<=n} lam m (tau0 + tau1 i) / i
    log_q = jnp.log(lam_ * tau1 * m_)
    log_u = (
        n * log_q
        + jax.lax.lgamma(n + 1 + a)
        - jax.lax.lgamma(jnp.asarray(1, dtype) + a)
        - jax.lax.lgamma(n + 1)
    )
    rho = jnp.where(stable, lam * m * (tau0 + tau1 * B) / B, 0.5)[..., None]
    # the geometric tail beyond B: u_B rho / (1 - rho)
    log_tail = log_u[..., -1:] + jnp.log(rho) - jnp.log1p(-rho)
    top = jnp.maximum(jnp.max(log_u, -1, keepdims=True), log_tail)
    u = jnp.exp(log_u - top)
    tail = jnp.exp(log_tail - top)
    Z = jnp.sum(u, -1, keepdims=True) + tail
    p = u / Z  # P(N = n), n <= B
    p_tail = (tail / Z)[..., 0]  # P(N > B)
    rho = rho[..., 0]
    running = jnp.sum(n * p, -1) + B * p_tail
    waiting = p[..., -1] * rho / (1 - rho) ** 2  # E[number waiting for a slot]
    in_system = running + waiting
    queue = waiting / lam * (1 + cw2) / 2
    free = n < B  # arrivals that find a free slot wait for the current step (if any)
    residual = 0.5 * jnp.sum(jnp.where(free & (n >= 1), p * (tau0 + tau1 * n), 0), -1)
    service = running / lam
    return queue, residual, service, running, in_system
