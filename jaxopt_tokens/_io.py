"""Reading and writing workloads as TOML or JSON; the packaged Table I default.

File layout (TOML; JSON uses the same keys):

```toml
arrival_rate = 0.1
alpha = 30.0
max_tokens = 32768
[[tasks]]
name = "GSM8K"
A = 0.723
b = 3.2e-3
D = 0.277
t0 = 0.1459
c = 0.0141
share = 0.5        # optional: omitted in every task means equal shares
```
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jax.typing import DTypeLike

from ._errors import InputError, WorkloadError
from ._files import parse_number, read_text
from ._validate import PER_TASK_FIELDS, SCALAR_FIELDS
from ._workload import Workload, server_rules

__all__ = [
    "default_workload",
    "load_workload",
    "workload_from_dict",
    "workload_to_dict",
    "dump_workload",
]

DEFAULT_WORKLOAD_FILE = "table1_qwen3_8b.toml"


def default_workload(dtype: DTypeLike | None = None) -> Workload:
    """The paper's Table I workload (Qwen3-8B, six task types, lambda=0.1, alpha=30).

    Args:
        dtype: the floating dtype (default: JAX's default float, float32 unless x64 is on).

    Returns:
        The Table I `Workload`.
    """
    text = (
        resources.files("jaxopt_tokens")
        .joinpath("data")
        .joinpath(DEFAULT_WORKLOAD_FILE)
        .read_text()
    )
    w = _parse(text, DEFAULT_WORKLOAD_FILE, "toml")
    return w if dtype is None else w.astype(dtype)


def load_workload(
    path: str | Path, dtype: DTypeLike | None = None, *, stability: bool = True, server: str = "mg1"
) -> Workload:
    """Load and validate a workload from a `.toml` or `.json` file.

    Raises `WorkloadError` (a `ValueError`) naming the file, the field, the task and, for
    TOML, the line of the task's `[[tasks]]` entry. `server` (`"mg1"` or `"batching"`) says
    which rules apply, as in `Workload.validate` (`stability=False` is `server="batching"`).

    Args:
        path: a `.toml` or `.json` workload file.
        dtype: the floating dtype (default: JAX's default float).
        stability: check that the queue is stable at zero tokens.
        server: `"mg1"` or `"batching"`: which validity rules apply.

    Returns:
        The validated `Workload`.
    """
    stability = stability and server_rules(server)
    text = read_text(path, "workload", WorkloadError)
    path = Path(path)
    fmt = "json" if path.suffix.lower() == ".json" else "toml"
    w = _parse(text, str(path), fmt, stability)
    return w if dtype is None else w.astype(dtype)


def _parse(text: str, source: str, fmt: str, stability: bool = True) -> Workload:
    try:
        data = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise WorkloadError(f"{source}: not valid {fmt.upper()}: {e}") from None
    task_lines = [
        i + 1
        for i, line in enumerate(text.splitlines())
        if re.match(r"\s*\[\[\s*tasks\s*\]\]", line)
    ]
    return workload_from_dict(data, source=source, task_lines=task_lines, stability=stability)


def workload_from_dict(
    data: dict[str, Any],
    *,
    source: str = "<dict>",
    task_lines: list[int] | None = None,
    stability: bool = True,
    server: str = "mg1",
) -> Workload:
    """Build and validate a workload from the file layout above (already parsed); `server`
    and `stability` as in `Workload.validate`.

    Args:
        data: the parsed file: scalar fields and a `tasks` list of per-task tables.
        source: the name errors give for the data (a file name).
        task_lines: the line of each task's entry in the source, for error messages.
        stability: check that the queue is stable at zero tokens.
        server: `"mg1"` or `"batching"`: which validity rules apply.

    Returns:
        The validated `Workload`.
    """
    stability = stability and server_rules(server)
    if not isinstance(data, dict):
        raise WorkloadError(f"{source}: the top level must be a table/object")
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise WorkloadError(f"{source}: field 'tasks' must be a non-empty list of task tables")
    allowed = set(SCALAR_FIELDS) | {"tasks", "name", "description"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise WorkloadError(
            f"{source}: unknown top-level field(s) {extra}; expected {sorted(allowed)}"
        )
    scalars = {}
    for f in SCALAR_FIELDS:
        if f not in data:
            raise WorkloadError(f"{source}: missing field '{f}'")
        scalars[f] = parse_number(
            data[f], f"{source}: field '{f}'", finite=False, error=WorkloadError
        )

    def where(k: int, name: str) -> str:
        line = f", line {task_lines[k]}" if task_lines and k < len(task_lines) else ""
        return f"{source}{line}: task '{name}' (entry {k + 1})"

    columns: dict[str, list[float]] = {f: [] for f in PER_TASK_FIELDS}
    names = []
    has_share = []
    for k, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise WorkloadError(f"{source}: entry {k + 1} of 'tasks' must be a table/object")
        name = str(task.get("name", f"task{k}"))
        names.append(name)
        extra = sorted(set(task) - set(PER_TASK_FIELDS) - {"name"})
        if extra:
            raise WorkloadError(f"{where(k, name)}: unknown field(s) {extra}")
        for f in PER_TASK_FIELDS:
            if f == "share" and f not in task:
                continue
            if f not in task:
                raise WorkloadError(f"{where(k, name)}: missing field '{f}'")
            columns[f].append(
                parse_number(
                    task[f], f"{where(k, name)}: field '{f}'", finite=False, error=WorkloadError
                )
            )
        has_share.append("share" in task)
    if not any(has_share):
        columns["share"] = [1.0 / len(tasks)] * len(tasks)
    elif not all(has_share):
        k = has_share.index(False)
        raise WorkloadError(
            f"{where(k, names[k])}: missing field 'share' (give it for every task or none)"
        )
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise WorkloadError(f"{source}: task name '{dup}' appears more than once")
    w = Workload(
        **{f: np.asarray(v, dtype=np.float64) for f, v in columns.items()},
        **scalars,
        names=tuple(names),
    )
    try:
        return w.validate(stability)
    except WorkloadError as e:
        msg = str(e)
        m = re.search(r"task '([^']*)'", msg)
        if m and m.group(1) in names and task_lines:
            k = names.index(m.group(1))
            if k < len(task_lines):
                msg = msg.replace(
                    f"task '{m.group(1)}'", f"task '{m.group(1)}' (line {task_lines[k]})", 1
                )
        raise WorkloadError(f"{source}: {msg}") from None


def workload_to_dict(w: Workload) -> dict[str, Any]:
    """The file layout of a single (unbatched) workload, with plain Python floats.

    Args:
        w: an unbatched workload.

    Returns:
        The dictionary `workload_from_dict` reads back.
    """
    if w.batch_shape:
        raise InputError("workload_to_dict takes a single workload, not a batch")
    out: dict[str, Any] = {f: float(getattr(w, f)) for f in SCALAR_FIELDS}
    cols = {f: np.asarray(getattr(w, f), dtype=np.float64) for f in PER_TASK_FIELDS}
    out["tasks"] = [
        {"name": name, **{f: float(cols[f][k]) for f in PER_TASK_FIELDS}}
        for k, name in enumerate(w.task_names)
    ]
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)
    return str(v)


def dump_workload(w: Workload, path: str | Path | None = None, *, header: str = "") -> str:
    """Write a workload as TOML (to `path` if given) and return the text; `load_workload` reads
    it.

    Args:
        w: an unbatched workload.
        path: where to write the TOML (not written when None).
        header: comment lines put at the top of the file.

    Returns:
        The TOML text.
    """
    d = workload_to_dict(w)
    lines = [f"# {h}" for h in header.splitlines()] if header else []
    lines += [f"{f} = {_toml_value(d[f])}" for f in SCALAR_FIELDS]
    for task in d["tasks"]:
        lines += ["", "[[tasks]]"] + [f"{k} = {_toml_value(v)}" for k, v in task.items()]
    text = "\n".join(lines) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text
