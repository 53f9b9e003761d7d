r"""A JAX discrete-event simulator of the M/G/1 server of the queueing paper (Section IV).

FIFO waiting times come from the Lindley recursion $W_{n+1} = \max(0, W_n + S_n - \tau_{n+1})$
in its parallel form (docs: *Simulation*): with $C_1 = 0$ and
$C_n = C_{n-1} + S_{n-1} - \tau_n$, $W_n = C_n - \min_{k \le n} C_k$ -- a cumulative sum and a
cumulative minimum, so a whole stream is a handful of vector operations and many policies and
replications run in one `vmap`.

Randomness: each replication `r` uses `fold_in(key, r)`, split into separate streams for the
arrival gaps, the task types, the service-time noise and the per-query correctness draws.
Every policy in one call sees the *same* streams (common random numbers), so differences
between policies are not blurred by sampling noise. A policy changes the service time
$S_i = t_{k_i}(l_{k_i}) \cdot m_i$ (eq. (1) times a mean-one noise factor $m_i$, 1 when
`service_cv=0` as in the paper) and the correctness $\mathbb{1}[u_i < p_{k_i}(l_{k_i})]$.

Statistics per replication drop the first `warmup` queries (the queue starts empty);
confidence intervals come from the independent replications (Student t).
"""

from __future__ import annotations

import warnings
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._choices import DISCIPLINES
from .._errors import InputError, UnstableQueueWarning
from .._objective import task_accuracy
from .._programs import call
from .._stats import replication_interval
from .._status import HasStatus, StatusEnum
from .._traffic.trace import Trace
from .._validate import check_int, check_key, check_memory
from .._workload import Workload
from .disciplines import priority_waits, ps_sojourns
from .models import AbstractSingleServer, LatencyModel, check_service_cv
from .replay import Replay, no_replay_settings, replay_for

__all__ = [
    "UnstableQueueWarning",
    "Stream",
    "SimulationResult",
    "SimulationStatus",
    "sample_query_stream",
    "replay_stream",
    "lindley_waits",
    "sample_quantiles",
    "simulate_server",
    "Simulation",
    "DISCIPLINES",
    "MAX_BATCH_ELEMENTS",
]

