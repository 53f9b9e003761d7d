r"""The single-server simulator's kernel: FIFO, priority and processor sharing on prepared
streams, with the latency model's predictions beside the statistics (Section IV of the
queueing paper). `simulate` validates its inputs and calls `run`, which validates nothing.

FIFO waiting times come from the Lindley recursion $W_{n+1} = \max(0, W_n + S_n - \tau_{n+1})$
in its parallel form (docs: *Simulation*): with $C_1 = 0$ and
$C_n = C_{n-1} + S_{n-1} - \tau_n$, $W_n = C_n - \min_{k \le n} C_k$ -- a cumulative sum and a
cumulative minimum, so a whole stream is a handful of vector operations and many policies and
replications run in one `vmap`. A policy changes the service time
$S_i = t_{k_i}(l_{k_i}) \cdot m_i$ (eq. (1) times a mean-one noise factor $m_i$, 1 when
`service_cv=0` as in the paper) and the correctness $\mathbb{1}[u_i < p_{k_i}(l_{k_i})]$.

Statistics per replication drop the first `warmup` queries (the queue starts empty);
confidence intervals come from the independent replications (Student t).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError, UnstableQueueWarning
from .._objective import task_accuracy
from .._programs import call
from .._traffic.replay import PreparedReplay
from .._validate import check_memory
from .._workload import Workload
from .disciplines import priority_waits, ps_sojourns
from .models import AbstractSingleServer, LatencyModel
from .results import SimulationResult, sample_quantiles
from .stream import NoiseKind, Stream, replay_stream, sample_query_stream

__all__ = ["run", "lindley_waits", "MAX_BATCH_ELEMENTS"]

MAX_BATCH_ELEMENTS = (
    1 << 26
)  # policies x queries per vmapped batch (bounds memory; 256 MiB per f32 array)


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


def _predictions(w: Workload, tokens, model: LatencyModel, replay: PreparedReplay | None = None):
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


def _simulate_and_predict(
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
    replay: PreparedReplay | None,
    model: LatencyModel,
):
    """`_simulate_flat`'s statistics and the model's `_predictions`, as one program."""
    stats = _simulate_flat(
        w,
        tokens,
        key,
        num_queries,
        num_replications,
        warmup,
        service_cv,
        noise,
        discipline,
        rank,
        capacity,
        policy_batch,
        replay,
    )
    return stats, _predictions(w, tokens, model, replay)


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
    replay: PreparedReplay | None,
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


def check_memory_for(
    w: Workload, num_policies: int, num_queries: int, num_replications: int
) -> None:
    """`InputError` when the simulation would not fit in memory: one replication at a time,
    about a dozen arrays of `num_queries` values per policy batch, and the statistics kept."""
    per_batch = min(num_policies, max(1, MAX_BATCH_ELEMENTS // num_queries))
    check_memory(
        16.0 * 8 * num_queries * per_batch
        # the statistics kept per replication: a dozen numbers and one per task, per policy
        + 8.0 * num_policies * num_replications * (16 + w.num_tasks),
        f"simulating {num_queries:,} queries x {num_replications:,} replications",
        "use fewer queries or replications",
    )


def run(
    w: Workload,
    tokens: np.ndarray,
    model: AbstractSingleServer,
    replay: PreparedReplay | None,
    num_queries: int,
    num_replications: int,
    warmup: int,
    key,
    noise: NoiseKind,
    capacity: int,
) -> SimulationResult:
    """Simulate validated policies `tokens` (`(*P, N)`, or `(*P, K, N)` by window) on the
    single server `model` (`simulate` checks every input; nothing is checked here)."""
    num_windows = 1 if replay is None else replay.num_windows
    dtype = np.dtype(w.dtype)
    windowed = replay is not None and replay.window is not None
    policies = tokens.shape[:-2] if windowed else tokens.shape[:-1]
    # prepared on the host: an eager operation would cost a fresh process a program each
    flat = jax.device_put(tokens.reshape(-1, num_windows, w.num_tasks).astype(dtype))
    order = model.priority_order(w)
    rank = np.zeros(w.num_tasks, np.int32)
    rank[np.asarray(order)] = np.arange(w.num_tasks, dtype=np.int32)
    cv = jax.device_put(np.asarray(model.service_cv, dtype))
    # never more present than simulated: a larger capacity changes nothing but the memory
    capacity = min(capacity, max(num_queries, 2))
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
        model.discipline,
        jax.device_put(rank),
        capacity,
        policy_batch,
        replay,
        model,
    )
    (mw, mt, qw, qt, busy, acc, obj, by_task, overflow) = jax.device_get(stats)
    preds = jax.device_get(preds)
    if bool(np.any(overflow)):
        raise InputError(
            f"capacity: more than {capacity} queries were in the processor-sharing system at "
            "once; raise capacity (the load is close to 1)"
        )
    unstable = np.flatnonzero(np.asarray(preds[2]) >= 1)
    if unstable.size:
        warnings.warn(
            f"{unstable.size} of {flat.shape[0]} policies load the server to utilization >= 1 "
            f"(first: policy {int(unstable[0])}, rho = {float(preds[2][unstable[0]]):.3g}): "
            "that queue is unstable, its simulated waits grow with num_queries and its "
            "intervals do not estimate a steady state",
            UnstableQueueWarning,
            stacklevel=3,
        )

    # reshaped on the host (a fresh process would otherwise compile a program per field)
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
        discipline=model.discipline,
        arrival_rate=float(np.asarray(w.arrival_rate)),
    )
