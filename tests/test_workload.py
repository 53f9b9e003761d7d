"""Workload validation, loaders and pytree behaviour."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_tokens as jt
from jaxopt_tokens import WorkloadError


def table1_dict():
    return jt.workload_to_dict(jt.default_workload())


def test_default_workload_is_table1():
    w = jt.default_workload()
    assert w.task_names == ("AIME", "GSM8K", "GPQA", "CRUXEval", "BBH", "ARC-Challenge")
    np.testing.assert_allclose(w.b, [1.59e-4, 3.20e-3, 4.41e-4, 5.63e-4, 1.75e-3, 1.66e-1])
    assert float(w.arrival_rate) == 0.1 and float(w.alpha) == 30 and float(w.max_tokens) == 32768


def test_default_dtype_follows_caller():
    assert jt.default_workload(jnp.float32).dtype == jnp.float32
    assert jt.default_workload(jnp.float64).dtype == jnp.float64


@pytest.mark.parametrize(
    "field, task, value, words",
    [
        ("share", 1, -0.1, "non-negative"),
        ("A", 2, 0.9, "A + D"),
        ("b", 0, 0.0, "b must be > 0"),
        ("c", 3, -1e-3, "c (seconds per token)"),
        ("t0", 4, -0.5, "t0"),
        ("b", 5, float("nan"), "finite"),
        ("c", 1, float("inf"), "finite"),
    ],
)
def test_validate_names_field_and_task(field, task, value, words):
    d = table1_dict()
    d["tasks"][task][field] = value
    if field == "share":
        d["tasks"][(task + 1) % 6]["share"] += 0.1  # keep the sum at 1
    with pytest.raises(WorkloadError) as e:
        jt.workload_from_dict(d)
    msg = str(e.value)
    assert f"'{field}'" in msg and d["tasks"][task]["name"] in msg and words in msg


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("arrival_rate", 0.0, "must be > 0"),
        ("alpha", -1.0, "must be > 0"),
        ("max_tokens", -1.0, ">= 0"),
        ("arrival_rate", 9.0, "unstable even with zero reasoning tokens"),
    ],
)
def test_validate_scalars(field, value, words):
    d = table1_dict()
    d[field] = value
    with pytest.raises(WorkloadError, match=words) as e:
        jt.workload_from_dict(d)
    assert f"'{field}'" in str(e.value)


def test_shares_must_sum_to_one():
    d = table1_dict()
    d["tasks"][0]["share"] = 0.5
    with pytest.raises(WorkloadError, match="sum to"):
        jt.workload_from_dict(d)


def test_mismatched_lengths():
    # shapes are static: refused at construction, before any value is looked at
    with pytest.raises(WorkloadError, match="'b' has 1 values but 'A' has 2"):
        jt.Workload(
            A=[0.5, 0.5],
            b=[1e-3],
            D=[0, 0],
            t0=[0.1, 0.1],
            c=[0.01, 0.01],
            share=[0.5, 0.5],
            arrival_rate=0.1,
            alpha=1.0,
            max_tokens=100,
        )


def test_batch_validation_names_member():
    w = jt.random_workloads(jax.random.key(0), 5, 3, dtype=jnp.float64)
    w.validate()
    bad = w.replace(b=w.b.at[3, 1].set(-1.0))
    with pytest.raises(WorkloadError, match=r"batch member \(3,\)"):
        bad.validate()


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


def test_workload_is_a_vmappable_pytree():
    w = jt.random_workloads(jax.random.key(1), 7, 4, dtype=jnp.float64)
    assert w.batch_shape == (7,)
    out = jax.vmap(lambda m: m.alpha * jnp.sum(m.share))(w)
    np.testing.assert_allclose(out, w.alpha, rtol=1e-12)
    leaves = jax.tree_util.tree_leaves(w)
    assert len(leaves) == 9  # names are static
