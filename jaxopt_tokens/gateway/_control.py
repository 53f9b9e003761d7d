r"""The gateway's control loop: measure the load, re-solve the budgets, swap the policy.

- `LoadEstimator`: arrivals by task over a sliding window (or exponentially weighted with a
  half-life), giving the arrival rate and the task shares.
- `ServiceEstimator`: each task's service line $t_0 + c \cdot n$ (latency against completion
  tokens) by recursive least squares on the upstream's responses; for a batching server the
  step time $\tau_0 + \tau_1 b$ (time per output token against the requests in flight).
- `Controller.update`: from a snapshot of both, solve the optimal budgets at the measured load
  (warm-started from the current ones), and replace the current policy only when the new one
  beats it at the new load by `min_gain` (relative J) or moves a budget by more than
  `min_change`. When no budget keeps the queue stable, every budget goes to zero and the
  gateway reports overload (its admission control then bounds the queue). A solve that does
  not converge keeps the last good policy.

Docs: *Budget gateway*.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._deploy.export import export_policy
from .._errors import UnstableQueueWarning
from .._queue.batching import ContinuousBatching
from .._queue.models import LatencyModel
from .._solver.solve import solve
from .._status import Status
from .._tuning.tune import TuneStatus, tune_alpha
from .._validate import VALID, member_status
from .._workload import Workload
from ._config import GatewayConfig
from ._learned import LearnedTable

# compiled once: every control step re-tunes with new measured values, not new shapes
_tune_alpha = eqx.filter_jit(tune_alpha)

__all__ = [
    "LoadEstimator",
    "ServiceEstimator",
    "Controller",
    "PolicyState",
    "Decision",
    "decide",
    "load_evidence",
]


class LoadEstimator:
    """Arrivals by task: the rate and shares over the last `window` seconds (or with an
    exponential weight of half-life `window`)."""

    def __init__(self, num_tasks: int, window: float, smoothing: str = "window"):
        self.num_tasks = num_tasks
        self.window = window
        self.smoothing = smoothing
        self._events: deque[tuple[float, int]] = deque()
        self._weights = np.zeros(num_tasks)
        self._last = None
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def start(self, now: float | None = None) -> None:
        """Start the clock (when the gateway starts serving): arrivals before count from
        here, and the rate's span is measured from now."""
        with self._lock:
            self.started = time.monotonic() if now is None else now
            self._events.clear()
            self._weights[:] = 0.0
            self._last = None

    def arrival(self, task: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if self.smoothing == "ewma":
                self._decay(now)
                self._weights[task] += 1.0
            else:
                self._events.append((now, task))
                self._trim(now)

    def _decay(self, now: float) -> None:
        if self._last is not None:
            self._weights *= 0.5 ** ((now - self._last) / self.window)
        self._last = now

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()

    def snapshot(self, now: float | None = None) -> tuple[float, np.ndarray, float]:
        """(rate per second, shares, effective number of requests behind them)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self.smoothing == "ewma":
                self._decay(now)
                counts = self._weights.copy()
                # the integral of the weight over the past: half-life / ln 2 (less at start-up)
                span = self.window / math.log(2) * (1 - 0.5 ** ((now - self.started) / self.window))
            else:
                self._trim(now)
                counts = np.bincount([k for _, k in self._events], minlength=self.num_tasks).astype(
                    float
                )
                span = min(self.window, now - self.started)
        total = float(counts.sum())
        rate = total / span if span > 0 else 0.0
        shares = counts / total if total > 0 else np.full(self.num_tasks, 1 / self.num_tasks)
        return rate, shares, total


class _RLS:
    """Recursive least squares of y = a + b x with forgetting factor `lam` (prior: the
    configured line, weight `prior`)."""

    def __init__(self, a: float, b: float, scale_x: float, lam: float = 0.995, prior: float = 1.0):
        self.theta = np.array([a, b], dtype=float)
        self.P = np.diag([1.0 / prior, 1.0 / (prior * scale_x * scale_x)]) * 1e3
        self.lam = lam
        self.count = 0

    def update(self, x: float, y: float) -> None:
        phi = np.array([1.0, x])
        Pphi = self.P @ phi
        gain = Pphi / (self.lam + phi @ Pphi)
        self.theta = self.theta + gain * (y - phi @ self.theta)
        self.P = (self.P - np.outer(gain, Pphi)) / self.lam
        self.count += 1


class ServiceEstimator:
    """Service lines per task (`mg1`) or the batching server's step time, from responses.

    Single server: a FIFO server's service of a request is its departure minus the later of
    its arrival and the previous departure (the Lindley recursion read backwards), so the
    queue wait is not taken for service; the line is fitted against the reasoning tokens
    when the engine reports them (the answer's tokens then fall in `t0`), else against the
    completion tokens. Batching: the time per output token against the mean number of
    requests in flight over the request's life."""

    def __init__(self, w: Workload, model: LatencyModel, min_samples: int):
        self.min_samples = min_samples
        self.batching = isinstance(model, ContinuousBatching)
        self._lock = threading.Lock()
        t0 = np.asarray(w.t0, dtype=float)
        c = np.asarray(w.c, dtype=float)
        self.lines = [_RLS(float(t0[k]), float(c[k]), 500.0) for k in range(w.num_tasks)]
        self._departed = -math.inf
        if self.batching:
            assert isinstance(model, ContinuousBatching)
            tau0, tau1 = (float(np.asarray(x)) for x in model.step_time)
            self.step = _RLS(tau0, tau1, 32.0)

    def response(
        self,
        task: int,
        completion_tokens: int,
        reasoning_tokens: int | None,
        started: float,
        finished: float,
        mean_in_flight: float,
    ) -> None:
        """Record one finished request: the tokens it generated (all, and reasoning when
        reported), when it arrived and departed, and the mean number in flight meanwhile."""
        latency = finished - started
        if not (latency > 0 and completion_tokens >= 1 and math.isfinite(latency)):
            return
        with self._lock:
            if self.batching:
                self.step.update(max(mean_in_flight, 1.0), latency / completion_tokens)
                return
            service = finished - max(started, self._departed)
            self._departed = max(self._departed, finished)
            tokens = completion_tokens if reasoning_tokens is None else reasoning_tokens
            if service > 0:
                self.lines[task].update(float(tokens), service)

    def estimate(self, w: Workload, model: LatencyModel) -> tuple[Workload, LatencyModel, dict]:
        """The workload (service lines) and model (step time) with the fitted values where
        there are enough samples and they are physical (t0 >= 0, c > 0)."""
        with self._lock:
            info: dict[str, Any] = {}
            if self.batching:
                assert isinstance(model, ContinuousBatching)
                tau0, tau1 = self.step.theta
                if self.step.count >= self.min_samples and tau0 >= 0 and tau1 > 0:
                    # arrays, not Python floats: a float is part of the compiled solve's
                    # key, so every new estimate would compile the solver again
                    fitted = (jnp.asarray(tau0, w.dtype), jnp.asarray(tau1, w.dtype))
                    model = model.replace(step_time=fitted)
                    info["step_time"] = [float(tau0), float(tau1)]
                return w, model, info
            t0 = np.asarray(w.t0, dtype=float).copy()
            c = np.asarray(w.c, dtype=float).copy()
            fitted = []
            for k, line in enumerate(self.lines):
                a, b = line.theta
                if line.count >= self.min_samples and a >= 0 and b > 0:
                    t0[k], c[k] = a, b
                    fitted.append(k)
            info["fitted_tasks"] = fitted
        if fitted:
            w = w.replace(t0=jnp.asarray(t0, w.dtype), c=jnp.asarray(c, w.dtype))
        return w, model, info


def load_evidence(
    solved_rate: float,
    solved_shares: np.ndarray,
    rate: float,
    shares: np.ndarray,
    count: float,
) -> float:
    """How far the measured load is from the one a policy was solved at, in standard
    deviations of Poisson counting noise: the larger of the rate's z-score (the `count`
    arrivals against `solved_rate` over the same span) and the shares' chi-square statistic
    standardised by its degrees of freedom. Below ~3 the difference is noise."""
    if count <= 0 or rate <= 0:
        return 0.0
    expected = solved_rate * count / rate  # arrivals the solved rate predicts in the span
    z_rate = abs(count - expected) / math.sqrt(max(expected, 1.0))
    p = np.maximum(np.asarray(solved_shares, dtype=float), 1e-9)
    n = np.asarray(shares, dtype=float) * count
    chi2 = float(np.sum((n - count * p) ** 2 / (count * p)))
    dof = max(len(p) - 1, 1)
    z_shares = (chi2 - dof) / math.sqrt(2 * dof)
    return max(z_rate, z_shares)


def _service_moved(policy: dict[str, Any], w: Workload, model: LatencyModel, by: float) -> bool:
    """Whether the service lines (or step time) differ from those `policy` was solved
    with by more than the fraction `by`."""
    before = policy["source"]["service"]
    for name, t0, c in zip(w.task_names, np.asarray(w.t0), np.asarray(w.c)):
        old = before[name]
        if abs(float(c) - old["c"]) > by * abs(old["c"]) or abs(float(t0) - old["t0"]) > by * max(
            abs(old["t0"]), 1e-9
        ):
            return True
    if isinstance(model, ContinuousBatching) and "step_time" in policy["source"]:
        new = [float(np.asarray(x)) for x in model.step_time]
        return any(abs(a - b) > by * abs(b) for a, b in zip(new, policy["source"]["step_time"]))
    return False


@dataclass(frozen=True)
class PolicyState:
    """The policy in force: budgets, the exported request fields, and what it was solved at."""

    tokens: np.ndarray
    policy: dict[str, Any]
    arrival_rate: float
    shares: tuple[float, ...]
    objective: float
    predicted_latency: float
    overloaded: bool
    version: int
    reason: str
    solved_at: float = field(default_factory=time.time)
    rows: tuple[dict[str, Any], ...] = ()

    def row_policy(self, row: int) -> dict[str, Any]:
        """The exported policy of a learned table's `row` (the policy itself when static)."""
        return self.rows[min(row, len(self.rows) - 1)] if self.rows else self.policy

    def request_fields(self, task: str, row: int = 0) -> dict[str, Any]:
        """The request fields of `task` (at a learned table's `row`)."""
        return self.row_policy(row)["tasks"][task]["request"]

    def budget(self, task: str, row: int = 0) -> float:
        """The reasoning budget `task` is sent (at a learned table's `row`)."""
        return float(self.row_policy(row)["tasks"][task]["budget"] or 0)


@dataclass(frozen=True)
class Decision:
    """What one control step did: `"update"`, `"keep"`, `"wait"` or `"failed"`."""

    action: str
    reason: str
    seconds: float
    state: PolicyState


class Controller:
    """Holds the current policy and re-solves it from measurements (thread-safe swap).
    With a `learned` table the policy is the table, served as learned: measured, never
    re-solved."""

    def __init__(
        self,
        config: GatewayConfig,
        workload: Workload,
        model: LatencyModel,
        learned: LearnedTable | None = None,
    ):
        self.config = config
        self.workload = workload
        self.model = model
        self.task_names = workload.task_names
        self.learned = learned
        self.load = LoadEstimator(workload.num_tasks, config.window, config.smoothing)
        self.service = ServiceEstimator(workload, model, config.min_samples)
        self.solver_failures = 0
        self._lock = threading.Lock()
        if learned is not None:
            self._state = self._learned_state(workload, model, learned)
            return
        tokens, status, missed = self._optimal(workload, model, None)
        if status != Status.CONVERGED:
            tokens = np.zeros(workload.num_tasks)
        self._state = self._state_for(
            workload,
            model,
            tokens,
            0,
            "configured workload" + (f" ({missed})" if missed else ""),
            status != Status.CONVERGED or missed is not None,
        )
        # compile the control step's solve (warm-started) and checks now, not at the first
        # update: a compile under load would delay the first re-solve by seconds
        self._optimal(workload, model, self._state.tokens)
        with jax.enable_x64(True):
            member_status(workload, stability=not isinstance(model, ContinuousBatching))
            model.load(jnp.zeros(workload.num_tasks, workload.dtype), workload)

    @property
    def state(self) -> PolicyState:
        return self._state

    def _solve(self, w: Workload, model: LatencyModel, start) -> tuple[np.ndarray, int]:
        with jax.enable_x64(True):
            sol = solve(w, model=model, start=start)
            return np.asarray(sol.tokens, dtype=float), int(np.asarray(sol.status))

    def _optimal(self, w: Workload, model: LatencyModel, start):
        """(budgets, status, why the latency target is missed or None): the optimum of J, or
        with `target_latency` the most accurate policy whose mean latency meets it
        (`tune_alpha`; zero budgets when even they miss it)."""
        target = self.config.target_latency
        if target is None:
            return (*self._solve(w, model, start), None)
        with jax.enable_x64(True):
            tuned = _tune_alpha(w, jnp.asarray(target, w.dtype))
            status = int(np.asarray(tuned.status))
            if status == TuneStatus.CONVERGED:
                return np.asarray(tuned.solution.tokens, dtype=float), Status.CONVERGED, None
            if status == TuneStatus.TARGET_ABOVE_MAXIMUM:  # any alpha meets it: J decides
                return (*self._solve(w, model, start), None)
            if status == TuneStatus.TARGET_BELOW_MINIMUM:
                zero = float(model.mean_system_time(jnp.zeros(w.num_tasks, w.dtype), w))
                why = (
                    f"latency target {target:g} s cannot be met: the mean latency is "
                    f"{zero:.4g} s even without reasoning"
                )
                return np.zeros(w.num_tasks), Status.CONVERGED, why
        return np.zeros(w.num_tasks), Status.MAX_ITERATIONS, None

    def _export(self, w: Workload, tokens) -> dict[str, Any]:
        """The exported policy (request fields by task) of `tokens`."""
        with jax.enable_x64(True), warnings.catch_warnings():
            warnings.simplefilter("ignore", UnstableQueueWarning)  # judged by the caller
            return export_policy(
                w,
                np.where(np.isfinite(tokens), tokens, 0.0),
                engine=self.config.engine,
                answer_reserve=self.config.answer_reserve,
                min_budget=self.config.min_budget,
                zero_budget=self.config.zero_budget,
            )

    def _learned_state(self, w, model, learned: LearnedTable) -> PolicyState:
        """The learned table as the policy: row 0's budgets as the headline, every row's
        request fields, and the file's held-out replay as its objective and latency."""
        rows = tuple(self._export(w, row) for row in learned.table)
        head = rows[0]
        head["source"]["latency_model"] = type(model).__name__
        head["source"]["learned_policy"] = learned.source
        replayed = learned.replayed
        return PolicyState(
            tokens=np.asarray([head["tasks"][n]["budget"] or 0 for n in w.task_names], dtype=float),
            policy=head,
            arrival_rate=float(np.asarray(w.arrival_rate)),
            shares=tuple(float(x) for x in np.asarray(w.share)),
            objective=replayed.get("objective", math.nan),
            predicted_latency=replayed.get("mean_system_time", math.nan),
            overloaded=False,
            version=0,
            reason=f"learned table {learned.source} ({learned.states + 1} rows by requests in "
            "the system); served as learned, not re-solved",
            rows=rows,
        )

    def _state_for(self, w, model, tokens, version, reason, overloaded) -> PolicyState:
        policy = self._export(w, tokens)
        with jax.enable_x64(True):
            budgets = np.asarray(
                [policy["tasks"][n]["budget"] or 0 for n in w.task_names], dtype=float
            )
            lj = jnp.asarray(budgets, w.dtype)
            J = float(model.objective(lj, w))
            T = float(model.mean_system_time(lj, w))
        policy["source"]["latency_model"] = type(model).__name__
        # the service lines (and step time) the policy was solved with: configured or fitted
        policy["source"]["service"] = {
            name: {"t0": float(t0), "c": float(c)}
            for name, t0, c in zip(w.task_names, np.asarray(w.t0), np.asarray(w.c))
        }
        if isinstance(model, ContinuousBatching):
            policy["source"]["step_time"] = [float(np.asarray(x)) for x in model.step_time]
        policy["source"]["objective"] = J if math.isfinite(J) else None
        policy["source"]["mean_system_time"] = T if math.isfinite(T) else None
        return PolicyState(
            tokens=budgets,
            policy=policy,
            arrival_rate=float(np.asarray(w.arrival_rate)),
            shares=tuple(float(x) for x in np.asarray(w.share)),
            objective=J,
            predicted_latency=T,
            overloaded=overloaded,
            version=version,
            reason=reason,
        )

    def update(self, now: float | None = None) -> Decision:
        """One control step, observe -> solve -> decide -> publish (call it off the event
        loop: it solves). Computes in float64, opened once here."""
        start = time.perf_counter()
        if self.learned is not None:
            why = "a learned table is served as learned: it is not re-solved"
            return Decision("keep", why, time.perf_counter() - start, self._state)
        with self._lock, jax.enable_x64(True):
            current = self._state
            observed = self._observe(now, current)
            if isinstance(observed, Decision):  # nothing to solve
                return replace(observed, seconds=time.perf_counter() - start)
            w, model, rate = observed
            tokens, status, missed = self._solve_at(w, model, rate, current)
            if missed is not None:  # every budget 0, said once
                if current.overloaded and not current.tokens.any():
                    return Decision("keep", missed, time.perf_counter() - start, current)
                reason = f"{missed}; every budget is 0"
                return self._publish(w, model, np.zeros(w.num_tasks), reason, True, start)
            if tokens is None or status != Status.CONVERGED:
                self.solver_failures += 1
                reason = (
                    f"the solve at {rate:.3g} requests/s did not converge "
                    f"({Status(status).name.lower()}); the last good policy stays"
                )
                return Decision("failed", reason, time.perf_counter() - start, current)
            cur = jnp.asarray(current.tokens, w.dtype)
            replace_it, reason = decide(
                self.config,
                current.tokens,
                tokens,
                j_current=float(model.objective(cur, w)),
                j_new=float(model.objective(jnp.asarray(tokens, w.dtype), w)),
                t_current=float(model.mean_system_time(cur, w)),
                overloaded=current.overloaded,
            )
            if not replace_it:
                return Decision("keep", reason, time.perf_counter() - start, current)
            return self._publish(
                w, model, tokens, f"load {rate:.4g} requests/s: {reason}", False, start
            )

    def _observe(self, now, current: PolicyState):
        """(workload, model, rate) at the measured load, or the `Decision` when there is
        nothing to solve: too few requests ("wait"), or a load within counting noise of the
        current policy's ("keep")."""
        rate, shares, count = self.load.snapshot(now)
        if count < self.config.min_requests:
            why = (
                f"{count:.0f} requests in the window (< min_requests="
                f"{self.config.min_requests}): the configured load stands"
            )
            return Decision("wait", why, 0.0, current)
        w, model = self.workload, self.model
        if self.config.learn_service:
            w, model, _ = self.service.estimate(w, model)
        # a task not seen in the window keeps a tiny share: its budget stays defined
        shares = np.maximum(shares, 1e-6)
        shares = shares / shares.sum()
        w = w.replace(
            arrival_rate=jnp.asarray(max(rate, 1e-9), w.dtype), share=jnp.asarray(shares, w.dtype)
        )
        evidence = load_evidence(
            current.arrival_rate, np.asarray(current.shares), rate, shares, count
        )
        if (
            evidence < self.config.min_evidence
            and not current.overloaded
            and not _service_moved(current.policy, w, model, self.config.min_change)
        ):
            why = (
                f"the load ({rate:.4g} requests/s) is within counting noise of the one the "
                f"policy was solved at ({evidence:.2g} < min_evidence="
                f"{self.config.min_evidence:g} standard deviations)"
            )
            return Decision("keep", why, 0.0, current)
        return w, model, rate

    def _solve_at(self, w, model, rate: float, current: PolicyState):
        """(budgets, status, why every budget is 0 or None) at the observed load."""
        single = not isinstance(model, ContinuousBatching)  # the M/G/1 stability rule applies
        stable_at_zero = (
            bool(np.asarray(member_status(w, stability=single)) == VALID)
            and float(model.load(jnp.zeros(w.num_tasks, w.dtype), w)) < 1
        )
        if not stable_at_zero:
            missed = (
                f"overload: {rate:.3g} requests/s cannot be served stably even without "
                "reasoning; admission control bounds the queue"
            )
            return None, Status.CONVERGED, missed
        return self._optimal(w, model, current.tokens)

    def _publish(self, w, model, tokens, reason: str, overloaded: bool, start) -> Decision:
        """Swap in the policy of `tokens` (a new version) and say so."""
        state = self._state_for(w, model, tokens, self._state.version + 1, reason, overloaded)
        self._state = state
        return Decision("update", reason, time.perf_counter() - start, state)


def decide(
    config: GatewayConfig,
    current: np.ndarray,
    new: np.ndarray,
    *,
    j_current: float,
    j_new: float,
    t_current: float,
    overloaded: bool,
) -> tuple[bool, str]:
    """Whether the `new` budgets replace the `current` ones, and why (a pure function of two
    policies' numbers at the measured load: no JAX, no state). Replace when J improves by
    `min_gain` (relative), or a budget moves by more than `min_change` of itself and more than
    `min_move` tokens, or the current policy was the overload policy. With a latency target,
    the current policy stands while its predicted latency is within `target_band` of it."""
    step = np.abs(np.asarray(new, float) - np.asarray(current, float))
    move = np.where(step > config.min_move, step / np.maximum(np.abs(current), 1.0), 0.0)
    largest = float(move.max()) if move.size else 0.0
    gain = (
        (j_new - j_current) / max(abs(j_current), 1e-12) if math.isfinite(j_current) else math.inf
    )
    if config.target_latency is not None:  # J's alpha is the target's: judge by the target
        miss = t_current / config.target_latency - 1 if math.isfinite(t_current) else math.inf
        if abs(miss) <= config.target_band and not overloaded:
            return False, (
                f"the current policy's predicted latency is within {config.target_band:.0%} of "
                f"the target ({miss:+.1%})"
            )
        return True, f"the current policy misses the latency target by {miss:+.1%}"
    if gain > config.min_gain or largest > config.min_change or overloaded:
        return True, (
            f"J {j_current:.4g} -> {j_new:.4g} (gain {gain:.2%}), largest budget move {largest:.1%}"
        )
    return False, (
        f"gain {gain:.2%} and largest budget move {largest:.1%} are below the thresholds"
    )
