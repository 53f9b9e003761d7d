"""A solved allocation as a plain record: what the CLI prints and other tools consume."""

from __future__ import annotations

from typing import Any

import numpy as np

import jaxopt_tokens as jt

__all__ = ["allocation_report", "solved", "solved_report", "server_report"]


def _record(sol: jt.Solution, w: jt.Workload) -> dict[str, Any]:
    """The solution's certificate, its integer budgets and the figures of merit of its budgets,
    computed as one program (one compile, cached between commands, instead of one per
    operation)."""
    tokens = sol.tokens
    return {
        "tokens": tokens,
        "objective": sol.objective,
        "status": sol.status,
        "residual": sol.residual,
        "iterations": sol.iterations,
        "stats": dict(sol.stats),
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

    from ..internal import call_program

    return _report(w, jax.device_get(call_program("report", _record, sol, w)), method)


def solved_report(w: jt.Workload, method: str) -> dict[str, Any]:
    """`allocation_report` of `jt.solve(w, method)`, solved and summarised by one program that
    a repeated command loads ahead of time instead of tracing it again
    (`jaxopt_tokens.keep_programs_in`)."""
    return _report(w, solved(w, method), method)


def solved(
    w: jt.Workload, method: str = "default", model: jt.LatencyModel | None = None
) -> dict[str, Any]:
    """`jt.solve(w, method, model=model)`'s budgets and certificate with the figures of
    `allocation_report`, as host arrays, from one program a repeated command loads ahead of
    time."""
    import jax

    from ..internal import call_program

    return jax.device_get(call_program("solve", _solve_record, w, method, model))


def _solve_record(w: jt.Workload, method: str, model: jt.LatencyModel | None) -> dict[str, Any]:
    return _record(jt.solve(w, method, model=model), w)


def _report(w: jt.Workload, r: dict[str, Any], method: str) -> dict[str, Any]:
    tokens = np.asarray(r["tokens"])
    status = jt.Status(int(r["status"]))
    ok = status == jt.Status.CONVERGED or bool(np.all(np.isfinite(tokens)))
    tokens_int = r["tokens_int"] if ok else tokens

    def f(x):
        return float(np.asarray(x))

    return {
        "tasks": list(w.task_names),
        "tokens": [float(v) for v in tokens],
        "tokens_int": [int(v) if np.isfinite(v) else None for v in tokens_int],
        "accuracy_per_task": [float(v) for v in r["accuracy_per_task"]],
        "objective": f(r["objective"]),
        "accuracy": f(r["accuracy"]),
        "mean_wait": f(r["mean_wait"]),
        "mean_system_time": f(r["mean_system_time"]),
        "utilization": f(r["utilization"]),
        "status": status.name.lower(),
        "status_message": status.message,
        "residual": f(r["residual"]),
        "iterations": int(r["iterations"]),
        "method": method,
        "arrival_rate": f(w.arrival_rate),
        "alpha": f(w.alpha),
        "max_tokens": f(w.max_tokens),
        "stats": {
            k: (float(np.asarray(v)) if np.ndim(v) == 0 else np.asarray(v).tolist())
            for k, v in r["stats"].items()
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
