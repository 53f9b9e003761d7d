"""Wrong types through the public API (the third trial, A1-A3): each gets an `InputError`
naming the argument, never a TypeError from numpy, pathlib, matplotlib or JAX; a model's
traced parameter outside its domain makes that member `INVALID_INPUT` with NaN outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRACE_EXCERPT

import jaxopt_tokens as jt


@pytest.fixture(scope="module")
def trace():
    return jt.traffic.read_trace(TRACE_EXCERPT)


CASES = {
    "read_trace(5)": (lambda tr, w: jt.traffic.read_trace(5), "a file path"),
    "Trace(str)": (lambda tr, w: jt.traffic.Trace(["a", "b"]), "arrival_times"),
    "Trace(output_tokens=str)": (
        lambda tr, w: jt.traffic.Trace([0, 1], output_tokens=["a", "b"]),
        "output_tokens",
    ),
    "between": (lambda tr, w: tr.between("a", 2), "start"),
    "labelled": (lambda tr, w: tr.labelled({"a": "x"}), "bands"),
    "arrival_stats(windows=None)": (
        lambda tr, w: jt.traffic.arrival_stats(tr, windows=None),
        "windows",
    ),
    "TimeVarying.from_trace(list)": (
        lambda tr, w: jt.TimeVarying.from_trace([0, 1, 2], 60.0),
        "trace",
    ),
    "Kingman(1j)": (lambda tr, w: jt.solve(w, model=jt.Kingman(arrival_scv=1j)), "arrival_scv"),
    "Kingman(True)": (lambda tr, w: jt.Kingman(arrival_scv=True), "arrival_scv"),
    "Kingman('2')": (lambda tr, w: jt.Kingman(arrival_scv="2"), "arrival_scv"),
    "TimeVarying('ab')": (
        lambda tr, w: jt.TimeVarying(rate_factors="ab", weights=[1, 1]),
        "rate_factors",
    ),
    "TimeVarying(bools)": (
        lambda tr, w: jt.TimeVarying(rate_factors=[True, False], weights=[1, 1]),
        "rate_factors",
    ),
    "WindowPlan.predicted(shape)": (
        lambda tr, w: jt.traffic.plan_windows(w, tr, 600.0).predicted(np.zeros(5)),
        "tokens",
    ),
    "plot_arrivals(missing dir)": (
        lambda tr, w: jt.traffic.plot_arrivals(tr, "nodir/p.png"),
        "path",
    ),
    "plot_arrivals(dir)": (lambda tr, w: jt.traffic.plot_arrivals(tr, "."), "directory"),  # A2
    "plot_arrivals('')": (lambda tr, w: jt.traffic.plot_arrivals(tr, ""), "path"),  # A2
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_wrong_type_is_an_input_error_naming_the_argument(trace, table1, name):
    call, word = CASES[name]
    with pytest.raises(jt.InputError, match=word):
        call(trace, table1)


def test_a_traced_model_parameter_outside_its_domain_is_invalid_per_member():
    """A3: under jit a traced arrival_scv of -1 solved to finite budgets, MAX_ITERATIONS."""
    with jax.enable_x64(True):
        w = jt.default_workload("float64")
        solve = jax.jit(jax.vmap(lambda a: jt.solve(w, model=jt.Kingman(arrival_scv=a))))
        sol = solve(jnp.asarray([2.0, -1.0, np.nan, np.inf]))
        assert np.asarray(sol.status).tolist() == [jt.Status.CONVERGED] + 3 * [
            jt.Status.INVALID_INPUT
        ]
        assert np.all(np.isfinite(np.asarray(sol.tokens[0])))
        assert np.all(np.isnan(np.asarray(sol.tokens[1:])))
