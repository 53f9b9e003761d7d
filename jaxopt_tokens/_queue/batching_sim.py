r"""A JAX simulator of an iteration-level (continuously) batching server.

The rules are those of `ContinuousBatching`: a step with $n$ running requests lasts
$\tau_0 + \tau_1 n$ and gives each one token; a request of type k needs
$w_k = \mathrm{round}(p_k + l_k + a_k)$ steps (at least 1); at every step boundary the
requests that have arrived by then are admitted in FIFO order while fewer than `max_batch`
run; a request leaves at the end of the step that gives its last token, and its first token
(time to first token) comes at the end of step $p_k + 1$ after its admission. An idle server
starts a step at the next arrival.

Between events the batch does not change, so the simulation jumps from event to event: the
next completion, or the first step boundary at or after the next arrival (when a slot is
free). Time is kept as $t_{\text{busy}} + S \tau_0 + M \tau_1$ with integer counts of steps
$S$ and of tokens $M$ since the busy period began, so it equals a step-by-step simulation of
the same rules to rounding (the tests compare with an independent plain-Python one to 1e-9).
Each replication runs one `while_loop` over at most $3 \times$ `num_queries` events, the
policies on common random numbers (`sample_query_stream`): one after another on the CPU, in vmapped
chunks on accelerators (a vmapped `while_loop` selects its whole carry, the per-request arrays,
at every event: linear per event on the CPU, parallel on an accelerator). With `replicas`,
random routing is simulated as one replica at arrival rate $\lambda / c$ (the same in
distribution; throughputs are scaled to the whole system), and routing by the replicas' state
(`"shortest_queue"`, `"least_loaded"`) by `routed_trajectory`: all replicas at once, each
arrival routed when it arrives. Docs: *Continuous batching*.
"""

from __future__ import annotations

import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._errors import InputError, UnstableQueueWarning
from .._objective import task_accuracy
from .._traffic.replay import PreparedReplay
from .._validate import check_memory
from .._workload import Workload
from .batching import ContinuousBatching
from .results import BatchingSimulation, sample_quantiles
from .stream import replay_stream, sample_query_stream

__all__ = ["check", "run", "batching_trajectory", "routed_trajectory"]


class _Loop(eqx.Module):
    G: Array  # steps since the start
    t_busy: Array  # start of the busy period
    S: Array  # steps since t_busy
    M: Array  # tokens (sum of batch sizes over steps) since t_busy
    req: Array  # (slots,) request in each slot, -1 if free
    target: Array  # (slots,) G at which the slot's request gets its last token
    first: Array  # (slots,) G at which it gets its first token
    n: Array
    qp: Array  # next request to admit (arrival order)
    departed: Array
    admit: Array  # (q,) admission time
    first_token: Array  # (q,) time of the first token
    depart: Array  # (q,) departure time
    hist: Array  # (slots + 1,) time with n running
    t_last: Array  # end of the last event (the histogram is filled up to it)
    overflow: Array
    events: Array


def _overlap(a, b, window):
    """Length of [a, b] inside the window."""
    return jnp.maximum(jnp.minimum(b, window[1]) - jnp.maximum(a, window[0]), 0)


def _steps_to_reach(at, S, M, n, a, idt):
    """The fewest steps j >= 1 from the boundary (S, M) whose end `at(S + j, M + j n)` is at or
    after time `a` (the division's estimate, corrected by one either way for rounding)."""
    T = at(S, M)
    d = at(S + 1, M + n) - T
    j = jnp.maximum(1, jnp.ceil((a - T) / d)).astype(idt)
    j = jnp.where(at(S + j - 1, M + (j - 1) * n) >= a, jnp.maximum(j - 1, 1), j)
    return jnp.where(at(S + j, M + j * n) < a, j + 1, j)


