"""The fuzz suite: every command and every public function that reads a file or takes a
user's size is driven with arbitrary input (hypothesis), and a meta-test refuses a new
surface that has no such test.

The contract under fuzz: a command exits 0, 1 (`solve`/`tune` printed a result that did not
converge) or 2 with one line on stderr, never a traceback, and its `--format json` is strict;
a function returns or raises `InputError` (never another exception, a NaN size, a hang or an
allocation that cannot fit: sizes are checked before anything is allocated).
"""

from __future__ import annotations

import argparse
import inspect
import json

import jax
import numpy as np
from conftest import FAST, FUZZ_SCALE, TRACE_EXCERPT, run_cli, strict_loads, table1_measurements
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens import clear, strategy
from jaxopt_tokens.cli import build_parser

FIXTURES = [HealthCheck.function_scoped_fixture]

# ------------------------------------------------------------------------------ commands

#: every command that reads a file, and how to hand it one
FILE_COMMANDS = {
    "solve": lambda p: ["solve", "--workload", p, "--format", "json"],
    "tune": lambda p: ["tune", "--target-latency", "2", "--workload", p, "--format", "json"],
    "sweep": lambda p: ["sweep", "--alpha", "1,2", "--quiet", "--workload", p, "--out", "OUT"],
    "frontier": lambda p: ["frontier", "--from", p, "--out", "OUT"],
    "figures": lambda p: ["figures", "--from", p, "--out", "OUT"],
    "fit": lambda p: ["fit", p, "--format", "json"],
    "simulate": lambda p: ["simulate", *FAST, "--tokens", p, "--format", "json"],
    "export": lambda p: ["export", "--tokens", p],
    "budget": lambda p: ["budget", "--budget", "1000", "--thresholds", p, "--format", "json"],
    "evaluate-budget": lambda p: ["evaluate-budget", "--pool", p, "--format", "json"],
    "fit-server": lambda p: ["fit-server", p, "--format", "json"],
    "fit --shares": lambda p: ["fit", "MEASUREMENTS", "--shares", p, "--format", "json"],
    "trace": lambda p: ["trace", p, "--format", "json"],
    "learn": lambda p: [
        *("learn", p, "--steps", "2", "--num-replications", "1", "--format", "json")
    ],
    # `--check` solves the starting policy and exits: no server is ever started
    "serve": lambda p: ["serve", "--upstream", "http://127.0.0.1:9", "--workload", p, "--check"],
    "serve --config": lambda p: ["serve", "--config", p, "--check"],
    "serve --learned-policy": lambda p: [
        *("serve", "--upstream", "http://127.0.0.1:9", "--learned-policy", p, "--check")
    ],
    "serve --dry-run": lambda p: ["serve", "--dry-run", p, "--format", "json"],
    "verify": lambda p: [
        *("verify", "--upstream", "http://127.0.0.1:9", "--policy", p, "--timeout", "2")
    ],
    "simulate --arrivals": lambda p: [
        *("simulate", "--arrivals", p, "--num-replications", "2", "--format", "json")
    ],
    "plan": lambda p: [
        *("plan", "--step-time", "0.02,0.0005", "--target-latency", "20"),
        *("--max-replicas", "2", "--num-queries", "200", "--num-replications", "2"),
        *("--workload", p, "--format", "json"),
    ],
}

#: every command, with the flags that make one run cheap; arbitrary flags are added to them
FLAG_COMMANDS = {
    "solve": [],
    "tune": ["--target-latency", "2"],
    "sweep": ["--quiet", "--out", "OUT"],
    "frontier": ["--out", "OUT"],
    "figures": ["--out", "OUT"],
    "fit": ["MEASUREMENTS"],
    "simulate": FAST,
    "export": [],
    "budget": ["--thresholds", "THRESHOLDS"],
    "evaluate-budget": [],
    "fit-server": ["STEPTIMES"],
    "trace": ["TRACE"],
    "learn": ["TRACE", "--steps", "2", "--num-replications", "1"],
    "serve": ["--upstream", "http://127.0.0.1:9", "--check"],
    "verify": ["--upstream", "http://127.0.0.1:9", "--timeout", "2"],
    "plan": ["--step-time", "0.02,0.0005", "--target-latency", "20", "--num-queries", "200"],
}

