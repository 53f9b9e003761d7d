"""A sweep on disk: a partitioned Parquet dataset that is written as it computes.

Layout of a sweep directory:

- `_manifest.json`: what the sweep is (grids, base workload, dtype, chunk size, number of
  points and parts, package and JAX versions) and its `fingerprint`, a hash of everything
  that determines its rows. Written once, atomically, before any part.
- `part-00000.parquet`, `part-00001.parquet`, ...: chunk `i` holds points
  `[i * chunk_size, (i + 1) * chunk_size)` of the grid in C order, with a `point` column (the
  global index), the grid values and the results. Each part is written under a temporary
  name and renamed into place, so a part that exists is complete; a part is never rewritten.

- `.lock`: held (an OS-level lock) by the process writing the sweep; a second writer is
  refused with the holder's process id.

A sweep that stops at any moment leaves only whole parts (and perhaps a temporary file,
removed on resume). Resuming with the same arguments computes exactly the parts that are
missing; the fingerprint refuses a different sweep in the same directory unless forced.
Every part records the manifest's fingerprint, its index and its row count: a part that is
damaged (truncated, unreadable) or not this sweep's is recomputed by a resume and refused,
naming it, by every reader; a manifest that does not parse or does not agree with itself is
refused in one line. pandas, pyarrow, DuckDB, Polars, Dask and Spark read the directory as
one table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .._errors import InputError
from .._version import __version__

__all__ = [
    "MANIFEST",
    "FORMAT",
    "SweepDirectory",
    "read_sweep",
    "part_name",
    "part_rows",
    "LOCK",
]

MANIFEST = "_manifest.json"
LOCK = ".lock"
FORMAT = "jaxopt_tokens.sweep/1"  # a format name written in every dataset: never renamed
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
# the package's own temporaries: of a part or of the manifest (`_write_atomically`)
_TEMPORARY = re.compile(r"^\.(part-\d{5,}\.parquet|_manifest\.json)\.[0-9a-f]+\.tmp$")
_MANIFEST_FIELDS = {
    "fingerprint": str,
    "grids": dict,
    "workload": dict,
    "dtype": str,
    "part_size": int,
    "points": int,
    "parts": int,
}


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            "writing or reading a sweep directory needs pyarrow: pip install pyarrow"
        ) from None
    return pa, pq


def fingerprint(description: dict[str, Any]) -> str:
    """A hash of everything that determines a sweep's rows (not versions or timings)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:  # name the file (a full disk under pyarrow says only "writing bytes")
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_manifest(data: Any, file: Path) -> dict:
    """`data` if it is a whole, self-consistent manifest; else one-line `InputError`."""

    def bad(why: str) -> InputError:
        return InputError(f"{file}: not a valid sweep manifest ({why}); recompute with --force")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{file}: not a jaxopt_tokens sweep manifest (format {FORMAT})")
    for key, kind in _MANIFEST_FIELDS.items():
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise bad(f"'{key}' must be a {kind.__name__}, got {value!r}"[:200])
        if isinstance(value, int) and value < 1:
            raise bad(f"'{key}' must be >= 1, got {value}")
    if data["parts"] != math.ceil(data["points"] / data["part_size"]):
        raise bad(
            f"{data['parts']} parts do not hold {data['points']} points of {data['part_size']}"
        )
    return data


def part_rows(manifest: dict, index: int) -> int:
    """How many rows part `index` of the sweep holds."""
    return min(manifest["part_size"], manifest["points"] - index * manifest["part_size"])


