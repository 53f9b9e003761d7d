"""The `jaxopt-tokens` command line.

Each subcommand lives in a module of this package (`solve.py`, `tune.py`, ...) exposing
`register(subparsers)`, which adds its parser(s) and sets `func=run(args) -> int`.
Bad input (`InputError`) becomes a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings

from .. import InputError, __version__
from . import (
    budget,
    export,
    fit,
    learn,
    serve,
    server,
    simulate,
    solve,
    sweep,
    trace,
    tune,
    verify,
)
from ._cache import enable_compilation_cache
from ._output import working

# Optional packages some subcommands import, and the extra that installs them.
OPTIONAL_PACKAGES = {"matplotlib": "plots", "pandas": "plots", "pyarrow": "plots"}

# Modules providing subcommands, in the order `--help` lists them.
SUBCOMMAND_MODULES = (
    *(solve, tune, sweep, fit, simulate, export, budget, server, trace, learn, serve, verify),
)


#: one example per command, shown at the end of its `--help`
EXAMPLES = {
    "solve": "jaxopt-tokens solve --arrival-rate 0.2 --alpha 30 --format json",
    "tune": "jaxopt-tokens tune --target-latency 2.5",
    "sweep": "jaxopt-tokens sweep --alpha 10,30,100 --out sweep",
    "frontier": "jaxopt-tokens frontier --points 50 --out frontier",
    "figures": "jaxopt-tokens figures --from sweep --out figures",
    "fit": "jaxopt-tokens fit measurements.csv -o workload.toml",
    "simulate": "jaxopt-tokens simulate --tokens optimal --num-queries 20000",
    "export": "jaxopt-tokens export --engine vllm -o policy.json",
    "budget": "jaxopt-tokens budget --budget 200000 --thresholds thresholds.csv",
    "evaluate-budget": "jaxopt-tokens evaluate-budget --format json",
    "fit-server": "jaxopt-tokens fit-server bench_c1.json bench_c8.json bench_c64.json",
    "plan": "jaxopt-tokens plan --server batching --step-time 0.02,0.0005 --max-batch 64 "
    "--arrival-rate 8 --target-latency 20",
    "trace": "jaxopt-tokens trace trace.csv --window 60 --plot arrivals.png",
}


#: what each command tells the user it is doing while it works (on standard error; the
#: sweep commands show their own progress bar, and `serve` logs)
WORKING = {
    "solve": "solving",
    "tune": "tuning",
    "frontier": "tracing the frontier",
    "figures": "drawing the figures",
    "fit": "fitting the curves",
    "simulate": "simulating",
    "export": "solving and exporting",
    "budget": "allocating the budget",
    "evaluate-budget": "replaying the streams",
    "fit-server": "fitting the step time",
    "plan": "planning replicas",
    "trace": "reading the trace",
    "learn": "learning budgets on the trace",
    "verify": "probing the engine",
}


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with each option's default where its text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default in (None, False, argparse.SUPPRESS)
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
            or "default" in text.lower()
        ):
            return action.help
        return f"{text} (default: %(default)s)".strip()


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the flag and what is wrong, with the nearest
    flag or command when one was misspelt), exit code 2."""

    argv: list[str] = []

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        hint = _suggestion(self, message)
        where = _command_parser(self).prog  # the command's own help lists its flags
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {where} --help)\n")


def _command_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser of the command named in the arguments being parsed, else `parser`."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return parser
    named = next((a for a in getattr(parser, "argv", []) if a in sub.choices), None)
    return sub.choices[named] if named else parser


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """ " (did you mean ...?)" for a misspelt flag of the command being run, or a misspelt
    command; "" when nothing is close."""
    import difflib

    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    choice = re.search(r"invalid choice: '([^']*)'", message)
    if choice and sub is not None:
        close = difflib.get_close_matches(choice.group(1), list(sub.choices), n=1, cutoff=0.6)
        return f" (did you mean {close[0]}?)" if close else ""
    if not message.startswith("unrecognized arguments:"):
        return ""
    command = _command_parser(parser)
    flags = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for token in message.split(":", 1)[1].split():
        if token.startswith("--"):
            name = token.split("=")[0]
            close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
            if close:
                hints.append((name, close[0]))
    if len(hints) == 1:
        return f" (did you mean {hints[0][1]}?)"
    return " (did you mean " + ", ".join(f"{b} for {a}" for a, b in hints) + "?)" if hints else ""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxopt-tokens",
        description="Queueing-aware reasoning-token budgets for LLM servers (JAX).",
    )

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMAND_MODULES:
        module.register(sub)
    for name, command in sub.choices.items():
        if "--quiet" not in command._option_string_actions:
            command.add_argument(
                "--quiet", action="store_true", help="no progress indicator on standard error"
            )
        if name in EXAMPLES and "Example" not in (command.description or ""):
            command.epilog = f"Example: {EXAMPLES[name]}"
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as the commands do: its class and message on one line, no source."""
    text = " ".join(str(message).split())
    print(f"jaxopt-tokens: {category.__name__}: {text}", file=file or sys.stderr)


_NEGATIVE_LIST = re.compile(r"^-\.?\d[^,]*(,.*)$")


def _attach_negative_lists(argv: list[str]) -> list[str]:
    """`--step-time -1,0.0005` as `--step-time=-1,0.0005`: argparse takes a value that starts
    with '-' and is not a plain number for an option, and the user would see only 'expected
    one argument' instead of what is wrong with the value."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_LIST.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


#: characters that end a line for `str.splitlines` (a message quoting a file's bytes may hold
#: them): written escaped, so an error is always one line
_LINE_BREAKS = dict.fromkeys(map(ord, "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"))


def one_line(message: str) -> str:
    """`message` with every line-breaking character escaped (`\\x0b`, `\\u2028`, ...)."""
    table = {c: ascii(chr(c))[1:-1] for c in _LINE_BREAKS}
    return message.translate(table)


def main(argv: list[str] | None = None) -> int:
    """Run one command: `argv` (default: the program's arguments). Run as a program (no
    `argv`), the command also turns on the persistent compilation cache (`_cache.py`)."""
    parser = build_parser()
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    argv = _attach_negative_lists([str(a) for a in argv])
    parser.argv = argv  # type: ignore[attr-defined]  # the command a misspelt flag belongs to
    args = parser.parse_args(argv)
    args.argv = argv  # the command as given (a sweep says how to resume it)
    if program:  # the command line run as a program; called from Python, JAX is left alone
        enable_compilation_cache()
    if args.command in WORKING and not args.quiet:
        # loading JAX and compiling happen inside the command: say so before they start
        working.start(f"jaxopt-tokens {args.command}: {WORKING[args.command]}")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning  # restored when the command ends
            try:
                return int(args.func(args) or 0)
            finally:
                working.stop()
    except InputError as e:
        print(f"jaxopt-tokens {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = OPTIONAL_PACKAGES.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"jaxopt-tokens {args.command}: error: this needs the optional package '{e.name}': "
            f"python -m pip install 'jaxopt_tokens[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    except MemoryError:
        print(
            f"jaxopt-tokens {args.command}: error: out of memory; use smaller grids, fewer "
            "queries or fewer points",
            file=sys.stderr,
        )
        return 2
    except OSError as e:  # a file the checks above could not foresee (disk full, permissions)
        where = f"{e.filename}: " if e.filename else ""
        print(f"jaxopt-tokens {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
