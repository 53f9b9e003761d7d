"""A sweep streamed to a Parquet dataset: peak memory stays flat whatever the grid size.

Each measurement runs in its own process (peak RSS is per process): the in-memory DataFrame
sweep and the streamed sweep (`out=DIR`) at the same size, side by side, then the streamed
sweep at a large size (default 2e7 points).

    python benchmarks/sweep_stream.py [--points 20000000] [--compare 1000000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

CHILD = r"""
import json, resource, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import jaxopt_tokens as jt
points, out = int(sys.argv[1]), sys.argv[2]
side = int(round(points ** 0.5))
rates, alphas = np.linspace(0.01, 0.5, side), np.geomspace(1, 100, points // side)
w = jt.default_workload()
t = time.perf_counter()
if out == "-":
    df = jt.sweeps.sweep(w, arrival_rate=rates, alpha=alphas, quiet=True)
    n = len(df)
else:
    run = jt.sweeps.sweep(w, arrival_rate=rates, alpha=alphas, quiet=True, out=out)
    n = run.points
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({"points": n, "seconds": seconds, "peak_gib": peak}))
"""


def measure(points: int, out: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(points), out], capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=20_000_000)
    ap.add_argument("--compare", type=int, default=1_000_000)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rows = []
    try:
        rows.append(("in memory (DataFrame)", measure(a.compare, "-")))
        rows.append(("streamed (out=DIR)", measure(a.compare, str(tmp / "small"))))
        big = measure(a.points, str(tmp / "big"))
        size = sum(p.stat().st_size for p in (tmp / "big").iterdir()) / 1024**3
        rows.append((f"streamed (out=DIR), {size:.2f} GiB on disk", big))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = Table(
        title="Sweep of the default workload (arrival rate x alpha), float64, one process"
    )
    for col in ("mode", "points", "wall time incl. compile (s)", "points/s", "peak RSS (GiB)"):
        table.add_column(col, justify="right")
    for name, r in rows:
        table.add_row(
            name,
            f"{r['points']:,}",
            f"{r['seconds']:.1f}",
            f"{r['points'] / r['seconds']:,.0f}",
            f"{r['peak_gib']:.2f}",
        )
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
