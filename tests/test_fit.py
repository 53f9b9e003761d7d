"""Fitting accuracy and latency curves.

Recovery of Table I, scipy cross-checks, warnings, bad files.
"""

from __future__ import annotations

import json
import warnings
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    assert_refused,
    run_cli,
    strict_loads,
    table1_measurements,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens._deploy.fit import _loglik
from jaxopt_tokens.cli import main

SHIPPED = str(
    resources.files("jaxopt_tokens").joinpath("data", "synthetic_measurements_table1.csv")
)
FIELDS = ("A", "b", "D", "t0", "c")


def _fit_quietly(m, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jt.deploy.FitWarning)
        return jt.deploy.fit(m, **kw)


@pytest.fixture(scope="module")
def shipped_fit():
    w = jt.default_workload()
    return jt.deploy.fit(jt.deploy.read_measurements(SHIPPED), shares=np.asarray(w.share))


def test_shipped_file_is_labelled_synthetic():
    assert "SYNTHETIC" in open(SHIPPED).readline()


def test_shipped_measurements_recover_table1_within_intervals(table1, shipped_fit):
    for k, t in enumerate(shipped_fit.tasks):
        assert t.name == table1.task_names[k]
        for f in FIELDS:
            truth = float(getattr(table1, f)[k])
            lo, hi = t.interval(f, level=0.99)
            if t.se[f] == 0:  # held at a bound: the truth must sit on the same bound
                assert t.params[f] == pytest.approx(truth, abs=1e-6), (t.name, f)
            else:
                assert lo <= truth <= hi, (t.name, f, t.params[f], t.se[f], truth)
        assert t.p_value > 1e-3 and t.monotone and not t.warnings


def test_fitted_workload_solves_to_table1_budgets_within_propagated_uncertainty(
    table1, shipped_fit
):
    tokens, se = jt.deploy.budget_uncertainty(shipped_fit)
    truth = np.asarray(jt.solve(table1).tokens)
    positive = truth > 0
    assert np.all(tokens[~positive] == 0)
    assert np.all(np.abs(tokens - truth)[positive] <= 3 * se[positive]), (tokens, se, truth)
    assert np.all(se[positive] > 0)


def test_intervals_cover_the_truth_at_their_level(table1):
    """Over independent synthetic data sets, 95% intervals cover the generating values."""
    covered = total = 0
    for seed in range(8):
        m = jt.deploy.parse_measurements(
            jt.deploy.synthetic_measurements(table1, jax.random.PRNGKey(seed))
        )
        r = _fit_quietly(m, shares=np.asarray(table1.share))
        for k, t in enumerate(r.tasks):
            for f in FIELDS:
                if t.se[f] > 0:
                    lo, hi = t.interval(f, 0.95)
                    covered += lo <= float(getattr(table1, f)[k]) <= hi
                    total += 1
    assert 0.88 <= covered / total <= 1.0, covered / total


def test_mle_matches_scipy_constrained_optimum():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(4)
    budgets = np.array([0, 50, 100, 200, 400, 800, 1600, 3200.0])
    for _ in range(5):
        A, D = rng.uniform(0.2, 0.6), rng.uniform(0, 0.3)
        b = 10 ** rng.uniform(-3.5, -1.5)
        n = np.full(budgets.shape, 300.0)
        y = rng.binomial(300, A * -np.expm1(-b * budgets) + D).astype(float)
        text = "task,budget,n_correct,n_total,latency\n" + "".join(
            f"t,{l:g},{int(c)},300,{1 + 0.01 * l}\n" for l, c in zip(budgets, y)
        )
        ours = _fit_quietly(jt.deploy.parse_measurements(text)).tasks[0].params

        def nll(q):
            p = np.clip(q[0] * -np.expm1(-np.exp(q[1]) * budgets) + q[2], 1e-12, 1 - 1e-12)
            return -np.sum(y * np.log(p) + (n - y) * np.log1p(-p))

        best = min(
            (
                optimize.minimize(
                    nll,
                    x0,
                    method="SLSQP",
                    bounds=[(0, 1), (-14, 2), (0, 1)],
                    constraints=[{"type": "ineq", "fun": lambda q: 1 - q[0] - q[2]}],
                    options={"ftol": 1e-12, "maxiter": 500},
                )
                for x0 in (
                    [0.5, np.log(1e-3), 0.1],
                    [0.3, np.log(1e-2), 0.2],
                    [0.8, np.log(1e-4), 0.0],
                )
            ),
            key=lambda r: r.fun,
        )
        mine = nll([ours["A"], np.log(ours["b"]), ours["D"]])
        assert mine <= best.fun + 1e-6, (mine, best.fun)


