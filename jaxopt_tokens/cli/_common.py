"""Options and helpers shared by CLI subcommands."""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import jaxopt_tokens as jt

from .. import ROUTINGS, InputError
from ..deploy import DEFAULT_ANSWER_TOKENS

__all__ = [
    "add_force_option",
    "add_workload_options",
    "workload_from_args",
    "loaded_workload",
    "positive_float",
    "int_at_least",
    "random_seed",
    "add_server_options",
    "server_from_args",
    "path_arg",
    "refuse_unstable_server",
    "step_time_pair",
    "non_negative_float",
]


def add_workload_options(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    p.add_argument(
        "--workload", metavar="FILE", help="workload TOML/JSON (default: the paper's Table I)"
    )
    if overrides:
        p.add_argument(
            "--arrival-rate", type=float, metavar="X", help="override the arrival rate (queries/s)"
        )
        p.add_argument(
            "--alpha", type=float, metavar="Y", help="override alpha, the weight of accuracy (s)"
        )
    p.add_argument("--max-tokens", type=float, metavar="M", help="override the token cap l_max")


def workload_from_args(args: argparse.Namespace, dtype=None) -> jt.Workload:
    """The workload the options name, with overrides applied and validated (a batching
    server judges its own stability: the M/G/1 rule is not applied to it)."""
    server = "batching" if getattr(args, "server", "mg1") == "batching" else "mg1"
    stability = server == "mg1"
    w = (
        jt.load_workload(args.workload, server=server)
        if args.workload is not None
        else jt.default_workload()
    )
    changes = {}
    for opt, field in (
        ("arrival_rate", "arrival_rate"),
        ("alpha", "alpha"),
        ("max_tokens", "max_tokens"),
    ):
        value = getattr(args, opt, None)
        if value is not None:
            changes[field] = float(value)
    if changes:
        w = w.replace(**changes)
        try:
            w.validate(stability)
        except InputError as e:
            raise InputError(f"{e} (from the command-line override)") from None
    return w if dtype is None else w.astype(dtype)


@contextlib.contextmanager
def loaded_workload(args: argparse.Namespace, float32: bool = False) -> Iterator[jt.Workload]:
    """The workload the options name, in float64 (or float32), with x64 enabled for the block.

    Commands compute in float64 by default; x64 is switched on only inside the block, so the
    caller's global setting is never changed.
    """
    import jax

    with jax.enable_x64(not float32):
        yield workload_from_args(args, dtype="float32" if float32 else "float64")


def add_force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="replace existing output files (without it, an existing file or a non-empty "
        "output directory is refused)",
    )


def path_arg(text: str) -> Path:
    """An argparse `type` for a path: refuses the empty string (which `Path` would read as
    the current directory)."""
    if text == "":
        raise argparse.ArgumentTypeError("the path is empty")
    return Path(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def random_seed(text: str) -> int:
    """An argparse `type` for a random seed: a whole number in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, {2**32 - 1}], got {text}")
    return value


def int_at_least(minimum: int):
    """An argparse `type` accepting whole numbers >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def step_time_pair(text: str) -> tuple[float, float]:
    """`TAU0,TAU1` seconds (an argparse `type`)."""
    parts = text.split(",")
    try:
        tau0, tau1 = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected TAU0,TAU1 in seconds, e.g. 0.02,0.0005"
        ) from None
    if not (math.isfinite(tau0) and tau0 >= 0):
        raise argparse.ArgumentTypeError(f"tau0 must be finite and >= 0 seconds, got {parts[0]}")
    if not (math.isfinite(tau1) and tau1 > 0):
        raise argparse.ArgumentTypeError(f"tau1 must be finite and > 0 seconds, got {parts[1]}")
    return tau0, tau1


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return value


