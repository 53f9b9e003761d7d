"""Sensitivity surfaces in one pass: every combination of parameter grids, solved batched.

`sweep(w, arrival_rate=[...], alpha=[...], b__GSM8K=[...])` solves all combinations with one
compiled `jit(vmap(solve))`, in fixed-size chunks (the last one padded, so nothing recompiles),
with the batch axis sharded over every local device (`jax.sharding.NamedSharding`). Grid
values are generated per chunk from the point index, so nothing of the size of the grid is
ever held in memory.

- Without `out`, the result is a tidy pandas DataFrame, one row per point.
- With `out="DIR"`, each finished chunk is written as one Parquet part of a dataset in `DIR`
  (`dataset.py`) while the next chunk computes, so memory stays flat whatever the grid size;
  `resume=True` computes only the parts that are missing after an interruption, and
  `read_sweep("DIR")` reads the table back.
- Under `jax.distributed.initialize()` one call spans every process: the parts still to do
  are dealt out by `jax.process_index()` / `jax.process_count()`, every process solves its
  parts on its own devices and writes them into the shared directory, and process 0 shows one
  progress bar for the whole sweep (it counts the parts on disk). The result is the same,
  part for part, as a one-process sweep.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

from .._errors import InputError
from .._files import read_text
from .._integer import integer_budgets
from .._io import workload_to_dict
from .._objective import mean_accuracy, mean_system_time, mean_wait, utilization
from .._solver.solve import solve
from .._status import Status
from .._validate import PER_TASK_FIELDS, SCALAR_FIELDS, check_memory
from .._version import __version__
from .._workload import Workload
from .dataset import FORMAT, SweepDirectory, fingerprint, versions

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["sweep", "SweepRun", "write_sweep", "read_sweep_metadata"]

STATUS_NAMES = [s.name.lower() for s in Status]
_GRID_VALUES_IN_MANIFEST = 10_000  # larger grids are recorded by size, range and hash
WARM_STRIDE = 8  # chunks are solved coarse to fine: every 8th point first, then all from them
WARM_MIN_POINTS = 4096  # below this, one cold solve of the chunk is as fast
WARM_AUTO_POINTS = 4_000_000  # warm_start=None: coarse to fine from this many grid points


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


@functools.partial(jax.jit, static_argnums=(0, 3))
def _solve_chunk(specs: tuple, w: Workload, values, warm_start: bool = True):
    """Solve one chunk of grid points; compiled once per (grid spec, workload shape, chunk size)."""

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
    # Coarse to fine: neighbouring points (consecutive in C order) have nearly equal budgets,
    # so every WARM_STRIDE-th point is solved first and starts its block (a warm start: the
    # answers and certificates are those of a cold solve, in fewer steps).
    # Each solve is batched, and large ones run in stages (see _solver/staged.py).
    size = values.shape[0]
    if warm_start and size >= WARM_MIN_POINTS:
        coarse = solve(jax.tree_util.tree_map(lambda x: x[::WARM_STRIDE], batch)).tokens
        sol = solve(batch, start=jnp.repeat(coarse, WARM_STRIDE, axis=0)[:size])
    else:
        sol = solve(batch)
    return jax.vmap(point)(sol, batch)


@dataclass(frozen=True)
class SweepRun:
    """What `sweep(..., out=DIR)` did in this process.

    Attributes:
        path: the sweep directory.
        points: points in the whole sweep.
        parts: parts in the whole sweep.
        computed: the parts this process computed.
        skipped: the parts already on disk.
    """

    path: Path
    points: int  # points in the whole sweep
    parts: int  # parts in the whole sweep
    computed: tuple[int, ...]  # the parts this process computed and wrote
    skipped: int  # parts that were already on disk (resume)

    @property
    def complete(self) -> bool:
        """Whether every part of the sweep is on disk now."""
        return len(SweepDirectory(self.path).parts()) >= self.parts


class _Grid:
    """The grid's axes and the mapping from point index to values (C order)."""

    def __init__(self, workload: Workload, grids: dict):
        if not grids:
            raise InputError(
                "give at least one grid, e.g. sweep(w, alpha=np.geomspace(1, 100, 50))"
            )
        self.names = list(grids)
        self.specs = tuple(_parse_grid(workload, name) for name in grids)
        self.axes = []
        for name, v in grids.items():
            try:
                axis = np.asarray(v, dtype=np.float64).ravel()
            except (TypeError, ValueError, OverflowError):
                raise InputError(f"{name}: expected a sequence of numbers, got {v!r}") from None
            if axis.size == 0:
                raise InputError(f"{name}: the grid is empty; give at least one value")
            self.axes.append(axis)
        self.shape = tuple(a.size for a in self.axes)
        self.total = math.prod(self.shape)

    def values(self, start: int, stop: int) -> np.ndarray:
        coords = np.unravel_index(np.arange(start, stop), self.shape)
        return np.stack([a[c] for a, c in zip(self.axes, coords)], axis=1)

    def describe(self) -> dict:
        out = {}
        for name, a in zip(self.names, self.axes):
            entry: dict[str, Any] = {
                "size": int(a.size),
                "min": float(a.min()),
                "max": float(a.max()),
                "sha256": hashlib.sha256(a.tobytes()).hexdigest()[:32],
            }
            if a.size <= _GRID_VALUES_IN_MANIFEST:
                entry["values"] = a.tolist()
            out[name] = entry
        return out


