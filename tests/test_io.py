"""Workload files: TOML and JSON loaders, writers and their errors (file, line, field)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (
    assert_refused,
    table1_dict,
)

import jaxopt_tokens as jt
from jaxopt_tokens import WorkloadError


def test_load_non_utf8_workload_api_and_cli(files):
    with pytest.raises(jt.InputError, match="UTF-8"):
        jt.load_workload(files / "bad.bin")
    assert_refused(["solve", "--workload", files / "bad.bin"], "UTF-8")


def test_load_integer_too_large_for_a_float(tmp_path):
    text = jt.dump_workload(jt.default_workload()).replace(
        "max_tokens = 32768.0", "max_tokens = 1" + "0" * 400
    )
    (tmp_path / "w.toml").write_text(text)
    assert_refused(["solve", "--workload", tmp_path / "w.toml"], "max_tokens", "too large")


def test_empty_workload_path_is_refused():
    assert_refused(["solve", "--workload", ""], "empty")


def test_toml_roundtrip_and_line_numbers(tmp_path):
    w = jt.default_workload()
    path = tmp_path / "w.toml"
    jt.dump_workload(w, path)
    w2 = jt.load_workload(path)
    for f in ("A", "b", "D", "t0", "c", "share", "arrival_rate", "alpha", "max_tokens"):
        np.testing.assert_array_equal(getattr(w, f), getattr(w2, f))
    text = path.read_text().replace("b = 0.166", "b = -0.166")
    path.write_text(text)
    lines = text.splitlines()
    header_line = max(i + 1 for i, l in enumerate(lines) if l == "[[tasks]]")
    with pytest.raises(WorkloadError) as e:
        jt.load_workload(path)
    assert (
        f"line {header_line}" in str(e.value)
        and "ARC-Challenge" in str(e.value)
        and str(path) in str(e.value)
    )


def test_json_loader_and_errors(tmp_path):
    d = table1_dict()
    p = tmp_path / "w.json"
    p.write_text(json.dumps(d))
    assert jt.load_workload(p).num_tasks == 6
    del d["tasks"][2]["c"]
    p.write_text(json.dumps(d))
    with pytest.raises(WorkloadError, match="task 'GPQA' .*missing field 'c'"):
        jt.load_workload(p)
    p.write_text("{not json")
    with pytest.raises(WorkloadError, match="not valid JSON"):
        jt.load_workload(p)
    with pytest.raises(WorkloadError, match="cannot read"):
        jt.load_workload(tmp_path / "missing.toml")


def test_equal_shares_when_omitted():
    d = table1_dict()
    for t in d["tasks"]:
        del t["share"]
    w = jt.workload_from_dict(d)
    np.testing.assert_allclose(w.share, np.full(6, 1 / 6))