def _fill_slots(req, target, first, G, count, index_of_rank, work, first_steps):
    """Admit `count` requests into the free slots, in slot order: the one of rank j among the
    free slots gets request `index_of_rank(j)`, its last and first tokens at steps
    `G + work`, `G + first_steps`. Returns the slot arrays and each slot's admitted request
    (`q`, out of range, where none: for dropped scatters)."""
    q = work.shape[0]
    free = req < 0
    rank = (jnp.cumsum(free) - 1).astype(work.dtype)
    take = free & (rank < count)
    idx = jnp.clip(index_of_rank(rank), 0, q - 1)
    req = jnp.where(take, idx, req)
    target = jnp.where(take, G + work[idx], target)
    first = jnp.where(take, G + first_steps[idx], first)
    return req, target, first, jnp.where(take, idx, q)


def batching_trajectory(
    arrivals: Float[Array, " q"],
    work: Int[Array, " q"],
    first_steps: Int[Array, " q"],
    tau0,
    tau1,
    slots: int,
    limit: int | None,
    window: tuple = (-jnp.inf, jnp.inf),
):
    """Admission, first-token and departure times of one stream (module docstring).

    `arrivals` (sorted), `work` (steps per request, >= 1), `first_steps` (steps from admission
    to the first token, 1..work), the step time, `slots` (the size of the running set) and
    `limit` (`max_batch`, or None: unlimited, and `overflow` reports a stream that needed
    more than `slots`), `window` (the time interval the batch-size histogram covers).
    Returns `(admit, first_token, depart, batch-size time histogram, overflow)`.
    """
    q = arrivals.shape[0]
    dtype = arrivals.dtype
    big = jnp.iinfo(work.dtype).max
    cap = slots if limit is None else min(slots, limit)
    tau0 = jnp.asarray(tau0, dtype)
    tau1 = jnp.asarray(tau1, dtype)
    arrivals_ext = jnp.concatenate([arrivals, jnp.full((1,), jnp.inf, dtype)])

    def time_at(s: _Loop, S, M):
        return s.t_busy + S.astype(dtype) * tau0 + M.astype(dtype) * tau1

    def body(s: _Loop) -> _Loop:
        idle = s.n == 0
        # (a request that arrived during the step that emptied the server starts at its end)
        t_busy = jnp.where(idle, jnp.maximum(arrivals_ext[s.qp], s.t_last), s.t_busy)
        S = jnp.where(idle, 0, s.S)
        M = jnp.where(idle, 0, s.M)
        idle_time = jnp.where(idle, _overlap(s.t_last, t_busy, window), 0)
        hist0 = s.hist.at[0].add(idle_time)
        s = eqx.tree_at(lambda x: (x.t_busy, x.S, x.M, x.hist), s, (t_busy, S, M, hist0))
        T = time_at(s, s.S, s.M)
        # admit the arrivals of time <= T, FIFO, while slots are free
        arrived = jnp.searchsorted(arrivals, T, side="right").astype(s.qp.dtype)
        room = cap - s.n
        k = jnp.minimum(room, arrived - s.qp)
        overflow = s.overflow | ((limit is None) & (arrived - s.qp > room))
        req, target, first, admitted = _fill_slots(
            s.req, s.target, s.first, s.G, k, lambda j: s.qp + j, work, first_steps
        )
        admit = s.admit.at[admitted].set(T, mode="drop")
        n = s.n + k
        qp = s.qp + k
        # jump to the next completion, or the first boundary at or after the next arrival
        occupied = req >= 0
        kc = jnp.min(jnp.where(occupied, target, big)) - s.G
        nxt = arrivals_ext[qp]
        j = _steps_to_reach(lambda S_, M_: time_at(s, S_, M_), s.S, s.M, n, nxt, kc.dtype)
        wait_arrival = (n < cap) & (qp < q) & jnp.isfinite(nxt)
        kj = jnp.where(wait_arrival, jnp.minimum(kc, j), kc)
        G = s.G + kj
        S2, M2 = s.S + kj, s.M + kj * n
        T2 = time_at(s, S2, M2)
        # first tokens within (G_old, G]: the step length was d throughout
        hit = occupied & (first > s.G) & (first <= G)
        f_time = time_at(s, s.S + (first - s.G), s.M + (first - s.G) * n)
        first_token = s.first_token.at[jnp.where(hit, req, q)].set(f_time, mode="drop")
        done = occupied & (target == G)
        depart = s.depart.at[jnp.where(done, req, q)].set(T2, mode="drop")
        hist = s.hist.at[n].add(_overlap(T, T2, window))
        return _Loop(
            G=G,
            t_busy=s.t_busy,
            S=S2,
            M=M2,
            req=jnp.where(done, -1, req),
            target=jnp.where(done, big, target),
            first=jnp.where(done, big, first),
            n=n - jnp.sum(done, dtype=work.dtype),
            qp=qp,
            departed=s.departed + jnp.sum(done, dtype=work.dtype),
            admit=admit,
            first_token=first_token,
            depart=depart,
            hist=hist,
            t_last=T2,
            overflow=overflow,
            events=s.events + 1,
        )

    zero = jnp.zeros((), work.dtype)
    start = _Loop(
        G=zero,
        t_busy=jnp.zeros((), dtype),
        S=zero,
        M=zero,
        req=jnp.full((cap,), -1, work.dtype),
        target=jnp.full((cap,), big, work.dtype),
        first=jnp.full((cap,), big, work.dtype),
        n=zero,
        qp=zero,
        departed=zero,
        admit=jnp.zeros((q,), dtype),
        first_token=jnp.zeros((q,), dtype),
        depart=jnp.zeros((q,), dtype),
        hist=jnp.zeros((cap + 1,), dtype),
        t_last=arrivals[0],
        overflow=jnp.asarray(False),
        events=zero,
    )
    end = jax.lax.while_loop(lambda s: (s.departed < q) & (s.events < 3 * q + 10), body, start)
    end_idle = _overlap(end.t_last, window[1], window)  # idle after the last departure
    hist = end.hist.at[0].add(jnp.where(jnp.isfinite(end_idle), end_idle, 0))
    return end.admit, end.first_token, end.depart, hist, end.overflow


