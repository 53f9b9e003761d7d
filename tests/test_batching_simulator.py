"""The batching simulator: event-driven trajectories against a step-by-step reference, and its
refusals.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    POLICY,
    TAU,
    strict_loads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens._queue.batching_sim import batching_trajectory, routed_trajectory
from jaxopt_tokens.cli import main

TRAJECTORY = jax.jit(batching_trajectory, static_argnums=(5, 6))  # one compilation per limit


ROUTED = jax.jit(routed_trajectory, static_argnums=(5, 6, 7, 8))


def reference_trajectory(
    arrivals,
    work,
    first_steps,
    tau0,
    tau1,
    limit,
    replicas=1,
    routing="shortest_queue",
    window=None,
):
    """An independent plain-Python simulation of the same rules, one decode step at a time:
    `replicas` servers, each arrival routed on arrival to the replica with the fewest requests
    present (or decode steps outstanding), ties to the lowest index; at equal times a step
    ends before an arrival is routed. Returns admission, first-token and departure times and
    the replicas' summed time with n running inside `window`."""
    q = len(arrivals)
    admit, first, depart = [None] * q, [None] * q, [None] * q
    lo, hi = window if window is not None else (arrivals[0], arrivals[-1])
    hist: dict[int, float] = {}

    def add(n, a, b):
        hist[n] = hist.get(n, 0.0) + max(min(b, hi) - max(a, lo), 0.0)

    class Replica:
        def __init__(self):
            self.running: dict[int, int] = {}  # request -> tokens so far
            self.queue: list[int] = []
            self.t_busy, self.S, self.M = 0.0, 0, 0
            self.idle_since = arrivals[0]
            self.starting = False  # idle, a request routed to it: a step starts now

        def now(self):
            return self.t_busy + self.S * tau0 + self.M * tau1

        def next_event(self):
            if self.starting:
                return self.t_busy
            if self.running:  # the end of the current step
                return self.t_busy + (self.S + 1) * tau0 + (self.M + len(self.running)) * tau1
            return math.inf

        def admit_waiting(self, T):
            while self.queue and (limit is None or len(self.running) < limit):
                r = self.queue.pop(0)
                self.running[r] = 0
                admit[r] = T

    servers = [Replica() for _ in range(replicas)]
    ap = done = 0
    while done < q:
        ends = [srv.next_event() for srv in servers]
        e = min(range(replicas), key=lambda i: (ends[i], i))
        if ap < q and arrivals[ap] < ends[e]:  # route the arrival
            if routing == "shortest_queue":
                score = [len(x.running) + len(x.queue) for x in servers]
            else:
                score = [
                    sum(work[r] - k for r, k in x.running.items()) + sum(work[r] for r in x.queue)
                    for x in servers
                ]
            i = min(range(replicas), key=lambda j: (score[j], j))
            srv = servers[i]
            if not srv.running and not srv.queue:
                add(0, srv.idle_since, arrivals[ap])
                srv.t_busy, srv.S, srv.M, srv.starting = arrivals[ap], 0, 0, True
            srv.queue.append(ap)
            ap += 1
            continue
        srv = servers[e]
        if srv.starting:
            srv.starting = False
            srv.admit_waiting(srv.now())
            continue
        n = len(srv.running)
        t0 = srv.now()
        srv.S, srv.M = srv.S + 1, srv.M + n
        T = srv.now()
        add(n, t0, T)
        for r in list(srv.running):
            srv.running[r] += 1
            if srv.running[r] == first_steps[r]:
                first[r] = T
            if srv.running[r] == work[r]:
                depart[r] = T
                del srv.running[r]
                done += 1
        srv.admit_waiting(T)
        if not srv.running:
            srv.idle_since = T
    for srv in servers:
        add(0, srv.idle_since, hi)
    size = max(hist) + 1
    h = np.zeros(size)
    for n, t in hist.items():
        h[n] = t
    return np.asarray(admit), np.asarray(first), np.asarray(depart), h


