"""Event-by-event simulation of the non-FIFO disciplines, as `lax.scan`s (jit/vmap-safe).

FIFO has the closed parallel form of `lindley_waits`; these two need a scan:

- `priority_waits`: non-preemptive priority by class, FIFO within a class. The scan runs
  over service starts: when the server frees up at time $t$, the head of the
  highest-priority class that has arrived by $t$ starts; if none has, the earliest next
  arrival starts when it arrives. Each class is a queue read in arrival order through a
  pointer, so a step costs O(classes).
- `ps_sojourns`: egalitarian processor sharing. The scan runs over the 2q events (arrivals
  and departures) with the remaining work of up to `capacity` queries in the system; each
  present query is served at rate 1/n. If more than `capacity` queries are ever present
  the run is flagged (`overflow`), never silently wrong.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

__all__ = ["priority_waits", "ps_sojourns"]


def priority_waits(
    arrivals: Float[Array, " q"],
    task: Int[Array, " q"],
    service: Float[Array, " q"],
    rank: Int[Array, " k"],
) -> Float[Array, " q"]:
    """Waiting times under non-preemptive priority; `rank[k]` is task k's priority (0 = first)."""
    q = arrivals.shape[0]
    K = rank.shape[0]
    cls = rank[task]  # priority class of each query
    order = jnp.argsort(cls * q + jnp.arange(q))  # by class, then arrival
    counts = jnp.bincount(cls, length=K)
    offsets = jnp.cumsum(counts) - counts
    inf = jnp.asarray(jnp.inf, arrivals.dtype)

    def start_next(carry, _):
        free_at, ptr = carry
        has = ptr < counts
        head = order[jnp.minimum(offsets + ptr, q - 1)]
        head_arrival = jnp.where(has, arrivals[head], inf)
        waiting = head_arrival <= free_at
        first_waiting = jnp.argmax(waiting)  # classes are indexed by rank: lowest index wins
        j = jnp.where(jnp.any(waiting), first_waiting, jnp.argmin(head_arrival))
        c = head[j]
        start = jnp.maximum(free_at, arrivals[c])
        return (start + service[c], ptr.at[j].add(1)), (c, start - arrivals[c])

    init = (jnp.asarray(-jnp.inf, arrivals.dtype), jnp.zeros(K, counts.dtype))
    _, (who, wait) = jax.lax.scan(start_next, init, None, length=q)
    return jnp.zeros_like(arrivals).at[who].set(wait)


def ps_sojourns(
    arrivals: Float[Array, " q"], service: Float[Array, " q"], capacity: int = 512
) -> tuple[Float[Array, " q"], Bool[Array, ""]]:
    """Times in system under processor sharing, and whether `capacity` was ever exceeded."""
    q = arrivals.shape[0]
    dtype = arrivals.dtype
    inf = jnp.asarray(jnp.inf, dtype)

    def event(carry, _):
        now, nxt, work, who, busy, overflow = carry
        n = jnp.sum(busy)
        share = jnp.maximum(n, 1).astype(dtype)
        least = jnp.argmin(jnp.where(busy, work, inf))
        to_departure = jnp.where(n > 0, work[least] * share, inf)
        to_arrival = jnp.where(nxt < q, arrivals[jnp.minimum(nxt, q - 1)] - now, inf)
        arrive = to_arrival <= to_departure
        dt = jnp.where(arrive, to_arrival, to_departure)
        work = jnp.where(busy, work - dt / share, work)
        # arrival: the new query takes the first free slot
        slot = jnp.argmin(busy)
        full = jnp.all(busy)
        new_busy = jnp.where(arrive, busy.at[slot].set(True), busy.at[least].set(False))
        new_work = jnp.where(arrive, work.at[slot].set(service[jnp.minimum(nxt, q - 1)]), work)
        new_who = jnp.where(arrive, who.at[slot].set(nxt), who)
        departed = jnp.where(arrive, q, who[least])  # q: no departure (dropped on scatter)
        carry = (now + dt, nxt + arrive, new_work, new_who, new_busy, overflow | (arrive & full))
        return carry, (departed, now + dt)

    init = (
        jnp.asarray(0.0, dtype),
        jnp.asarray(0),
        jnp.zeros(capacity, dtype),
        jnp.zeros(capacity, jnp.int32),
        jnp.zeros(capacity, bool),
        jnp.asarray(False),
    )
    (_, _, _, _, _, overflow), (departed, when) = jax.lax.scan(event, init, None, length=2 * q)
    departure = jnp.full(q, jnp.nan, dtype).at[departed].set(when, mode="drop")
    return departure - arrivals, overflow