FLAGS = st.lists(
    st.sampled_from(
        [
            *("--seed", "-1", "0", "1e99", "--points", "--num-queries", "--num-replications"),
            *("--alpha", "--arrival-rate", "--max-tokens", "nan", "inf", "-inf", "", "1:2:0"),
            *("--format", "json", "--level", "2", "--service-cv", "-0.5", "--discipline", "ps"),
            *("--server", "batching", "--step-time", "0,1e-300", "-1,2", "--max-batch", "10"),
            *("--replicas", "1000000000", "--chunk-size", "--budget", "--max-replicas", "3"),
            *("--engine", "sglang", "--conservative", "0.5", "--simulate-tail", "True"),
            *("--arrivals", "TRACE", "--utilization", "0.99", "--replay-rate", "--window"),
            *("--service", "trace", "--task-types", "--time-unit", "ms", "--plot", "x.png"),
        ]
    ),
    max_size=6,
)


def _check_cli(argv, rc, out, err):
    assert rc in (0, 1, 2), (argv, rc, err)
    assert "Traceback" not in err, (argv, err)
    if rc == 2:
        assert len(err.strip().splitlines()) == 1, (argv, err)
    elif rc == 0 and "json" in argv and out.strip() and "-o" not in argv:
        strict_loads(out)


def _argv(tmp_path, words, path=None):
    """Fill the placeholders of a command line (files that exist, a fresh output)."""
    thresholds = tmp_path / "thresholds.csv"
    thresholds.write_text("threshold\n100\n400\n")
    steps = tmp_path / "steps.csv"
    steps.write_text("concurrency,tpot_ms\n1,20\n4,22\n16,28\n")
    fill = {
        "OUT": tmp_path / "out",
        "MEASUREMENTS": table1_measurements(tmp_path),
        "THRESHOLDS": thresholds,
        "STEPTIMES": steps,
        "TRACE": TRACE_EXCERPT,
    }
    return [fill.get(w, w) if isinstance(w, str) else w for w in words]


@settings(max_examples=24 * FUZZ_SCALE, deadline=None, suppress_health_check=FIXTURES)
@given(command=st.sampled_from(sorted(FILE_COMMANDS)), data=st.binary(max_size=200))
def test_arbitrary_file_bytes_never_give_a_traceback(tmp_path, command, data):
    path = tmp_path / "input.dat"
    path.write_bytes(data)
    argv = _argv(tmp_path, FILE_COMMANDS[command](path))
    _check_cli(argv, *run_cli(argv))


TEXT_FILES = st.one_of(
    st.text(max_size=120),
    st.builds(
        lambda rows: (
            "task,budget,n_correct,n_total,latency\n" + "\n".join(",".join(r) for r in rows)
        ),
        st.lists(
            st.lists(
                st.sampled_from(["GSM8K", "0", "10", "-1", "1e308", "nan", "x", ""]),
                min_size=5,
                max_size=5,
            ),
            max_size=6,
        ),
    ),
    st.builds(
        lambda v: json.dumps(v),
        st.one_of(
            st.lists(st.one_of(st.floats(), st.integers(), st.booleans()), max_size=7),
            st.dictionaries(
                st.sampled_from(["max_concurrency", "median_tpot_ms", "mean_tpot_ms", "tasks"]),
                st.one_of(st.none(), st.floats(), st.integers(), st.text(max_size=3)),
                max_size=4,
            ),
        ),
    ),
)


@settings(max_examples=24 * FUZZ_SCALE, deadline=None, suppress_health_check=FIXTURES)
@given(command=st.sampled_from(sorted(FILE_COMMANDS)), text=TEXT_FILES)
def test_arbitrary_text_files_never_give_a_traceback(tmp_path, command, text):
    path = tmp_path / "input.txt"
    path.write_text(text)
    argv = _argv(tmp_path, FILE_COMMANDS[command](path))
    _check_cli(argv, *run_cli(argv))


