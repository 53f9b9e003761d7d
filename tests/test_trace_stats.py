"""Describing a trace: rates by window, inter-arrival variability and dispersion, against
numpy and Poisson, and the `trace` command."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    AZURE_CODE,
    MOONCAKE,
    assert_refused,
    run_cli,
    strict_loads,
)

import jaxopt_tokens as jt

# ----------------------------------------------------------------------------- describing


def _poisson(rate, n, seed=0):
    gaps = np.random.default_rng(seed).exponential(1 / rate, n)
    return jt.traffic.Trace(np.cumsum(gaps), output_tokens=np.full(n, 100.0))


def test_arrival_stats_against_numpy_and_poisson():
    trace = _poisson(5.0, 30_000)
    s = jt.traffic.arrival_stats(trace, window=10.0)
    counts = np.histogram(
        trace.arrival_times, bins=np.arange(0, trace.duration // 10 * 10 + 1, 10)
    )[0]
    assert s.dispersion[10.0] == pytest.approx(counts.var(ddof=1) / counts.mean(), rel=1e-12)
    assert abs(s.dispersion[10.0] - 1) < 0.2 and abs(s.interarrival_cv - 1) < 0.03
    assert s.mean_rate == pytest.approx(5.0, rel=0.02) and not s.warnings
    # a rate that jumps 5x half-way: said
    slow, fast = _poisson(1.0, 3000, 1), _poisson(5.0, 15000, 2)
    times = np.concatenate([slow.arrival_times, slow.duration + 1 + fast.arrival_times])
    moving = jt.traffic.Trace(times)
    assert any("rate moves" in w for w in jt.traffic.arrival_stats(moving).warnings)
    gaps = np.diff(trace.arrival_times)  # the SCV against numpy, and ~1 for Poisson
    assert jt.traffic.arrival_scv(trace) == pytest.approx(gaps.var() / gaps.mean() ** 2, rel=1e-9)
    assert abs(jt.traffic.arrival_scv(trace) - 1) < 0.05


def test_the_real_excerpts_are_bursty_as_measured():
    code = jt.traffic.arrival_stats(jt.traffic.read_trace(AZURE_CODE), window=10.0)
    assert code.interarrival_cv > 5 and code.dispersion[10.0] > 20 and code.warnings
    moon = jt.traffic.arrival_stats(jt.traffic.read_trace(MOONCAKE))
    assert moon.simultaneous_fraction > 0.5 and moon.largest_batch > 5


def test_trace_command_prints_strict_json_and_writes_a_figure(tmp_path):
    fig = tmp_path / "rate.png"
    rc, out, err = run_cli(
        ["trace", AZURE_CODE, "--window", "10", "--plot", fig, "--format", "json"]
    )
    assert rc == 0, err
    report = strict_loads(out)
    assert report["num_requests"] == 300 and report["format"] == "azure"
    assert fig.stat().st_size > 0
    assert_refused(["trace", AZURE_CODE, "--plot", fig], "exists")  # never replaced