class _Routed(eqx.Module):
    # per replica (leading axis c): the single-replica loop's fields
    G: Array
    t_busy: Array
    S: Array
    M: Array
    n: Array
    req: Array  # (c, slots)
    target: Array  # (c, slots)
    first: Array  # (c, slots)
    queue: Array  # (c, q) requests routed to the replica, in arrival order
    head: Array  # next to admit from `queue`
    tail: Array  # next free place in `queue`
    present: Array  # routed and not yet departed
    left: Array  # decode steps of work outstanding as of the replica's last event
    t_last: Array
    # shared
    ap: Array  # next arrival to route
    departed: Array
    admit: Array
    first_token: Array
    depart: Array
    hist: Array
    overflow: Array
    events: Array


def routed_trajectory(
    arrivals: Float[Array, " q"],
    work: Int[Array, " q"],
    first_steps: Int[Array, " q"],
    tau0,
    tau1,
    slots: int,
    limit: int | None,
    replicas: int,
    routing: str,
    window: tuple = (-jnp.inf, jnp.inf),
):
    """`batching_trajectory` for `replicas` servers, each arrival routed on arrival by
    `routing` (`"shortest_queue"`: the fewest requests present; `"least_loaded"`: the fewest
    decode steps outstanding after the replicas' last step boundaries; ties to the lowest
    index).

    Every replica follows the one-server rules on its own FIFO queue. One event per
    iteration: an arrival is routed, or the replica with the earliest event (its next
    completion, the end of its current step when a routed request waits for a free slot, or
    the start of a step when it was idle) advances; at equal times the replica goes first.
    The histogram sums the replicas' time with n running. Same returns as
    `batching_trajectory`.
    """
    q = arrivals.shape[0]
    c = replicas
    dtype = arrivals.dtype
    idt = work.dtype
    big = jnp.iinfo(idt).max
    cap = slots if limit is None else min(slots, limit)
    tau0 = jnp.asarray(tau0, dtype)
    tau1 = jnp.asarray(tau1, dtype)
    arrivals_ext = jnp.concatenate([arrivals, jnp.full((1,), jnp.inf, dtype)])

    def times(s: _Routed, S, M):
        return s.t_busy + S.astype(dtype) * tau0 + M.astype(dtype) * tau1

    def next_events(s: _Routed):
        """Steps to each replica's next event and its time."""
        busy = s.n > 0
        waiting = s.tail > s.head
        kc = jnp.min(jnp.where(s.req >= 0, s.target, big), -1) - s.G
        # a routed request waiting for a free slot: the first boundary at or after its arrival
        a = arrivals[s.queue[jnp.arange(c), jnp.clip(s.head, 0, q - 1)]]
        j = _steps_to_reach(lambda S_, M_: times(s, S_, M_), s.S, s.M, s.n, a, idt)
        k = jnp.where(busy, jnp.where(waiting & (s.n < cap), jnp.minimum(kc, j), kc), 0)
        at = jnp.where(busy | waiting, times(s, s.S + k, s.M + k * s.n), jnp.inf)
        return k, at

    def route(s: _Routed, on) -> _Routed:
        """Route the next arrival (a no-op unless `on`)."""
        t = arrivals[s.ap]
        if routing == "shortest_queue":
            score = s.present
        else:  # the work left at t: the steps each replica has finished since its last event
            T = times(s, s.S, s.M)
            d = tau0 + tau1 * s.n.astype(dtype)
            j = jnp.maximum(jnp.floor((t - T) / d), 0).astype(idt)
            j = jnp.where(times(s, s.S + j, s.M + j * s.n) > t, jnp.maximum(j - 1, 0), j)
            j = jnp.where(times(s, s.S + j + 1, s.M + (j + 1) * s.n) <= t, j + 1, j)
            score = s.left - jnp.where(s.n > 0, j, 0) * s.n
        r = jnp.argmin(score)
        idle = (s.n[r] == 0) & (s.tail[r] == s.head[r])
        hist = s.hist.at[0].add(jnp.where(on & idle, _overlap(s.t_last[r], t, window), 0))
        r = jnp.where(on, r, c)  # out of range: every per-replica write below is dropped
        rc = jnp.minimum(r, c - 1)
        return eqx.tree_at(
            lambda x: (
                x.queue,
                x.tail,
                x.present,
                x.left,
                x.t_busy,
                x.S,
                x.M,
                x.t_last,
                x.ap,
                x.hist,
            ),
            s,
            (
                s.queue.at[r, s.tail[rc]].set(s.ap, mode="drop"),
                s.tail.at[r].add(1, mode="drop"),
                s.present.at[r].add(1, mode="drop"),
                s.left.at[r].add(work[jnp.minimum(s.ap, q - 1)], mode="drop"),
                s.t_busy.at[r].set(jnp.where(idle, t, s.t_busy[rc]), mode="drop"),
                s.S.at[r].set(jnp.where(idle, 0, s.S[rc]), mode="drop"),
                s.M.at[r].set(jnp.where(idle, 0, s.M[rc]), mode="drop"),
                s.t_last.at[r].set(jnp.where(idle, t, s.t_last[rc]), mode="drop"),
                s.ap + on.astype(idt),
                hist,
            ),
        )

    def advance(s: _Routed, r, k, on) -> _Routed:
        """Advance replica `r` by `k` steps to its event (a no-op unless `on`)."""
        k = jnp.where(on, k, 0)
        G, S, M, n = s.G[r], s.S[r], s.M[r], s.n[r]
        req, target, first = s.req[r], s.target[r], s.first[r]
        t_busy = s.t_busy[r]

        def at(S_, M_):
            return t_busy + S_.astype(dtype) * tau0 + M_.astype(dtype) * tau1

        T = at(S, M)
        G2, S2, M2 = G + k, S + k, M + k * n
        T2 = at(S2, M2)
        occupied = req >= 0
        hit = occupied & (first > G) & (first <= G2)
        f_time = at(S + (first - G), M + (first - G) * n)
        first_token = s.first_token.at[jnp.where(hit, req, q)].set(f_time, mode="drop")
        done = occupied & (target == G2)
        depart = s.depart.at[jnp.where(done, req, q)].set(T2, mode="drop")
        hist = s.hist.at[n].add(_overlap(T, T2, window))
        ndone = jnp.sum(done, dtype=idt)
        req = jnp.where(done, -1, req)
        target = jnp.where(done, big, target)
        first = jnp.where(done, big, first)
        n2 = n - ndone
        # admit from the replica's queue at T2, FIFO, while slots are free
        waiting = s.tail[r] - s.head[r]
        kk = jnp.where(on, jnp.minimum(cap - n2, waiting), 0)
        overflow = s.overflow | (on & (limit is None) & (waiting > cap - n2))
        req, target, first, admitted = _fill_slots(
            req,
            target,
            first,
            G2,
            kk,
            lambda j: s.queue[r, jnp.clip(s.head[r] + j, 0, q - 1)],
            work,
            first_steps,
        )
        admit = s.admit.at[admitted].set(T2, mode="drop")
        w_r = jnp.where(on, r, c)  # out of range when off: the writes are dropped
        return eqx.tree_at(
            lambda x: (
                x.G,
                x.S,
                x.M,
                x.n,
                x.req,
                x.target,
                x.first,
                x.head,
                x.present,
                x.left,
                x.t_last,
                x.departed,
                x.admit,
                x.first_token,
                x.depart,
                x.hist,
                x.overflow,
            ),
            s,
            (
                s.G.at[w_r].set(G2, mode="drop"),
                s.S.at[w_r].set(S2, mode="drop"),
                s.M.at[w_r].set(M2, mode="drop"),
                s.n.at[w_r].set(n2 + kk, mode="drop"),
                s.req.at[w_r].set(req, mode="drop"),
                s.target.at[w_r].set(target, mode="drop"),
                s.first.at[w_r].set(first, mode="drop"),
                s.head.at[w_r].add(kk, mode="drop"),
                s.present.at[w_r].add(-ndone, mode="drop"),
                s.left.at[w_r].add(-k * n, mode="drop"),
                s.t_last.at[w_r].set(T2, mode="drop"),
                s.departed + ndone,
                admit,
                first_token,
                depart,
                hist,
                overflow,
            ),
        )

    def body(s: _Routed) -> _Routed:
        k, at = next_events(s)
        r = jnp.argmin(at)
        arrival = arrivals_ext[s.ap]
        # both branches, masked (a `cond` would copy the loop's large arrays every event)
        routing_now = arrival < at[r]
        s = advance(route(s, routing_now), r, k[r], ~routing_now)
        return eqx.tree_at(lambda x: x.events, s, s.events + 1)

    zeros = jnp.zeros((c,), idt)
    start = _Routed(
        G=zeros,
        t_busy=jnp.zeros((c,), dtype),
        S=zeros,
        M=zeros,
        n=zeros,
        req=jnp.full((c, cap), -1, idt),
        target=jnp.full((c, cap), big, idt),
        first=jnp.full((c, cap), big, idt),
        queue=jnp.zeros((c, q), idt),
        head=zeros,
        tail=zeros,
        present=zeros,
        left=zeros,
        t_last=jnp.full((c,), arrivals[0], dtype),
        ap=jnp.zeros((), idt),
        departed=jnp.zeros((), idt),
        admit=jnp.zeros((q,), dtype),
        first_token=jnp.zeros((q,), dtype),
        depart=jnp.zeros((q,), dtype),
        hist=jnp.zeros((cap + 1,), dtype),
        overflow=jnp.asarray(False),
        events=jnp.zeros((), idt),
    )
    end = jax.lax.while_loop(lambda s: (s.departed < q) & (s.events < 4 * q + 10), body, start)
    end_idle = jnp.sum(_overlap(end.t_last, window[1], window))
    hist = end.hist.at[0].add(jnp.where(jnp.isfinite(end_idle), end_idle, 0))
    return end.admit, end.first_token, end.depart, hist, end.overflow