@settings(max_examples=30 * FUZZ_SCALE, deadline=None, suppress_health_check=FIXTURES)
@given(command=st.sampled_from(sorted(FLAG_COMMANDS)), flags=FLAGS)
def test_arbitrary_flags_never_give_a_traceback(tmp_path, command, flags):
    argv = _argv(tmp_path, [command, *FLAG_COMMANDS[command], *flags])
    _check_cli(argv, *run_cli(argv))


# ------------------------------------------------------------------------------ the API

BYTES_OR_TEXT = st.one_of(st.binary(max_size=160), st.text(max_size=160).map(str.encode))


def _w():
    return jt.default_workload()


#: every public function that reads a file: how to call it on one
FILE_FUNCTIONS = {
    "load_workload": lambda p: jt.load_workload(p),
    "deploy.read_text": lambda p: jt.deploy.read_text(p, "fuzz"),
    "deploy.read_measurements": lambda p: jt.deploy.read_measurements(p),
    "deploy.read_request_log": lambda p: jt.deploy.read_request_log(p, _w().task_names),
    "deploy.read_step_times": lambda p: jt.deploy.read_step_times(p),
    "deploy.fit_step_time": lambda p: jt.deploy.fit_step_time(p),
    "deploy.load_tokens": lambda p: jt.deploy.load_tokens(p, _w()),
    "sweeps.read_sweep": lambda p: jt.sweeps.read_sweep(p),
    "sweeps.read_sweep_metadata": lambda p: jt.sweeps.read_sweep_metadata(p),
    "clear.load_pool": lambda p: clear.load_pool(p),
    "traffic.read_trace": lambda p: jt.traffic.read_trace(p),
    "deploy.read_request_log.bands": lambda p: jt.deploy.read_request_log(
        p, ("a", "b"), bands={"a": 9, "b": 1e9}
    ),
    "gateway.load_config": lambda p: jt.gateway.load_config(p),
    "gateway.load_learned": lambda p: jt.gateway.load_learned(
        p, _w().task_names, np.full(_w().num_tasks, 32768.0)
    ),
    # a secret is given as text (or env:NAME): the file's text stands for it
    "gateway.read_secret": lambda p: jt.gateway.read_secret(
        "api_key", p.read_text(errors="replace")
    ),
}


@settings(max_examples=40 * FUZZ_SCALE, deadline=None, suppress_health_check=FIXTURES)
@given(
    name=st.sampled_from(sorted(FILE_FUNCTIONS)),
    data=BYTES_OR_TEXT,
    suffix=st.sampled_from([".toml", ".json", ".csv", ".parquet", ".jsonl", ""]),
)
def test_file_readers_return_or_raise_input_error(tmp_path, name, data, suffix):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    try:
        FILE_FUNCTIONS[name](path)
    except jt.InputError:
        pass


SIZES = st.sampled_from([-1, 0, 1, 2, 3, 2.5, 10**15, True, "3", None, float("nan"), 1e300])


