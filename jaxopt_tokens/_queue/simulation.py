"""`simulate`: the one door into simulation, for every latency model.

It validates what it is given once (the workload, the budgets, the counts, the key, the model,
the replay and the memory the run needs), prepares a replay, and calls the kernel of the
server the model describes (`LatencyModel` says which by its type): the single server of
`FIFO`, `Kingman`, `Priority`, `ProcessorSharing` and `TimeVarying` (`server_sim.run`, the
Lindley and event-driven kernels) or the continuously batching server of
`ContinuousBatching` (`batching_sim.run`). The kernels take prepared values and check nothing.
Both return a `Simulation`. Docs: *Simulation*.
"""

from __future__ import annotations

import jax
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray

from .._errors import InputError
from .._traffic.replay import PreparedReplay, Replay
from .._traffic.trace import Trace
from .._validate import check_int, check_key
from .._workload import Workload
from . import batching_sim, server_sim
from .batching import ContinuousBatching
from .models import FIFO, AbstractSingleServer, LatencyModel
from .results import Simulation
from .stream import NOISE_KINDS, NoiseKind

__all__ = ["simulate"]

DEFAULT_QUERIES = 10_000


def simulate(
    workload: Workload,
    tokens: ArrayLike,
    num_queries: int | None = None,
    num_replications: int = 20,
    key: PRNGKeyArray | None = None,
    *,
    model: LatencyModel | None = None,
    arrivals: Trace | Replay | None = None,
    warmup: int | None = None,
    noise: NoiseKind = "lognormal",
    capacity: int = 512,
    slots: int | None = None,
) -> Simulation:
    """Simulate one or many token policies on the server of `model`.

    Args:
        workload: one `Workload` (no batch axes).
        tokens: budgets of shape `(N,)` or `(*P, N)`, every policy on the same random streams
            (common random numbers); with a `Replay` by `window`, `(*P, K, N)` for the
            trace's K windows.
        num_queries: queries per replication (default 10,000; a replay simulates the whole
            trace).
        num_replications: independent replications (confidence intervals).
        key: a JAX PRNG key (default `PRNGKey(0)`).
        model: `FIFO(service_cv)` (default `FIFO()`, the paper's server), `Kingman`,
            `Priority(order, service_cv)`, `ProcessorSharing(service_cv)`, `TimeVarying` or
            `ContinuousBatching(...)`.
        arrivals: a recorded `Trace` (`read_trace`) to replay instead of Poisson arrivals, or
            a `Replay` of one with its settings (the rate or utilization it is rescaled to,
            the trace's own work or labels, budgets by window). Each replication redraws
            only task types, noise and correctness (see *Real traffic*); predictions are made
            at the replayed mean rate.
        warmup: queries dropped at the start of each replication (default 10%).
        noise: the family of the single-server models' service-time factor (`"lognormal"` or
            `"gamma"`).
        capacity: the most queries a processor-sharing server holds.
        slots: the running-set size of an unlimited batching server (default: the model's
            mean number present plus ten standard deviations, as a power of two; a stream
            that needs more raises `InputError`).

    Returns:
        a `SimulationResult` (single server) or `BatchingSimulation`, both
        `Simulation`s with `summary()`, `interval()` and a `status` per policy. A policy that
        loads the server to 1 or more raises `UnstableQueueWarning` (its simulated means
        have no steady state).
    """
    model = FIFO() if model is None else model
    if not isinstance(model, LatencyModel):
        raise InputError(
            "model: must be a LatencyModel (FIFO, Kingman, Priority, ProcessorSharing, "
            f"TimeVarying, ContinuousBatching), got {type(model).__name__}"
        )
    single = isinstance(model, AbstractSingleServer)
    if not single and not isinstance(model, ContinuousBatching):
        raise InputError(f"model: {type(model).__name__} has no simulator")
    w = _workload(workload, model)
    replay = None if arrivals is None else Replay.of(arrivals)
    if model.describes_arrivals and replay is None:
        raise InputError(
            f"model: {type(model).__name__} describes a recorded arrival process, not Poisson "
            "arrivals: give arrivals= (the trace it was measured on) to replay it; without a "
            "trace the simulator would draw Poisson arrivals beside a prediction for others"
        )
    windows = None if replay is None or replay.window is None else replay.num_windows()
    tok = _tokens(tokens, w, windows)
    if single:
        if slots is not None:
            raise InputError("slots: a setting of the batching simulator only")
        if noise not in NOISE_KINDS:
            raise InputError(f"noise: unknown kind {noise!r}; choose 'lognormal' or 'gamma'")
        capacity = check_int("capacity", capacity, 2)
    else:
        if noise != "lognormal" or capacity != 512:
            raise InputError("noise/capacity: settings of the single-server simulator only")
        if slots is not None:
            slots = check_int("slots", slots, 1)
    num_replications = check_int("num_replications", num_replications, 1)
    check_key(key)
    prepared: PreparedReplay | None = None
    if replay is None:
        num_queries = DEFAULT_QUERIES if num_queries is None else num_queries
        num_queries = check_int("num_queries", num_queries, 2)
    elif num_queries is not None:
        raise InputError(
            "num_queries: a replay simulates the whole trace (take part of it with "
            "Trace.head or Trace.between)"
        )
    else:
        prepared, w = replay.prepared_for(model, w, tok)
        num_queries = check_int("num_queries (the trace's requests)", prepared.num_queries, 2)
    warmup = num_queries // 10 if warmup is None else check_int("warmup", warmup, 0)
    if not warmup < num_queries - 1:
        raise InputError(f"warmup: must be in [0, num_queries - 1), got {warmup}")
    model.check(w)
    key = jax.random.PRNGKey(0) if key is None else key
    num_policies = max(1, int(np.prod(tok.shape[: -1 if windows is None else -2])))
    if single:
        server_sim.check_memory_for(w, num_policies, num_queries, num_replications)
        return server_sim.run(
            w, tok, model, prepared, num_queries, num_replications, warmup, key, noise, capacity
        )
    slots = batching_sim.check(w, model, prepared, tok, num_queries, num_replications, slots)
    return batching_sim.run(
        w, tok, model, prepared, num_queries, num_replications, warmup, key, slots
    )