def _work(model: ContinuousBatching, tokens, w: Workload):
    """Integer steps per task and steps to the first token."""
    pre = jnp.broadcast_to(jnp.asarray(model.prefill, w.dtype), w.A.shape)
    ints = jnp.int64 if w.dtype == jnp.float64 else jnp.int32  # step counts of long runs
    total = jnp.maximum(jnp.round(model.work(tokens, w)), 1).astype(ints)
    first = jnp.clip(jnp.round(pre).astype(ints) + 1, 1, total)
    return total, first


def _check_time_resolution(
    w: Workload, model: ContinuousBatching, num_queries: int, horizon: float | None = None
) -> None:
    """`InputError` when float64 time cannot resolve one decode step over the simulated
    horizon: the clock would round steps away (and differences of times turn negative)."""
    tau0, tau1 = (float(np.asarray(t)) for t in model.step_time)
    rate = float(np.asarray(w.arrival_rate)) / (1 if model.pooled else model.replicas)
    if horizon is None:
        horizon = num_queries / rate if rate > 0 else math.inf
    if not horizon * float(np.finfo(np.float64).eps) < tau0 + tau1:
        raise InputError(
            f"step_time / arrival_rate: a decode step of {tau0 + tau1:.3g} s cannot be resolved "
            f"in float64 over the {horizon:.3g} s that {num_queries:,} arrivals at "
            f"{rate:.3g}/s take; use a larger step time or arrival rate, or fewer queries"
        )


