"""Capacity planning: `plan_replicas` and the `plan` command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TAU

import jaxopt_tokens as jt


@pytest.mark.slow  # four commands, each compiling the batching model
def test_cli_fit_server_solve_and_plan(tmp_path, capsys):
    from jaxopt_tokens.cli.main import main

    shipped = jt.__path__[0] + "/data/synthetic_step_times.csv"
    assert main(["fit-server", shipped, "--format", "json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    step = fitted["step_time_arg"]
    argv = ["solve", "--server", "batching", "--step-time", step, "--arrival-rate", "0.5"]
    assert main([*argv, "--format", "json"]) == 0
    free = json.loads(capsys.readouterr().out)
    assert free["method"] == "BatchingNewton" and free["load"] < 1
    plan = [
        "plan",
        "--step-time",
        step,
        "--max-batch",
        "64",
        "--arrival-rate",
        "8",
        "--target-latency",
        "12",
        "--max-replicas",
        "6",
        "--format",
        "json",
    ]
    assert main([*plan, "--plot", str(tmp_path / "replicas.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    chosen = out["replicas"]
    assert chosen is not None and (tmp_path / "replicas.png").exists()
    rows = out["rows"]
    assert rows[chosen - 1]["meets"] and not any(r["meets"] for r in rows[: chosen - 1])
    assert rows[chosen - 1]["mean_system_time"] <= 12
    sim = [
        "simulate",
        "--server",
        "batching",
        "--step-time",
        step,
        "--max-batch",
        "32",
        "--arrival-rate",
        "2",
        "--num-queries",
        "1500",
        "--num-replications",
        "3",
        "--format",
        "json",
    ]
    assert main(sim) == 0
    stats = json.loads(capsys.readouterr().out)["statistics"]
    mean, model = stats["system_time"]["mean"][0], stats["system_time"]["predicted"][0]
    assert stats["system_time_p95"]["mean"][0] > mean > 0 and model == pytest.approx(mean, rel=0.1)
    # bad settings: one line naming the flag
    assert main(["solve", "--server", "batching"]) == 2
    assert "--step-time" in capsys.readouterr().err
    assert main(["solve", "--step-time", "0.02,0.0005"]) == 2
    assert "--server batching" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["solve", "--server", "batching", "--step-time", "0.02,0"])
    assert "tau1" in capsys.readouterr().err


def test_plan_replicas_api_answers_the_fewest_and_refuses_bad_targets(table1):
    server = jt.ContinuousBatching(step_time=TAU)
    w = table1.replace(arrival_rate=15.0)
    plan = jt.deploy.plan_replicas(w, server, 20.0, max_replicas=6)
    assert plan.routing == "random" and len(plan.rows) == plan.replicas + 2  # stops past it
    first = plan.replicas
    assert first is not None and plan.rows[first - 1].meets
    assert not any(r.meets for r in plan.rows[: first - 1])
    assert plan.budgets == plan.rows[first - 1].tokens
    # c random replicas are one replica at lambda / c
    alone = jt.solve_latency(w.replace(arrival_rate=15.0 / first), server)
    np.testing.assert_allclose(plan.budgets, np.asarray(alone.tokens), rtol=1e-9)
    with pytest.raises(jt.InputError, match="target_latency"):
        jt.deploy.plan_replicas(w, server, -1.0)
    with pytest.raises(jt.InputError, match="model"):
        jt.deploy.plan_replicas(w, jt.FIFO(), 1.0)
    with pytest.raises(jt.InputError, match="max_replicas"):
        jt.deploy.plan_replicas(w, server, 1.0, max_replicas=0)
    batch = jax.vmap(lambda r: table1.replace(arrival_rate=r))(jnp.asarray([1.0, 2.0]))
    with pytest.raises(jt.InputError, match="one workload"):
        jt.deploy.plan_replicas(batch, server, 1.0)


@pytest.mark.slow  # three commands each compiling the routed model and simulator
def test_cli_routing_by_state_plans_solves_and_simulates(capsys):
    """`plan --routing shortest-queue` at an arrival rate the paper's M/G/1 server could not
    take (the batching server judges its own stability), and `simulate --replicas`."""
    from jaxopt_tokens.cli.main import main

    server = ["--step-time", "0.02,0.0005", "--routing", "shortest-queue"]
    plan = ["plan", *server, "--arrival-rate", "15", "--target-latency", "200"]
    assert main([*plan, "--max-replicas", "8", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["routing"] == "shortest_queue" and out["replicas"] == 2
    rows = out["rows"]
    assert rows[0]["status"] == "unstable_input" and rows[1]["mean_system_time"] <= 200
    # the scan stops two counts past the answer (each count is a new solve)
    assert len(rows) == 4 and all(r["status"] == "converged" for r in rows[1:])
    sim = ["simulate", "--server", "batching", *server, "--max-batch", "8", "--replicas", "3"]
    sim += ["--arrival-rate", "3", "--num-queries", "1500", "--num-replications", "2"]
    assert main([*sim, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "shortest_queue routing" in report["discipline"]
    assert main(["solve", "--routing", "least-loaded"]) == 2
    assert "--server batching" in capsys.readouterr().err
    # the M/G/1 server still refuses the arrival rate it cannot take
    assert main(["solve", "--arrival-rate", "15"]) == 2
    assert "unstable" in capsys.readouterr().err


def test_the_scan_stops_where_the_problem_says_not_at_max_replicas(table1):
    """H2: a million allowed replicas under random routing took minutes; the scan stops two
    counts past the answer. S14, T4: a boolean target and a bad key are refused."""
    server = jt.ContinuousBatching(step_time=TAU)
    w = table1.replace(arrival_rate=8.0)
    plan = jt.deploy.plan_replicas(w, server, 12.0, max_replicas=1_000_000)
    assert plan.replicas == 2 and len(plan.rows) <= plan.replicas + 2
    with pytest.raises(jt.InputError, match="target_latency"):
        jt.deploy.plan_replicas(w, server, True)
    with pytest.raises(jt.InputError, match="key"):
        jt.deploy.plan_replicas(w, server, 12.0, key=5)
    with pytest.raises(jt.InputError, match="key"):
        jt.simulate(w, jnp.zeros(6), 100, 2, key=5, model=server)
