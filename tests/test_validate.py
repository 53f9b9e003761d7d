"""One validity contract: what `Workload.validate()` refuses, every solver reports per member."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    table1_dict,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens import Status, WorkloadError

SOLVERS = ("default", "fixed-point", "pga-safeguarded")
# one violation per rule of the contract: (field, task or None, value)
VIOLATIONS = [
    ("share", 0, -0.1),
    ("A", 1, -0.2),
    ("D", 2, -0.01),
    ("A", 1, 0.9),  # A + D > 1 for GSM8K (D = 0.277)
    ("b", 3, 0.0),
    ("c", 4, -1e-3),
    ("t0", 5, -0.5),
    ("share", 0, 0.5),  # shares no longer sum to 1
    ("arrival_rate", None, 0.0),
    ("alpha", None, -1.0),
    ("max_tokens", None, -1.0),
    ("arrival_rate", None, 50.0),  # unstable at zero tokens
    ("c", 0, np.nan),
    ("alpha", None, np.inf),
]


def _violate(w, field, task, value):
    x = np.asarray(getattr(w, field), dtype=np.float64).copy()
    if task is None:
        x = np.asarray(value)
    else:
        x[task] = value
    return w.replace(**{field: x})


@pytest.mark.parametrize("field,task,value", VIOLATIONS)
def test_every_rule_is_refused_eagerly_and_per_member(table1, field, task, value):
    bad = _violate(table1, field, task, value)
    with pytest.raises(jt.WorkloadError, match=field):
        bad.validate()
    batch = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), table1, bad)
    for solver in SOLVERS:
        sol = jt.solve(batch, solver)
        status = np.asarray(sol.status)
        assert status[0] == jt.Status.CONVERGED, solver
        assert status[1] != jt.Status.CONVERGED, (solver, field, value)
        assert np.all(np.isnan(np.asarray(sol.tokens)[1]))
        # the valid member is untouched by its invalid neighbour
        np.testing.assert_array_equal(
            np.asarray(sol.tokens)[0], np.asarray(jt.solve(table1, solver).tokens)
        )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    field=st.sampled_from(
        ["A", "b", "D", "t0", "c", "share", "arrival_rate", "alpha", "max_tokens"]
    ),
    task=st.integers(0, 5),
    value=st.one_of(
        st.floats(-2, 2),
        st.sampled_from([0.0, 1.0, -1e-300, 1e300, np.nan, np.inf, -np.inf]),
    ),
)
def test_eager_and_traced_contracts_agree(table1, field, task, value):
    w = _violate(
        table1, field, None if field in ("arrival_rate", "alpha", "max_tokens") else task, value
    )
    try:
        w.validate()
        valid = True
    except jt.WorkloadError:
        valid = False
    status = int(jt.solve(w).status)
    input_codes = (jt.Status.INVALID_INPUT, jt.Status.NONFINITE_INPUT, jt.Status.UNSTABLE_INPUT)
    # the traced contract rejects exactly what the eager one refuses (whether every valid extreme
    # converges is the solver's business: b = 1e300 still stops at the iteration limit)
    assert (status in input_codes) == (not valid), (field, task, value, jt.Status(status).message)


def test_shapes_are_refused_at_construction(table1):
    with pytest.raises(jt.InputError, match="'c'"):
        table1.replace(c=table1.c[:3])
    with pytest.raises(jt.InputError, match="'t0'.*scalar"):
        table1.replace(t0=0.1)
    with pytest.raises(jt.InputError, match="'alpha'.*complex"):
        table1.replace(alpha=1 + 2j)
    with pytest.raises(jt.InputError, match="'names'"):
        table1.replace(names=("a", "b"))


def test_values_below_the_smallest_normal_are_judged_as_zero(table1):
    """The solvers compute with subnormals flushed to zero; the eager check agrees."""
    w = table1.replace(A=table1.A.at[0].set(-2.2250738585072014e-309))
    w.validate()  # -0 is a valid A
    assert bool(jt.solve(w).converged)


def test_batch_members_outside_the_model_are_not_converged(table1):
    bad_ad = table1.replace(A=table1.A.at[1].set(0.9))  # A + D > 1
    bad_share = table1.replace(share=table1.share * 2)
    batch = jax.tree.map(lambda *x: jnp.stack(x), table1, bad_ad, bad_share)
    status = np.asarray(jt.solve(batch).status)
    assert list(status) == [jt.Status.CONVERGED, jt.Status.INVALID_INPUT, jt.Status.INVALID_INPUT]


def test_share_of_length_one_is_refused(table1):
    with pytest.raises(jt.InputError, match="share"):
        table1.replace(share=[1.0])


def test_api_shapes_and_types(table1):
    with pytest.raises(jt.InputError, match="'c'"):
        table1.replace(c=table1.c[:2])
    with pytest.raises(jt.InputError, match="no tasks"):
        jt.make_workload(A=[], b=[], D=[], t0=[], c=[], arrival_rate=0.1, alpha=1.0, max_tokens=10)
    with pytest.raises(jt.InputError, match="complex"):
        table1.replace(A=table1.A + 0j)


def test_bad_members_get_status_not_nan_for_others():
    wb = jt.random_workloads(jax.random.key(11), 5, 3, dtype=jnp.float64)
    wb = wb.replace(
        b=wb.b.at[1, 0].set(jnp.nan),
        arrival_rate=wb.arrival_rate.at[2].set(1e6),
        c=wb.c.at[3, 2].set(-1.0),
    )
    sol = jt.solve(wb)
    status = [Status(int(s)) for s in sol.status]
    assert status == [
        Status.CONVERGED,
        Status.NONFINITE_INPUT,
        Status.UNSTABLE_INPUT,
        Status.INVALID_INPUT,
        Status.CONVERGED,
    ]
    assert np.all(np.isnan(np.asarray(sol.tokens[1:4])))
    assert np.all(np.isfinite(np.asarray(sol.tokens)[[0, 4]]))


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