def test_latency_fit_is_exact_on_noiseless_lines():
    text = "task,budget,accuracy,n_total,latency\n" + "".join(
        f"t,{l},{0.2 + 0.5 * (1 - np.exp(-0.01 * l)):.6f},100,{0.3 + 0.02 * l}\n"
        for l in (0, 10, 50, 200, 800)
    )
    t = _fit_quietly(jt.deploy.parse_measurements(text)).tasks[0]
    assert t.params["t0"] == pytest.approx(0.3, rel=1e-9)
    assert t.params["c"] == pytest.approx(0.02, rel=1e-9)
    assert t.params["b"] == pytest.approx(0.01, rel=1e-3)


def test_warns_on_non_monotone_and_poor_fits():
    rows = [
        (0, 100),
        (100, 500),
        (200, 700),
        (400, 650),
        (800, 300),
        (1600, 200),
    ]  # rises then collapses
    text = "task,budget,n_correct,n_total,latency\n" + "".join(
        f"odd,{l},{c},1000,{1 + l / 100}\n" for l, c in rows
    )
    with pytest.warns(jt.deploy.FitWarning) as record:
        r = jt.deploy.fit(jt.deploy.parse_measurements(text))
    messages = " ".join(str(w.message) for w in record)
    assert "not monotone" in messages and "fits poorly" in messages and "'odd'" in messages
    assert not r.tasks[0].monotone and r.tasks[0].p_value < 1e-3


def test_flat_curve_sits_at_a_bound_with_a_warning():
    text = "task,budget,n_correct,n_total,latency\n" + "".join(
        f"flat,{l},{c},500,{0.1 + 0.01 * l}\n"
        for l, c in [(0, 200), (100, 196), (400, 193), (1600, 190)]
    )
    with pytest.warns(jt.deploy.FitWarning, match="A = 0"):
        r = jt.deploy.fit(jt.deploy.parse_measurements(text))
    t = r.tasks[0]
    assert "A = 0" in t.at_bound and t.params["A"] == 0 and t.se["A"] == 0 and t.se["b"] == np.inf
    assert t.params["D"] == pytest.approx(779 / 2000, abs=1e-4)  # the pooled rate


@pytest.mark.parametrize(
    "text, needle",
    [
        ("task,n_correct,n_total\nx,1,2\n", "line 1: missing column 'budget'"),
        ("task,budget\nx,1\n", "missing accuracy"),
        ("task,budget,n_correct\nx,1,1\n", "'n_total'"),
        (
            "# a comment\ntask,budget,n_correct,n_total\nx,10,1,2\nx,-5,1,2\n",
            "line 4: column 'budget' must be >= 0",
        ),
        (
            "task,budget,accuracy\nx,10,0.5\nx,20,1.5\n",
            "line 3: column 'accuracy' must be in [0, 1]",
        ),
        ("task,budget,n_correct,n_total\nx,10,7,5\n", "line 2: n_correct (7) > n_total (5)"),
        (
            "task,budget,n_correct,n_total\nx,ten,1,5\n",
            "line 2: column 'budget': 'ten' is not a number",
        ),
        ("task,budget,n_correct,n_total\nx,10,1\n", "line 2: expected 4 fields"),
        (
            "task,budget,n_correct,n_total,latency\nx,10,1,5,-2\n",
            "line 2: column 'latency' must be > 0",
        ),
        ("task,budget,n_correct,n_total\n,10,1,5\n", "line 2: column 'task' is empty"),
        ("", "empty"),
    ],
)
def test_bad_measurement_files_name_the_line(text, needle):
    with pytest.raises(jt.InputError) as e:
        jt.deploy.parse_measurements(text, "m.csv")
    assert needle in str(e.value) and "m.csv" in str(e.value)


def test_too_few_budgets_or_no_latency_names_the_task():
    few = "task,budget,n_correct,n_total,latency\nx,0,1,5,1\nx,10,2,5,2\n"
    with pytest.raises(jt.InputError, match="task 'x'.*3 distinct budgets"):
        jt.deploy.fit(jt.deploy.parse_measurements(few))
    nolat = "task,budget,n_correct,n_total\nx,0,1,5\nx,10,2,5\nx,20,3,5\n"
    with pytest.raises(jt.InputError, match="task 'x'.*latency"):
        jt.deploy.fit(jt.deploy.parse_measurements(nolat))