def add_server_options(
    p: argparse.ArgumentParser, default: str = "mg1", replicas: bool = False
) -> None:
    """`--server mg1|batching` and the batching server's settings (`--replicas` too)."""
    g = p.add_argument_group(
        "server model",
        "mg1: the paper's M/G/1 server (t0, c from the workload); batching: a continuously "
        "batching engine whose decode step with n running requests takes tau0 + tau1 n",
    )
    g.add_argument("--server", choices=("mg1", "batching"), default=default)
    g.add_argument(
        "--step-time",
        type=step_time_pair,
        metavar="TAU0,TAU1",
        help="batching: step time in seconds (fit it with `fit-server`)",
    )
    g.add_argument(
        "--max-batch", type=int_at_least(1), metavar="B", help="batching: most requests at once"
    )
    g.add_argument(
        "--answer-tokens",
        type=non_negative_float,
        metavar="A",
        help="batching: decode steps of the answer after thinking (default: "
        f"{DEFAULT_ANSWER_TOKENS:g})",
    )
    g.add_argument(
        "--prefill",
        type=non_negative_float,
        metavar="P",
        help="batching: prefill cost per request in decode-step equivalents (default: 0)",
    )
    if replicas:
        g.add_argument(
            "--replicas",
            type=int_at_least(1),
            metavar="C",
            help="batching: identical replicas sharing the arrivals (default: 1)",
        )
    g.add_argument(
        "--routing",
        choices=tuple(r.replace("_", "-") for r in ROUTINGS),
        default="random",
        help="batching with replicas: random (each replica sees lambda / C), shortest-queue "
        "(join the replica with the fewest requests) or least-loaded (the least work left); "
        "the last two are the pooled approximation, checked by simulation (default: random)",
    )


def refuse_unstable_server(server: jt.ContinuousBatching, w: jt.Workload) -> None:
    """`InputError` when the batching server cannot sustain the arrivals even with zero
    reasoning tokens (as the M/G/1 server's workload check does)."""
    import jax.numpy as jnp

    zeros = jnp.zeros_like(w.A)
    load = float(server.load(zeros, w))
    if not load < 1 - 16 * float(jnp.finfo(w.dtype).eps):
        capacity = float(server.capacity(zeros, w))
        raise InputError(
            f"--arrival-rate: the batching server is unstable even with zero reasoning tokens "
            f"(load {load:.4g} >= 1); no budget can help. The arrival rate must be below "
            f"{capacity:.6g} requests/s for this step time, answer length and prefill"
        )


def server_from_args(args: argparse.Namespace) -> jt.ContinuousBatching | None:
    """The batching server the options describe, or None for the paper's M/G/1."""
    if args.server != "batching":
        for flag, value in (
            ("--step-time", args.step_time),
            ("--max-batch", args.max_batch),
            ("--routing", None if args.routing == "random" else args.routing),
            ("--answer-tokens", args.answer_tokens),
            ("--prefill", args.prefill),
            ("--replicas", getattr(args, "replicas", None)),
        ):
            if value is not None:
                raise InputError(f"{flag} describes a batching server: add --server batching")
        return None
    if args.step_time is None:
        raise InputError("--server batching needs --step-time TAU0,TAU1 (see `fit-server`)")
    return jt.ContinuousBatching(
        step_time=args.step_time,
        max_batch=args.max_batch,
        answer_tokens=DEFAULT_ANSWER_TOKENS if args.answer_tokens is None else args.answer_tokens,
        prefill=0.0 if args.prefill is None else args.prefill,
        replicas=getattr(args, "replicas", None) or 1,
        routing=args.routing.replace("-", "_"),  # the model's spelling of the choice
    )


#: the replay arguments of the API, as the commands spell them
REPLAY_FLAGS = {"rate": "--replay-rate", "utilization": "--utilization"}


@contextlib.contextmanager
def said_as_flags(flags: dict[str, str]) -> Iterator[None]:
    """Re-raise an `InputError` that names an API argument (`"rate: ..."`) as the command's
    flag (`"--replay-rate ..."`): the user typed the flag, not the argument."""
    try:
        yield
    except InputError as e:
        text = str(e)
        for name, flag in flags.items():
            if text.startswith(name + ": "):
                raise InputError(f"{flag} {text[len(name) + 2 :]}") from None
        raise
