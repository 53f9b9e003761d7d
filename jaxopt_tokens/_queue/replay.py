r"""Replaying a recorded arrival sequence through the simulators.

A replay keeps the trace's arrival times (rescaled by one factor to a target rate or
utilization) and redraws only what is random: the task of each request (by the shares, unless
the trace's labels are used), the service-time noise (unless the trace's own token counts give
each request's work) and the correctness draws. Each replication is one pass over the whole
trace, so the replications differ only in those draws.

With `service="trace"`, request i's work is scaled by $m_i = o_i / \bar o$ (its output tokens
over the trace's mean): the single server serves it in $t_k(l_k) m_i$, the batching server in
$\mathrm{round}(w_k m_i)$ steps. The mean work stays the workload's; its timing follows the
trace, which is what a queue feels when long answers come in bursts.

With `window=` the budgets may change with time: `tokens` then has a window axis before the
task axis, `(*P, K, N)`, and a request uses the budgets of the window (of `window` seconds of
the trace's own clock) it arrives in. Docs: *Real traffic*.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._choices import SERVICES, TASK_SOURCES
from .._errors import InputError
from .._traffic.trace import Trace, positive_number
from .._workload import Workload

__all__ = [
    "Replay",
    "prepare_replay",
    "replay_for",
    "no_replay_settings",
    "SERVICES",
    "TASK_SOURCES",
]


Service = Literal["tasks", "trace"]
TaskSource = Literal["shares", "trace"]


class Replay(eqx.Module):
    """A trace prepared for the simulators: gaps at the replayed rate, fixed task types (or
    -1 where they are drawn), the work factor per request (or None) and the window index of
    each request."""

    gaps: Float[Array, " q"]
    task: Int[Array, " q"] | None
    work: Float[Array, " q"] | None
    window: Int[Array, " q"] | None
    # arrays, not static fields: a replay at another rate must not compile the simulator again
    rate: Float[Array, ""]
    window_rates: Float[Array, " k"] | None = None
    window_weights: Float[Array, " k"] | None = None

    @property
    def num_queries(self) -> int:
        return int(self.gaps.shape[0])

    @property
    def num_windows(self) -> int:
        return 1 if self.window_rates is None else max(int(self.window_rates.shape[0]), 1)


def _labels(trace: Trace, w: Workload) -> np.ndarray:
    if trace.labels is None:
        raise InputError(
            f"task_types: the trace {trace.source} has no task labels; use task_types='shares' "
            "(or label it: Trace.labelled)"
        )
    names = w.task_names
    index = {n: k for k, n in enumerate(names)}
    unknown = sorted({s for s in trace.labels if s not in index})
    if unknown:
        raise InputError(
            f"task_types: the trace's label(s) {unknown[:5]} are not tasks of the workload "
            f"({', '.join(names)})"
        )
    return np.asarray([index[s] for s in trace.labels], dtype=np.int32)


def _work_factors(trace: Trace) -> np.ndarray:
    out = trace.output_tokens
    if out is None:
        raise InputError(
            f"service: the trace {trace.source} has no output tokens; use service='tasks'"
        )
    if not out.mean() > 0:
        raise InputError(f"service: the trace {trace.source} has no output tokens (all zero)")
    return out / out.mean()


def prepare_replay(
    trace: Trace,
    w: Workload,
    tokens: np.ndarray,
    load_at_unit_rate,
    *,
    rate: float | None,
    utilization: float | None,
    service: str,
    task_types: str,
    window: float | None,
) -> Replay:
    """Check the replay's settings and prepare the trace for the simulators.

    `tokens` has shape `(*P, N)` or, with `window`, `(*P, K, N)`; `load_at_unit_rate(l)` is
    the model's load of budgets `l` (shape `(N,)`) at arrival rate 1, which `utilization`
    inverts (it must be linear in the rate)."""
    if not isinstance(trace, Trace):
        raise InputError(f"arrivals: expected a Trace (read_trace), got {type(trace).__name__}")
    if service not in SERVICES:
        raise InputError(f"service: one of {', '.join(SERVICES)}; got {service!r}")
    if task_types not in TASK_SOURCES:
        raise InputError(f"task_types: one of {', '.join(TASK_SOURCES)}; got {task_types!r}")
    if rate is not None and utilization is not None:
        raise InputError("rate, utilization: give one of them (or neither: the trace's own rate)")
    win = None
    rates = weights = None
    if window is not None:
        window = positive_number("window", window)
        win = trace.window_index(window)
        num = int(win.max()) + 1
        if tokens.ndim < 2 or tokens.shape[-2] != num:
            raise InputError(
                f"tokens: with window={window:g} s the trace has {num} windows; expected budgets "
                f"of shape (..., {num}, {w.num_tasks}), got {tokens.shape}"
            )
        rates, weights = trace.window_rates(window)
    scale = 1.0
    if rate is not None:
        scale = trace.mean_rate / positive_number("rate", rate)
    elif utilization is not None:
        u = positive_number("utilization", utilization)
        if u >= 1:
            raise InputError(f"utilization: must be below 1 (a stable server), got {u!r}")
        flat = tokens.reshape(-1, *tokens.shape[-2 if window is not None else -1 :])
        if flat.shape[0] != 1:
            raise InputError(
                f"utilization: the rate is set from one policy's load; got {flat.shape[0]} "
                "policies (simulate one, or give rate=)"
            )
        policy = flat[0]
        if window is not None:  # the arrival-weighted budgets: the load is linear in them
            policy = np.asarray(weights) @ policy
        per_rate = float(np.asarray(load_at_unit_rate(jnp.asarray(policy, w.dtype))))
        if not per_rate > 0:
            raise InputError("utilization: the policy puts no load on the server")
        scale = trace.mean_rate / (u / per_rate)
    labels = _labels(trace, w) if task_types == "trace" else None
    work = _work_factors(trace) if service == "trace" else None
    with np.errstate(over="ignore"):
        gaps = trace.gaps * scale
    if not (np.all(np.isfinite(gaps)) and np.isfinite(np.sum(gaps))):
        what = "rate" if rate is not None else "utilization"
        raise InputError(
            f"{what}: the trace ({trace.duration:.4g} s) rescaled to it spans more seconds than "
            "a double holds; give a larger one"
        )
    return Replay(
        gaps=jnp.asarray(gaps, w.dtype),
        task=None if labels is None else jnp.asarray(labels),
        work=None if work is None else jnp.asarray(work, w.dtype),
        window=None if win is None else jnp.asarray(win, jnp.int32),
        rate=jnp.asarray(trace.mean_rate / scale, w.dtype),
        window_rates=None if rates is None else jnp.asarray(rates / scale, w.dtype),
        window_weights=None if weights is None else jnp.asarray(weights, w.dtype),
    )


def replay_for(
    model, w: Workload, tokens: np.ndarray, arrivals, **settings
) -> tuple[Replay, Workload]:
    """The `Replay` of `arrivals` for `model` (its load at rate 1 sets a `utilization`), and
    the workload at the replayed mean rate (the one its predictions are made at)."""
    unit = w.replace(arrival_rate=jnp.ones((), w.dtype))
    replay = prepare_replay(arrivals, w, tokens, lambda l: model.load(l, unit), **settings)
    if settings.get("rate") is not None:  # the caller's rate: judged here, named as theirs
        per = float(np.asarray(model.load(jnp.zeros(w.num_tasks, w.dtype), unit)))
        if not float(np.asarray(replay.rate)) * per < 1:
            raise InputError(
                f"rate: {settings['rate']!r} requests/s overloads the server even without "
                f"reasoning (load {float(np.asarray(replay.rate)) * per:.3g} at zero tokens); "
                f"replay below {1 / per:.4g} requests/s"
            )
    return replay, w.replace(arrival_rate=jnp.asarray(replay.rate, w.dtype))


def no_replay_settings(num_queries, rate, utilization, service, task_types, window) -> None:
    """`InputError` when a setting of trace replay is given without `arrivals`."""
    del num_queries  # a Poisson stream takes any number of queries
    for name, value in (("rate", rate), ("utilization", utilization), ("window", window)):
        if value is not None:
            raise InputError(f"{name}: a setting of trace replay; give arrivals= (a Trace)")
    if service != "tasks":
        raise InputError(f"service={service!r}: the trace's work needs arrivals= (a Trace)")
    if task_types != "shares":
        raise InputError(f"task_types={task_types!r}: the trace's labels need arrivals= (a Trace)")