#: every public function that takes a user's size, and how to call it with one drawn size
SIZE_FUNCTIONS = {
    "random_workloads": lambda n: jt.random_workloads(jax.random.key(0), n, 3),
    "random_workloads.num_tasks": lambda n: jt.random_workloads(jax.random.key(0), 2, n),
    "simulate": lambda n: jt.simulate(_w(), np.zeros(6), n, 2),
    "simulate.num_replications": lambda n: jt.simulate(_w(), np.zeros(6), 200, n),
    "simulate.capacity": lambda n: jt.simulate(
        _w(), np.zeros(6), 200, 2, model=jt.ProcessorSharing(), capacity=n
    ),
    "simulate_batching": lambda n: jt.simulate(
        _w(), np.zeros(6), n, 2, model=jt.ContinuousBatching()
    ),
    "simulate_batching.num_replications": lambda n: jt.simulate(
        _w(), np.zeros(6), 200, n, model=jt.ContinuousBatching()
    ),
    "simulate_batching.slots": lambda n: jt.simulate(
        _w(), np.zeros(6), 200, 2, model=jt.ContinuousBatching(), slots=n
    ),
    "simulate.slots": lambda n: jt.simulate(
        _w(), np.zeros(6), 200, 2, model=jt.ContinuousBatching(), slots=n
    ),
    "deploy.plan_replicas": lambda n: jt.deploy.plan_replicas(
        _w(), jt.ContinuousBatching(), 20.0, max_replicas=n, num_queries=200, num_replications=2
    ),
    "deploy.plan_replicas.num_queries": lambda n: jt.deploy.plan_replicas(
        _w(), jt.ContinuousBatching(), 20.0, target_p95=40.0, num_queries=n, num_replications=2
    ),
    "deploy.plan_replicas.num_replications": lambda n: jt.deploy.plan_replicas(
        _w(), jt.ContinuousBatching(), 20.0, target_p95=40.0, num_queries=200, num_replications=n
    ),
    "theory.sample_query_stream": lambda n: jt.theory.sample_query_stream(
        jax.random.key(0), _w(), n
    ),
    "sweeps.sweep": lambda n: jt.sweeps.sweep(_w(), alpha=[1.0, 2.0], chunk_size=n, quiet=True),
    "sweeps.frontier_by_alpha": lambda n: jt.sweeps.frontier_by_alpha(_w(), n),
    "sweeps.frontier_by_arrival_rate": lambda n: jt.sweeps.frontier_by_arrival_rate(_w(), n),
    "sweeps.with_simulated_tail": lambda n: jt.sweeps.with_simulated_tail(
        jt.sweeps.frontier_by_alpha(_w(), 2), _w(), num_queries=n, num_replications=2
    ),
    "sweeps.with_simulated_tail.num_replications": lambda n: jt.sweeps.with_simulated_tail(
        jt.sweeps.frontier_by_alpha(_w(), 2), _w(), num_queries=200, num_replications=n
    ),
    "sweeps.figure_frontier": lambda n: jt.sweeps.figure_frontier(_w(), n),
    "learn.replay_draws.num_replications": lambda n: jt.learn.replay_draws(
        _w(), jt.traffic.read_trace(TRACE_EXCERPT), num_replications=n
    ),
    "learn.learn_budgets.num_replications": lambda n: jt.learn.learn_budgets(
        _w(), jt.traffic.read_trace(TRACE_EXCERPT), num_replications=n, steps=1
    ),
    "learn.learn_budgets.steps": lambda n: jt.learn.learn_budgets(
        _w(), jt.traffic.read_trace(TRACE_EXCERPT), num_replications=1, steps=n
    ),
    "learn.replay_draws.slots": lambda n: jt.learn.replay_draws(
        _w(),
        jt.traffic.read_trace(TRACE_EXCERPT),
        num_replications=1,
        slots=n,
        model=jt.ContinuousBatching(step_time=(0.02, 0.0005)),
    ),
    "learn.learn_budgets.slots": lambda n: jt.learn.learn_budgets(
        _w(), jt.traffic.read_trace(TRACE_EXCERPT), num_replications=1, steps=1, slots=n
    ),
    "learn.learn_budgets.states": lambda n: jt.learn.learn_budgets(
        _w(), jt.traffic.read_trace(TRACE_EXCERPT), num_replications=1, steps=1, states=n
    ),
    "router.synthetic_task_pool": lambda n: jt.router.synthetic_task_pool(jax.random.key(0), n),
    "clear.sample_stream": lambda n: clear.sample_stream(clear.default_pool(), "Balanced", n),
    "strategy.synthetic_queries": lambda n: strategy.synthetic_queries(
        jax.random.key(0), n, strategy.default_table()
    ),
    "strategy.train_probe": lambda n: strategy.train_probe(
        jax.random.key(0),
        np.zeros((8, 2)),
        np.zeros((2, 1)),
        np.full((8, 2), 0.5),
        steps=2,
        batch_size=n,
    ),
}


