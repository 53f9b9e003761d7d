"""A solved allocation as a plain record: what the CLI prints and other tools consume."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import (
    ContinuousBatching,
    Solution,
    Status,
    Workload,
    default_solver,
    integer_budgets,
    mean_accuracy,
    mean_system_time,
    mean_wait,
    task_accuracy,
    utilization,
)

__all__ = ["allocation_report", "server_report"]


def allocation_report(w: Workload, sol: Solution, method: str) -> dict[str, Any]:
    """JSON-ready summary of one solved (unbatched) workload, with integer budgets (39)."""
    tokens = sol.tokens
    status = Status(int(sol.status))
    ok = status == Status.CONVERGED or bool(np.all(np.isfinite(np.asarray(tokens))))
    tokens_int = integer_budgets(tokens, w) if ok else tokens

    def f(x):
        return float(np.asarray(x))

    return {
        "tasks": list(w.task_names),
        "tokens": [float(v) for v in np.asarray(tokens)],
        "tokens_int": [int(v) if np.isfinite(v) else None for v in np.asarray(tokens_int)],
        "accuracy_per_task": [float(v) for v in np.asarray(task_accuracy(tokens, w))],
        "objective": f(sol.objective),
        "accuracy": f(mean_accuracy(tokens, w)),
        "mean_wait": f(mean_wait(tokens, w)),
        "mean_system_time": f(mean_system_time(tokens, w)),
        "utilization": f(utilization(tokens, w)),
        "status": status.name.lower(),
        "status_message": status.message,
        "residual": f(sol.residual),
        "iterations": int(sol.iterations),
        "method": method,
        "arrival_rate": f(w.arrival_rate),
        "alpha": f(w.alpha),
        "max_tokens": f(w.max_tokens),
        "stats": {
            k: (float(np.asarray(v)) if np.ndim(v) == 0 else np.asarray(v).tolist())
            for k, v in sol.stats.items()
        },
    }


def server_report(w: Workload, sol: Solution, model: ContinuousBatching) -> dict[str, Any]:
    """`allocation_report` for a batching server: its latency figures replace the M/G/1 ones."""
    tokens = sol.tokens
    status = Status(int(sol.status))
    finite = bool(np.all(np.isfinite(np.asarray(tokens))))
    tokens_int = model.integer_budgets(tokens, w) if finite else tokens
    stats = model.stats(tokens, w)

    def f(x):
        v = float(np.asarray(x))
        return v if np.isfinite(v) else None

    return {
        "tasks": list(w.task_names),
        "server": {
            "model": "continuous batching",
            "step_time": [float(np.asarray(t)) for t in model.step_time],
            "max_batch": model.max_batch,
            "answer_tokens": np.asarray(model.answer_tokens).tolist(),
            "prefill": np.asarray(model.prefill).tolist(),
            "replicas": model.replicas,
            "routing": model.routing,
        },
        "tokens": [float(v) for v in np.asarray(tokens)],
        "tokens_int": [int(v) if np.isfinite(v) else None for v in np.asarray(tokens_int)],
        "accuracy_per_task": [float(v) for v in np.asarray(task_accuracy(tokens, w))],
        "system_time_per_task": [f(v) for v in np.asarray(model.system_times(tokens, w))],
        "objective": f(sol.objective),
        "accuracy": f(mean_accuracy(tokens, w)),
        "mean_system_time": f(stats["system_time"]),
        "queue_wait": f(stats["queue_wait"]),
        "mean_batch": f(stats["running"]),
        "load": f(stats["load"]),
        "capacity": f(stats["capacity"]),
        "status": status.name.lower(),
        "status_message": status.message,
        "residual": f(sol.residual),
        "iterations": int(sol.iterations),
        "method": type(default_solver(model)).__name__,
        "arrival_rate": float(np.asarray(w.arrival_rate)),
        "alpha": float(np.asarray(w.alpha)),
        "max_tokens": float(np.asarray(w.max_tokens)),
    }