def _columns(grid: _Grid, names, start: int, values: np.ndarray, out: dict) -> dict:
    """One chunk's table columns (numpy), in the order of the DataFrame."""
    n = values.shape[0]
    cols: dict[str, np.ndarray] = {"point": np.arange(start, start + n, dtype=np.int64)}
    for i, name in enumerate(grid.names):
        cols[name] = values[:, i]
    for k, name in enumerate(names):
        cols[f"l_{name}"] = out["tokens"][:n, k]
    for k, name in enumerate(names):
        cols[f"l_int_{name}"] = out["tokens_int"][:n, k]
    for key in ("objective", "accuracy", "mean_wait", "mean_system_time", "utilization"):
        cols[key] = out[key][:n]
    cols["residual"] = out["residual"][:n]
    cols["status"] = np.asarray(STATUS_NAMES, dtype=object)[out["status"][:n].astype(int)]
    return cols


def _progress(quiet: bool, total: int):
    """A progress bar on standard error (none when `quiet`), saying "compiling" until the
    first part is done: the first part of a sweep also compiles its program."""
    if quiet:
        return None
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} points"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    progress.add_task(f"compiling, then solving {total:,} points", total=total, rate="")
    return progress


def _solving(progress, total: int) -> None:
    """The bar's text once a part is done (compiling is over)."""
    if progress is not None:
        progress.update(progress.task_ids[0], description=f"solving {total:,} points")


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@overload
def sweep(
    workload: Workload,
    *,
    chunk_size: int = ...,
    quiet: bool = ...,
    devices: list | None = ...,
    out: None = ...,
    resume: bool = ...,
    force: bool = ...,
    warm_start: bool | None = ...,
    **grids: ArrayLike,
) -> pd.DataFrame: ...


@overload
def sweep(
    workload: Workload,
    *,
    chunk_size: int = ...,
    quiet: bool = ...,
    devices: list | None = ...,
    out: str | Path,
    resume: bool = ...,
    force: bool = ...,
    warm_start: bool | None = ...,
    **grids: ArrayLike,
) -> SweepRun: ...


