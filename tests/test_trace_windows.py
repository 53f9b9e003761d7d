"""Trace statistics by window and the trace readers' edge cases (the third trial): rates over
the time a window covers, window counts bounded in memory, spans that overflow, batched
arrivals, line splitting and long CSV fields. Each refusal is one line naming the file or the
argument."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_refused, run_cli, strict_loads

import jaxopt_tokens as jt


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_trace_shorter_than_its_window_reports_its_own_rate(tmp_path):
    """T1: 101 requests over 10 s at the default 60-s window: 10/s, not 1.683/s."""
    path = _write(tmp_path, "s.csv", "arrival_time\n" + "\n".join(str(i / 10) for i in range(101)))
    rc, out, err = run_cli(["trace", path, "--format", "json"])
    assert rc == 0, err
    stats = strict_loads(out)
    assert stats["window_rate"]["median"] == pytest.approx(10.1)
    assert any("shorter than one 60-s window" in w for w in stats["warnings"])
    s = jt.traffic.arrival_stats(jt.traffic.Trace(np.array([0.0, 1.0])))
    assert s.window_rate["max"] == pytest.approx(2.0)  # 2 requests over the 1 s it covers
    rates, shares = jt.traffic.Trace(np.arange(0.0, 130.0)).window_rates(60.0)
    assert rates.tolist() == pytest.approx([1.0, 70 / 69])  # the last window absorbs the rest
    assert shares.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "times,window,words",
    [
        ("0\n1\n1000000000\n", None, "windows of 60 s"),  # T2: 3 requests over 1e9 s
        ("0\n1\n1e300\n", None, "windows of 60 s"),  # T3
        ("0\n1\n2\n", "1e-300", "windows of 1e-300 s"),  # T3
        ("0\n1\n2\n", "1e-9", "at most 10,000,000"),  # T2: 74.5 GiB asked before
    ],
)
def test_window_counts_are_refused_past_ten_million_windows(tmp_path, times, window, words):
    path = _write(tmp_path, "span.csv", "arrival_time\n" + times)
    argv = ["trace", path] + (["--window", window] if window else [])
    assert_refused(argv, words)


def test_a_long_sparse_trace_is_described_in_bounded_memory(tmp_path):
    """T2: 3 requests over 1e8 s asked 1.7 GB (1-s dispersion windows); windows beyond the
    cap are left out of the dispersion, the rest is counted."""
    import tracemalloc

    tracemalloc.start()
    s = jt.traffic.arrival_stats(jt.traffic.Trace(np.array([0.0, 1.0, 1e8])))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 1.0 not in s.dispersion and peak < 200e6


def test_a_span_a_double_cannot_hold_is_refused():
    with pytest.raises(jt.InputError, match="span more seconds"):
        jt.traffic.Trace(np.array([-1e308, 0.0, 1e308]))


def test_batched_arrivals_are_warned_about_at_any_window(tmp_path):
    """95% of requests arrive with another, over a trace shorter than 4 windows: said."""
    times = np.repeat(np.arange(0.0, 50.0), 20)
    s = jt.traffic.arrival_stats(jt.traffic.Trace(times))
    assert any("arrive in batches" in w for w in s.warnings)
    poisson = np.cumsum(np.random.default_rng(0).exponential(1.0, 500))
    assert not any(
        "batches" in w for w in jt.traffic.arrival_stats(jt.traffic.Trace(poisson)).warnings
    )


def test_lines_split_at_newlines_only(tmp_path):
    """T6: U+2028, NEL and a form feed inside a field are text, not line breaks."""
    lines = [
        json.dumps(
            {
                "timestamp": i * 1000,
                "input_length": 1,
                "output_length": 1,
                "note": "a\u2028b\u0085c\x0c",
            },
            ensure_ascii=False,
        )
        for i in range(5)
    ]
    tr = jt.traffic.read_trace(_write(tmp_path, "u.jsonl", "\n".join(lines)))
    assert len(tr) == 5
    csv = "arrival_time,task\n" + "\n".join(f"{i},a\u2028b" for i in range(4)) + "\r\n"
    tr = jt.traffic.read_trace(_write(tmp_path, "u.csv", csv))
    assert len(tr) == 4 and tr.labels[0] == "a\u2028b"
    bad = "arrival_time,task\n0,a\n1,b,c\n"
    with pytest.raises(jt.InputError, match="line 3"):
        jt.traffic.read_trace(_write(tmp_path, "b.csv", bad))


def test_csv_fields_longer_than_128_kib_are_read(tmp_path):
    """T5: a 200 KB prompt column is a field like any other."""
    text = 'arrival_time,prompt\n0,"' + "w " * 100_000 + '"\n1,hi\n2,ho\n'
    assert len(jt.traffic.read_trace(_write(tmp_path, "p.csv", text))) == 3
    steps = "concurrency,tpot,note\n1,0.02," + "x" * 200_000 + "\n4,0.022,a\n16,0.028,b\n"
    assert jt.deploy.fit_step_time(_write(tmp_path, "n.csv", steps)).tau1 > 0


def test_an_offset_with_fractional_seconds_is_refused_not_shifted(tmp_path):
    """A4: Python 3.11 drops the fraction of a UTC offset such as +00:00:00.5; the times
    were silently 0.5 s off."""
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.000000+00:00:00.500000,1,1\n"
        "2023-11-16 18:15:47.000000+00:00,1,1\n2023-11-16 18:15:48.000000+00:00,1,1\n"
    )
    with pytest.raises(jt.InputError, match="line 2.*fractional seconds"):
        jt.traffic.read_trace(_write(tmp_path, "o.csv", text))
    ok = text.replace("+00:00:00.500000", "+01:00")
    assert jt.traffic.read_trace(_write(tmp_path, "k.csv", ok)).arrival_times.tolist() == [
        0.0,
        3601.0,
        3602.0,
    ]


def test_a_replay_rate_that_overloads_names_the_flag(tmp_path):
    """A6: the refusal named the workload field 'arrival_rate', which the user did not set."""
    path = _write(tmp_path, "t.csv", "arrival_time\n0\n1\n2\n3\n")
    assert_refused(
        ["simulate", "--arrivals", path, "--replay-rate", "1e300", "--num-replications", "2"],
        "--replay-rate 1e+300",
        "overloads the server",
    )
    with pytest.raises(jt.InputError, match="^rate: "):
        jt.simulate(
            jt.default_workload(),
            np.zeros(6),
            arrivals=jt.traffic.Replay(jt.traffic.read_trace(path), rate=1e3),
        )


def test_a_request_without_its_token_count_keeps_its_arrival(tmp_path):
    """T7: a row with an empty token field left the arrival sequence (the rate ~10% low);
    now the arrival stays, the incomplete column is left out and every output says so."""
    rows = ["arrival_time,output_tokens"] + [
        f"{i},{'' if i % 10 == 3 else 100}" for i in range(300)
    ]
    path = _write(tmp_path, "log.csv", "\n".join(rows) + "\n")
    tr = jt.traffic.read_trace(path)
    assert len(tr) == 300 and tr.output_tokens is None
    assert "30 of 300 requests lack it" in tr.dropped[0][0]
    rc, out, err = run_cli(["trace", path])
    assert rc == 0 and "30 of 300" in out
    rc, out, err = run_cli(["trace", path, "--format", "json"])
    assert strict_loads(out)["num_requests"] == 300
    with pytest.raises(jt.InputError, match="30 of 300 requests lack it"):
        jt.deploy.read_request_log(path, ("short", "long"), bands={"short": 50, "long": np.inf})
    labels = ["arrival_time,task"] + [f"{i},{'' if i == 7 else 'a'}" for i in range(20)]
    log = _write(tmp_path, "tasks.csv", "\n".join(labels) + "\n")
    with pytest.raises(jt.InputError, match="a task on every request"):
        jt.deploy.read_request_log(log, ("a",))


def test_reading_a_trace_costs_a_bounded_multiple_of_its_file(tmp_path):
    """T4: 40-64x the file (a 250-MiB trace needed ~10 GB); every text file's read also
    allocated the 256-MiB cap up front. Now about 15x for a CSV, checked before reading."""
    import tracemalloc

    path = tmp_path / "t.csv"
    path.write_text("arrival_time\n" + "\n".join(str(i) for i in range(200_000)) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    assert len(jt.traffic.read_trace(path)) == 200_000
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * size, peak / size
