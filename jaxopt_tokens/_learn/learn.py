r"""Budgets learned on the operator's own trace: gradient ascent of the replayed objective.

`learn_budgets` splits a trace in time into a training span and a later held-out span (never
the same requests), replays both at one rate (set from the whole trace), and maximises the
replayed $J = \alpha \cdot \text{accuracy} - E[T]$ on the training span by projected Adam
(optax), from the model optimum (`solve` at the replayed mean rate). A static policy keeps
its budgets in the box $[0, l_{\max}]$; a queue-aware one (`states=S`) is a table whose rows
are non-increasing in the number of requests an arrival finds (`cummin` down the rows of the
box-projected parameters), started flat at the model optimum, so the static optimum is a
member of the family. Both are reported on the held-out span beside the model optimum.
Docs: *Policies learned on traffic*.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

from .._errors import InputError
from .._queue.batching import ContinuousBatching
from .._queue.models import FIFO
from .._solver.solve import solve
from .._status import Status
from .._traffic.trace import Trace
from .._validate import check_int
from .._workload import Workload
from .replay import QueuePolicy, ReplayDraws, replay_draws, replay_metrics

__all__ = ["LearnedBudgets", "learn_budgets"]


class LearnedBudgets(eqx.Module):
    """What `learn_budgets` found.

    Attributes:
        policy: the learned `QueuePolicy` (one row for a static policy).
        model_optimum: the solver's budgets at the replayed mean rate (the start).
        train: `{"learned": ReplayMetrics, "model_optimum": ReplayMetrics}` on the training
            span.
        test: the same on the later, held-out span.
        history: the training objective at each step.
        status: `CONVERGED` when the training objective moved by less than `rtol` (relative)
            over the last tenth of the steps, else `MAX_ITERATIONS`.
        rate: the replayed mean rate (requests/s).
    """

    policy: QueuePolicy
    model_optimum: jax.Array
    train: dict
    test: dict
    history: jax.Array
    status: int
    rate: float

    @property
    def static(self) -> bool:
        return self.policy.states == 0


def _table(theta, cap):
    """Box-projected rows, made non-increasing down the table (the queue-aware family)."""
    return jax.lax.cummin(jnp.clip(theta, 0.0, cap), axis=0)


def _policy(table):
    """A one-row table is static budgets: replayed by the parallel Lindley form, not a scan."""
    return table[0] if table.shape[0] == 1 else QueuePolicy(table)


def _ascent(theta0, draws: ReplayDraws, steps: int, learning_rate: float, tail: float):
    cap = draws.workload.max_tokens
    optimizer = optax.adam(learning_rate)

    def value(theta):
        return replay_metrics(_policy(_table(theta, cap)), draws, tail=tail).objective

    grad = jax.value_and_grad(value)

    def step(carry, _):
        theta, state, best, best_value = carry
        j, g = grad(theta)
        better = j > best_value
        best = jnp.where(better, theta, best)
        best_value = jnp.where(better, j, best_value)
        updates, state = optimizer.update(-g, state, theta)  # ascent
        theta = jnp.clip(jnp.asarray(optax.apply_updates(theta, updates)), 0.0, cap)
        return (theta, state, best, best_value), j

    init = (theta0, optimizer.init(theta0), theta0, jnp.asarray(-jnp.inf, theta0.dtype))
    (theta, _, best, best_value), history = jax.lax.scan(step, init, None, length=steps)
    j_last = value(theta)
    best = jnp.where(j_last > best_value, theta, best)
    return _table(best, cap), jnp.append(history, j_last)


_ascent_jit = eqx.filter_jit(_ascent)
_metrics_jit = eqx.filter_jit(replay_metrics)


def learn_budgets(
    w: Workload,
    trace: Trace,
    *,
    states: int = 0,
    train_fraction: float = 0.5,
    utilization: float | None = None,
    rate: float | None = None,
    num_replications: int = 8,
    steps: int = 300,
    learning_rate: float = 8.0,
    tail: float = 0.95,
    rtol: float = 1e-4,
    task_types: str = "shares",
    model: FIFO | None = None,
    noise: str = "lognormal",
    slots: int = 128,
    key: PRNGKeyArray | None = None,
) -> LearnedBudgets:
    """Learn budgets that maximise the objective replayed on `trace`.

    Args:
        w: the workload (one member).
        trace: the operator's recorded arrivals (`read_trace`).
        states: 0 for static budgets, or S for a queue-aware table of S + 1 rows (an arrival
            that finds s requests in the system gets row min(s, S)).
        train_fraction: the first fraction of the trace's duration trains; the rest is
            held out.
        utilization: the replayed load of the model optimum, for the whole trace.
        rate: or the replayed mean rate (default: the trace's own).
        num_replications: draws of tasks and service noise per span (common to every policy).
        steps: projected Adam's iterations.
        learning_rate: its step, in tokens.
        tail: the CVaR level reported.
        rtol: the relative change of the training objective over the last tenth of the steps
            below which the result is `CONVERGED`.
        task_types: `"shares"` (each request's task drawn from the workload's shares) or
            `"trace"` (the trace's own task labels, e.g. a gateway's request log).
        model: the server replayed: `FIFO(service_cv)` (default deterministic service), or
            an unlimited `ContinuousBatching` (its fluid replay); also the model whose
            optimum is the start and the comparison.
        noise: the family of the service-time factor (`"lognormal"` or `"gamma"`).
        slots: (batching) the most requests in the system the replay holds; a replay that
            needs more is refused with `InputError` naming `slots`.
        key: a JAX PRNG key (training and held-out draws are folded from it).

    Returns:
        `LearnedBudgets` with the learned and the model-optimal policy's metrics on both spans.
    """
    if not isinstance(trace, Trace):
        raise InputError(f"trace: expected a Trace (read_trace), got {type(trace).__name__}")
    states = check_int("states", states, 0, 256)
    steps = check_int("steps", steps, 1, 100_000)
    slots = check_int("slots", slots, 2, 4096)
    if not (isinstance(train_fraction, float | int) and 0 < train_fraction < 1):
        raise InputError(f"train_fraction: in (0, 1), got {train_fraction!r}")
    if not (
        isinstance(learning_rate, float | int) and np.isfinite(learning_rate) and learning_rate > 0
    ):
        raise InputError(f"learning_rate: a number > 0 (tokens a step), got {learning_rate!r}")
    model = FIFO() if model is None else model
    batching = isinstance(model, ContinuousBatching)
    if type(model) is not FIFO and not batching:
        raise InputError(
            "model: the replay learns on the FIFO single server or the continuously batching "
            f"one, got {type(model).__name__}"
        )
    cv = 0.0 if batching else model.service_cv
    server = {"model": model, "slots": slots} if batching else {}
    key = jax.random.PRNGKey(0) if key is None else key
    whole = replay_draws(
        w,
        trace,
        num_replications=1,
        key=key,
        rate=rate,
        utilization=utilization,
        task_types=task_types,
        service_cv=cv,
        noise=noise,
        **server,
    )
    replayed = float(np.asarray(whole.workload.arrival_rate))
    timed = trace.rescaled(replayed)
    split = timed.duration * train_fraction
    spans = (timed.between(0.0, split), timed.between(split, np.inf))
    train, test = (
        replay_draws(
            w,
            span,
            num_replications=num_replications,
            key=jax.random.fold_in(key, i),
            task_types=task_types,
            service_cv=cv,
            noise=noise,
            **server,
        )
        for i, span in enumerate(spans, start=1)
    )
    at = w.replace(arrival_rate=jnp.asarray(replayed, w.dtype))
    optimum = solve(at, model=model).tokens
    if not bool(np.all(np.isfinite(np.asarray(optimum)))):
        raise InputError(
            f"rate: no stable model optimum at {replayed:.4g} requests/s (the replayed rate)"
        )
    theta0 = jnp.broadcast_to(optimum, (states + 1, w.num_tasks)).astype(w.dtype)
    table, history = _ascent_jit(theta0, train, steps, float(learning_rate), tail)
    policy = QueuePolicy(table)
    start = QueuePolicy.flat(optimum, states)
    tail_steps = max(steps // 10, 1)
    recent = np.asarray(history[-tail_steps - 1 :])
    moved = float(np.ptp(recent)) / max(abs(float(recent[-1])), 1e-12)
    status = Status.CONVERGED if moved < rtol else Status.MAX_ITERATIONS

    def report(draws):
        return {
            "learned": _metrics_jit(_policy(policy.table), draws, tail=tail),
            "model_optimum": _metrics_jit(_policy(start.table), draws, tail=tail),
        }

    train_report, test_report = report(train), report(test)
    for span in (train_report, test_report):
        for m in span.values():
            if bool(np.any(np.asarray(m.per_replication.get("overflow", False)))):
                raise InputError(
                    f"slots: the batching replay needed more than {slots} requests in the "
                    "system at once; give more slots"
                )
    return LearnedBudgets(
        policy=policy,
        model_optimum=optimum,
        train=train_report,
        test=test_report,
        history=history,
        status=int(status),
        rate=replayed,
    )
