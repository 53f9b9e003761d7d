"""Options and helpers shared by CLI subcommands."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import jax

from .._errors import InputError
from .._io import default_workload, load_workload
from .._workload import Workload

__all__ = [
    "add_force_option",
    "add_workload_options",
    "workload_from_args",
    "loaded_workload",
    "positive_float",
    "int_at_least",
    "random_seed",
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


def workload_from_args(args: argparse.Namespace, dtype=None) -> Workload:
    """The workload the options name, with overrides applied and validated."""
    w = load_workload(args.workload) if args.workload is not None else default_workload()
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
            w.validate()
        except InputError as e:
            raise InputError(f"{e} (from the command-line override)") from None
    return w if dtype is None else w.astype(dtype)


@contextlib.contextmanager
def loaded_workload(args: argparse.Namespace, float32: bool = False) -> Iterator[Workload]:
    """The workload the options name, in float64 (or float32), with x64 enabled for the block.

    Commands compute in float64 by default; x64 is switched on only inside the block, so the
    caller's global setting is never changed.
    """
    with jax.enable_x64(not float32):
        yield workload_from_args(args, dtype="float32" if float32 else "float64")


def add_force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="replace existing output files (without it, an existing file or a non-empty "
        "output directory is refused)",
    )


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