NoiseKind = Literal["lognormal", "gamma"]
QUANTILES = (0.5, 0.95, 0.99)
MAX_BATCH_ELEMENTS = (
    1 << 26
)  # policies x queries per vmapped batch (bounds memory; 256 MiB per f32 array)
_STREAM_ARRIVALS, _STREAM_TYPES, _STREAM_NOISE, _STREAM_CORRECT = range(4)


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
    replay: Replay,
    *,
    service_cv: ArrayLike = 0.0,
    noise: NoiseKind = "lognormal",
) -> Stream:
    """One replication's stream on a recorded arrival sequence (`Replay`): the gaps (and task
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


def lindley_waits(
    gaps: Float[Array, "*b q"], service: Float[Array, "*b q"]
) -> Float[Array, "*b q"]:
    r"""FIFO waiting times of a stream, the parallel Lindley form (cumsum and cummin).

    `gaps[..., i]` is the time from arrival i-1 to arrival i (`gaps[..., 0]` is ignored: the
    first query finds the server idle) and `service[..., i]` the service time of query i.
    Equal to the recursion $W_{i} = \max(0, W_{i-1} + S_{i-1} - \tau_i)$ up to roundoff in the
    running sum (relative to the total simulated time).

    Args:
        gaps: the inter-arrival times, queries on the last axis.
        service: the service times, shaped like `gaps`.

    Returns:
        Each query's wait, shaped like `gaps`.
    """
    step = service[..., :-1] - gaps[..., 1:]
    zero = jnp.zeros_like(step[..., :1])
    C = jnp.concatenate([zero, jnp.cumsum(step, axis=-1)], axis=-1)
    waits = C - jax.lax.cummin(C, axis=C.ndim - 1)
    return jnp.maximum(waits, 0)


class SimulationStatus(StatusEnum):
    """Whether a simulated policy has a steady state (`SimulationResult.status`, per policy)."""

    STEADY = 0, "the policy loads the server below capacity: the means estimate a steady state"
    UNSTABLE = 1, "the policy loads the server to utilization >= 1: the means have no steady state"


class Simulation(HasStatus):
    """What every simulation returns: per-replication statistics of simulated policies with
    the latency model's predictions beside them (`SimulationResult` for the single-server
    disciplines, `BatchingSimulation` for a batching server).

    Array fields have shape `(*policies, replications)`; the statistics in
    `PER_TASK_STATISTICS` add a trailing axis after the replications. `summary()` turns the
    replications into means with Student-t confidence intervals (with the model's prediction
    beside each statistic in `PREDICTED`), `interval(name)` does one, and `status` (per
    policy, `SimulationStatus`) says whether the policy has a steady state at all: it does
    when the model's `load` is below 1.

    Attributes:
        num_queries: queries per replication.
        warmup: queries dropped at the start of each replication.
    """

    STATUS: ClassVar[type[SimulationStatus]] = SimulationStatus
    #: statistics averaged over replications by `summary()`
    STATISTICS: ClassVar[tuple[str, ...]] = ()
    #: statistics with a trailing axis after the replications (by task, histograms)
    PER_TASK_STATISTICS: ClassVar[tuple[str, ...]] = ("system_time_by_task",)
    #: statistics with a `predicted_<name>` field
    PREDICTED: ClassVar[tuple[str, ...]] = ()

    num_queries: eqx.AbstractVar[int]
    warmup: eqx.AbstractVar[int]

    @property
    def mean_arrival_rate(self) -> float:
        """The mean arrival rate simulated (requests/s; a replay's after rescaling)."""
        return float(getattr(self, "arrival_rate"))

    @property
    def load(self) -> Float[Array, "*p"]:
        """The model's load per policy (utilization; stable below 1)."""
        raise NotImplementedError

    @property
    def num_replications(self) -> int:
        return getattr(self, "system_time").shape[-1]

    def interval(self, name: str, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lower, upper) over replications of statistic `name`: a Student-t interval."""
        x = np.asarray(getattr(self, name), dtype=np.float64)
        if name in self.PER_TASK_STATISTICS:
            x = np.moveaxis(x, -1, -2)  # replications last
        return replication_interval(x, level)

    @property
    def status(self) -> Int[Array, "*p"]:
        """`SimulationStatus` per policy, from the model's load."""
        unstable = ~(np.asarray(self.load) < 1)  # on the host: a result is never traced
        return jax.device_put(
            np.where(unstable, SimulationStatus.UNSTABLE, SimulationStatus.STEADY).astype(np.int32)
        )

    def summary(self, level: float = 0.95) -> dict[str, dict[str, np.ndarray]]:
        """Every statistic as `{"mean", "lower", "upper"}` (confidence `level`), with
        `"predicted"` beside those the model predicts."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for name in (*self.STATISTICS, "system_time_by_task"):
            mean, lo, hi = self.interval(name, level)
            out[name] = {"mean": mean, "lower": lo, "upper": hi}
        for name in self.PREDICTED:
            out[name]["predicted"] = np.asarray(getattr(self, f"predicted_{name}"))
        return out


class SimulationResult(Simulation):
    r"""Per-replication statistics of simulated policies, with the PK predictions beside them.

    Every array field has shape `(*policies, replications)`: means over the measured queries
    (after warm-up) of the waiting time `wait` and system time `system_time` (wait plus
    service), their quantiles `wait_p50/p95/p99` and `system_time_p50/p95/p99`, the busy
    fraction `utilization`, the fraction of queries answered correctly `accuracy` and the
    realised objective `objective` $= \alpha \cdot$ accuracy $-$ mean system time (eq. (7)).
    `system_time_by_task` (shape `(*policies, replications, N)`) is the mean system time of
    each task type. `predicted_*` (shape `(*policies,)`, by task `(*policies, N)`) are the
    latency model's values, eqs. (4)-(7) for FIFO, including the service-time variance the
    noise adds.

    `summary()` turns the replications into means with confidence intervals; `status`
    (per policy, `SimulationStatus`) says whether the policy has a steady state at all.

    Attributes:
        num_queries: queries per replication.
        warmup: queries dropped at the start of each replication.

        wait: mean waiting time (s).
        system_time: mean system time (s).
        wait_p50: median wait.
        wait_p95: 95th percentile of the wait.
        wait_p99: 99th percentile of the wait.
        system_time_p50: median system time.
        system_time_p95: 95th percentile of the system time.
        system_time_p99: 99th percentile of the system time.
        utilization: the busy fraction.
        accuracy: the fraction answered correctly.
        objective: the realised J.
        system_time_by_task: mean system time of each task type.
        predicted_system_time: the model's E[T].
        predicted_wait: the model's E[W].
        predicted_utilization: the model's utilization.
        predicted_accuracy: the model's mean accuracy.
        predicted_objective: the model's J.
        predicted_system_time_by_task: the model's E[T_k].
        discipline: the simulated discipline (`"fifo"`, `"priority"`, `"ps"`).
        arrival_rate: the arrival rate simulated (the trace's replay rate on a replay).
    """

    wait: Float[Array, "*p r"]
    system_time: Float[Array, "*p r"]
    wait_p50: Float[Array, "*p r"]
    wait_p95: Float[Array, "*p r"]
    wait_p99: Float[Array, "*p r"]
    system_time_p50: Float[Array, "*p r"]
    system_time_p95: Float[Array, "*p r"]
    system_time_p99: Float[Array, "*p r"]
    utilization: Float[Array, "*p r"]
    accuracy: Float[Array, "*p r"]
    objective: Float[Array, "*p r"]
    system_time_by_task: Float[Array, "*p r n"]
    predicted_system_time: Float[Array, "*p"]
    predicted_wait: Float[Array, "*p"]
    predicted_utilization: Float[Array, "*p"]
    predicted_accuracy: Float[Array, "*p"]
    predicted_objective: Float[Array, "*p"]
    predicted_system_time_by_task: Float[Array, "*p n"]
    num_queries: int = eqx.field(static=True)
    warmup: int = eqx.field(static=True)
    discipline: str = eqx.field(static=True, default="fifo")
    #: the mean arrival rate simulated (requests/s; a replay's after rescaling)
    arrival_rate: float = eqx.field(static=True, default=float("nan"))

    STATISTICS = (
        "wait",
        "system_time",
        "wait_p50",
        "wait_p95",
        "wait_p99",
        "system_time_p50",
        "system_time_p95",
        "system_time_p99",
        "utilization",
        "accuracy",
        "objective",
    )
    PREDICTED = (
        "system_time",
        "wait",
        "utilization",
        "accuracy",
        "objective",
        "system_time_by_task",
    )

    @property
    def load(self) -> Float[Array, "*p"]:
        return self.predicted_utilization


def sample_quantiles(x: Float[Array, " q"]) -> Float[Array, " 3"]:
    """`QUANTILES` of non-negative `x`, numpy's default (linear) definition.

    Sorts the IEEE bit patterns as integers: for non-negative floats their order is the
    numeric order, and XLA's integer sort is several times faster than its float sort on CPU.
    """
    int_type = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
    bits = jnp.sort(jax.lax.bitcast_convert_type(x, int_type))
    ordered = jax.lax.bitcast_convert_type(bits, x.dtype)
    pos = jnp.asarray(QUANTILES, x.dtype) * (x.shape[0] - 1)
    below = jnp.floor(pos).astype(jnp.int32)
    above = jnp.minimum(below + 1, x.shape[0] - 1)
    frac = pos - below
    return ordered[below] + frac * (ordered[above] - ordered[below])


def _delays(discipline: str, stream: Stream, service, rank, capacity: int):
    """Per-query delay (time in system minus own service time) and an overflow flag."""
    if discipline == "fifo":
        return lindley_waits(stream.gaps, service), jnp.asarray(False)
    arrivals = jnp.cumsum(stream.gaps)
    if discipline == "priority":
        return priority_waits(arrivals, stream.task, service, rank), jnp.asarray(False)
    sojourn, overflow = ps_sojourns(arrivals, service, capacity)
    return sojourn - service, overflow


def _replication(
    w: Workload,
    tokens,
    stream: Stream,
    warmup: int,
    discipline: str,
    rank,
    capacity: int,
    policy_batch: int,
):
    """Statistics of every policy in `tokens` (shape (P, N)) on one stream."""
    dtype = w.dtype
    measured_task = stream.task[warmup:]
    onehot = jax.nn.one_hot(measured_task, w.num_tasks, dtype=dtype)  # (q', N)
    per_type = jnp.sum(onehot, 0)

    def one_policy(l):  # (K, N): budgets per window (K = 1 without a schedule)
        service = stream.budgets(w.t0 + w.c * l) * stream.noise
        waits, overflow = _delays(discipline, stream, service, rank, capacity)
        correct = stream.uniform < stream.budgets(task_accuracy(l, w))
        W = jnp.maximum(waits[warmup:], 0)
        T = W + service[warmup:]
        S = service[warmup:]
        arrivals = jnp.cumsum(stream.gaps)
        span = arrivals[-1] - arrivals[warmup]
        # busy fraction over the measured window: served work per unit time (eq. (4) estimate)
        busy = jnp.sum(S[:-1]) / jnp.where(span > 0, span, 1)
        acc = jnp.mean(correct[warmup:].astype(dtype))
        mean_T = jnp.mean(T)
        by_task = (T @ onehot) / jnp.where(per_type > 0, per_type, jnp.nan)
        return (
            jnp.mean(W),
            mean_T,
            sample_quantiles(W),
            sample_quantiles(T),
            busy,
            acc,
            w.alpha * acc - mean_T,
            by_task,
            overflow,
        )

    # policies in vmapped batches of `policy_batch` (bounds the memory of the per-query arrays)
    if policy_batch >= tokens.shape[0]:
        return jax.vmap(one_policy)(tokens)
    return jax.lax.map(one_policy, tokens, batch_size=policy_batch)


def _predictions(w: Workload, tokens, model: LatencyModel, replay: Replay | None = None):
    """The model's predictions for `tokens` of shape (P, K, N); with a schedule (K > 1), the
    arrival-weighted mean over windows, each window at its own rate."""
    if replay is None or replay.window is None:
        return _predict(w, tokens[:, 0], model)
    wk = w.replace(arrival_rate=jnp.asarray(replay.window_rates, w.dtype))
    q = jnp.asarray(replay.window_weights, w.dtype)
    T, wait, _, acc, _, by_task = _predict(wk, tokens, model)
    T, wait, acc = (x @ q for x in (T, wait, acc))
    by_task = jnp.einsum("k,pkn->pn", q, by_task)
    # the busy fraction: the replayed rate times the arrival-weighted mean service time
    rho = replay.rate * (jnp.sum(w.share * (w.t0 + w.c * tokens), -1) @ q)
    return T, wait, rho, acc, w.alpha * acc - T, by_task


def _predict(w: Workload, tokens, model: LatencyModel):
    by_task = model.system_times(tokens, w)
    service = w.t0 + w.c * tokens
    T = jnp.sum(w.share * by_task, -1)
    wait = T - jnp.sum(w.share * service, -1)
    rho = w.arrival_rate * jnp.sum(w.share * service, -1)
    acc = jnp.sum(w.share * task_accuracy(tokens, w), -1)
    return T, wait, rho, acc, w.alpha * acc - T, by_task


def _check(
    w: Workload,
    tokens: np.ndarray,
    num_queries: int,
    num_replications: int,
    warmup: int,
    service_cv,
) -> None:
    w.validate()
    if w.batch_shape:
        raise InputError(
            "workload: simulate takes one workload (no batch axes); vmap over policies via tokens"
        )
    if tokens.ndim < 1 or tokens.shape[-1] != w.num_tasks:
        raise InputError(
            f"tokens: expected shape (..., {w.num_tasks}) (one budget per task), got {tokens.shape}"
        )
    bad = ~np.isfinite(tokens) | (tokens < 0) | (tokens > float(w.max_tokens))
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise InputError(
            f"tokens: budget for task {w.task_names[idx[-1]]!r} must be in [0, max_tokens="
            f"{float(w.max_tokens):g}], got {tokens[tuple(idx)]!r}"
        )
    if num_queries < 2:
        raise InputError(f"num_queries: need at least 2 queries, got {num_queries}")
    if num_replications < 1:
        raise InputError(f"num_replications: need at least 1, got {num_replications}")
    if not 0 <= warmup < num_queries - 1:
        raise InputError(f"warmup: must be in [0, num_queries - 1), got {warmup}")
    check_service_cv(service_cv, w.num_tasks)


def simulate_server(
    workload: Workload,
    tokens: ArrayLike,
    model: LatencyModel,
    num_queries: int | None = None,
    num_replications: int = 20,
    key: PRNGKeyArray | None = None,
    *,
    warmup: int | None = None,
    noise: NoiseKind = "lognormal",
    capacity: int = 512,
    arrivals: Trace | None = None,
    rate: float | None = None,
    utilization: float | None = None,
    service: str = "tasks",
    task_types: str = "shares",
    window: float | None = None,
) -> SimulationResult:
    """Simulate the single server of `model` (`FIFO`, `Priority` or `ProcessorSharing`) under
    one or many token policies; `simulate` is the entry point for every model.

    Args:
        workload: one `Workload` (no batch axes).
        tokens: budgets of shape `(N,)` or `(*P, N)`; every policy is simulated on the same
            arrival, type, noise and correctness streams (common random numbers).
        model: `FIFO(service_cv)` (the paper with `service_cv=0`; the parallel Lindley form),
            `Priority(order, service_cv)` (non-preemptive by task type, `order` highest first) or
            `ProcessorSharing(service_cv)` (at most `capacity` queries in the system at once, else
            `InputError`). Its `service_cv` is the coefficient of variation of a mean-one
            service-time factor of family `noise` (`"lognormal"` or `"gamma"`); its formulas give
            the predictions.
        num_queries: queries per replication (default 10,000, the paper's; a replay takes
            the whole trace).
        num_replications: independent replications (confidence intervals).
        key: a JAX PRNG key (default `PRNGKey(0)`).
        warmup: queries dropped at the start of each replication (default 10%).
        noise: the family of the service-time factor, `"lognormal"` or `"gamma"`.
        capacity: the most queries the processor-sharing simulator holds at once.
        arrivals, rate, utilization, service, task_types, window: replay a recorded trace
            instead of Poisson arrivals (`simulate`).

    Returns:
        a `SimulationResult` (fields of shape `(*P, num_replications)`). Validates
        its inputs eagerly and raises `InputError` naming the field; the simulation itself is
        one jitted, vmapped computation.

    Memory: one replication at a time; within it, policies are vmapped in batches of at most
    `MAX_BATCH_ELEMENTS / num_queries` queries x policies, so large policy grids stay within
    memory.
    """
    w = workload
    if not isinstance(w, Workload):
        raise InputError(f"workload: expected a Workload, got {type(w).__name__}")
    if not isinstance(model, AbstractSingleServer):
        raise InputError(
            "model: simulate_server takes a single server (FIFO, Kingman, Priority, "
            f"ProcessorSharing, TimeVarying), got {type(model).__name__}"
        )
    discipline = model.discipline
    try:
        tok = np.asarray(tokens, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(
            f"tokens: expected numbers (one budget per task), got {tokens!r}"
        ) from None
    replay = None
    if arrivals is None:
        no_replay_settings(num_queries, rate, utilization, service, task_types, window)
        num_queries = check_int("num_queries", 10_000 if num_queries is None else num_queries, 2)
    else:
        if num_queries is not None:
            raise InputError(
                "num_queries: a replay simulates the whole trace (take part of it with "
                "Trace.head or Trace.between)"
            )
        w.validate()
        if tok.ndim < 1 or tok.shape[-1] != w.num_tasks:
            raise InputError(f"tokens: expected shape (..., {w.num_tasks}), got {tok.shape}")
        replay, w = replay_for(
            model,
            w,
            tok,
            arrivals,
            rate=rate,
            utilization=utilization,
            service=service,
            task_types=task_types,
            window=window,
        )
        num_queries = replay.num_queries
    num_windows = 1 if replay is None else replay.num_windows
    num_replications = check_int("num_replications", num_replications, 1)
    capacity = check_int("capacity", capacity, 2)
    # never more present than simulated: a larger capacity changes nothing but the memory
    capacity = min(capacity, max(num_queries, 2))
    warmup = num_queries // 10 if warmup is None else check_int("warmup", warmup, 0)
    check_key(key)
    # one replication at a time: about a dozen arrays of num_queries values per policy batch
    per_policy = max(w.num_tasks * num_windows, 1)
    per_batch = min(max(1, tok.size // per_policy), max(1, MAX_BATCH_ELEMENTS // num_queries))
    policies = max(1, tok.size // per_policy)
    check_memory(
        16.0 * 8 * num_queries * per_batch
        # the statistics kept per replication: a dozen numbers and one per task, per policy
        + 8.0 * policies * num_replications * (16 + w.num_tasks),
        f"simulating {num_queries:,} queries x {num_replications:,} replications",
        "use fewer queries or replications",
    )
    service_cv = model.service_cv
    _check(w, tok, num_queries, num_replications, warmup, service_cv)
    model.check(w)
    if noise not in ("lognormal", "gamma"):
        raise InputError(f"noise: unknown kind {noise!r}; choose 'lognormal' or 'gamma'")
    order = model.priority_order(w)
    key = jax.random.PRNGKey(0) if key is None else key
    dtype = w.dtype
    policies = tok.shape[:-1] if window is None else tok.shape[:-2]
    # prepared on the host: an eager operation would cost a fresh process a program each
    flat = jax.device_put(tok.reshape(-1, num_windows, w.num_tasks).astype(np.dtype(dtype)))
    rank = np.zeros(w.num_tasks, np.int32)
    rank[np.asarray(order)] = np.arange(w.num_tasks, dtype=np.int32)
    rank = jax.device_put(rank)
    cv = jax.device_put(np.asarray(service_cv, np.dtype(dtype)))
    policy_batch = max(1, min(flat.shape[0], MAX_BATCH_ELEMENTS // num_queries))
    # the simulation and the model's predictions: one program, kept ahead of time by the
    # command line (`keep_programs_in`)
    stats, preds = call(
        "simulate",
        _simulate_and_predict,
        w,
        flat,
        key,
        num_queries,
        num_replications,
        warmup,
        cv,
        noise,
        discipline,
        rank,
        capacity,
        policy_batch,
        replay,
        model,
    )
    (mw, mt, qw, qt, busy, acc, obj, by_task, overflow) = stats
    if bool(np.any(np.asarray(overflow))):
        raise InputError(
            f"capacity: more than {capacity} queries were in the processor-sharing system at "
            "once; raise capacity (the load is close to 1)"
        )
    unstable = np.flatnonzero(np.asarray(preds[2]) >= 1)
    if unstable.size:
        warnings.warn(
            f"{unstable.size} of {flat.shape[0]} policies load the server to utilization >= 1 "
            "(first: "
            f"policy {int(unstable[0])}, rho = {float(preds[2][unstable[0]]):.3g}): that queue "
            "is unstable, "
            "its simulated waits grow with num_queries and its intervals do not estimate a "
            "steady state",
            UnstableQueueWarning,
            stacklevel=2,
        )

    # reshaped on the host (a fresh process would otherwise compile a program per field)
    (mw, mt, qw, qt, busy, acc, obj, by_task), preds = jax.device_get(
        ((mw, mt, qw, qt, busy, acc, obj, by_task), preds)
    )

    def shape(x):  # (R, P, ...) -> (*policies, R, ...)
        x = np.moveaxis(x, 0, 1)
        return jax.device_put(x.reshape(*policies, *x.shape[1:]))

    def by_policy(x, *tail):
        return jax.device_put(np.reshape(x, (*policies, *tail)))

    return SimulationResult(
        wait=shape(mw),
        system_time=shape(mt),
        wait_p50=shape(qw[..., 0]),
        wait_p95=shape(qw[..., 1]),
        wait_p99=shape(qw[..., 2]),
        system_time_p50=shape(qt[..., 0]),
        system_time_p95=shape(qt[..., 1]),
        system_time_p99=shape(qt[..., 2]),
        utilization=shape(busy),
        accuracy=shape(acc),
        objective=shape(obj),
        system_time_by_task=shape(by_task),
        predicted_system_time=by_policy(preds[0]),
        predicted_wait=by_policy(preds[1]),
        predicted_utilization=by_policy(preds[2]),
        predicted_accuracy=by_policy(preds[3]),
        predicted_objective=by_policy(preds[4]),
        predicted_system_time_by_task=by_policy(preds[5], w.num_tasks),
        num_queries=num_queries,
        warmup=warmup,
        discipline=discipline,
        arrival_rate=float(np.asarray(w.arrival_rate)),
    )


def _simulate_and_predict(*args):
    """`_simulate_flat(*args[:-1])` and the predictions of the model `args[-1]`, one program."""
    *settings, model = args
    w, tokens, replay = settings[0], settings[1], settings[-1]
    return _simulate_flat(*settings), _predictions(w, tokens, model, replay)


def _simulate_flat(
    w,
    tokens,
    key,
    num_queries: int,
    num_replications: int,
    warmup: int,
    service_cv,
    noise: NoiseKind,
    discipline: str,
    rank,
    capacity: int,
    policy_batch: int,
    replay: Replay | None,
):
    def replication(r):
        if replay is None:
            stream = sample_query_stream(
                jax.random.fold_in(key, r), w, num_queries, service_cv=service_cv, noise=noise
            )
        else:
            stream = replay_stream(
                jax.random.fold_in(key, r), w, replay, service_cv=service_cv, noise=noise
            )
        return _replication(w, tokens, stream, warmup, discipline, rank, capacity, policy_batch)

    # replications one after another (lax.map) keeps memory at one stream x all policies
    return jax.lax.map(replication, jnp.arange(num_replications))