def _assert_same_trajectory(got, ref):
    for a, b in zip(got[:3], ref[:3]):
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-9)
    hist = np.asarray(got[3])
    assert np.all(hist[len(ref[3]) :] == 0)
    np.testing.assert_allclose(hist[: len(ref[3])], ref[3], rtol=0, atol=1e-9)
    assert not bool(got[4])


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    limit=st.sampled_from([None, 1, 2, 5, 16]),
    rate=st.floats(0.5, 60.0),
    tau0=st.floats(0.0, 0.05),
    tau1=st.floats(1e-5, 0.01),
)
def test_event_simulator_equals_a_step_by_step_reference(seed, limit, rate, tau0, tau1):
    rng = np.random.default_rng(seed)
    q = 120
    arrivals = np.cumsum(rng.exponential(1 / rate, q))
    work = rng.integers(1, 30, q)
    first = np.minimum(rng.integers(1, 6, q), work)
    window = (float(arrivals[10]), float(arrivals[-1]))
    ref = reference_trajectory(
        list(arrivals), list(work), list(first), tau0, tau1, limit, window=window
    )
    args = (jnp.asarray(arrivals), jnp.asarray(work, jnp.int64), jnp.asarray(first, jnp.int64))
    # 128 slots: room for every request (the reference has no slot limit)
    _assert_same_trajectory(TRAJECTORY(*args, tau0, tau1, 128, limit, window), ref)
    # one replica under state-dependent routing is the same server
    _assert_same_trajectory(ROUTED(*args, tau0, tau1, 128, limit, 1, "shortest_queue", window), ref)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    limit=st.sampled_from([None, 1, 3, 8]),
    replicas=st.sampled_from([2, 3, 5]),
    routing=st.sampled_from(["shortest_queue", "least_loaded"]),
    rate=st.floats(1.0, 150.0),
    tau0=st.floats(0.0, 0.05),
    tau1=st.floats(1e-5, 0.01),
)
def test_routed_simulator_equals_a_step_by_step_reference(
    seed, limit, replicas, routing, rate, tau0, tau1
):
    rng = np.random.default_rng(seed)
    q = 150
    arrivals = np.cumsum(rng.exponential(1 / rate, q))
    work = rng.integers(1, 40, q)
    first = np.minimum(rng.integers(1, 6, q), work)
    window = (float(arrivals[10]), float(arrivals[-1]))
    ref = reference_trajectory(
        list(arrivals), list(work), list(first), tau0, tau1, limit, replicas, routing, window
    )
    args = (jnp.asarray(arrivals), jnp.asarray(work, jnp.int64), jnp.asarray(first, jnp.int64))
    _assert_same_trajectory(ROUTED(*args, tau0, tau1, 160, limit, replicas, routing, window), ref)


def test_simulator_refuses_and_warns(table1):
    m = jt.ContinuousBatching(step_time=TAU)
    with pytest.warns(jt.UnstableQueueWarning):
        jt.simulate(table1.replace(arrival_rate=50.0), POLICY[None], 200, 2, model=m, slots=4096)
    with pytest.raises(jt.InputError, match="slots"):
        jt.simulate(table1.replace(arrival_rate=2.0), POLICY[None], 500, 2, model=m, slots=2)
    with pytest.raises(jt.InputError, match="tokens"):
        jt.simulate(table1, jnp.asarray([[1.0, -1, 0, 0, 0, 0]]), 100, 2, model=m)


# ------------------------------------------------ regressions of the second reliability trial


@pytest.mark.parametrize(
    "step_time, arrival_rate",
    [((0.0, 1e-18), 0.1), ((0.02, 0.0005), 1e-16)],  # S2: steps float64 time cannot resolve
)
def test_times_float64_cannot_resolve_are_refused(table1, step_time, arrival_rate):
    m = jt.ContinuousBatching(step_time=step_time)
    w = table1.replace(arrival_rate=arrival_rate)
    with pytest.raises(jt.InputError, match="cannot be resolved"):
        jt.simulate(w, POLICY, 500, 3, model=m)


def test_budgets_beyond_the_cap_are_refused(table1):
    """S3: 1e30 tokens a request overflowed the step counts into negative times."""
    with pytest.raises(jt.InputError, match="max_tokens"):
        jt.simulate(table1, jnp.full(6, 1e30), 300, 2, model=jt.ContinuousBatching(step_time=TAU))


def test_cli_reports_whole_system_throughput_a_status_and_one_line_warnings(capsys):
    """S4: the throughput rows are the whole system's (labelled so); U5: an unstable policy
    gives one warning line and a status per policy in the JSON."""
    argv = ["simulate", "--server", "batching", "--step-time", "0.02,0.0005"]
    argv += ["--num-queries", "400", "--num-replications", "2"]
    rc = main([*argv, "--arrival-rate", "2", "--replicas", "4", "--format", "json"])
    out = strict_loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == ["steady"]
    assert out["statistics"]["throughput"]["mean"][0] == pytest.approx(2.0, rel=0.25)
    assert main([*argv, "--arrival-rate", "2", "--replicas", "4"]) == 0
    assert "requests/s, all replicas" in capsys.readouterr().out
    rc = main([*argv, "--tokens", "uniform:30000", "--format", "json"])
    captured = capsys.readouterr()
    assert rc == 0 and strict_loads(captured.out)["status"] == ["unstable"]
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "UnstableQueueWarning" in lines[0], captured.err
