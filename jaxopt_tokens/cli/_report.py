"""A solved allocation as a plain record: what the CLI prints and other tools consume."""

from __future__ import annotations

from typing import Any

import numpy as np

import jaxopt_tokens as jt

__all__ = ["allocation_report", "server_report"]


def _allocation_figures(tokens, w: jt.Workload) -> dict[str, Any]:
    """Integer budgets and the figures of merit of `tokens`, computed as one program (one
    compile, cached between commands, instead of one per operation)."""
    return {
        "tokens_int": jt.integer_budgets(tokens, w),
        "accuracy_per_task": jt.task_accuracy(tokens, w),
        "accuracy": jt.mean_accuracy(tokens, w),
        "mean_wait": jt.mean_wait(tokens, w),
        "mean_system_time": jt.mean_system_time(tokens, w),
        "utilization": jt.utilization(tokens, w),
    }


def allocation_report(w: jt.Workload, sol: jt.Solution, method: str) -> dict[str, Any]:
    """JSON-ready summary of one solved (unbatched) workload, with integer budgets (39)."""
    import jax

    tokens = sol.tokens
    status = jt.Status(int(sol.status))
    ok = status == jt.Status.CONVERGED or bool(np.all(np.isfinite(np.asarray(tokens))))
    figures = jax.device_get(jax.jit(_allocation_figures)(tokens, w))
    tokens_int = figures["tokens_int"] if ok else np.asarray(tokens)

    def f(x):
        return float(np.asarray(x))

    return {
        "tasks": list(w.task_names),
        "tokens": [float(v) for v in np.asarray(tokens)],
        "tokens_int": [int(v) if np.isfinite(v) else None for v in tokens_int],
        "accuracy_per_task": [float(v) for v in figures["accuracy_per_task"]],
        "objective": f(sol.objective),
        "accuracy": f(figures["accuracy"]),
        "mean_wait": f(figures["mean_wait"]),
        "mean_system_time": f(figures["mean_system_time"]),
        "utilization": f(figures["utilization"]),
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


def server_report(w: jt.Workload, sol: jt.Solution, model: jt.ContinuousBatching) -> dict[str, Any]:
    """`allocation_report` for a batching server: its latency figures replace the M/G/1 ones."""
    tokens = sol.tokens
    status = jt.Status(int(sol.status))
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
        "accuracy_per_task": [float(v) for v in np.asarray(jt.task_accuracy(tokens, w))],
        "system_time_per_task": [f(v) for v in np.asarray(model.system_times(tokens, w))],
        "objective": f(sol.objective),
        "accuracy": f(jt.mean_accuracy(tokens, w)),
        "mean_system_time": f(stats["system_time"]),
        "queue_wait": f(stats["queue_wait"]),
        "mean_batch": f(stats["running"]),
        "load": f(stats["load"]),
        "capacity": f(stats["capacity"]),
        "status": status.name.lower(),
        "status_message": status.message,
        "residual": f(sol.residual),
        "iterations": int(sol.iterations),
        "method": type(jt.default_solver(model)).__name__,
        "arrival_rate": float(np.asarray(w.arrival_rate)),
        "alpha": float(np.asarray(w.alpha)),
        "max_tokens": float(np.asarray(w.max_tokens)),
    }
