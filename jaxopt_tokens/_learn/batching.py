r"""The continuously batching server replayed on a trace, as a differentiable fluid.

Every running request advances one token per decode step of $\tau_0 + \tau_1 n$ seconds, $n$
the requests running (no batch limit, one replica): between events the $n$ running requests
progress together at $1 / (\tau_0 + \tau_1 n)$ tokens a second, and an event is an arrival or
the departure of the request with the least work left. `batching_latencies` runs that event
simulation as a `lax.scan` over arrivals, each advancing to the next arrival through at most
`slots` departures (a fixed trip count, so reverse-mode autodiff applies), with the requests in
the system held in `slots` places; an arrival that finds every place taken is counted as an
overflow (the replay is then invalid: more slots are needed) and its latency is $10^9$ s, so
that a policy never looks better for crowding the server past the places.

The departure times are continuous, piecewise-smooth functions of the requests' work (a
departure's time moves continuously when any work changes; the order of events changes only
on a set of measure zero), so the mean latency of the fluid is differentiable almost
everywhere and its sample-path derivative is the derivative of the path: IPA on the fluid is
exact. The fluid is a surrogate of the real engine, whose steps are discrete: a budget that
crosses a step boundary moves a departure by a whole step, a jump the fluid smooths over. The
tests check the fluid against an event simulation written independently (the gateway's dry
run engine) and its gradients against central finite differences. Docs: *Policies learned on
traffic*.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

__all__ = ["batching_latencies"]

_BIG = 1e30  # the work left in an empty place (finite: no inf * 0 in a gradient)
_LOST = 1e9  # the latency of a request that found no place (seconds)


def batching_latencies(
    work_table: Float[Array, "s n"],
    gaps: Float[Array, " q"],
    task: Int[Array, " q"],
    tau0,
    tau1,
    slots: int,
) -> tuple[Float[Array, " q"], Int[Array, " q"], Bool[Array, ""]]:
    """Latency of every request, the requests each found in the system, and whether any
    arrival found every place taken.

    Args:
        work_table: tokens of work by row (requests found on arrival, the last row for that
            many or more) and task: prefill + budget + answer.
        gaps: inter-arrival times (`gaps[0]` is ignored).
        task: each request's task.
        tau0, tau1: the decode step $\\tau_0 + \\tau_1 n$ seconds.
        slots: the most requests the replay holds in the system at once.
    """
    q = gaps.shape[0]
    dtype = gaps.dtype
    big = jnp.asarray(_BIG, dtype)
    rows = work_table.shape[0]
    drain = jnp.asarray(1e12, dtype)  # after the last arrival: until the system empties
    gap_next = jnp.concatenate([gaps[1:], drain[None]])

    def advance(carry, _):
        rem, ids, left, elapsed = carry
        occupied = rem < big / 2
        n = jnp.sum(occupied)
        rate = 1.0 / (tau0 + tau1 * jnp.maximum(n, 1))
        j = jnp.argmin(rem)
        dt = rem[j] / rate
        done = (n > 0) & (dt <= left)
        step = jnp.where(done, dt, left)
        rem = jnp.where(occupied, rem - step * rate, rem)
        rem = rem.at[j].set(jnp.where(done, big, rem[j]))
        departed = jnp.where(done, ids[j], q)  # q: nobody (dropped by the scatter below)
        return (rem, ids, left - step, elapsed + step), (departed, elapsed + step)

    def arrive(carry, x):
        rem, ids, now = carry
        gap, k, i = x
        occupied = rem < big / 2
        n = jnp.sum(occupied)
        full = n >= slots
        place = jnp.argmin(occupied)  # the first empty place
        work = work_table[jnp.minimum(n, rows - 1), k]
        rem = rem.at[place].set(jnp.where(full, rem[place], work))
        ids = ids.at[place].set(jnp.where(full, ids[place], i))
        zero = jnp.zeros((), dtype)
        (rem, ids, _, _), (departed, at) = jax.lax.scan(
            advance, (rem, ids, gap, zero), None, length=slots
        )
        return (rem, ids, now + gap), (departed, now + at, n, full)

    start = (jnp.full((slots,), big, dtype), jnp.full((slots,), q, jnp.int32), jnp.zeros((), dtype))
    arrivals = jnp.cumsum(gaps.at[0].set(0.0))
    xs = (gap_next, task, jnp.arange(q, dtype=jnp.int32))
    _, (departed, at, found, full) = jax.lax.scan(arrive, start, xs)
    departure = jnp.zeros((q,), dtype).at[departed.ravel()].set(at.ravel(), mode="drop")
    # a request that found every place taken was never served: it counts as waiting for ever
    # (a huge latency, never a reward for crowding the server), and the replay is invalid
    latency = jnp.where(full, jnp.asarray(_LOST, dtype), departure - arrivals)
    return latency, found, jnp.any(full)