@settings(max_examples=25 * FUZZ_SCALE, deadline=None)
@given(name=st.sampled_from(sorted(SIZE_FUNCTIONS)), size=SIZES)
def test_sizes_are_checked_before_anything_is_allocated(name, size):
    import matplotlib

    matplotlib.use("Agg")
    try:
        SIZE_FUNCTIONS[name](size)
    except jt.InputError:
        pass


#: arbitrary window lengths and rates (seconds, requests/s), well-formed or not
TIMES = st.sampled_from(
    [
        -1,
        0,
        1e-300,
        5e-324,
        1e-9,
        0.5,
        60,
        1e300,
        float("inf"),
        float("nan"),
        True,
        "60",
        None,
        10**400,
        [60.0],
        1j,
    ]
)


def _trace():
    return jt.traffic.read_trace(TRACE_EXCERPT)


#: every public function that takes a window length or a rate: how to call it with one
TIME_FUNCTIONS = {
    "traffic.arrival_stats": lambda x: jt.traffic.arrival_stats(_trace(), x),
    "traffic.arrival_stats.windows": lambda x: jt.traffic.arrival_stats(
        _trace(), 60.0, windows=[x]
    ),
    "traffic.arrival_scv": lambda x: jt.traffic.arrival_scv(_trace(), x),
    "traffic.plot_arrivals": lambda x: jt.traffic.plot_arrivals(_trace(), window=x),
    "traffic.plan_windows": lambda x: jt.traffic.plan_windows(_w(), _trace(), x),
    "deploy.read_request_log": lambda x: jt.deploy.read_request_log(
        TRACE_EXCERPT, ("a",), window=x
    ),
    "Trace.window_rates": lambda x: _trace().window_rates(x),
    "Trace.window_counts": lambda x: _trace().window_counts(x),
    "Trace.window_index": lambda x: _trace().window_index(x),
    "Trace.window_lengths": lambda x: _trace().window_lengths(x),
    "Trace.num_windows": lambda x: _trace().num_windows(x),
    "simulate_batching.rate": lambda x: jt.simulate(
        _w(),
        np.zeros(6),
        None,  # a replay takes the whole trace
        2,
        model=jt.ContinuousBatching(),
        arrivals=jt.traffic.Replay(_trace(), rate=x),
    ),
    "simulate_batching.utilization": lambda x: jt.simulate(
        _w(),
        np.zeros(6),
        None,  # a replay takes the whole trace
        2,
        model=jt.ContinuousBatching(),
        arrivals=jt.traffic.Replay(_trace(), utilization=x),
    ),
    "Trace.rescaled": lambda x: _trace().rescaled(x),
    "TimeVarying.from_trace": lambda x: jt.TimeVarying.from_trace(_trace(), x),
    "learn.replay_draws.rate": lambda x: jt.learn.replay_draws(
        _w(), _trace(), num_replications=1, rate=x
    ),
    "learn.replay_draws.utilization": lambda x: jt.learn.replay_draws(
        _w(), _trace(), num_replications=1, utilization=x
    ),
    "learn.learn_budgets.rate": lambda x: jt.learn.learn_budgets(
        _w(), _trace(), rate=x, steps=1, num_replications=1
    ),
    "learn.learn_budgets.utilization": lambda x: jt.learn.learn_budgets(
        _w(), _trace(), utilization=x, steps=1, num_replications=1
    ),
    "simulate.rate": lambda x: jt.simulate(
        _w(), np.zeros(6), None, 2, arrivals=jt.traffic.Replay(_trace(), rate=x)
    ),
    "simulate.utilization": lambda x: jt.simulate(
        _w(), np.zeros(6), None, 2, arrivals=jt.traffic.Replay(_trace(), utilization=x)
    ),
    "simulate.window": lambda x: jt.simulate(
        _w(),
        np.zeros((_trace().num_windows(x), 6)),
        None,
        2,
        arrivals=jt.traffic.Replay(_trace(), window=x),
    ),
}


