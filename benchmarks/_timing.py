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
