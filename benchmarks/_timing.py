"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import time

import jax


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of `repeats` calls of `fn()`, waiting for JAX's asynchronous results."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def best_wall_cpu(fn, *args, repeats: int = 7) -> tuple[float, float]:
    """Fastest wall time and fastest process CPU time of `repeats` warm calls of `fn(*args)`
    (one call first, to compile). CPU time is less noisy on a shared machine."""
    jax.block_until_ready(fn(*args))
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)