@settings(max_examples=30 * FUZZ_SCALE, deadline=None)
@given(name=st.sampled_from(sorted(TIME_FUNCTIONS)), value=TIMES)
def test_window_and_rate_arguments_return_or_raise_input_error(name, value):
    """Window lengths and rates of any value: a result or an `InputError` naming the
    argument, never an allocation sized by a stray value (T2, T3)."""
    import matplotlib

    matplotlib.use("Agg")
    try:
        TIME_FUNCTIONS[name](value)
    except jt.InputError:
        pass


# ------------------------------------------------------------------------------ the rule

SIZE_PARAMETERS = {
    "num",
    "num_tasks",
    "num_queries",
    "num_replications",
    "num_types",
    "size",
    "points",
    "chunk_size",
    "max_replicas",
    "slots",
    "capacity",
    "batch_size",
    "states",
}


def _namespaces():
    """The top level and every public namespace in it (`jt.traffic`, `jt.clear`, ...)."""
    yield "", jt
    for name in jt.__all__:
        if inspect.ismodule(getattr(jt, name)):
            yield f"{name}.", getattr(jt, name)


def _public_functions():
    for prefix, module in _namespaces():
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                yield prefix + name, obj


def _reads_a_file(name: str, fn) -> bool:
    params = inspect.signature(fn).parameters
    short = name.split(".")[-1]
    return short.startswith(("read_", "load_")) or (
        not short.startswith(("write_", "dump_", "save_", "plot_"))  # these write files
        and bool({"path", "paths", "sources"} & set(params))
    )


def test_every_surface_has_its_fuzz():
    """A new command, or a new public function that reads a file or takes a size, fails
    here until the fuzz tests above drive it."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    assert commands <= set(FLAG_COMMANDS), f"no flags fuzz for {commands - set(FLAG_COMMANDS)}"
    readers = {
        name
        for name, p in sub.choices.items()
        for a in p._actions
        if a.dest in ("workload", "from_sweep", "measurements", "tokens", "thresholds", "pool")
        or a.dest in ("files", "uncertainty", "shares", "trace", "arrivals")
    }
    # a command whose file-reading flag is not its main input has an entry "command --flag"
    fuzzed = {name.split()[0] for name in FILE_COMMANDS}
    assert readers <= fuzzed, f"no file fuzz for {readers - fuzzed}"
    flags = {
        f"{name} {a.option_strings[-1]}"
        for name, p in sub.choices.items()
        for a in p._actions
        if a.dest in ("arrivals", "shares", "config") and a.option_strings
    }
    assert flags <= set(FILE_COMMANDS), f"no file fuzz for {flags - set(FILE_COMMANDS)}"
    missing_files, missing_sizes = [], []
    for name, fn in _public_functions():
        if _reads_a_file(name, fn) and name not in FILE_FUNCTIONS:
            missing_files.append(name)
        params = [p for p in inspect.signature(fn).parameters if p in SIZE_PARAMETERS]
        for i, size in enumerate(params):  # the plain entry draws the first size argument
            if f"{name}.{size}" not in SIZE_FUNCTIONS and not (i == 0 and name in SIZE_FUNCTIONS):
                missing_sizes.append(f"{name}({size})")
    missing_times = [
        f"{name}({p})"
        for name, fn in _public_functions()
        for p in inspect.signature(fn).parameters
        if p in ("window", "windows", "rate", "utilization")
        and f"{name}.{p}" not in TIME_FUNCTIONS
        and name not in TIME_FUNCTIONS
    ]
    for cls in (jt.traffic.Trace, jt.TimeVarying):  # the methods that take a window or a rate
        for meth, fn in inspect.getmembers(cls, inspect.isroutine):
            params = set(inspect.signature(fn).parameters) if not meth.startswith("_") else set()
            if params & {"window", "rate"} and f"{cls.__name__}.{meth}" not in TIME_FUNCTIONS:
                missing_times.append(f"{cls.__name__}.{meth}")
    assert not missing_times, f"window or rate arguments without a fuzz test: {missing_times}"
    assert not missing_files, f"file readers without a fuzz test: {missing_files}"
    assert not missing_sizes, f"size arguments without a fuzz test: {missing_sizes}"
