"""What a simulation returns: per-replication statistics beside the latency model's
predictions, a status per policy and confidence intervals (docs: *Simulation*)."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._stats import replication_interval
from .._status import HasStatus, StatusEnum

__all__ = [
    "SimulationStatus",
    "Simulation",
    "SimulationResult",
    "BatchingSimulation",
    "QUANTILES",
    "sample_quantiles",
]

QUANTILES = (0.5, 0.95, 0.99)


class SimulationStatus(StatusEnum):
    """Whether a simulated policy has a steady state (`SimulationResult.status`, per policy)."""

    STEADY = 0, "the policy loads the server below capacity: the means estimate a steady state"
    UNSTABLE = 1, "the policy loads the server to utilization >= 1: the means have no steady state"


class Simulation(HasStatus):
    """What every simulation returns: per-replication statistics of simulated policies with
    the latency model's predictions beside them (`SimulationResult` for the single-server
    disciplines, `BatchingSimulation` for a batching server).

    Array fields have shape `(*policies, replications)`; the statistics in
    `PER_TASK_STATISTICS` add a trailing axis after the replications. `summary()` turns the
    replications into means with Student-t confidence intervals (with the model's prediction
    beside each statistic in `PREDICTED`), `interval(name)` does one, and `status` (per
    policy, `SimulationStatus`) says whether the policy has a steady state at all: it does
    when the model's `load` is below 1.

    Attributes:
        num_queries: queries per replication.
        warmup: queries dropped at the start of each replication.
    """

    STATUS: ClassVar[type[SimulationStatus]] = SimulationStatus
    #: statistics averaged over replications by `summary()`
    STATISTICS: ClassVar[tuple[str, ...]] = ()
    #: statistics with a trailing axis after the replications (by task, histograms)
    PER_TASK_STATISTICS: ClassVar[tuple[str, ...]] = ("system_time_by_task",)
    #: statistics with a `predicted_<name>` field
    PREDICTED: ClassVar[tuple[str, ...]] = ()

    num_queries: eqx.AbstractVar[int]
    warmup: eqx.AbstractVar[int]

    @property
    def mean_arrival_rate(self) -> float:
        """The mean arrival rate simulated (requests/s; a replay's after rescaling)."""
        return float(getattr(self, "arrival_rate"))

    @property
    def load(self) -> Float[Array, "*p"]:
        """The model's load per policy (utilization; stable below 1)."""
        raise NotImplementedError

    @property
    def num_replications(self) -> int:
        return getattr(self, "system_time").shape[-1]

    def interval(self, name: str, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lower, upper) over replications of statistic `name`: a Student-t interval."""
        x = np.asarray(getattr(self, name), dtype=np.float64)
        if name in self.PER_TASK_STATISTICS:
            x = np.moveaxis(x, -1, -2)  # replications last
        return replication_interval(x, level)

    @property
    def status(self) -> Int[Array, "*p"]:
        """`SimulationStatus` per policy, from the model's load."""
        unstable = ~(np.asarray(self.load) < 1)  # on the host: a result is never traced
        return jax.device_put(
            np.where(unstable, SimulationStatus.UNSTABLE, SimulationStatus.STEADY).astype(np.int32)
        )

    def summary(self, level: float = 0.95) -> dict[str, dict[str, np.ndarray]]:
        """Every statistic as `{"mean", "lower", "upper"}` (confidence `level`), with
        `"predicted"` beside those the model predicts."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for name in (*self.STATISTICS, "system_time_by_task"):
            mean, lo, hi = self.interval(name, level)
            out[name] = {"mean": mean, "lower": lo, "upper": hi}
        for name in self.PREDICTED:
            out[name]["predicted"] = np.asarray(getattr(self, f"predicted_{name}"))
        return out


class SimulationResult(Simulation):
    r"""Per-replication statistics of simulated policies, with the PK predictions beside them.

    Every array field has shape `(*policies, replications)`: means over the measured queries
    (after warm-up) of the waiting time `wait` and system time `system_time` (wait plus
    service), their quantiles `wait_p50/p95/p99` and `system_time_p50/p95/p99`, the busy
    fraction `utilization`, the fraction of queries answered correctly `accuracy` and the
    realised objective `objective` $= \alpha \cdot$ accuracy $-$ mean system time (eq. (7)).
    `system_time_by_task` (shape `(*policies, replications, N)`) is the mean system time of
    each task type. `predicted_*` (shape `(*policies,)`, by task `(*policies, N)`) are the
    latency model's values, eqs. (4)-(7) for FIFO, including the service-time variance the
    noise adds.

    `summary()` turns the replications into means with confidence intervals; `status`
    (per policy, `SimulationStatus`) says whether the policy has a steady state at all.

    Attributes:
        num_queries: queries per replication.
        warmup: queries dropped at the start of each replication.

        wait: mean waiting time (s).
        system_time: mean system time (s).
        wait_p50: median wait.
        wait_p95: 95th percentile of the wait.
        wait_p99: 99th percentile of the wait.
        system_time_p50: median system time.
        system_time_p95: 95th percentile of the system time.
        system_time_p99: 99th percentile of the system time.
        utilization: the busy fraction.
        accuracy: the fraction answered correctly.
        objective: the realised J.
        system_time_by_task: mean system time of each task type.
        predicted_system_time: the model's E[T].
        predicted_wait: the model's E[W].
        predicted_utilization: the model's utilization.
        predicted_accuracy: the model's mean accuracy.
        predicted_objective: the model's J.
        predicted_system_time_by_task: the model's E[T_k].
        discipline: the simulated discipline (`"fifo"`, `"priority"`, `"ps"`).
        arrival_rate: the arrival rate simulated (the trace's replay rate on a replay).
    """

    wait: Float[Array, "*p r"]
    system_time: Float[Array, "*p r"]
    wait_p50: Float[Array, "*p r"]
    wait_p95: Float[Array, "*p r"]
    wait_p99: Float[Array, "*p r"]
    system_time_p50: Float[Array, "*p r"]
    system_time_p95: Float[Array, "*p r"]
    system_time_p99: Float[Array, "*p r"]
    utilization: Float[Array, "*p r"]
    accuracy: Float[Array, "*p r"]
    objective: Float[Array, "*p r"]
    system_time_by_task: Float[Array, "*p r n"]
    predicted_system_time: Float[Array, "*p"]
    predicted_wait: Float[Array, "*p"]
    predicted_utilization: Float[Array, "*p"]
    predicted_accuracy: Float[Array, "*p"]
    predicted_objective: Float[Array, "*p"]
    predicted_system_time_by_task: Float[Array, "*p n"]
    num_queries: int = eqx.field(static=True)
    warmup: int = eqx.field(static=True)
    discipline: str = eqx.field(static=True, default="fifo")
    #: the mean arrival rate simulated (requests/s; a replay's after rescaling)
    arrival_rate: float = eqx.field(static=True, default=float("nan"))

    STATISTICS = (
        "wait",
        "system_time",
        "wait_p50",
        "wait_p95",
        "wait_p99",
        "system_time_p50",
        "system_time_p95",
        "system_time_p99",
        "utilization",
        "accuracy",
        "objective",
    )
    PREDICTED = (
        "system_time",
        "wait",
        "utilization",
        "accuracy",
        "objective",
        "system_time_by_task",
    )

    @property
    def load(self) -> Float[Array, "*p"]:
        return self.predicted_utilization


class BatchingSimulation(Simulation):
    r"""Per-replication statistics of simulated policies on a batching server.

    Array fields have shape `(*policies, replications)`: the mean `system_time` (arrival to
    last token), `queue_wait` (arrival to admission), `ttft` (arrival to first token), the
    quantiles `system_time_p50/p95/p99` and `ttft_p95`, the time-average batch size
    `running`, the `throughput` (requests/s) and `token_throughput` (decode tokens/s), the
    fraction answered correctly `accuracy`; `system_time_by_task` adds a task axis and
    `batch_size` (shape `(*policies, replications, slots + 1)`) is the fraction of time with
    n requests running. `predicted_*` (shape `(*policies,)`) are the model's values.

    Attributes:
        num_queries: queries per replication.
        warmup: queries dropped at the start of each replication.

        system_time: mean time from arrival to last token (s).
        queue_wait: mean time from arrival to admission.
        ttft: mean time from arrival to first token.
        system_time_p50: median system time.
        system_time_p95: 95th percentile of the system time.
        system_time_p99: 99th percentile of the system time.
        ttft_p95: 95th percentile of the time to first token.
        running: time-average number of requests running.
        throughput: requests answered per second.
        token_throughput: decode tokens per second.
        accuracy: the fraction answered correctly.
        system_time_by_task: mean system time of each task type.
        batch_size: the fraction of time with n requests running, n = 0..slots.
        predicted_system_time: the model's E[T].
        predicted_queue_wait: the model's wait for a place.
        predicted_running: the model's mean batch size.
        predicted_load: the model's load (below 1: a steady state exists).
        predicted_system_time_by_task: the model's E[T_k].
        arrival_rate: the arrival rate simulated.
    """

    system_time: Float[Array, "*p r"]
    queue_wait: Float[Array, "*p r"]
    ttft: Float[Array, "*p r"]
    system_time_p50: Float[Array, "*p r"]
    system_time_p95: Float[Array, "*p r"]
    system_time_p99: Float[Array, "*p r"]
    ttft_p95: Float[Array, "*p r"]
    running: Float[Array, "*p r"]
    throughput: Float[Array, "*p r"]
    token_throughput: Float[Array, "*p r"]
    accuracy: Float[Array, "*p r"]
    system_time_by_task: Float[Array, "*p r n"]
    batch_size: Float[Array, "*p r s"]
    predicted_system_time: Float[Array, "*p"]
    predicted_queue_wait: Float[Array, "*p"]
    predicted_running: Float[Array, "*p"]
    predicted_load: Float[Array, "*p"]
    predicted_system_time_by_task: Float[Array, "*p n"]
    num_queries: int = eqx.field(static=True)
    warmup: int = eqx.field(static=True)
    arrival_rate: float = eqx.field(static=True, default=float("nan"))

    STATISTICS = (
        "system_time",
        "queue_wait",
        "ttft",
        "system_time_p50",
        "system_time_p95",
        "system_time_p99",
        "ttft_p95",
        "running",
        "throughput",
        "token_throughput",
        "accuracy",
    )

    PER_TASK_STATISTICS = ("system_time_by_task", "batch_size")
    PREDICTED = ("system_time", "queue_wait", "running")

    @property
    def load(self) -> Float[Array, "*p"]:
        return self.predicted_load


def sample_quantiles(x: Float[Array, " q"]) -> Float[Array, " 3"]:
    """`QUANTILES` of non-negative `x`, numpy's default (linear) definition.

    Sorts the IEEE bit patterns as integers: for non-negative floats their order is the
    numeric order, and XLA's integer sort is several times faster than its float sort on CPU.
    """
    int_type = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
    bits = jnp.sort(jax.lax.bitcast_convert_type(x, int_type))
    ordered = jax.lax.bitcast_convert_type(bits, x.dtype)
    pos = jnp.asarray(QUANTILES, x.dtype) * (x.shape[0] - 1)
    below = jnp.floor(pos).astype(jnp.int32)
    above = jnp.minimum(below + 1, x.shape[0] - 1)
    frac = pos - below
    return ordered[below] + frac * (ordered[above] - ordered[below])
