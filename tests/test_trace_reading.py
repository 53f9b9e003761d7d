"""Reading recorded traffic: the public traces in their formats, generic files and request
logs, and bad files named by file, line and column."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
from conftest import (
    MOONCAKE,
    TRACE_EXCERPT,
    assert_refused,
)

import jaxopt_tokens as jt

# ------------------------------------------------------------------------------ reading


def test_the_public_trace_excerpts_are_read_in_their_formats():
    conv = jt.traffic.read_trace(TRACE_EXCERPT)
    assert (conv.format, len(conv)) == ("azure", 300)
    # an independent parse of the first two rows (7 fractional digits, truncated to 6)
    rows = TRACE_EXCERPT.read_text().splitlines()[1:3]
    t = [dt.datetime.strptime(r.split(",")[0][:26], "%Y-%m-%d %H:%M:%S.%f") for r in rows]
    assert conv.arrival_times[1] == pytest.approx((t[1] - t[0]).total_seconds(), abs=1e-6)
    assert conv.input_tokens[0] == float(rows[0].split(",")[1])
    assert conv.output_tokens[0] == float(rows[0].split(",")[2])
    assert conv.start.startswith("2023-11-16T18:15:46")
    moon = jt.traffic.read_trace(MOONCAKE)
    first = [json.loads(line) for line in MOONCAKE.read_text().splitlines()[:3]]
    assert moon.format == "mooncake" and len(moon) == 300
    assert moon.output_tokens[:3].tolist() == [f["output_length"] for f in first]
    assert np.all(np.diff(moon.arrival_times) >= 0) and moon.arrival_times[0] == 0


@pytest.mark.parametrize(
    "name, text, first_gap",
    [
        ("s.csv", "arrival_time,task\n10,a\n12.5,b\n11,a\n", 1.0),  # unsorted: sorted
        ("ms.csv", "timestamp_ms,output_tokens\n1000,5\n1250,7\n", 0.25),
        ("iso.csv", "time\n2024-05-10T00:00:00Z\n2024-05-10T00:00:01.5+00:00\n", 1.5),
        ("g.jsonl", '{"timestamp": 3.0, "output_tokens": 4}\n{"timestamp": 5.0}\n', None),
        (
            "b.csv",
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,230,1317,API log\n",
            40.0,
        ),
    ],
)
def test_generic_and_burstgpt_files(tmp_path, name, text, first_gap):
    path = tmp_path / name
    path.write_text(text)
    if first_gap is None:  # a JSON lines file missing a token field: the arrival is kept
        trace = jt.traffic.read_trace(path)
        assert len(trace) == 2 and trace.output_tokens is None
        assert "1 of 2 requests lack it" in trace.dropped[0][0]
        return
    trace = jt.traffic.read_trace(path)
    assert trace.arrival_times[1] == pytest.approx(first_gap)
    if name == "b.csv":
        assert trace.format == "burstgpt" and trace.output_tokens.tolist() == [18, 230]


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,3,4\nyesterday,3,4\n",
            r"line 3, column 'timestamp': 'yesterday' is not a time",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3,4\n"
            "2023-11-16 18:15:47,x,4\n",
            r"line 3, column 'contexttokens': 'x' is not a number",
        ),
        ("arrival_time,output_tokens\n0,1\n1,-3\n", r"line 3, column 'output_tokens'"),
        ("arrival_time\n0\n", "at least two requests"),
        ("speed\n1\n2\n", "no time column"),
        ('{"timestamp": 0, "input_length": 1, "output_length": 2}\n[1]\n', "line 2"),
    ],
)
def test_bad_trace_files_name_file_line_and_column(tmp_path, text, needle):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(jt.InputError, match=needle):
        jt.traffic.read_trace(path)
    assert_refused(["trace", path], needle.split(",")[0].replace("\\", ""))


def test_rows_without_a_time_are_dropped_and_counted_the_rest_kept(tmp_path):
    """A row without a time has no arrival; a row without its token count keeps its arrival
    (the incomplete column is left out, and said)."""
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,output_tokens\n0,1\n,2\n1,\n2,3\n")
    trace = jt.traffic.read_trace(path)
    assert len(trace) == 3 and trace.output_tokens is None
    assert dict(trace.dropped) == {
        "empty 'arrival_time'": 1,
        "column 'output_tokens': 1 of 3 requests lack it (the column is left out; every "
        "arrival is kept)": 1,
    }


# ------------------------------------------------------------------------------ loaders


def test_request_logs_take_iso_times_bands_and_warn_on_moving_rates(tmp_path):
    log = tmp_path / "log.csv"
    times = [0, 1, 2, 3, 200, 200.1, 200.2, 200.3, 200.4, 200.5, 400, 401]
    stamps = [
        (dt.datetime(2024, 5, 10, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=s)).isoformat()
        for s in times
    ]
    log.write_text(
        "timestamp,output_tokens\n"
        + "".join(f"{s},{10 if i % 3 else 900}\n" for i, s in enumerate(stamps))
    )
    with pytest.warns(jt.traffic.TrafficWarning, match="misrepresents"):
        shares, rate = jt.deploy.read_request_log(
            log, ("short", "long"), bands={"short": 512, "long": math.inf}, window=50.0
        )
    np.testing.assert_allclose(shares, [8 / 12, 4 / 12])
    assert rate == pytest.approx(11 / 401)
    single, single_rate = jt.deploy.read_request_log(log, ("only",), window=1000.0)
    np.testing.assert_allclose(single, [1.0])
    assert single_rate == pytest.approx(11 / 401)  # the same requests, one task's
    with pytest.raises(jt.InputError, match="missing column 'task'"):
        jt.deploy.read_request_log(log, ("a", "b"))


def test_a_batching_only_workload_is_said_to_be_one():
    kw = dict(
        A=[0.5],
        b=[1e-3],
        D=[0.3],
        t0=[20.0],
        c=[0.01],
        arrival_rate=0.1,
        alpha=30.0,
        max_tokens=4096,
    )
    with pytest.raises(jt.WorkloadError, match="server='batching'"):
        jt.make_workload(**kw)
    w = jt.make_workload(**kw, server="batching")
    assert int(jt.solve(w, model=jt.ContinuousBatching()).status) == jt.Status.CONVERGED
    with pytest.raises(jt.WorkloadError, match="server: one of"):
        jt.make_workload(**kw, server="gpu")
