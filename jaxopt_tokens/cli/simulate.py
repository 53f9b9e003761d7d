"""`jaxopt-tokens simulate`: check policies' promised latency and accuracy in a simulated queue."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.table import Table

import jaxopt_tokens as jt

from .. import DISCIPLINES, InputError
from ..traffic import SERVICES, TASK_SOURCES, TRACE_FORMATS
from ._common import (
    REPLAY_FLAGS,
    add_server_options,
    add_workload_options,
    int_at_least,
    loaded_workload,
    path_arg,
    positive_float,
    random_seed,
    said_as_flags,
    server_from_args,
)
from ._output import console, emit_json
from ._report import solved

ROWS = (
    ("system_time", "mean system time E[T] (s)"),
    ("wait", "mean wait E[W] (s)"),
    ("system_time_p50", "p50 system time (s)"),
    ("system_time_p95", "p95 system time (s)"),
    ("system_time_p99", "p99 system time (s)"),
    ("utilization", "utilization rho"),
    ("accuracy", "accuracy"),
    ("objective", "J = alpha*acc - E[T]"),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a server under token policies; compare with its latency model",
        description="Simulate a stream of Poisson queries under one or more token policies "
        "(common random numbers), with confidence intervals from independent replications, "
        "next to the latency model's prediction: the M/G/1 server served FIFO (the paper; "
        "the Pollaczek-Khinchine prediction), by priority or by processor sharing "
        "(--discipline, --service-cv), or a continuously batching engine (--server batching).",
    )
    p.add_argument(
        "--tokens",
        action="append",
        metavar="POLICY",
        help="'optimal' (default; optimal for the chosen discipline and service noise), "
        "'uniform:L', or a JSON file of budgets (a list in task "
        "order, a mapping task -> tokens, or `solve --format json` output); repeat to compare",
    )
    add_workload_options(p)
    p.add_argument(
        "--num-queries",
        type=int_at_least(1),
        default=None,
        metavar="Q",
        help="queries per replication (default 10000; with --arrivals the whole trace)",
    )
    r = p.add_argument_group(
        "replaying a recorded trace (python: simulate(..., arrivals=Replay(trace, ...)))"
    )
    r.add_argument(
        "--arrivals",
        type=path_arg,
        metavar="FILE",
        help="replay this trace's arrival times instead of Poisson arrivals (formats as in "
        "`jaxopt-tokens trace`)",
    )
    r.add_argument("--trace-format", choices=("auto", *TRACE_FORMATS), default="auto")
    rate = r.add_mutually_exclusive_group()
    rate.add_argument(
        "--utilization",
        type=positive_float,
        metavar="U",
        help="rescale the trace's times so the (one) policy loads the server to U",
    )
    rate.add_argument(
        "--replay-rate",
        type=positive_float,
        metavar="R",
        help="rescale the trace's times to a mean rate of R requests/s",
    )
    r.add_argument(
        "--service",
        choices=SERVICES,
        default="tasks",
        help="tasks: service by each request's drawn task; trace: scaled by its output tokens",
    )
    r.add_argument(
        "--task-types",
        choices=TASK_SOURCES,
        default="shares",
        help="shares: drawn by the workload's shares; trace: the trace's task labels",
    )
    p.add_argument("--num-replications", type=int_at_least(1), default=20, metavar="R")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        metavar="K",
        help="queries dropped at the start of each replication (default: 10%%)",
    )
    p.add_argument(
        "--service-cv",
        type=float,
        default=0.0,
        metavar="CV",
        help="coefficient of variation of service times (0: deterministic, as in the paper)",
    )
    p.add_argument("--noise", choices=("lognormal", "gamma"), default="lognormal")
    p.add_argument(
        "--discipline",
        choices=DISCIPLINES,
        default="fifo",
        help="fifo (the paper), priority (non-preemptive, by task type) or ps (processor sharing)",
    )
    p.add_argument(
        "--priority",
        metavar="TASKS",
        help="with --discipline priority: comma-separated task names, highest priority first",
    )
    p.add_argument("--seed", type=random_seed, default=0)
    p.add_argument(
        "--level", type=positive_float, default=0.95, help="confidence level (default 0.95)"
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_server_options(p, replicas=True)
    p.set_defaults(func=run)


BATCHING_ROWS = (
    ("system_time", "mean system time E[T] (s)"),
    ("queue_wait", "waiting for a batch slot (s)"),
    ("ttft", "time to first token (s)"),
    ("system_time_p50", "p50 system time (s)"),
    ("system_time_p95", "p95 system time (s)"),
    ("system_time_p99", "p99 system time (s)"),
    ("running", "mean batch size"),
    ("throughput", "throughput (requests/s, all replicas)"),
    ("token_throughput", "decode tokens/s, all replicas"),
    ("accuracy", "accuracy"),
)


def _latency_model(args, w: jt.Workload, order) -> jt.LatencyModel:
    """The single-server model `--discipline` and `--service-cv` name: the one place where
    the command's strings become model objects."""
    if args.discipline == "priority":
        return jt.Priority(order, args.service_cv)
    if args.discipline == "ps":
        return jt.ProcessorSharing(args.service_cv)
    return jt.FIFO(args.service_cv)