class SweepDirectory:
    """One sweep's directory: the manifest and which parts exist (module docstring)."""

    def __init__(self, path: str | Path):
        if str(path) == "":
            raise InputError("out: the path is empty")
        self.path = Path(path)

    # ---------------------------------------------------------------- state

    def manifest(self) -> dict | None:
        file = self.path / MANIFEST
        if not file.is_file():
            return None
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise InputError(f"{file}: not a sweep manifest ({e})") from None
        return _check_manifest(data, file)

    def parts(self) -> set[int]:
        """Indices of the parts present (complete by construction)."""
        if not self.path.is_dir():
            return set()
        return {int(m.group(1)) for p in self.path.iterdir() if (m := _PART.match(p.name))}

    def part_problem(self, manifest: dict, index: int) -> str | None:
        """Why the file of part `index` is not a whole part of this sweep (None if it is):
        unreadable or truncated, another sweep's (fingerprint), another part, or the wrong
        number of rows. Reads the file's footer only."""
        _, pq = _pyarrow()
        try:
            meta = pq.read_metadata(self.path / part_name(index))
            stored = json.loads((meta.metadata or {}).get(b"jaxopt_tokens", b"{}"))
        except Exception as e:  # noqa: BLE001 (pyarrow raises its own types for damage)
            return f"unreadable ({' '.join(str(e).split())[:120]})"
        if not isinstance(stored, dict) or stored.get("fingerprint") != manifest["fingerprint"]:
            return "written by another sweep (its fingerprint differs)"
        if stored.get("part") != index:
            return f"it is part {stored.get('part')!r} of the sweep, not part {index}"
        expected = part_rows(manifest, index)
        if meta.num_rows != expected or stored.get("rows", expected) != expected:
            return f"{meta.num_rows} rows where part {index} holds {expected}"
        return None

    def verified_parts(self, manifest: dict) -> tuple[set[int], dict[int, str]]:
        """`(good, bad)`: the parts present that are this sweep's and whole, and why each
        other part file present is not."""
        good, bad = set(), {}
        for i in sorted(self.parts()):
            if i >= manifest["parts"]:
                bad[i] = f"the sweep has only {manifest['parts']} parts"
            elif (why := self.part_problem(manifest, i)) is not None:
                bad[i] = why
            else:
                good.add(i)
        return good, bad

    @contextlib.contextmanager
    def lock(self):
        """Hold the directory's writer lock (an OS-level `flock` on `.lock`) for the block;
        `InputError` naming the holder's process id when another process holds it."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"out {self.path}: is a file, not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no flock on this platform: one writer is the caller's duty
            yield
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise InputError(
                    f"out {self.path}: another process (pid {holder}) is writing a sweep here; "
                    "wait for it to finish, or write to another directory"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _ours(self, name: str) -> bool:
        return name in (MANIFEST, LOCK) or bool(_PART.match(name) or _TEMPORARY.match(name))

    # ---------------------------------------------------------------- opening

    def prepare(self, manifest: dict, *, resume: bool, force: bool, writer: bool) -> set[int]:
        """Check the directory against `manifest`; return the parts still to compute.

        Refused (InputError, naming the directory): a file in the way; a directory holding
        other files; another sweep (a different fingerprint) unless `force`; this sweep, begun
        or done, unless `resume` (or `force`, which starts it again). `writer` (process 0)
        writes the manifest and clears what `force` replaces; other processes only check.
        """
        p = self.path
        if p.exists() and not p.is_dir():
            raise InputError(f"out {p}: is a file, not a directory")
        existing = self.manifest() if p.is_dir() else None
        foreign = (
            sorted(x.name for x in p.iterdir() if not self._ours(x.name)) if p.is_dir() else []
        )
        if foreign and not force:
            raise InputError(
                f"out {p}: the directory holds files that are not a sweep ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); pass --force to write into it anyway"
            )
        done = self.verified_parts(existing)[0] if existing is not None else self.parts()
        if existing is not None and existing["fingerprint"] != manifest["fingerprint"]:
            if not force:
                same = all(
                    existing[k] == manifest[k] for k in ("grids", "workload", "dtype", "points")
                )
                if same and existing["part_size"] != manifest["part_size"]:
                    raise InputError(
                        f"out {p}: holds this sweep in parts of {existing['part_size']:,} points "
                        f"(asked: {manifest['part_size']:,}); resume with --chunk-size "
                        f"{existing['part_size']}, or pass --force to recompute it"
                    )
                raise InputError(
                    f"out {p}: holds a different sweep (grids {list(existing['grids'])}, "
                    f"{existing['points']:,} points); pass --force to replace it"
                )
            existing, done = None, set()
        elif existing is None and done and not force:
            raise InputError(f"out {p}: holds sweep parts without a manifest; pass --force")
        elif existing is not None and not resume:
            if not force:
                state = (
                    "complete"
                    if len(done) >= manifest["parts"]
                    else (f"{len(done)} of {manifest['parts']} parts done")
                )
                raise InputError(
                    f"out {p}: already holds this sweep ({state}); pass --resume to complete "
                    "it or --force to compute it again"
                )
            existing, done = None, set()
        if existing is None:
            done = set()
            if writer:
                p.mkdir(parents=True, exist_ok=True)
                for x in p.iterdir():
                    if self._ours(x.name) and x.name != LOCK:
                        x.unlink()
                _write_atomically(
                    p / MANIFEST, lambda t: t.write_text(json.dumps(manifest, indent=2) + "\n")
                )
        elif writer:
            for x in p.iterdir():  # temporary files of an interrupted run
                if _TEMPORARY.match(x.name):
                    x.unlink(missing_ok=True)
            for i in self.verified_parts(existing)[1]:  # damaged or foreign: computed again
                (p / part_name(i)).unlink(missing_ok=True)
        return set(range(manifest["parts"])) - done

    # ---------------------------------------------------------------- writing

    def write_part(self, index: int, columns: dict[str, np.ndarray], fingerprint: str) -> Path:
        pa, pq = _pyarrow()
        table = pa.table(columns)
        stamp = {"fingerprint": fingerprint, "part": index, "rows": table.num_rows}
        table = table.replace_schema_metadata({b"jaxopt_tokens": json.dumps(stamp).encode()})
        target = self.path / part_name(index)
        _write_atomically(target, lambda t: pq.write_table(table, t))
        return target


def read_sweep(path: str | Path, *, columns: list[str] | None = None, lazy: bool = False) -> Any:
    """The table of a sweep directory written by `sweep(..., out=path)`.

    Args:
        path: the sweep directory.
        columns: read only these (`point` and the grid columns are always available).
        lazy: return a `pyarrow.dataset.Dataset` instead of reading.

    Returns:
        A pandas DataFrame in grid order (the `point` column is the index into the grid),
            with the manifest in `df.attrs["sweep"]` and the base workload in
            `df.attrs["workload"]`; `status` is a categorical.

    Raises `InputError` when the directory is not a sweep or is incomplete (it names the
    missing parts and says to resume).
    """
    pa, pq = _pyarrow()
    import pyarrow.dataset as ds

    d = SweepDirectory(path)
    manifest = d.manifest()
    if manifest is None:
        raise InputError(f"{path}: not a sweep directory (no {MANIFEST})")
    good, bad = d.verified_parts(manifest)
    if bad:
        i, why = next(iter(sorted(bad.items())))
        raise InputError(
            f"{Path(path) / part_name(i)}: not part {i} of this sweep ({why})"
            + (f", and {len(bad) - 1} other part(s)" if len(bad) > 1 else "")
            + "; run the same sweep again with --resume to recompute it"
        )
    missing = sorted(set(range(manifest["parts"])) - good)
    if missing:
        head = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise InputError(
            f"{path}: the sweep is incomplete: {len(missing)} of {manifest['parts']} parts "
            f"missing ({head}); run the same sweep again with --resume"
        )
    files = [str(Path(path) / part_name(i)) for i in range(manifest["parts"])]
    dataset = ds.dataset(files, format="parquet")
    if lazy:
        return dataset
    if columns is not None:
        unknown = sorted(set(columns) - set(dataset.schema.names))
        if unknown:
            raise InputError(f"{path}: no column(s) {unknown}; columns: {dataset.schema.names}")
        columns = list(dict.fromkeys(["point", *columns]))
    df = dataset.to_table(columns=columns).to_pandas()
    if "status" in df:
        df["status"] = df["status"].astype("category")
    df = df.sort_values("point", kind="stable").reset_index(drop=True)
    df.attrs["sweep"] = manifest
    df.attrs["workload"] = manifest.get("workload")
    return df


def versions() -> dict[str, str]:
    return {"jaxopt_tokens": __version__, "jax": jax.__version__}