def check(
    w: Workload,
    model: ContinuousBatching,
    replay: PreparedReplay | None,
    tokens: np.ndarray,
    num_queries: int,
    num_replications: int,
    slots: int | None,
) -> int:
    """`InputError` when the batching server cannot simulate these validated inputs (random
    routing of a replayed trace, a step time the clock cannot resolve, too little memory);
    else the running-set size to simulate with (`slots`, or its default, sized per window at
    the window's own rate when the budgets change by window)."""
    if replay is not None and model.replicas > 1 and not model.pooled:
        raise InputError(
            "arrivals: a trace is replayed whole; random routing over replicas would thin "
            "it at random (use routing='shortest_queue' or 'least_loaded', or replicas=1)"
        )
    horizon = None if replay is None else float(np.sum(np.asarray(replay.gaps)))
    _check_time_resolution(w, model, num_queries, horizon)
    num_windows = 1 if replay is None else replay.num_windows
    flat = tokens.reshape(-1, num_windows, w.num_tasks)
    if slots is None:
        if model.max_batch is not None:
            slots = model.max_batch
        elif replay is None or replay.window is None:
            slots = _default_slots(model, flat[:, 0], w)
        else:
            rates = np.asarray(replay.window_rates)
            slots = max(
                _default_slots(model, flat[:, k], w.replace(arrival_rate=float(rates[k])))
                for k in range(num_windows)
                if rates[k] > 0
            )
    cap = slots if model.max_batch is None else model.max_batch
    queues = model.replicas if model.pooled else 0  # routed_trajectory's per-replica queues
    num_policies = flat.shape[0]
    check_memory(
        8.0 * num_policies * num_queries * (6 + queues)
        + 8.0 * num_policies * cap * 4 * max(queues, 1)
        # the statistics kept per replication: a dozen numbers, one per task, the histogram
        + 8.0 * num_policies * num_replications * (16 + w.num_tasks + cap),
        f"simulating {num_policies} policies x {num_queries} queries x {num_replications} "
        "replications",
        "simulate fewer policies, queries or replications at once",
    )
    return slots


