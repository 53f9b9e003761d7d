r"""Budgets for traffic whose rate moves: one policy per window, or one policy for them all.

`plan_windows(w, trace, window)` cuts the trace into windows of `window` seconds and

- solves the optimal budgets of every window at that window's rate (one batched solve);
- solves the single static policy that maximises the arrival-weighted objective over the
  windows, $\sum_j q_j J_j(l)$: the objective of the piecewise-stationary model `TimeVarying`
  (every request's accuracy counts once; its latency is its window's);
- keeps the policy solved at the trace's mean rate beside them, for comparison.

Docs: *Real traffic*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from .._objective import mean_accuracy
from .._queue.models import FIFO, AbstractSingleServer, LatencyModel, TimeVarying
from .._solver.solve import solve
from .._traffic.trace import Trace
from .._workload import Workload

__all__ = ["WindowPlan", "plan_windows"]


@dataclass(frozen=True)
class WindowPlan:
    """Per-window and static budgets for a trace (see `plan_windows`).

    Attributes:
        window: seconds per window.
        rates: requests/s in each window (shape `(K,)`).
        weights: the share of the trace's requests in each window (`(K,)`).
        tokens: each window's optimal budgets (`(K, N)`; a window without requests gets those
            of a vanishing rate); `status` says which were solved.
        status: a `Status` per window (`INVALID` where the server is overloaded even at zero
            budgets: no budget keeps that window's queue stable; its budgets are NaN).
        static_tokens: the static policy that maximises the arrival-weighted objective.
        static_status: its `Status` (`INVALID` when some window is overloaded at any budget).
        mean_rate_tokens: the policy solved at the trace's mean rate.
        model: the piecewise-stationary model of the trace (`TimeVarying`).
        workload: the workload at the trace's mean rate.
    """

    window: float
    rates: np.ndarray
    weights: np.ndarray
    tokens: np.ndarray
    status: np.ndarray
    static_tokens: np.ndarray
    static_status: int
    mean_rate_tokens: np.ndarray
    model: TimeVarying
    workload: Workload

    def predicted(self, tokens) -> dict[str, float]:
        """The model's arrival-weighted accuracy, mean system time and objective of `tokens`:
        budgets `(N,)` (static) or `(K, N)` (one row per window)."""
        w = self.workload
        values = np.asarray(tokens, dtype=float)
        if values.shape not in ((w.num_tasks,), (len(self.rates), w.num_tasks)):
            raise InputError(
                f"tokens: budgets of shape ({w.num_tasks},) or ({len(self.rates)}, "
                f"{w.num_tasks}), got {values.shape}"
            )
        if not np.all(values >= 0):
            raise InputError("tokens: budgets must be >= 0 (and not NaN)")
        tok = jnp.asarray(values, w.dtype)
        base = self.model.base
        q = jnp.asarray(self.weights, w.dtype)
        per = jnp.broadcast_to(tok, (len(self.rates), w.num_tasks))
        windows = jax.vmap(lambda r: w.replace(arrival_rate=r))(jnp.asarray(self.rates, w.dtype))
        T = base.mean_system_time(per, windows)
        acc = mean_accuracy(per, w)
        T_mean = float(jnp.sum(q * T))
        acc_mean = float(jnp.sum(q * acc))
        return {
            "accuracy": acc_mean,
            "mean_system_time": T_mean,
            "objective": float(w.alpha) * acc_mean - T_mean,
        }


def plan_windows(
    w: Workload,
    trace: Trace,
    window: float = 600.0,
    *,
    model: LatencyModel | None = None,
    solver: Any = "default",
) -> WindowPlan:
    """Optimal budgets per window of `trace`, and one static policy for the whole trace.

    Args:
        w: one workload; its `arrival_rate` is replaced by the trace's (rescale the trace with
            `Trace.rescaled` for another load).
        trace: the recorded arrivals (`read_trace`).
        window: seconds per window (the last partial window joins the one before).
        model: the single server in each window (`FIFO()` by default, or `Kingman`,
            `Priority`, `ProcessorSharing`).
        solver: passed to `solve` for the budgets per window and at the mean rate; the static
            policy under `TimeVarying` takes that model's default solver (the paper's solvers
            do not apply to it).

    Returns:
        a `WindowPlan`.
    """
    if not isinstance(w, Workload) or w.batch_shape:
        raise InputError("w: one Workload (no batch axes)")
    if not isinstance(trace, Trace):
        raise InputError(f"trace: expected a Trace (read_trace), got {type(trace).__name__}")
    base = FIFO() if model is None else model
    if not isinstance(base, AbstractSingleServer) or isinstance(base, TimeVarying):
        raise InputError(
            f"model: a single-server model (FIFO, Kingman, Priority, ProcessorSharing), got "
            f"{type(base).__name__}"
        )
    rates, weights = trace.window_rates(window)
    tv = TimeVarying(
        rate_factors=jnp.asarray(rates / trace.mean_rate), weights=jnp.asarray(weights), base=base
    )
    wm = w.replace(arrival_rate=jnp.asarray(trace.mean_rate, w.dtype))
    # a window without requests has no queue: its budgets are those of a vanishing rate
    solve_rates = np.maximum(rates, 1e-9 * trace.mean_rate)
    batch = jax.vmap(lambda r: w.replace(arrival_rate=r))(jnp.asarray(solve_rates, w.dtype))
    per = solve(batch, solver, model=base)
    static = solve(wm, "default", model=tv)
    at_mean = solve(wm, solver, model=base)
    return WindowPlan(
        window=float(window),
        rates=rates,
        weights=weights,
        tokens=np.asarray(per.tokens),
        status=np.asarray(per.status),
        static_tokens=np.asarray(static.tokens),
        static_status=int(static.status),
        mean_rate_tokens=np.asarray(at_mean.tokens),
        model=tv,
        workload=wm,
    )
