"""Cold and warm wall time of the command line: `--help`, a mistyped flag, and `solve`,
`export`, `simulate`, `trace` run twice on the same shapes.

"Cold" is the first run on a machine (an empty compilation cache); "warm" is the median of
the runs after it, which find their compiled programs in the cache. Each run is a fresh
process, as a user's shell starts it. Run from the repository root:

    python benchmarks/cli_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from rich.console import Console
from rich.table import Table

TRACE = "benchmarks/data/traces/AzureLLMInferenceTrace_code.csv"
COMMANDS = {
    "floor: python -c 'import jax ...; one op'": None,
    "--help": ["--help"],
    "mistyped flag": ["solve", "--alhpa", "3"],
    "solve": ["solve"],
    "solve --format json": ["solve", "--format", "json"],
    "export": ["export", "--engine", "vllm"],
    "simulate": ["simulate", "--num-queries", "20000"],
    "trace": ["trace", TRACE],
}


#: the floor of any JAX program: start Python, import JAX, run one operation
FLOOR = [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(3).block_until_ready()"]


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        argv if argv[0] == sys.executable else [sys.executable, "-m", "jaxopt_tokens.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per command")
    args = parser.parse_args()
    table = Table(title="jaxopt-tokens wall time per command (s), fresh process each run")
    for col in ("command", "cold", "warm (median)", "no cache (median)"):
        table.add_column(col, justify="left" if col == "command" else "right")
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    for name, argv in COMMANDS.items():
        argv = FLOOR if argv is None else argv
        with tempfile.TemporaryDirectory() as cache:
            env = {**base, "JAXOPT_TOKENS_CACHE_DIR": cache}
            cold = run(argv, env)
            warm = statistics.median(run(argv, env) for _ in range(args.repeats))
        off = {**base, "JAXOPT_TOKENS_NO_CACHE": "1"}
        uncached = statistics.median(run(argv, off) for _ in range(args.repeats))
        table.add_row(name, f"{cold:.2f}", f"{warm:.2f}", f"{uncached:.2f}")
    Console(width=100).print(table)


if __name__ == "__main__":
    main()