def _default_slots(model: ContinuousBatching, flat, w: Workload) -> int:
    """The running set of an unlimited server: the number present is negative binomial, so
    its mean plus ten standard deviations covers any run (per replica under random routing:
    routing by state only narrows it), as a power of two."""
    stats = model.replace(routing="random").stats(flat, w)
    mean = np.nan_to_num(np.asarray(stats["in_system"]), nan=0.0, posinf=1e6)
    tau0, tau1 = (float(np.asarray(t)) for t in model.step_time)
    q = np.clip(mean / (mean + tau0 / tau1 + 1), 0, 1 - 1e-9)
    sd = np.sqrt(mean / np.maximum(1 - q, 1e-9))
    need = float(np.max(mean + 10 * sd + 16))
    return int(2 ** math.ceil(math.log2(min(max(need, 16), 1 << 16))))


def _window_stats(model: ContinuousBatching, flat, w: Workload, replay: PreparedReplay | None):
    """The model's statistics and E[T_k] for policies `flat` (shape (P, K, N)); with budgets by
    window, the arrival-weighted mean over windows, each window at its own rate (all windows
    in one vectorised evaluation)."""
    if replay is None or replay.window is None:
        return model.stats(flat[:, 0], w), model.system_times(flat[:, 0], w)
    q = jnp.asarray(replay.window_weights, w.dtype)
    wk = w.replace(arrival_rate=jnp.asarray(replay.window_rates, w.dtype))  # (K,) over (P, K, N)
    per = model.stats(flat, wk)
    stats = {
        name: jnp.asarray(per[name]) @ q
        for name in ("system_time", "queue_wait", "running", "load")
    }
    return stats, jnp.einsum("k,pkn->pn", q, model.system_times(flat, wk))


