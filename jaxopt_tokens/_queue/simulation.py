"""`simulate`: one entry point that simulates policies under any latency model.

The model object says which server to simulate (`LatencyModel.discipline`): the single
server of `FIFO`, `Priority` and `ProcessorSharing` (`simulate_server`, the Lindley and
event-driven kernels of `simulate.py`) or the continuously batching server of
`ContinuousBatching` (`simulate_batching`). Both return a `Simulation`. Docs: *Simulation*.
"""

from __future__ import annotations

from typing import Any

from jaxtyping import ArrayLike, PRNGKeyArray

from .._errors import InputError
from .._traffic.trace import Trace
from .._workload import Workload
from .batching import ContinuousBatching
from .batching_sim import simulate_batching
from .models import FIFO, LatencyModel
from .simulate import NoiseKind, Simulation, simulate_server

__all__ = ["simulate"]


def simulate(
    workload: Workload,
    tokens: ArrayLike,
    num_queries: int | None = None,
    num_replications: int = 20,
    key: PRNGKeyArray | None = None,
    *,
    model: LatencyModel | None = None,
    warmup: int | None = None,
    noise: NoiseKind = "lognormal",
    capacity: int = 512,
    slots: int | None = None,
    arrivals: Trace | None = None,
    rate: float | None = None,
    utilization: float | None = None,
    service: str = "tasks",
    task_types: str = "shares",
    window: float | None = None,
) -> Simulation:
    """Simulate one or many token policies on the server of `model`.

    Args:
        workload: one `Workload` (no batch axes).
        tokens: budgets of shape `(N,)` or `(*P, N)`, every policy on the same random streams
            (common random numbers).
        num_queries: queries per replication (default 10,000; a replay simulates the whole
            trace).
        num_replications: independent replications (confidence intervals).
        key: a JAX PRNG key (default `PRNGKey(0)`).
        model: `FIFO(service_cv)` (default `FIFO()`, the paper's server), `Priority(order,
            service_cv)`, `ProcessorSharing(service_cv)` or `ContinuousBatching(...)`.
        warmup: queries dropped at the start of each replication (default 10%).
        noise: the family of the single-server models' service-time factor (`"lognormal"` or
            `"gamma"`).
        capacity: the most queries a processor-sharing server holds.
        slots: the running-set size of an unlimited batching server (see
            `simulate_batching`).
        arrivals: a recorded `Trace` (`read_trace`) to replay instead of Poisson arrivals: its
            arrival times drive the server, rescaled by one factor to `rate` (requests/s) or to
            `utilization` (the model's load of the one policy simulated); neither keeps the
            trace's own rate. Predictions are then at the replayed mean rate. Each replication
            redraws only task types, noise and correctness (see *Real traffic*).
        rate: the replayed mean rate.
        utilization: or the load the replayed rate is set from.
        service: `"tasks"` (service by each request's task, as without a trace) or `"trace"`
            (each request's work scaled by its output tokens over the trace's mean).
        task_types: `"shares"` (drawn by the workload's shares) or `"trace"` (the trace's
            labels, which must be task names).
        window: seconds of the trace's clock per window when the budgets change with time:
            `tokens` then has shape `(*P, K, N)` for the trace's K windows (single server only).

    Returns:
        a `SimulationResult` (single server) or `BatchingSimulation`, both
        `Simulation`s with `summary()`, `interval()` and a `status` per policy.
    """
    model = FIFO() if model is None else model
    replay: dict[str, Any] = dict(
        arrivals=arrivals,
        rate=rate,
        utilization=utilization,
        service=service,
        task_types=task_types,
    )
    if not isinstance(model, LatencyModel):
        raise InputError(
            "model: must be a LatencyModel (FIFO, Priority, ProcessorSharing, "
            f"ContinuousBatching), got {type(model).__name__}"
        )
    if model.describes_arrivals and arrivals is None:
        raise InputError(
            f"model: {type(model).__name__} describes a recorded arrival process, not Poisson "
            "arrivals: give arrivals= (the trace it was measured on) to replay it; without a "
            "trace the simulator would draw Poisson arrivals beside a prediction for others"
        )
    if isinstance(model, ContinuousBatching):
        if noise != "lognormal" or capacity != 512:
            raise InputError("noise/capacity: settings of the single-server simulator only")
        if window is not None:
            raise InputError("window: budgets by window are replayed on the single server only")
        return simulate_batching(
            workload,
            tokens,
            model,
            num_queries,
            num_replications,
            key,
            warmup=warmup,
            slots=slots,
            **replay,
        )
    if slots is not None:
        raise InputError("slots: a setting of the batching simulator only")
    return simulate_server(
        workload,
        tokens,
        model,
        num_queries,
        num_replications,
        key,
        warmup=warmup,
        noise=noise,
        capacity=capacity,
        window=window,
        **replay,
    )