def sweep(
    workload: Workload,
    *,
    chunk_size: int = 65_536,
    quiet: bool = False,
    devices: list | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    warm_start: bool | None = None,
    **grids: ArrayLike,
) -> pd.DataFrame | SweepRun:
    """Solve every combination of the given grids: a pandas DataFrame, or a dataset on disk.

    Args:
        workload: the base point.
        **grids: `field=values` for a scalar field (`arrival_rate`, `alpha`, `max_tokens`)
            or `<field>__<task>=values` for one task's `A, b, D, t0, c, share`.
        chunk_size: points per compiled call and per part file.
        quiet: no progress bar (it is shown on standard error, on a terminal).
        devices: the devices to shard over (default: this process's devices).
        out: a directory: stream the sweep to a Parquet dataset there (module docstring).
        resume: complete the sweep already in `out`.
        force: replace whatever sweep is in `out`.
        warm_start: True: each chunk is solved coarse to fine, every 8th point first and the
            others started from it, which changes only the number of steps but compiles a
            second solver; False: every point from the solver's own start; None (default):
            True for grids of `WARM_AUTO_POINTS` points or more, where the saving outgrows
            the compilation (measured in `benchmarks/README.md`).

    Returns:
        without `out`, one row per point: the grid values, `l_<task>` and `l_int_<task>`
        per task, `objective`, `accuracy`, `mean_wait`, `mean_system_time`, `utilization`,
        `status` (name), `residual`; members that fail keep their row, with their status and
        NaN results. With `out`, a `SweepRun` (read the table with `read_sweep`).
    """
    # the table needs pandas, a sweep on disk pyarrow: refused before anything is solved
    _require("pandas", "a sweep's table is a pandas DataFrame")
    if out is not None:
        _require("pyarrow", "a sweep on disk is a Parquet dataset")
    grid = _Grid(workload, grids)
    if warm_start is None:
        warm_start = grid.total >= WARM_AUTO_POINTS
    if not isinstance(warm_start, bool):
        raise InputError(f"warm_start must be True, False or None, got {warm_start!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size}")
    devices = devices or jax.local_devices()
    n_dev = len(devices)
    part_size = int(min(chunk_size, grid.total))
    padded = -(-part_size // n_dev) * n_dev  # every compiled call has this many members
    mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    dtype = workload.dtype
    parts = -(-grid.total // part_size)
    names = workload.task_names

    def dispatch(i: int):
        start = i * part_size
        values = grid.values(start, min(start + part_size, grid.total))
        block = values
        if values.shape[0] < padded:
            block = np.concatenate([values, np.repeat(values[-1:], padded - values.shape[0], 0)])
        result = _solve_chunk(
            grid.specs, workload, jax.device_put(jnp.asarray(block, dtype), sharding), warm_start
        )
        return i, start, values, result

    def finish(job) -> dict:
        i, start, values, result = job
        return _columns(grid, names, start, values, jax.device_get(result))

    def pipeline(todo, done_callback):
        pending = None  # the next chunk is dispatched before the previous one is collected
        for i in todo:
            job = dispatch(i)
            if pending is not None:
                done_callback(pending[0], finish(pending))
            pending = job
        if pending is not None:
            done_callback(pending[0], finish(pending))

    if out is None:
        # the table holds ~ (3 N + 10) float64 columns per point, a few copies while it is built
        check_memory(
            3.0 * 8 * grid.total * (3 * workload.num_tasks + 10) + 8 * grid.total * len(grid.axes),
            f"a sweep of {grid.total:,} points",
            "use coarser grids, split the sweep, or stream it to disk with out=DIR",
        )
        chunks: list[dict] = []
        progress = _progress(quiet, grid.total)
        if progress is not None:
            progress.start()
        try:

            def keep(i, cols):
                chunks.append(cols)
                if progress is not None:
                    _solving(progress, grid.total)
                    progress.advance(progress.task_ids[0], len(cols["point"]))

            pipeline(range(parts), keep)
        finally:
            if progress is not None:
                progress.stop()
        return _frame(chunks, workload)

    description = {
        "grids": grid.describe(),
        "workload": workload_to_dict(workload),
        "dtype": str(np.dtype(dtype)),
        "part_size": part_size,
        "points": grid.total,
    }
    manifest = {
        "format": FORMAT,
        "fingerprint": fingerprint(description),
        **description,
        "parts": parts,
        "columns": list(_columns(grid, names, 0, grid.values(0, 1), _dummy(names)).keys()),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "processes": jax.process_count(),
    }
    directory = SweepDirectory(out)
    rank, size = jax.process_index(), jax.process_count()
    with contextlib.ExitStack() as held:
        if rank == 0:  # one writer a directory: a second sweep into it is refused, naming us
            held.enter_context(directory.lock())
        _barrier("jaxopt_tokens.sweeps.sweep: check")
        todo = directory.prepare(manifest, resume=resume, force=force, writer=False)
        _barrier("jaxopt_tokens.sweeps.sweep: checked")
        if rank == 0:
            directory.prepare(manifest, resume=resume, force=force, writer=True)
        _barrier("jaxopt_tokens.sweeps.sweep: prepared")
        mine = sorted(todo)[rank::size]
        skipped = parts - len(todo)
        progress = _progress(quiet or rank != 0, grid.total)
        rows_of = [min(part_size, grid.total - i * part_size) for i in range(parts)]
        begun = time.perf_counter()
        computed: list[int] = []

        def write(i, cols):
            directory.write_part(i, cols, manifest["fingerprint"])
            computed.append(i)
            if progress is not None:
                _solving(progress, grid.total)
                on_disk = directory.parts()
                done = sum(rows_of[j] for j in on_disk if j < parts)
                new = done - sum(rows_of[j] for j in range(parts) if j not in todo)
                rate = new / max(time.perf_counter() - begun, 1e-9)
                progress.update(progress.task_ids[0], completed=done, rate=f"{rate:,.0f} points/s")

        if progress is not None:
            progress.start()
            progress.update(
                progress.task_ids[0],
                completed=sum(rows_of[j] for j in range(parts) if j not in todo),
            )
        try:
            pipeline(mine, write)
        except BaseException as e:
            e.add_note(
                f"sweep into {directory.path}: process {rank} of {size} stopped after writing "
                f"{len(computed)} of its {len(mine)} parts; every finished part is kept. Run the "
                "same sweep again with resume=True (--resume) to compute only what is missing."
            )
            raise
        finally:
            if progress is not None:
                progress.stop()
        return SweepRun(
            path=directory.path,
            points=grid.total,
            parts=parts,
            computed=tuple(computed),
            skipped=skipped,
        )


def _dummy(names) -> dict:
    n = len(names)
    return {
        "tokens": np.zeros((1, n)),
        "tokens_int": np.zeros((1, n)),
        **{k: np.zeros(1) for k in ("objective", "accuracy", "mean_wait", "mean_system_time")},
        "utilization": np.zeros(1),
        "residual": np.zeros(1),
        "status": np.zeros(1, dtype=np.int32),
    }


def _require(module: str, why: str) -> None:
    """`ModuleNotFoundError` naming the extra that installs `module`, when it is missing."""
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"{why}: install the plots extra, python -m pip install 'jaxopt_tokens[plots]'",
            name=module,
        )


def _frame(chunks: list[dict], workload: Workload):
    import pandas as pd

    merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    merged.pop("point")
    status = merged.pop("status")
    frame = dict(merged)
    frame["status"] = pd.Categorical(status, categories=STATUS_NAMES)  # pyright: ignore[reportArgumentType]
    df = pd.DataFrame(frame)
    df.attrs["workload"] = workload_to_dict(workload)
    return df


def write_sweep(df: pd.DataFrame, path: str | Path) -> list[Path]:
    """Write a sweep to `path` as a plain .csv (what any CSV reader reads), its metadata (the
    base workload and the package version) beside it as `.meta.json`, and, when pyarrow is
    installed, as .parquet with the metadata inside. Missing folders are created.

    Args:
        df: the sweep's DataFrame.
        path: the file name without a suffix.

    Returns:
        The paths written.
    """

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"jaxopt_tokens_version": __version__, "workload": df.attrs.get("workload")}
    written = []
    csv = path.with_suffix(".csv")
    df.to_csv(csv, index=False)
    sidecar = path.with_suffix(".meta.json")
    sidecar.write_text(json.dumps(meta, allow_nan=False) + "\n")
    written += [csv, sidecar]
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
    """The metadata `write_sweep` stored in a .csv or .parquet file, or the manifest of a
    sweep directory (`sweep(..., out=DIR)`), checked: `InputError` when it is neither.

    Args:
        path: a sweep file or directory.

    Returns:
        The metadata: the base workload, the grids, the package version.
    """
    path = Path(path)
    if path.is_dir():
        manifest = SweepDirectory(path).manifest()
        if manifest is None:
            raise InputError(f"{path}: not a sweep directory (no _manifest.json)")
        return manifest
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            if not path.is_file():
                raise InputError(f"{path}: not a file")
            raw = (pq.read_schema(path).metadata or {}).get(b"jaxopt_tokens")
            if raw is None:
                raise InputError(f"{path}: no jaxopt_tokens metadata (not written by write_sweep)")
            data = json.loads(raw)
        else:
            sidecar = path if path.name.endswith(".meta.json") else path.with_suffix(".meta.json")
            if sidecar.is_file():
                data = json.loads(read_text(sidecar, "sweep metadata"))
            else:  # files of earlier versions carried it on their first line
                first = read_text(path, "sweep CSV").partition("\n")[0]
                if "metadata: " not in first:
                    raise InputError(
                        f"{path}: no metadata beside it ({sidecar.name}; not written by "
                        "write_sweep)"
                    )
                data = json.loads(first.split("metadata: ", 1)[1])
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 (damaged JSON or Parquet: pyarrow has its own types)
        why = " ".join(str(e).split())[:120]
        raise InputError(f"{path}: unreadable sweep metadata ({why})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the sweep metadata is not a JSON object")
    return data
