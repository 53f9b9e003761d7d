r"""Replaying a recorded arrival sequence through the simulators: the settings (`Replay`,
checked once when made) and the trace prepared for a model and a policy (`PreparedReplay`).

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

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float, Int

from .._choices import SERVICES, TASK_SOURCES
from .._errors import InputError
from .._workload import Workload
from .trace import Trace, positive_number

__all__ = ["Replay", "PreparedReplay", "SERVICES", "TASK_SOURCES"]


def _optional_positive(name: str) -> Callable[[Any], float | None]:
    def convert(value: Any) -> float | None:
        return None if value is None else positive_number(name, value)

    return convert


class Replay(eqx.Module):
    """How to replay a recorded trace (`simulate(..., arrivals=Replay(trace, ...))`; a bare
    `Trace` is shorthand for `Replay(trace)`): checked once, when made.

    Attributes:
        trace: the recorded arrivals (`read_trace`).
        rate: the replayed mean rate (requests/s): the arrival times are rescaled by one
            factor to it. Default: the trace's own rate.
        utilization: or the load (below 1) of the one policy simulated that the rate is set
            from (give at most one of `rate` and `utilization`).
        service: `"tasks"` (service by each request's task, as without a trace) or `"trace"`
            (each request's work scaled by its output tokens over the trace's mean).
        task_types: `"shares"` (drawn by the workload's shares) or `"trace"` (the trace's
            labels, which must be task names).
        window: seconds of the trace's clock per window when the budgets change with time:
            `tokens` then has shape `(*P, K, N)` for the trace's K windows.
    """

    trace: Trace
    rate: float | None = eqx.field(default=None, converter=_optional_positive("rate"))
    utilization: float | None = eqx.field(default=None, converter=_optional_positive("utilization"))
    service: str = "tasks"
    task_types: str = "shares"
    window: float | None = eqx.field(default=None, converter=_optional_positive("window"))

    def __check_init__(self):
        if not isinstance(self.trace, Trace):
            raise InputError(
                f"arrivals: expected a Trace (read_trace), got {type(self.trace).__name__}"
            )
        if self.service not in SERVICES:
            raise InputError(f"service: one of {', '.join(SERVICES)}; got {self.service!r}")
        if self.task_types not in TASK_SOURCES:
            raise InputError(
                f"task_types: one of {', '.join(TASK_SOURCES)}; got {self.task_types!r}"
            )
        if self.rate is not None and self.utilization is not None:
            raise InputError(
                "rate, utilization: give one of them (or neither: the trace's own rate)"
            )
        if self.utilization is not None and not self.utilization < 1:
            raise InputError(
                f"utilization: must be below 1 (a stable server), got {self.utilization!r}"
            )
        if self.service == "trace":
            _work_factors(self.trace)
        if self.window is not None:
            self.trace.window_index(self.window)  # a window the trace can be cut by

    @classmethod
    def of(cls, arrivals: Trace | Replay) -> Replay:
        """`arrivals` as a `Replay` (a bare `Trace` with the default settings).

        Args:
            arrivals: a `Trace` or a `Replay`.

        Returns:
            The `Replay`.
        """
        if isinstance(arrivals, Replay):  # checked again: a tree map skips the checks
            return cls(
                arrivals.trace,
                rate=arrivals.rate,
                utilization=arrivals.utilization,
                service=arrivals.service,
                task_types=arrivals.task_types,
                window=arrivals.window,
            )
        if isinstance(arrivals, Trace):
            return cls(arrivals)
        raise InputError(
            f"arrivals: expected a Trace (read_trace) or a Replay, got {type(arrivals).__name__}"
        )

    def num_windows(self) -> int:
        """The windows budgets are given for (1 without `window`).

        Returns:
            K, the size of the window axis of `tokens`.
        """
        return 1 if self.window is None else self.trace.num_windows(self.window)

    def prepared_for(
        self,
        model: Any,
        w: Workload,
        tokens: np.ndarray,
    ) -> tuple[PreparedReplay, Workload]:
        """The trace prepared for the simulators, and the workload at the replayed mean rate.

        Args:
            model: the latency model (its load at rate 1 sets a `utilization`; it must be
                linear in the rate).
            w: the workload (validated).
            tokens: the policies, `(*P, N)` or with `window` `(*P, K, N)` (checked).

        Returns:
            The `PreparedReplay` and the workload at the replayed mean rate (the rate the
            model's predictions are made at).
        """
        trace = self.trace
        unit = w.replace(arrival_rate=np.ones((), np.dtype(w.dtype)))
        win = rates = weights = None
        if self.window is not None:
            win = trace.window_index(self.window)
            rates, weights = trace.window_rates(self.window)
        scale = 1.0
        if self.rate is not None:
            scale = trace.mean_rate / self.rate
        elif self.utilization is not None:
            flat = tokens.reshape(-1, *tokens.shape[-2 if win is not None else -1 :])
            if flat.shape[0] != 1:
                raise InputError(
                    f"utilization: the rate is set from one policy's load; got {flat.shape[0]} "
                    "policies (simulate one, or give rate=)"
                )
            policy = flat[0]
            if win is not None:  # the arrival-weighted budgets: the load is linear in them
                policy = np.asarray(weights) @ policy
            load = model.load(np.asarray(policy, np.dtype(w.dtype)), unit)
            per_rate = float(np.asarray(load))
            if not per_rate > 0:
                raise InputError("utilization: the policy puts no load on the server")
            scale = trace.mean_rate / (self.utilization / per_rate)
        with np.errstate(over="ignore"):
            gaps = trace.gaps * scale
        if not (np.all(np.isfinite(gaps)) and np.isfinite(np.sum(gaps))):
            what = "rate" if self.rate is not None else "utilization"
            raise InputError(
                f"{what}: the trace ({trace.duration:.4g} s) rescaled to it spans more seconds "
                "than a double holds; give a larger one"
            )
        rate = trace.mean_rate / scale
        if self.rate is not None:  # the caller's rate: judged here, named as theirs
            zero = np.zeros(w.num_tasks, np.dtype(w.dtype))
            per = float(np.asarray(model.load(zero, unit)))
            if not rate * per < 1:
                raise InputError(
                    f"rate: {self.rate!r} requests/s overloads the server even without "
                    f"reasoning (load {rate * per:.3g} at zero tokens); replay below "
                    f"{1 / per:.4g} requests/s"
                )
        dtype = np.dtype(w.dtype)
        labels = _labels(trace, w) if self.task_types == "trace" else None
        work = _work_factors(trace) if self.service == "trace" else None
        prepared = PreparedReplay(
            gaps=jax.device_put(gaps.astype(dtype)),
            task=None if labels is None else jax.device_put(labels),
            work=None if work is None else jax.device_put(work.astype(dtype)),
            window=None if win is None else jax.device_put(win.astype(np.int32)),
            rate=jax.device_put(np.asarray(rate, dtype)),
            window_rates=None if rates is None else jax.device_put((rates / scale).astype(dtype)),
            window_weights=None if weights is None else jax.device_put(weights.astype(dtype)),
        )
        return prepared, w.replace(arrival_rate=np.asarray(rate, dtype))


class PreparedReplay(eqx.Module):
    """A trace prepared for the simulators: gaps at the replayed rate, fixed task types (or
    None where they are drawn), the work factor per request (or None) and the window index of
    each request (or None)."""

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