def run(
    w: Workload,
    tokens: np.ndarray,
    model: ContinuousBatching,
    replay: PreparedReplay | None,
    num_queries: int,
    num_replications: int,
    warmup: int,
    key,
    slots: int,
) -> BatchingSimulation:
    """Simulate validated policies `tokens` (`(*P, N)`, or `(*P, K, N)` by window) on the
    batching server `model` (`simulate` checks every input; nothing is checked here)."""
    windowed = replay is not None and replay.window is not None
    num_windows = 1 if replay is None else replay.num_windows
    policies = tokens.shape[:-2] if windowed else tokens.shape[:-1]
    dtype = np.dtype(w.dtype)
    flat = jax.device_put(tokens.reshape(-1, num_windows, w.num_tasks).astype(dtype))
    pred, by_task = _window_stats(model, flat, w, replay)
    load = np.asarray(pred["load"])
    if np.any(~(load < 1)):
        warnings.warn(
            f"{int(np.sum(~(load < 1)))} policies load the batching server to >= its capacity: "
            "the queue grows without bound and the simulated means have no steady state",
            UnstableQueueWarning,
            stacklevel=3,
        )
    out = _simulate(w, flat, model, num_queries, num_replications, key, warmup, slots, replay)
    *stats, overflow = out
    if bool(np.any(np.asarray(overflow))):
        raise InputError(
            f"slots: more than {slots} requests were running at once; raise slots (the load "
            "is close to the capacity) or set max_batch"
        )

    def shape(x):  # (P, R, ...) -> (*policies, R, ...)
        return jax.device_put(np.reshape(x, (*policies, *x.shape[1:])))

    def by_policy(x, *tail):
        return jax.device_put(np.reshape(np.asarray(x), (*policies, *tail)))

    names = (*BatchingSimulation.STATISTICS, "system_time_by_task", "batch_size")
    fields = {n: shape(v) for n, v in zip(names, jax.device_get(stats))}
    return BatchingSimulation(
        **fields,
        predicted_system_time=by_policy(pred["system_time"]),
        predicted_queue_wait=by_policy(pred["queue_wait"]),
        predicted_running=by_policy(pred["running"]),
        predicted_load=by_policy(pred["load"]),
        predicted_system_time_by_task=by_policy(by_task, w.num_tasks),
        num_queries=num_queries,
        warmup=warmup,
        arrival_rate=float(np.asarray(w.arrival_rate)),
    )


