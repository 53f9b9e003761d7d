r"""The gateway's control loop driven by a trace in simulated time, without HTTP (a dry run).

`dry_run` replays a recorded arrival sequence through the gateway's own `Controller` (its load
and service estimators, re-solve, hysteresis and `decide`), its admission limit and, when one
is served, the learned table's lookup by the requests in the system, in front of a simulated
engine: an event simulation in the trace's own time, seconds where an HTTP replay takes
minutes. The engine is the one the HTTP benchmark's fake engine idealises:

- `batching`: continuous batching without a batch limit (or with `max_batch`, the rest wait
  in order); every running request advances one token per step of $\tau_0 + \tau_1 n$
  seconds, n the requests running; a request's tokens are a prefill, its reasoning (the
  smaller of its natural length and the budget it was sent; none when thinking is off) and
  an answer;
- `mg1`: the single FIFO server, service $t_{0k} + c_k \cdot$ reasoning.

Each request is scored as the HTTP benchmark scores it: accuracy is the workload's curve at
the budget it was sent, latency from arrival to departure, and
$J = \alpha \cdot$ accuracy $-$ mean latency. Every control step is recorded (the measured
rate, the action and why, the budgets in force after it), and every request (its arrival,
task, the queue it found, the budget it was sent, its latency), so that a policy's losses can
be traced to the windows they come from. Docs: *Budget gateway* (Dry run).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from .._objective import task_accuracy
from .._queue.batching import ContinuousBatching
from .._queue.models import AbstractSingleServer, LatencyModel
from .._traffic.trace import Trace
from .._workload import Workload
from ._config import GatewayConfig
from ._control import Controller
from ._learned import LearnedTable

__all__ = ["DryRun", "dry_run"]

_ARRIVAL, _CONTROL = 0, 1  # event kinds; a control step at the same instant comes after


@dataclass(frozen=True)
class DryRun:
    """What a dry run measured.

    Attributes:
        summary: requests, refused, accuracy, mean and 95th-percentile latency, J, policy
            updates.
        requests: per request (arrays): `arrival`, `task`, `found` (requests in the system
            on arrival), `budget` sent, `latency` (NaN when refused), `accuracy`.
        steps: per control step: `time`, `action`, `reason`, `measured_rate`, `budgets` in
            force after it, and the `requests`, `mean_latency`, `p95_latency` and `J` of the
            requests that arrived since the step before.
    """

    summary: dict[str, Any]
    requests: dict[str, np.ndarray]
    steps: list[dict[str, Any]]


class _Engine:
    """The simulated engine: requests with work left, advanced between events."""

    def __init__(self, model: LatencyModel, max_batch: int | None):
        self.batching = isinstance(model, ContinuousBatching)
        if self.batching:
            assert isinstance(model, ContinuousBatching)
            self.tau = tuple(float(np.asarray(x)) for x in model.step_time)
        self.max_batch = max_batch
        self.work: dict[int, float] = {}  # running request -> tokens (or seconds) left
        self.waiting: list[int] = []  # admitted, not yet running (FIFO order)
        self._pending: dict[int, float] = {}  # the work of the waiting ones

    def rate(self) -> float:
        """Work done per second by each running request."""
        n = len(self.work)
        if not n:
            return 0.0
        return 1.0 / (self.tau[0] + self.tau[1] * n) if self.batching else 1.0

    def admit(self, i: int, work: float) -> None:
        """Request `i` with `work` tokens (batching) or seconds (single server) to do."""
        self.waiting.append(i)
        self._pending[i] = work
        self._fill()

    def _fill(self) -> None:
        limit = 1 if not self.batching else self.max_batch
        while self.waiting and (limit is None or len(self.work) < limit):
            j = self.waiting.pop(0)
            self.work[j] = self._pending.pop(j)

    def next_departure(self) -> float:
        """Seconds to the next departure (inf when idle)."""
        if not self.work:
            return math.inf
        return min(self.work.values()) / self.rate()

    def advance(self, dt: float) -> list[int]:
        """Advance `dt` seconds; the requests that finish (at its end)."""
        if not self.work or dt <= 0:
            return []
        done = dt * self.rate()
        for i in self.work:
            self.work[i] -= done
        finished = [i for i, left in self.work.items() if left <= 1e-12 * max(1.0, done)]
        for i in finished:
            del self.work[i]
        self._fill()
        return finished


def dry_run(
    config: GatewayConfig,
    workload: Workload,
    model: LatencyModel,
    trace: Trace,
    *,
    learned: LearnedTable | None = None,
    tasks: np.ndarray | None = None,
    seed: int = 0,
    reasoning: int = 2000,
    answer_tokens: int = 20,
    prefill_tokens: int = 5,
) -> DryRun:
    """Replay `trace` through the gateway's control loop in simulated time.

    Args:
        config: the gateway's configuration (interval, window, thresholds, admission...).
        workload: its workload, in the trace's time (rates per second of the trace).
        model: its latency model (`FIFO()` or `ContinuousBatching`): the engine simulated
            is the same server (the batching engine at `model.step_time`).
        trace: the arrivals, in seconds.
        learned: a learned table to serve (the gateway's `learned_policy`).
        tasks: each request's task index (default: the trace's labels when they name the
            workload's tasks, else drawn by the shares with `seed`).
        seed: the seed of the task draw.
        reasoning: the reasoning tokens a request generates when nothing cuts it.
        answer_tokens, prefill_tokens: the other tokens of a request (batching engine).

    Returns:
        `DryRun`: the summary, every request, every control step.
    """
    if not isinstance(trace, Trace):
        raise InputError(f"trace: expected a Trace (read_trace), got {type(trace).__name__}")
    fifo = isinstance(model, AbstractSingleServer) and model.discipline == "fifo"
    if not (fifo or isinstance(model, ContinuousBatching)):
        raise InputError(
            "model: a first-come-first-served single server (FIFO, Kingman) or "
            f"ContinuousBatching, got {type(model).__name__}"
        )
    for name, v in (
        ("reasoning", reasoning),
        ("answer_tokens", answer_tokens),
        ("prefill_tokens", prefill_tokens),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(f"{name}: a whole number >= 0, got {v!r}")
    q = trace.num_requests
    names = workload.task_names
    if tasks is None:
        if trace.labels is not None and set(trace.labels) <= set(names):
            tasks = np.asarray([names.index(x) for x in trace.labels])
        else:
            share = np.asarray(workload.share, dtype=float)
            tasks = np.random.default_rng(seed).choice(len(names), size=q, p=share / share.sum())
    tasks = np.asarray(tasks, dtype=int)
    if tasks.shape != (q,) or tasks.min() < 0 or tasks.max() >= len(names):
        raise InputError(f"tasks: {q} task indices in 0..{len(names) - 1}")
    arrivals = np.asarray(trace.arrival_times, dtype=float)

    controller = Controller(config, workload, model, learned)
    controller.load.start(0.0)
    engine = _Engine(model, config.max_batch if config.server == "batching" else None)
    t0 = np.asarray(workload.t0, dtype=float)
    c = np.asarray(workload.c, dtype=float)

    found = np.zeros(q)
    budget = np.zeros(q)
    finish = np.full(q, np.nan)
    refused = np.zeros(q, dtype=bool)
    reason_tokens = np.zeros(q)
    area_at_start = np.zeros(q)
    in_system = 0
    area = 0.0
    steps: list[dict[str, Any]] = []

    events: list[tuple[float, int, int]] = [(float(t), _ARRIVAL, i) for i, t in enumerate(arrivals)]
    end = float(arrivals[-1])
    k = 1
    while k * config.interval <= end:
        events.append((k * config.interval, _CONTROL, k))
        k += 1
    heapq.heapify(events)
    now = 0.0

    def advance(dt: float) -> None:
        """Move the clock by `dt`; record the departures (as the gateway sees responses)."""
        nonlocal now, area, in_system
        area += in_system * dt
        now += dt
        for j in engine.advance(dt):
            in_system -= 1
            finish[j] = now
            started = float(arrivals[j])
            mean_n = (area - area_at_start[j]) / max(now - started, 1e-12)
            r = int(reason_tokens[j])
            controller.service.response(int(tasks[j]), r + answer_tokens, r, started, now, mean_n)

    while events or engine.work:
        t_next = events[0][0] if events else math.inf
        dt_dep = engine.next_departure()
        if now + dt_dep <= t_next:  # a departure first
            advance(dt_dep)
            continue
        time_, kind, i = heapq.heappop(events)
        advance(time_ - now)
        now = time_
        if kind == _CONTROL:
            rate, _, _ = controller.load.snapshot(now)
            decision = controller.update(now)
            state = decision.state
            steps.append(
                {
                    "time": now,
                    "action": decision.action,
                    "reason": decision.reason,
                    "measured_rate": rate,
                    "budgets": {n: state.budget(n) for n in names},
                }
            )
            continue
        task = int(tasks[i])
        controller.load.arrival(task, now)
        found[i] = in_system
        row = 0 if learned is None else learned.row(in_system)
        state = controller.state
        b = state.budget(names[task], row)
        budget[i] = b
        if in_system >= config.max_in_flight:
            refused[i] = True
            continue
        reason_tokens[i] = min(reasoning, b)
        if engine.batching:
            work = float(prefill_tokens + reason_tokens[i] + answer_tokens)
        else:
            work = float(t0[task] + c[task] * reason_tokens[i])
        in_system += 1
        area_at_start[i] = area
        engine.admit(i, work)

    with jax.enable_x64(True):
        onehot = np.zeros((q, len(names)))
        onehot[np.arange(q), tasks] = budget
        acc_all = np.asarray(task_accuracy(jnp.asarray(onehot), workload), dtype=float)
    accuracy = acc_all[np.arange(q), tasks]
    latency = np.where(refused, np.nan, finish - arrivals)
    alpha = float(np.asarray(workload.alpha))
    served = ~refused
    summary = {
        "requests": int(q),
        "refused": int(refused.sum()),
        "accuracy": float(accuracy[served].mean()) if served.any() else math.nan,
        "mean_latency": float(np.nanmean(latency)) if served.any() else math.nan,
        "p95_latency": float(np.nanpercentile(latency, 95)) if served.any() else math.nan,
        "policy_updates": sum(s["action"] == "update" for s in steps),
    }
    summary["J"] = alpha * summary["accuracy"] - summary["mean_latency"]
    bounds = [0.0] + [s["time"] for s in steps] + [math.inf]
    for s, lo, hi in zip(steps, bounds[:-2], bounds[1:-1]):
        inside = (arrivals >= lo) & (arrivals < hi) & served
        lat = latency[inside]
        s["requests"] = int(inside.sum())
        s["mean_latency"] = float(lat.mean()) if lat.size else None
        s["p95_latency"] = float(np.percentile(lat, 95)) if lat.size else None
        s["J"] = alpha * float(accuracy[inside].mean()) - float(lat.mean()) if lat.size else None
    requests = {
        "arrival": arrivals,
        "task": tasks,
        "found": found,
        "budget": budget,
        "latency": latency,
        "accuracy": accuracy,
    }
    return DryRun(summary=summary, requests=requests, steps=steps)