def _workload(workload, model: LatencyModel) -> Workload:
    if not isinstance(workload, Workload):
        raise InputError(f"workload: expected a Workload, got {type(workload).__name__}")
    if workload.batch_shape:
        raise InputError(
            "workload: simulate takes one workload (no batch axes); vmap over policies via tokens"
        )
    # a batching server judges its own stability; every single server takes the M/G/1 rule
    server = "mg1" if isinstance(model, AbstractSingleServer) else "batching"
    return workload.validate(server=server)


def _tokens(tokens, w: Workload, windows: int | None) -> np.ndarray:
    """The budgets as float64 on the host, of shape `(*P, N)` or by window `(*P, K, N)`, each
    finite and in [0, max_tokens]."""
    try:
        tok = np.asarray(tokens, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(
            f"tokens: expected numbers (one budget per task), got {tokens!r}"
        ) from None
    n = w.num_tasks
    if windows is None and (tok.ndim < 1 or tok.shape[-1] != n):
        raise InputError(
            f"tokens: expected shape (..., {n}) (one budget per task), got {tok.shape}"
        )
    if windows is not None and (tok.ndim < 2 or tok.shape[-2:] != (windows, n)):
        raise InputError(
            f"tokens: the replay's window cuts the trace into {windows} windows; expected "
            f"budgets of shape (..., {windows}, {n}), got {tok.shape}"
        )
    bad = ~np.isfinite(tok) | (tok < 0) | (tok > float(w.max_tokens))
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise InputError(
            f"tokens: budget for task {w.task_names[idx[-1]]!r} must be in [0, max_tokens="
            f"{float(w.max_tokens):g}], got {tok[tuple(idx)]!r}"
        )
    return tok
