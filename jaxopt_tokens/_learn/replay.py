r"""A differentiable replay of a recorded arrival sequence through the FIFO single server.

`replay_draws` fixes everything random about a replay (the trace's gaps at the replayed rate,
the task of each request, its service-time factor, the correctness draws) for
`num_replications` replications, with the same keys as `simulate` uses, so the two see the same
draws. `replay_metrics` then replays a policy on those draws in pure JAX:

- a static policy (budgets `(N,)`, or `(P, N)` for P policies at once) through the parallel
  Lindley form $W_i = \max(0, W_{i-1} + S_{i-1} - \tau_i)$ (cumulative sum and minimum);
- a queue-aware policy (`QueuePolicy`: a budget per task and per number of requests in the
  system at the request's arrival) through the same recursion, one request at a time, carrying
  the times to departure of the last `S` requests (their count above zero is the state an
  arrival sees).

The recursion is piecewise linear in the service times, so its derivative with respect to the
budgets is the exact sample-path derivative (infinitesimal perturbation analysis, IPA): on a
path where no two events coincide, a small change of one budget changes no waiting/idle
boundary and no state an arrival sees, and the derivative of the mean system time is what
autodiff computes. Accuracy enters as each request's expected accuracy $p_k(l)$ (smooth),
not its Bernoulli draw. The tail is measured by the CVaR of the system time (the mean of the
worst `1 - tail` fraction), which is differentiable almost everywhere, where a quantile is
not. Docs: *Policies learned on traffic*.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._errors import InputError
from .._objective import task_accuracy
from .._queue.batching import ContinuousBatching
from .._queue.models import FIFO, AbstractSingleServer, LatencyModel
from .._queue.server_sim import lindley_waits
from .._queue.stream import replay_stream
from .._solver.solve import solve
from .._traffic.replay import Replay
from .._traffic.trace import Trace
from .._validate import check_int, check_key, check_memory
from .._workload import Workload
from .batching import batching_latencies

__all__ = ["ReplayDraws", "QueuePolicy", "ReplayMetrics", "replay_draws", "replay_metrics"]


class ReplayDraws(eqx.Module):
    """The fixed draws of `R` replications of a trace's replay on the FIFO server (common
    random numbers for every policy replayed on them).

    Attributes:
        workload: the workload at the replayed mean rate.
        gaps: `(R, q)` inter-arrival times (`gaps[:, 0]` is ignored).
        task: `(R, q)` task of each request.
        factor: `(R, q)` mean-one service-time factor of each request.
        uniform: `(R, q)` the draw that decides whether a request is answered correctly
            (what `simulate` uses; `replay_metrics` uses expected accuracy).
        warmup: requests left out of the statistics at the start of each replication.
        model: the server replayed: `FIFO(service_cv)`, or `ContinuousBatching` (its fluid:
            see `batching_latencies`).
        slots: (batching) the most requests the replay holds in the system at once.
    """

    workload: Workload
    gaps: Float[Array, "r q"]
    task: Int[Array, "r q"]
    factor: Float[Array, "r q"]
    uniform: Float[Array, "r q"]
    warmup: int = eqx.field(static=True)
    model: LatencyModel = eqx.field(default_factory=FIFO)
    slots: int = eqx.field(static=True, default=64)

    @property
    def num_queries(self) -> int:
        return int(self.gaps.shape[-1])

    @property
    def num_replications(self) -> int:
        return int(self.gaps.shape[0])


def replay_draws(
    w: Workload,
    trace: Trace,
    *,
    num_replications: int = 8,
    key: PRNGKeyArray | None = None,
    rate: float | None = None,
    utilization: float | None = None,
    tokens: ArrayLike | None = None,
    service: str = "tasks",
    task_types: str = "shares",
    service_cv: ArrayLike = 0.0,
    noise: str = "lognormal",
    warmup: int | None = None,
    model: LatencyModel | None = None,
    slots: int = 64,
) -> ReplayDraws:
    """Draw and check, once, what `replay_metrics` replays.

    Args:
        w: the workload (one member).
        trace: the recorded arrivals (`read_trace`).
        num_replications: independent draws of tasks, service noise and correctness.
        key: a JAX PRNG key (default `PRNGKey(0)`, as `simulate`).
        rate: the replayed mean rate (default: the trace's own), as in `simulate`.
        utilization: or the load of `tokens` the rate is set from.
        tokens: the budgets a `utilization` is measured at (default: the solver's optimum at
            the workload's rate).
        service: `"tasks"` or `"trace"`, as in `simulate`.
        task_types: `"shares"` or `"trace"`, as in `simulate`.
        service_cv: the coefficient of variation of a request's service time (one value, or
            one per task).
        noise: the family of the service-time factor, `"lognormal"` or `"gamma"` (with
            `service_cv=1`, exponential service), as in `simulate`.
        warmup: requests left out of the statistics (default 10%).
        model: the server: `FIFO(service_cv)` by default, or an unlimited, single-replica
            `ContinuousBatching` (replayed as a fluid; `service_cv` and `noise` do not apply).
        slots: (batching) the most requests in the system the replay holds; a replay that
            needs more is refused by `replay_metrics`' callers (`overflow`).

    Returns:
        `ReplayDraws`. `simulate(w, tokens, arrivals=Replay(trace, ...),
        model=FIFO(service_cv), noise=noise)` with the same key sees the same draws.
    """
    if not isinstance(trace, Trace):
        raise InputError(f"trace: expected a Trace (read_trace), got {type(trace).__name__}")
    w.validate()
    if w.batch_shape:
        raise InputError(f"w: one workload, got a batch of shape {w.batch_shape}")
    num_replications = check_int("num_replications", num_replications, 1)
    if noise not in ("lognormal", "gamma"):
        raise InputError(f"noise: 'lognormal' or 'gamma', got {noise!r}")
    check_key(key)
    key = jax.random.PRNGKey(0) if key is None else key
    if model is None:
        model = FIFO(service_cv=service_cv)
    elif isinstance(model, ContinuousBatching):
        if model.max_batch is not None or model.replicas != 1:
            raise InputError(
                "model: the batching replay is of one replica without a batch limit "
                "(ContinuousBatching(max_batch=None, replicas=1))"
            )
    elif not (isinstance(model, AbstractSingleServer) and model.discipline == "fifo"):
        raise InputError(
            "model: a first-come-first-served single server (FIFO, Kingman) or "
            f"ContinuousBatching, got {type(model).__name__}"
        )
    slots = check_int("slots", slots, 2, 4096)
    if tokens is None and utilization is not None:
        tokens = solve(w, model=model).tokens
    tok = np.zeros((1, w.num_tasks)) if tokens is None else np.asarray(tokens, np.float64)
    settings = Replay(
        trace, rate=rate, utilization=utilization, service=service, task_types=task_types
    )
    replay, at = settings.prepared_for(model, w, tok.reshape(-1, w.num_tasks)[:1])
    q = replay.num_queries
    warmup = q // 10 if warmup is None else check_int("warmup", warmup, 0, q - 2)
    check_memory(
        4 * 8.0 * q * num_replications,
        f"the draws of {num_replications:,} replications of {q:,} requests",
        "use fewer replications",
    )
    streams = jax.vmap(  # replication r: the key `simulate` folds for it
        lambda r: replay_stream(
            jax.random.fold_in(key, r), at, replay, service_cv=service_cv, noise=noise
        )
    )(jnp.arange(num_replications))
    return ReplayDraws(
        workload=at,
        gaps=streams.gaps,
        task=streams.task,
        factor=streams.noise,
        uniform=streams.uniform,
        warmup=warmup,
        model=model,
        slots=slots,
    )


class QueuePolicy(eqx.Module):
    """Budgets by task and by the requests in the system when a request arrives: row `s` of
    `table` (shape `(S + 1, N)`) holds the budgets of an arrival that finds `s` requests in
    the system (in service or waiting), the last row those of `S` or more. A static policy is
    the flat table (`QueuePolicy.flat`). Monotone non-increasing down the rows is the family
    `learn_budgets` searches (a longer queue never gets a larger budget).

    Attributes:
        table: the budgets, shape `(S + 1, N)`: row by requests found in the system, column by
            task.
    """

    table: Float[Array, "s n"]

    @classmethod
    def flat(cls, tokens, states: int) -> QueuePolicy:
        """The static policy `tokens` as a table of `states + 1` equal rows."""
        tokens = jnp.asarray(tokens)
        return cls(table=jnp.broadcast_to(tokens, (states + 1, tokens.shape[-1])))

    @property
    def states(self) -> int:
        return int(self.table.shape[0]) - 1


class ReplayMetrics(eqx.Module):
    """A policy's replayed statistics, averaged over the replications (each also `(R,)` in
    `per_replication`): mean system time and wait, mean expected accuracy, the objective
    $J = \\alpha \\cdot$ accuracy $-$ mean system time, the CVaR of the system time at `tail`,
    and its 95th percentile.

    Attributes:
        mean_system_time: mean system time (s).
        mean_wait: mean wait (s).
        accuracy: mean expected accuracy.
        objective: J.
        cvar: the CVaR of the system time at the tail level.
        p95: the 95th percentile of the system time.
        per_replication: each statistic per replication, `(R,)`.
    """

    mean_system_time: Float[Array, "*p"]
    mean_wait: Float[Array, "*p"]
    accuracy: Float[Array, "*p"]
    objective: Float[Array, "*p"]
    cvar: Float[Array, "*p"]
    p95: Float[Array, "*p"]
    per_replication: dict


def _statistics(w: Workload, T, W, acc, warmup: int, tail: float):
    T, W, acc = T[..., warmup:], W[..., warmup:], acc[..., warmup:]
    mean_T = jnp.mean(T, -1)
    k = max(int(np.ceil((1 - tail) * T.shape[-1])), 1)
    worst = jax.lax.top_k(T, k)[0]
    accuracy = jnp.mean(acc, -1)
    return {
        "mean_system_time": mean_T,
        "mean_wait": jnp.mean(W, -1),
        "accuracy": accuracy,
        "objective": w.alpha * accuracy - mean_T,
        "cvar": jnp.mean(worst, -1),
        "p95": jnp.quantile(T, 0.95, axis=-1),
    }


def _batching(table, draws: ReplayDraws, tail: float):
    """The fluid batching replay of a table by requests found (one row: static budgets)."""
    w = draws.workload
    model = draws.model
    assert isinstance(model, ContinuousBatching)
    tau0, tau1 = model.step_coefficients(w.dtype)
    work = model.work(table, w)  # (S + 1, N) tokens of work
    accuracy_table = task_accuracy(table, w)

    def one(gaps, task):
        T, found, full = batching_latencies(work, gaps, task, tau0, tau1, draws.slots)
        row = jnp.minimum(found, table.shape[0] - 1)
        return T, jnp.zeros_like(T), accuracy_table[row, task], full

    T, W, acc, full = jax.vmap(one)(draws.gaps, draws.task)
    stats = _statistics(w, T, W, acc, draws.warmup, tail)
    stats["overflow"] = full
    return stats


def _static(tokens, draws: ReplayDraws, tail: float):
    if isinstance(draws.model, ContinuousBatching):
        return _batching(tokens[None], draws, tail)
    w = draws.workload
    t = w.t0 + w.c * tokens  # (N,)
    p = task_accuracy(tokens, w)

    def one(gaps, task, factor):
        service = t[task] * factor
        waits = lindley_waits(gaps, service)
        return waits + service, waits, p[task]

    T, W, acc = jax.vmap(one)(draws.gaps, draws.task, draws.factor)
    return _statistics(w, T, W, acc, draws.warmup, tail)


def _queue_aware(policy: QueuePolicy, draws: ReplayDraws, tail: float):
    if isinstance(draws.model, ContinuousBatching):
        return _batching(policy.table, draws, tail)
    w = draws.workload
    table = policy.table
    S = policy.states
    service_table = w.t0 + w.c * table  # (S + 1, N)
    accuracy_table = task_accuracy(table, w)

    def one(gaps, task, factor):
        def step(ahead, x):
            gap, k, f = x
            ahead = ahead - gap  # times to departure of the last S requests, from this arrival
            state = jnp.sum(ahead > 0)  # how many of them are still in the system
            wait = jnp.maximum(ahead[0], 0)  # FIFO: the last one departs last
            service = service_table[state, k] * f
            ahead = jnp.concatenate([(wait + service)[None], ahead[:-1]])
            return ahead, (wait + service, wait, accuracy_table[state, k])

        start = jnp.full((max(S, 1),), -jnp.inf, gaps.dtype)
        _, out = jax.lax.scan(step, start, (gaps, task, factor))
        return out

    T, W, acc = jax.vmap(one)(draws.gaps, draws.task, draws.factor)
    return _statistics(w, T, W, acc, draws.warmup, tail)


def replay_metrics(
    policy: ArrayLike | QueuePolicy, draws: ReplayDraws, *, tail: float = 0.95
) -> ReplayMetrics:
    """Replay `policy` on `draws`: differentiable with respect to the budgets (or the
    table), under `jit` and `vmap`.

    Args:
        policy: static budgets `(N,)` or `(P, N)` (P policies, replayed in one call), or a
            `QueuePolicy`.
        draws: `replay_draws(...)`.
        tail: the CVaR level (the mean of the worst `1 - tail` fraction of system times).

    Returns:
        `ReplayMetrics` (shape `(P,)` per statistic for P static policies). On the batching
        server nobody waits for a place, so `mean_wait` is 0, and `per_replication` also
        holds `overflow` (whether an arrival found every place taken: an invalid replay).
    """
    if not isinstance(draws, ReplayDraws):
        raise InputError(f"draws: expected ReplayDraws (replay_draws), got {type(draws)!r}")
    if not 0 < tail < 1:
        raise InputError(f"tail: a level in (0, 1), got {tail!r}")
    n = draws.workload.num_tasks
    if isinstance(policy, QueuePolicy):
        if policy.table.ndim != 2 or policy.table.shape[-1] != n:
            raise InputError(f"policy: a table of shape (S + 1, {n}), got {policy.table.shape}")
        stats = _queue_aware(policy, draws, tail)
    else:
        tokens = jnp.asarray(policy, draws.workload.dtype)
        if tokens.ndim not in (1, 2) or tokens.shape[-1] != n:
            raise InputError(f"policy: budgets of shape ({n},) or (P, {n}), got {tokens.shape}")
        if tokens.ndim == 2:  # in batches that keep ~2^24 request values per array
            cells = draws.num_replications * draws.num_queries
            batch = max(1, min(tokens.shape[0], (1 << 24) // max(cells, 1)))
            stats = jax.lax.map(lambda l: _static(l, draws, tail), tokens, batch_size=batch)
        else:
            stats = _static(tokens, draws, tail)
    overflow = stats.pop("overflow", None)
    mean = {k: jnp.mean(v, -1) for k, v in stats.items()}
    if overflow is not None:
        stats["overflow"] = overflow
    return ReplayMetrics(**mean, per_replication=stats)
