r"""Capacity planning: the fewest replicas of a batching server, with their budgets, that meet a
latency target.

For $c = 1, 2, \ldots$ replicas the budgets are solved under the server model (`solve_latency`)
and their mean system time compared with the target; with a p95 target the first count that
meets the mean is simulated (`simulate`) and must meet the p95 too. Under random routing
$c$ replicas are one replica at $\lambda / c$, so every count is one member of one batched solve;
under routing by state (`"shortest_queue"`, `"least_loaded"`) each count is its own solve of the
pooled model, so the scan stops two counts past the answer, or once the mean latency has stopped
falling (under 0.1% over each of three counts: a floor that more replicas cannot lower).
Docs: *Continuous batching*.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from .._errors import InputError
from .._objective import mean_accuracy
from .._queue.batching import ContinuousBatching
from .._queue.simulation import simulate
from .._solver.solve import solve_latency
from .._status import Status
from .._validate import check_int, check_key
from .._workload import Workload

__all__ = ["ReplicaCount", "ReplicaPlan", "plan_replicas"]


@dataclass(frozen=True)
class ReplicaCount:
    """One replica count of a plan: the solve's `status`, the optimal `tokens`, their mean
    system time, mean accuracy and load (None unless the solve converged), the simulated
    p95 (None unless simulated) and whether every target is met.

    Attributes:
        replicas: the replica count.
        status: the solve's status.
        tokens: the optimal budgets.
        mean_system_time: their mean system time (s).
        accuracy: their mean accuracy.
        load: the server's load.
        p95_system_time: the simulated p95 (s).
        meets: whether every target is met.
    """

    replicas: int
    status: Status
    tokens: tuple[float, ...] | None
    mean_system_time: float | None
    accuracy: float | None
    load: float | None
    p95_system_time: float | None
    meets: bool


@dataclass(frozen=True)
class ReplicaPlan:
    """The answer of `plan_replicas`: the fewest `replicas` meeting the targets (None if no
    count up to the limit does) with their `budgets`, and every count examined (`rows`).

    Attributes:
        replicas: the fewest replicas meeting the targets (None when no count does).
        budgets: their optimal budgets, in task order.
        rows: every replica count examined.
        routing: how arrivals pick a replica.
        target_latency: the mean system time target (s).
        target_p95: the p95 target (s), if any.
    """

    replicas: int | None
    budgets: tuple[float, ...] | None
    rows: tuple[ReplicaCount, ...]
    routing: str
    target_latency: float
    target_p95: float | None


def plan_replicas(
    workload: Workload,
    model: ContinuousBatching,
    target_latency: float,
    *,
    target_p95: float | None = None,
    max_replicas: int = 32,
    num_queries: int = 5000,
    num_replications: int = 5,
    key: PRNGKeyArray | None = None,
) -> ReplicaPlan:
    """The fewest replicas of the batching server `model` (its `routing`; its `replicas` is
    ignored) whose optimal budgets for the single `workload` meet a mean system time of
    `target_latency` seconds and, with `target_p95`, a simulated p95 (`num_queries` x
    `num_replications`, `key`). Module docstring for the scan. The command line's `plan`.

    Args:
        workload: a single workload.
        model: the batching server (its `routing` is used; its `replicas` is not).
        target_latency: the mean system time to meet (s).
        target_p95: a simulated p95 to meet as well (s).
        max_replicas: the most replicas tried.
        num_queries: simulated queries per replication for the p95.
        num_replications: replications for the p95.
        key: the simulation's random key (default: a fixed one).

    Returns:
        The `ReplicaPlan`.
    """
    w, server = workload, model
    if not isinstance(server, ContinuousBatching):
        raise InputError(
            f"model: plan_replicas needs a ContinuousBatching server, got {type(server).__name__}"
        )
    if w.batch_shape:
        raise InputError(f"workload: plan one workload at a time, got batch shape {w.batch_shape}")
    for name, value in (("target_latency", target_latency), ("target_p95", target_p95)):
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_)
        )
        if value is not None and not (number and math.isfinite(value) and value > 0):
            raise InputError(f"{name}: a positive number of seconds, got {value!r}")
    max_replicas = check_int("max_replicas", max_replicas, 1)
    num_queries = check_int("num_queries", num_queries, 2)
    num_replications = check_int("num_replications", num_replications, 1)
    check_key(key)
    rows: list[ReplicaCount] = []
    chosen: ReplicaCount | None = None
    for c, model, wc, tokens, status in _solves(w, server, max_replicas):
        ok = status == Status.CONVERGED
        et = float(model.mean_system_time(tokens, wc)) if ok else None
        meets = ok and et is not None and et <= target_latency
        p95 = None
        if meets and target_p95 is not None and chosen is None:
            sim = simulate(wc, tokens[None], num_queries, num_replications, key, model=model)
            p95 = float(sim.interval("system_time_p95")[0][0])
            meets = p95 <= target_p95
        row = ReplicaCount(
            replicas=c,
            status=Status(status),
            tokens=tuple(float(t) for t in np.asarray(tokens)) if ok else None,
            mean_system_time=et,
            accuracy=float(mean_accuracy(tokens, wc)) if ok else None,
            load=float(model.load(tokens, wc)) if ok else None,
            p95_system_time=p95,
            meets=bool(meets),
        )
        if row.meets and chosen is None:
            chosen = row
        rows.append(row)
        if _enough(rows, chosen):  # the scan's bound follows from the problem, not max_replicas
            break
    return ReplicaPlan(
        replicas=None if chosen is None else chosen.replicas,
        budgets=None if chosen is None else chosen.tokens,
        rows=tuple(rows),
        routing=server.routing,
        target_latency=float(target_latency),
        target_p95=None if target_p95 is None else float(target_p95),
    )


_RANDOM_BLOCK = 16  # replica counts solved together under random routing


def _enough(rows: list[ReplicaCount], chosen: ReplicaCount | None) -> bool:
    """Stop the scan: two counts past the answer, or (no answer yet) the latency floor."""
    if chosen is not None:
        return rows[-1].replicas >= chosen.replicas + 2
    et = [r.mean_system_time for r in rows[-4:]]
    if len(et) < 4 or any(t is None for t in et):
        return False
    return all(a - b < 1e-3 * a for a, b in zip(et, et[1:]))  # type: ignore[operator]


def _solves(
    w: Workload, server: ContinuousBatching, max_replicas: int
) -> Iterator[tuple[int, ContinuousBatching, Workload, jax.Array, int]]:
    """`(c, model, workload, tokens, status)` for c = 1, 2, ...: random routing as one batched
    solve of one replica at lambda / c, routing by state one solve per count (lazily)."""
    if server.routing == "random":
        single = server.replace(replicas=1)
        # counts in blocks, each one batched solve, solved only as far as the scan goes
        for first in range(1, max_replicas + 1, _RANDOM_BLOCK):
            counts = np.arange(first, min(first + _RANDOM_BLOCK, max_replicas + 1))
            padded = np.pad(counts, (0, _RANDOM_BLOCK - counts.size), constant_values=counts[-1])
            batch = jax.vmap(lambda c: w.replace(arrival_rate=w.arrival_rate / c))(
                jnp.asarray(padded, w.dtype)
            )
            sols = solve_latency(batch, single)  # one compilation: the block size is fixed
            status = np.asarray(sols.status)
            for i, c in enumerate(counts):
                wc = w.replace(arrival_rate=w.arrival_rate / c)
                yield int(c), single, wc, sols.tokens[i], int(status[i])
        return
    for c in range(1, max_replicas + 1):
        model = server.replace(replicas=int(c))
        sol = solve_latency(w, model)
        yield int(c), model, w, sol.tokens, int(np.asarray(sol.status))
