"""Sensitivity surfaces in one pass: every combination of parameter grids, solved batched.

`sweep(w, arrival_rate=[...], alpha=[...], b__GSM8K=[...])` solves all combinations with one
compiled `jit(vmap(solve))`, in fixed-size chunks (the last one padded, so nothing recompiles and
memory stays bounded), with the batch axis sharded over every local device
(`jax.sharding.NamedSharding`). Results come back as a tidy pandas DataFrame, one row per point.

Multi-host: start each process with `jax.distributed.initialize()`; `jax.local_devices()` then
lists that host's devices, and giving each host its own slice of the grid (for example
`alpha=alphas[jax.process_index()::jax.process_count()]`) runs the hosts independently.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from rich.progress import Progress

from .._errors import InputError
from .._integer import integer_budgets
from .._io import workload_to_dict
from .._objective import mean_accuracy, mean_system_time, mean_wait, utilization
from .._solver.solve import solve
from .._status import Status
from .._validate import PER_TASK_FIELDS, SCALAR_FIELDS, check_memory
from .._version import __version__
from .._workload import Workload

__all__ = ["sweep", "write_sweep", "read_sweep_metadata", "TRACE_COUNT"]

TRACE_COUNT = {"sweep_chunk": 0}  # incremented when the chunk function is traced (tests check it)


def _parse_grid(w: Workload, name: str) -> tuple[str, int | None]:
    """`alpha` -> ('alpha', None); `b__GSM8K` -> ('b', index of GSM8K)."""
    if "__" in name:
        field, task = name.split("__", 1)
        if field not in PER_TASK_FIELDS:
            raise InputError(f"'{name}': '{field}' is not a per-task field {PER_TASK_FIELDS}")
        names = w.task_names
        if task not in names:
            raise InputError(f"'{name}': no task named '{task}' (tasks: {', '.join(names)})")
        return field, names.index(task)
    if name not in SCALAR_FIELDS:
        raise InputError(
            f"'{name}' is not a sweepable field: use {SCALAR_FIELDS} or <field>__<task> "
            f"with field in {PER_TASK_FIELDS}"
        )
    return name, None


@functools.partial(jax.jit, static_argnums=0)
def _solve_chunk(specs: tuple, w: Workload, values):
    """Solve one chunk of grid points; compiled once per (grid spec, workload shape, chunk size)."""
    TRACE_COUNT["sweep_chunk"] += 1

    def member(row):
        changes: dict[str, Any] = {}
        for (field, k), v in zip(specs, row):
            base = changes.get(field, getattr(w, field))
            changes[field] = v if k is None else base.at[k].set(v)
        return w.replace(**changes)

    def point(sol, wp):
        ok = sol.status == Status.CONVERGED
        tokens = jnp.where(ok, sol.tokens, 0)
        return {
            "tokens": sol.tokens,
            "tokens_int": jnp.where(ok, integer_budgets(tokens, wp), jnp.nan),
            "objective": sol.objective,
            "accuracy": jnp.where(ok, mean_accuracy(tokens, wp), jnp.nan),
            "mean_wait": jnp.where(ok, mean_wait(tokens, wp), jnp.nan),
            "mean_system_time": jnp.where(ok, mean_system_time(tokens, wp), jnp.nan),
            "utilization": jnp.where(ok, utilization(tokens, wp), jnp.nan),
            "status": sol.status,
            "residual": sol.residual,
        }

    batch = jax.vmap(member)(values)
    # one batched solve (large chunks are solved in stages, see _staged.py), then per point
    return jax.vmap(point)(solve(batch), batch)


def sweep(
    workload: Workload,
    *,
    chunk_size: int = 65_536,
    quiet: bool = False,
    devices: list | None = None,
    **grids,
):
    """Solve every combination of the given grids; returns a pandas DataFrame.

    **Arguments:** `workload` (the base point); `grids`: `field=values` for a scalar field
    (`arrival_rate`, `alpha`, `max_tokens`) or `<field>__<task>=values` for one task's `A, b, D,
    t0, c, share`; `chunk_size` (points per compiled call; a multiple of the device count);
    `quiet` (no progress bar); `devices` (default: all local devices).

    **Returns:** one row per point: the grid values, `l_<task>` and `l_int_<task>` per task,
    `objective`, `accuracy`, `mean_wait`, `mean_system_time`, `utilization`, `status` (name),
    `residual`. Members that fail keep their row, with their status and NaN results.
    """
    import pandas as pd

    if not grids:
        raise InputError("give at least one grid, e.g. sweep(w, alpha=np.geomspace(1, 100, 50))")
    specs = [_parse_grid(workload, name) for name in grids]
    axes = []
    for name, v in grids.items():
        try:
            axis = np.asarray(v, dtype=np.float64).ravel()
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{name}: expected a sequence of numbers, got {v!r}") from None
        if axis.size == 0:
            raise InputError(f"{name}: the grid is empty; give at least one value")
        axes.append(axis)
    points = math.prod(a.size for a in axes)
    # the table holds ~ (3 N + 10) float64 columns per point, a few copies while it is built
    check_memory(
        3.0 * 8 * points * (3 * workload.num_tasks + 10) + 8 * points * len(axes),
        f"a sweep of {points:,} points",
        "use coarser grids or split the sweep",
    )
    mesh_values = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)
    total = mesh_values.shape[0]
    devices = devices or jax.local_devices()
    n_dev = len(devices)
    chunk_size = max(n_dev, min(chunk_size, -(-total // n_dev) * n_dev))
    chunk_size = -(-chunk_size // n_dev) * n_dev
    dtype = workload.dtype
    mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    specs = tuple(specs)
    outputs = []
    starts = list(range(0, total, chunk_size))
    progress = None
    if not quiet and len(starts) > 1:
        progress = Progress(transient=True)
        task = progress.add_task(f"solving {total:,} points", total=len(starts))
        progress.start()
    try:
        for start in starts:
            block = mesh_values[start : start + chunk_size]
            pad = chunk_size - block.shape[0]
            if pad:
                block = np.concatenate([block, np.repeat(block[-1:], pad, axis=0)])
            values = jax.device_put(jnp.asarray(block, dtype), sharding)
            out = jax.device_get(_solve_chunk(specs, workload, values))
            outputs.append({k: v[: chunk_size - pad] for k, v in out.items()})
            if progress is not None:
                progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
    merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    names = workload.task_names
    frame = {name: mesh_values[:, i] for i, name in enumerate(grids)}
    for k, name in enumerate(names):
        frame[f"l_{name}"] = merged["tokens"][:, k]
    for k, name in enumerate(names):
        frame[f"l_int_{name}"] = merged["tokens_int"][:, k]
    for key in (
        "objective",
        "accuracy",
        "mean_wait",
        "mean_system_time",
        "utilization",
        "residual",
    ):
        frame[key] = merged[key]
    frame["status"] = pd.Categorical.from_codes(  # pyright: ignore[reportArgumentType]
        merged["status"].astype(int), [s.name.lower() for s in Status]
    )
    df = pd.DataFrame(frame)
    df.attrs["workload"] = workload_to_dict(workload)
    return df


def write_sweep(df, path: str | Path) -> list[Path]:
    """Write a sweep to `path` (.csv) and, when pyarrow is installed, next to it as .parquet;
    both carry the base workload and the package version as metadata."""

    path = Path(path)
    meta = {"jaxopt_tokens_version": __version__, "workload": df.attrs.get("workload")}
    written = []
    csv = path.with_suffix(".csv")
    with open(csv, "w") as fh:
        fh.write(f"# jaxopt_tokens {__version__} sweep; metadata: {json.dumps(meta)}\n")
        df.to_csv(fh, index=False)
    written.append(csv)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"jaxopt_tokens": json.dumps(meta).encode()}
    )
    pq.write_table(table, path.with_suffix(".parquet"))
    written.append(path.with_suffix(".parquet"))
    return written


def read_sweep_metadata(path: str | Path) -> dict:
    """The metadata `write_sweep` stored in a .csv or .parquet file."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return json.loads(pq.read_schema(path).metadata[b"jaxopt_tokens"])
    first = path.open().readline()
    return json.loads(first.split("metadata: ", 1)[1])