def _priority_order(args, w: jt.Workload):
    if args.discipline != "priority":
        if args.priority:
            raise InputError("--priority: only meaningful with --discipline priority")
        return None
    if not args.priority:
        raise InputError(
            "--priority: --discipline priority needs the task order, e.g. "
            f"--priority {','.join(w.task_names)}"
        )
    names = [n.strip() for n in args.priority.split(",")]
    unknown = [n for n in names if n not in w.task_names]
    if unknown or sorted(names) != sorted(w.task_names):
        raise InputError(
            f"--priority: give every task exactly once ({', '.join(w.task_names)}); got "
            f"{args.priority}"
        )
    return tuple(w.task_names.index(n) for n in names)


def _policy(spec: str, w: jt.Workload, model: jt.LatencyModel) -> np.ndarray:
    if spec == "optimal":
        sol = solved(w, model=model)  # one program, loaded ahead of time when cached
        if int(sol["status"]) != jt.Status.CONVERGED:
            raise InputError(
                "--tokens optimal: the solver did not converge "
                f"({jt.Status(int(sol['status'])).message})"
            )
        return np.asarray(sol["tokens"])
    if spec.startswith("uniform:"):
        try:
            value = float(spec.split(":", 1)[1])
        except ValueError:
            raise InputError(
                f"--tokens {spec}: expected uniform:TOKENS, e.g. uniform:500"
            ) from None
        return np.full(w.num_tasks, value)
    if Path(spec).exists():
        return jt.deploy.load_tokens(spec, w)
    raise InputError(f"--tokens {spec}: not 'optimal', 'uniform:L' or an existing file")


def run(args: argparse.Namespace) -> int:
    import jax

    if not 0 < args.level < 1:
        raise InputError(f"--level: must be in (0, 1), got {args.level}")
    specs = args.tokens or ["optimal"]
    server = server_from_args(args)
    if server is not None and (args.discipline != "fifo" or args.service_cv):
        raise InputError("--server batching: --discipline and --service-cv are M/G/1 options")
    key = jax.random.PRNGKey(args.seed)
    replay = None
    if args.arrivals is None:
        for flag, value, default in (
            ("--utilization", args.utilization, None),
            ("--replay-rate", args.replay_rate, None),
            ("--service", args.service, "tasks"),
            ("--task-types", args.task_types, "shares"),
            ("--trace-format", args.trace_format, "auto"),
        ):
            if value != default:
                raise InputError(f"{flag}: a setting of trace replay; give --arrivals FILE")
    else:
        if args.num_queries is not None:
            raise InputError(
                "--num-queries: a replay simulates the whole trace; cut the file to replay part"
            )
        trace = jt.traffic.read_trace(args.arrivals, args.trace_format)
        with said_as_flags(REPLAY_FLAGS):
            replay = jt.traffic.Replay(
                trace,
                rate=args.replay_rate,
                utilization=args.utilization,
                service=args.service,
                task_types=args.task_types,
            )
    with loaded_workload(args) as w:
        model = _latency_model(args, w, _priority_order(args, w)) if server is None else server
        policies = np.stack([_policy(s, w, model) for s in specs])
        kwargs = {"noise": args.noise} if server is None else {}
        with said_as_flags(REPLAY_FLAGS):
            result = jt.simulate(
                w,
                policies,
                args.num_queries,
                args.num_replications,
                key,
                model=model,
                arrivals=replay,
                warmup=args.warmup,
                **kwargs,
            )
        if server is None:
            rows, discipline, what = ROWS, args.discipline, "M/G/1 server"
        else:
            rows, what = BATCHING_ROWS, "batching server"
            discipline = (
                f"continuous batching, max batch {server.max_batch or 'unlimited'}, "
                f"{server.replicas} replica(s), {server.routing} routing"
            )
        summary = result.summary(args.level)
    report = {
        "policies": specs,
        **(
            {"arrivals_left_out": dict(replay.trace.dropped)}
            if replay is not None and replay.trace.dropped
            else {}
        ),
        "tasks": list(w.task_names),
        "tokens": policies.tolist(),
        "num_queries": result.num_queries,
        "arrivals": None if args.arrivals is None else str(args.arrivals),
        "arrival_rate": result.mean_arrival_rate,
        "replications": args.num_replications,
        "warmup": result.warmup,
        "discipline": discipline,
        "confidence_level": args.level,
        "status": [s.name.lower() for s in map(jt.SimulationStatus, np.asarray(result.status))],
        "statistics": {
            name: {k: np.asarray(v).tolist() for k, v in summary[name].items()} for name, _ in rows
        },
    }
    if args.format == "json":
        emit_json(report)
    else:
        _print_table(report, rows, what)
    return 0


def _print_table(r: dict, rows=ROWS, server: str = "M/G/1 server") -> None:

    con = console()
    pct = round(100 * r["confidence_level"])
    t = Table(
        title=f"Simulated {server} ({r['discipline']}): "
        f"{r['replications']} x {r['num_queries']} queries "
        f"(warm-up {r['warmup']}), mean [{pct}% CI] | model"
    )
    t.add_column("statistic")
    for spec in r["policies"]:
        t.add_column(spec, justify="right")
    for name, label in rows:
        s = r["statistics"][name]
        cells = []
        for i in range(len(r["policies"])):
            cell = f"{s['mean'][i]:.4f} [{s['lower'][i]:.4f}, {s['upper'][i]:.4f}]"
            if "predicted" in s:
                cell += f" | {s['predicted'][i]:.4f}"
            cells.append(cell)
        t.add_row(label, *cells)
    con.print(t)
    b = Table(title="budgets (tokens)")
    b.add_column("task")
    for spec in r["policies"]:
        b.add_column(spec, justify="right")
    for k, name in enumerate(r["tasks"]):
        b.add_row(name, *(f"{tok[k]:.1f}" for tok in r["tokens"]))
    con.print(b)