def test_request_log_gives_shares_and_arrival_rate(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("task,arrival_time\na,0\nb,1\na,2\na,4\n")
    shares, rate = jt.deploy.read_request_log(log, ("a", "b"))
    np.testing.assert_allclose(shares, [0.75, 0.25])
    assert rate == pytest.approx(3 / 4)
    counts = tmp_path / "counts.csv"
    counts.write_text("task,count\na,30\nb,10\n")
    np.testing.assert_allclose(jt.deploy.read_request_log(counts, ("a", "b"))[0], [0.75, 0.25])
    bad = tmp_path / "bad.csv"
    bad.write_text("task,count\na,3\nzzz,1\n")
    with pytest.raises(jt.InputError, match="line 3: task 'zzz'"):
        jt.deploy.read_request_log(bad, ("a", "b"))
    missing = tmp_path / "missing.csv"
    missing.write_text("task\na\na\n")
    with pytest.raises(jt.InputError, match=r"no requests for task\(s\) \['b'\]"):
        jt.deploy.read_request_log(missing, ("a", "b"))


def test_cli_fit_writes_a_workload_that_solves(tmp_path, capsys, table1):

    shares = tmp_path / "shares.csv"
    shares.write_text("task,share\n" + "".join(f"{n},1\n" for n in table1.task_names))
    out, fig = tmp_path / "fitted.toml", tmp_path / "fig2.png"
    assert (
        main(
            [
                "fit",
                SHIPPED,
                "--shares",
                str(shares),
                "-o",
                str(out),
                "--plot",
                str(fig),
                "--format",
                "json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert fig.stat().st_size > 10_000 and report["warnings"] == []
    w = jt.load_workload(out)
    assert w.task_names == table1.task_names
    np.testing.assert_allclose(np.asarray(w.share), np.full(6, 1 / 6))
    fitted = np.asarray(jt.solve(w.astype(np.float64)).tokens)
    reported = np.array([t["optimal_tokens"] for t in report["tasks"]])
    np.testing.assert_allclose(fitted, reported, rtol=1e-6, atol=1e-6)


def test_cli_fit_bad_file_is_one_line(tmp_path, capsys):

    bad = tmp_path / "bad.csv"
    bad.write_text("task,budget,n_correct,n_total\nx,10,9,5\n")
    assert main(["fit", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 2" in err and "n_correct" in err and "\n" not in err


def test_loglik_is_finite_at_the_boundary():

    with jax.enable_x64(True):
        l = jnp.asarray([0.0, 10.0])
        assert np.isfinite(
            float(
                _loglik(
                    jnp.asarray([0.5, -3.0, 0.0]),
                    l,
                    jnp.asarray([0.0, 3.0]),
                    jnp.asarray([10.0, 10.0]),
                )
            )
        )


@settings(max_examples=20, deadline=None)
@given(
    A=st.floats(0.1, 0.8),
    frac_D=st.floats(0.0, 1.0),
    log_b=st.floats(-4.0, -1.0),
    t0=st.floats(0.0, 0.5),
    c=st.floats(1e-3, 5e-2),
)
@example(A=0.75, frac_D=0.001, log_b=-1.0, t0=0.0, c=0.03125)  # D stuck at its bound, fixed
def test_noise_free_curves_are_recovered_exactly(A, frac_D, log_b, t0, c):
    """Exact expected rates (fractional counts) make the truth the maximum of the likelihood."""
    D = frac_D * (1 - A)
    b = 10.0**log_b
    budgets = np.unique(np.round(np.geomspace(0.05, 20.0, 10) / b))
    budgets = np.concatenate([[0.0], budgets])
    p = A * -np.expm1(-b * budgets) + D
    text = "task,budget,accuracy,n_total,latency\n" + "".join(
        f"t,{l:.17g},{q:.17g},1000,{t0 + c * l + 1e-3:.17g}\n" for l, q in zip(budgets, p)
    )
    fitted = _fit_quietly(jt.deploy.parse_measurements(text)).tasks[0].params
    assert fitted["A"] == pytest.approx(A, abs=2e-4)
    assert fitted["D"] == pytest.approx(D, abs=2e-4)
    assert fitted["b"] == pytest.approx(b, rel=2e-3)
    assert fitted["t0"] == pytest.approx(t0 + 1e-3, rel=1e-6, abs=1e-9)
    assert fitted["c"] == pytest.approx(c, rel=1e-6)


def test_per_request_rows_give_the_same_estimates_as_aggregated_rows():
    rng = np.random.default_rng(8)
    budgets = [0, 64, 256, 1024, 4096]
    per_request, aggregated = (
        ["task,budget,n_correct,n_total,latency"],
        ["task,budget,n_correct,n_total,latency"],
    )
    for l in budgets:
        p = 0.6 * -np.expm1(-1e-3 * l) + 0.2
        correct = rng.random(300) < p
        latency = (0.2 + 0.01 * l) * rng.lognormal(-0.02, 0.2, 300)
        per_request += [f"x,{l},{int(ok)},1,{t:.12g}" for ok, t in zip(correct, latency)]
        aggregated.append(f"x,{l},{int(correct.sum())},300,{latency.mean():.12g}")
    a = _fit_quietly(jt.deploy.parse_measurements("\n".join(per_request))).tasks[0]
    b = _fit_quietly(jt.deploy.parse_measurements("\n".join(aggregated))).tasks[0]
    for f in FIELDS:
        assert a.params[f] == pytest.approx(b.params[f], rel=1e-6), f
    for f in ("A", "b", "D"):  # the binomial information is the same either way
        assert a.se[f] == pytest.approx(b.se[f], rel=1e-6), f


def _latency_datasets(kind: str, replicates: int, seed: int) -> tuple[str, np.ndarray]:
    """`replicates` data sets of three Table I tasks (each one 'task' of the CSV), latency rows
    at budgets 0-4096 with 750 requests each, noise additive (sd 0.01 s) or proportional
    (cv 0.25); returns the CSV and the true (t0, c) of every pseudo-task."""
    w = jt.default_workload()
    rng = np.random.default_rng(seed)
    budgets = np.array([0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096], float)
    n = 750
    lines, truth = ["task,budget,n_correct,n_total,latency"], []
    for r in range(replicates):
        for k in (0, 3, 4):  # three tasks, t0 from 0.018 s to 0.21 s
            t0, c = float(w.t0[k]), float(w.c[k])
            mu = t0 + c * budgets
            sd = np.full_like(mu, 0.01) if kind == "additive" else 0.25 * mu
            lat = mu + rng.normal(size=mu.size) * sd / np.sqrt(n)
            p = float(w.A[k]) * -np.expm1(-float(w.b[k]) * budgets) + float(w.D[k])
            correct = rng.binomial(n, p)
            lines += [f"r{r}k{k},{l:g},{y},{n},{t:.10g}" for l, y, t in zip(budgets, correct, lat)]
            truth.append((t0, c))
    return "\n".join(lines), np.asarray(truth)


@pytest.mark.parametrize("kind", ["additive", "proportional"])
def test_latency_intervals_cover_at_their_nominal_rate(kind):
    """95% intervals for t0 and c cover the truth 90-99% of the time, whether the request
    noise has a constant standard deviation or one proportional to the mean (the old fit,
    which assumed proportional noise, missed t0 by up to ~90 SE under additive noise)."""
    text, truth = _latency_datasets(kind, replicates=100, seed=11 if kind == "additive" else 12)
    r = _fit_quietly(jt.deploy.parse_measurements(text))
    for j, name in enumerate(("t0", "c")):
        covered = [
            lo <= truth[i, j] <= hi
            for i, t in enumerate(r.tasks)
            for lo, hi in [t.interval(name, 0.95)]
        ]
        rate = float(np.mean(covered))
        assert 0.90 <= rate <= 0.99, (kind, name, rate)
    # the noise shape is recognised: additive data give sd ~ 0.01 and cv ~ 0, and vice versa
    sd = np.median([t.latency_noise["sd"] for t in r.tasks])
    cv = np.median([t.latency_noise["cv"] for t in r.tasks])
    if kind == "additive":
        assert 0.005 < sd < 0.02 and cv < 0.05, (sd, cv)
    else:
        assert sd < 0.005 and 0.15 < cv < 0.35, (sd, cv)


def test_constant_and_falling_latency_warn_about_the_latency_line():
    budgets = [0, 64, 256, 1024, 4096]
    acc = [0.2, 0.3, 0.45, 0.6, 0.7]
    const = "task,budget,accuracy,n_total,latency\n" + "".join(
        f"flat,{l},{a},500,{0.8 + 1e-4 * np.sin(l):.8f}\n" for l, a in zip(budgets, acc)
    )
    with pytest.warns(jt.deploy.FitWarning, match="'flat'.*not clearly positive.*max_tokens"):
        r = jt.deploy.fit(jt.deploy.parse_measurements(const))
    assert r.tasks[0].params["c"] > 0
    falling = "task,budget,accuracy,n_total,latency\n" + "".join(
        f"down,{l},{a},500,{2.0 - 2e-4 * l:.8f}\n" for l, a in zip(budgets, acc)
    )
    with pytest.warns(jt.deploy.FitWarning) as record:
        try:
            jt.deploy.fit(jt.deploy.parse_measurements(falling))
        except jt.InputError as e:  # the fitted workload may be invalid: the error says why
            assert "latency" in str(e) and "'down'" in str(e)
    messages = " ".join(str(w.message) for w in record)
    assert "'down'" in messages and "clamped" in messages and "not clearly positive" in messages


def test_fit_cli_inputs_and_outputs(files):
    m = table1_measurements(files)
    assert_refused(["fit", files / "bad.bin"], "UTF-8")
    assert_refused(["fit", m, "--shares", files / "bad.bin"], "UTF-8")
    huge = files / "shares.csv"
    huge.write_text(
        "task,count\n" + "".join(f"{t},1e308\n" for t in jt.default_workload().task_names)
    )
    rc, out, err = run_cli(["fit", m, "--shares", huge, "--format", "json"])
    assert rc == 0, err  # equal huge counts are equal shares, not "shares sum to 0"
    # JSON is strict even where a standard error is infinite
    rc, out, _ = run_cli(["fit", m, "--format", "json"])
    assert rc == 0
    strict_loads(out)
    # constant latency: a FitWarning, not a silent 14,000-token budget
    const = table1_measurements(
        files,
        lambda r: ",".join(r.split(",")[:4] + ["0.5"]) if r.startswith("GSM8K") else r,
        "const.csv",
    )
    rc, out, _ = run_cli(["fit", const, "--format", "json"])
    assert rc == 0 and any("does not grow" in w for w in strict_loads(out)["warnings"])
    # decreasing latency: the error names the latency line, not the arrival rate alone
    dec = table1_measurements(
        files,
        lambda r: (
            ",".join(r.split(",")[:4] + [str(100 - 0.01 * float(r.split(",")[1]))])
            if r.startswith("GSM8K")
            else r
        ),
        "dec.csv",
    )
    assert_refused(["fit", dec], "GSM8K", "t0")
    # full precision in the written workload
    rc, _, _ = run_cli(["fit", m, "-o", files / "w.toml"])
    assert rc == 0 and "arrival_rate = 0.1\n" in (files / "w.toml").read_text()
    # nothing replaced without --force, nothing half-written when the plot fails
    assert_refused(["fit", m, "-o", files / "keep.txt"], "--force")
    assert_refused(["fit", m, "-o", files / "new.toml", "--plot", files / "fig.xyz"], "xyz")
    assert not (files / "new.toml").exists()
    assert_refused(["fit", m, "-o", files / "keep.txt" / "w.toml"], "not a directory")
    assert_refused(["fit", m, "-o", files / "full"], "directory")
    assert (files / "keep.txt").read_text() == "keep me"


def test_a_share_table_with_a_task_twice_is_refused(tmp_path):
    """A5: duplicate rows were summed without a word (GSM8K 2/7 of the traffic)."""
    table = tmp_path / "s.csv"
    table.write_text("task,share\na,1\nb,1\na,1\n")
    with pytest.raises(jt.InputError, match="line 4: task 'a' again"):
        jt.deploy.read_request_log(table, ("a", "b"))
    per_request = tmp_path / "r.csv"  # one row per request: repeats are the data
    per_request.write_text("task\na\nb\na\n")
    shares, rate = jt.deploy.read_request_log(per_request, ("a", "b"))
    assert shares.tolist() == pytest.approx([2 / 3, 1 / 3]) and rate is None


def test_cli_fit_to_stdout_is_a_valid_toml_and_the_table_goes_to_stderr(table1):
    """`jaxopt-tokens fit m.csv > workload.toml` must give a workload file: the TOML alone on
    stdout, the human table (uncut, though not a terminal) on stderr."""
    import tomllib

    from conftest import run_cli

    rc, out, err = run_cli(["fit", SHIPPED])
    assert rc == 0, err
    w = jt.workload_from_dict(tomllib.loads(out))
    assert w.task_names == table1.task_names
    assert "Fitted curves" in err and "Fitted curves" not in out
    assert "…" not in err, "the table was cut to the console's width"
    for name in table1.task_names:
        assert name in err
