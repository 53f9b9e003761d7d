"""Queue simulation speed: 1,000 policies x 10,000 queries in one call, and the per-query cost
side by side with ciw and simpy on the same stream (same arrivals, same service times).

    python benchmarks/simulate.py [--policies 1000] [--queries 10000] [--peer-queries 20000]

Reports wall time after compilation (best of 3) and the first call; the peers simulate one
policy's stream, so the comparison is per simulated query.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _timing import best_of  # benchmarks/ is on sys.path when run as a script
from rich.console import Console
from rich.table import Table

import jaxopt_tokens as jt
from jaxopt_tokens.theory import lindley_waits, sample_query_stream


def simpy_seconds(arrivals, service):
    import simpy

    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    waits = np.empty(len(arrivals))

    def query(i):
        with server.request() as req:
            yield req
            waits[i] = env.now - arrivals[i]
            yield env.timeout(service[i])

    def source():
        for i in range(len(arrivals)):
            yield env.timeout(arrivals[i] - env.now)
            env.process(query(i))

    t = time.perf_counter()
    env.process(source())
    env.run()
    return time.perf_counter() - t, waits


def ciw_seconds(gaps, service):
    import ciw

    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Sequential(list(gaps) + [1e12])],
        service_distributions=[ciw.dists.Sequential(list(service) + [1.0])],
        number_of_servers=[1],
    )
    ciw.seed(0)
    t = time.perf_counter()
    sim = ciw.Simulation(network)
    sim.simulate_until_max_customers(len(gaps), method="Finish")
    elapsed = time.perf_counter() - t
    records = sorted(sim.get_all_records(), key=lambda r: r.arrival_date)
    return elapsed, np.array([r.waiting_time for r in records])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--peer-queries", type=int, default=20_000)
    args = ap.parse_args()
    console = Console()
    w = jt.default_workload()  # float32, the caller's default dtype
    rng = np.random.default_rng(0)
    policies = rng.uniform(0, 600, (args.policies, w.num_tasks))

    t = time.perf_counter()
    jax.block_until_ready(jt.simulate(w, policies, args.queries, 1).wait)
    first = time.perf_counter() - t
    run = best_of(lambda: jt.simulate(w, policies, args.queries, 1).wait)
    total_queries = args.policies * args.queries

    # peers: one policy's stream, float64 to compare waits exactly
    with jax.enable_x64(True):
        w64 = w.astype(np.float64)
        stream = sample_query_stream(
            jax.random.PRNGKey(1), w64.replace(arrival_rate=0.4), args.peer_queries
        )
        tokens = np.asarray(jt.solve(w64).tokens)
        service = np.asarray((w64.t0 + w64.c * tokens)[stream.task])
        gaps = np.asarray(stream.gaps)
        ours_fn = jax.jit(lindley_waits)
        ours_fn(gaps, service).block_until_ready()
        ours_one = best_of(lambda: ours_fn(gaps, service))
        ours_waits = np.asarray(ours_fn(gaps, service))
    simpy_t, simpy_w = simpy_seconds(np.cumsum(gaps), service)
    ciw_t, ciw_w = ciw_seconds(gaps, service)

    table = Table(
        title=f"jt.simulate: {args.policies:,} policies x {args.queries:,} queries, 1 replication, "
        f"float32, {jax.devices()[0].platform}"
    )
    for col in ("first call (s)", "run (s)", "queries/s", "ns/query", "target < 2 s"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{first:.2f}",
        f"{run:.3f}",
        f"{total_queries / run:.3g}",
        f"{1e9 * run / total_queries:.1f}",
        "met" if run < 2 else "missed",
    )
    console.print(table)

    peers = Table(
        title=f"One FIFO stream of {args.peer_queries:,} queries "
        "(same arrivals and services), float64"
    )
    for col in ("simulator", "seconds", "us/query", "ours faster by", "max |wait diff| vs ours"):
        peers.add_column(col, justify="right")
    peers.add_row(
        "jaxopt_tokens lindley_waits (jit)",
        f"{ours_one:.5f}",
        f"{1e6 * ours_one / args.peer_queries:.3f}",
        "1x",
        "0",
    )
    for name, secs, waits in (("simpy 4", simpy_t, simpy_w), ("ciw 3", ciw_t, ciw_w)):
        peers.add_row(
            name,
            f"{secs:.3f}",
            f"{1e6 * secs / args.peer_queries:.2f}",
            f"{secs / ours_one:,.0f}x",
            f"{np.max(np.abs(waits - ours_waits)):.1e}",
        )
    per_query_batched = run / total_queries
    peers.add_row(
        "jt.simulate batched (per query, all statistics)",
        "-",
        f"{1e6 * per_query_batched:.4f}",
        f"simpy/{min(simpy_t, ciw_t) / args.peer_queries / per_query_batched:,.0f}x",
        "-",
    )
    console.print(peers)


if __name__ == "__main__":
    main()