@eqx.filter_jit
def _simulate(w, tokens, model, num_queries, num_replications, key, warmup, slots, replay=None):
    tau0, tau1 = model.step_coefficients(w.dtype)
    # random routing: one replica at lambda / c is the same in distribution; otherwise the
    # whole system at lambda, every arrival routed by the replicas' state
    c = model.replicas
    pooled = model.pooled
    stream_w = w if pooled else w.replace(arrival_rate=model.replica_arrival_rate(w))
    share = 1 if pooled else c  # throughputs of the whole system

    def trajectory(arrivals, work, first_steps, window):
        if pooled:
            return routed_trajectory(
                arrivals,
                work,
                first_steps,
                tau0,
                tau1,
                slots,
                model.max_batch,
                c,
                model.routing,
                window,
            )
        return batching_trajectory(
            arrivals, work, first_steps, tau0, tau1, slots, model.max_batch, window
        )

    def replication(r):
        if replay is None:
            stream = sample_query_stream(jax.random.fold_in(key, r), stream_w, num_queries)
        else:
            stream = replay_stream(jax.random.fold_in(key, r), stream_w, replay)
        arrivals = jnp.cumsum(stream.gaps)
        onehot = jax.nn.one_hot(stream.task[warmup:], w.num_tasks, dtype=w.dtype)
        per_type = jnp.sum(onehot, 0)

        def policy(l):  # (K, N): budgets per window (K = 1 without a schedule)
            total, first = jax.vmap(lambda x: _work(model, x, w))(l)
            work, first_steps = stream.budgets(total), stream.budgets(first)
            if replay is not None and replay.work is not None:  # the trace's own work
                work = jnp.maximum(jnp.round(work * stream.noise), 1).astype(work.dtype)
                first_steps = jnp.minimum(first_steps, work)
            window = (arrivals[warmup], arrivals[-1])  # steady state: after warm-up, before drain
            admit, first_t, depart, hist, overflow = trajectory(arrivals, work, first_steps, window)
            T = (depart - arrivals)[warmup:]
            Q = (admit - arrivals)[warmup:]
            F = (first_t - arrivals)[warmup:]
            span = depart[-1] - arrivals[warmup]
            measured = (arrivals >= arrivals[warmup]) & (depart <= depart[-1])
            tokens_done = jnp.sum(jnp.where(measured, work, 0)).astype(w.dtype)
            frac = hist / jnp.sum(hist)
            sizes = jnp.arange(hist.shape[0], dtype=w.dtype)
            correct = stream.uniform < stream.budgets(task_accuracy(l, w))
            return (
                jnp.mean(T),
                jnp.mean(Q),
                jnp.mean(F),
                *sample_quantiles(T),
                sample_quantiles(F)[1],
                jnp.sum(frac * sizes),
                share * (num_queries - warmup) / span,
                share * tokens_done / span,
                jnp.mean(correct[warmup:].astype(w.dtype)),
                (T @ onehot) / jnp.where(per_type > 0, per_type, jnp.nan),
                frac,
                overflow,
            )

        # a vmapped while_loop selects its whole carry (the per-request arrays) every event:
        # O(queries) per event. On the CPU policies go one at a time; accelerators take
        # vmapped chunks, where the select is parallel (lax.map's batch_size=1 would still
        # vmap, over chunks of one).
        if jax.default_backend() == "cpu":
            return jax.lax.map(policy, tokens)
        return jax.lax.map(policy, tokens, batch_size=64)

    out = jax.lax.map(replication, jnp.arange(num_replications))
    # (R, P, ...) -> (P, R, ...)
    return tuple(jnp.swapaxes(x, 0, 1) if x.ndim >= 2 else x for x in out)
