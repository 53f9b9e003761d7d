"""A learned, queue-aware policy served by the gateway, and the queue state it is read at.

`load_learned` reads the policy file `jaxopt-tokens learn -o` writes (budgets by task and by
the number of requests an arrival finds in the system) and checks it against the gateway's
workload. `engine_queue` reads that number from an engine's Prometheus metrics (requests
running plus waiting), so that several gateway replicas in front of one engine share one
view of its queue. Docs: *Budget gateway* (Serving a learned policy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._errors import InputError
from .._files import parse_number, read_text

__all__ = ["LearnedTable", "load_learned", "engine_queue", "QUEUE_METRICS"]

#: the engines' Prometheus gauges whose sum is the requests in the system (running, waiting)
QUEUE_METRICS = {
    "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
}


@dataclass(frozen=True)
class LearnedTable:
    """Budgets by the requests an arrival finds: row `s` of `table` (shape `(S + 1, N)`,
    tasks in the gateway's order) for `s` requests in the system, the last row for `S` or
    more. `replayed` holds the file's held-out replay of the policy (objective, mean system
    time, ...) when it has one.

    Attributes:
        source: the file the table came from.
        table: the budgets, shape `(S + 1, N)`.
        replayed: the held-out replay's statistics recorded in the file.
    """

    source: str
    table: np.ndarray
    replayed: dict[str, float]

    @property
    def states(self) -> int:
        return int(self.table.shape[0]) - 1

    def row(self, in_system: float) -> int:
        """The row of an arrival that finds `in_system` requests."""
        if not math.isfinite(in_system) or in_system <= 0:
            return 0
        return min(int(in_system), self.states)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def load_learned(
    path: str | Path, task_names: tuple[str, ...], max_tokens: np.ndarray
) -> LearnedTable:
    """The learned policy in `path` (`jaxopt-tokens learn -o`), its columns reordered to
    `task_names`; `InputError` naming the file and the field when it is not one: unknown or
    missing tasks, rows of the wrong length, budgets that are not finite, negative, above a
    task's `max_tokens`, or larger in a longer queue (the family is non-increasing).

    Args:
        path: the policy file.
        task_names: the gateway's tasks, in order.
        max_tokens: each task's budget cap.

    Returns:
        The `LearnedTable`.
    """
    source = str(path)
    text = read_text(path, "learned policy")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{source}: not valid JSON ({str(e)[:120]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object (jaxopt-tokens learn -o)")
    tasks, rows = data.get("tasks"), data.get("budgets_by_state")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise InputError(f"{source}: tasks: a list of task names")
    if len(set(tasks)) != len(tasks):
        raise InputError(f"{source}: tasks: a task is named twice")
    missing = [t for t in task_names if t not in tasks]
    extra = [t for t in tasks if t not in task_names]
    if missing or extra:
        what = "; ".join(
            ([f"missing {missing}"] if missing else [])
            + ([f"not in the workload: {extra}"] if extra else [])
        )
        raise InputError(
            f"{source}: tasks: {what} (the workload's tasks are {', '.join(task_names)})"
        )
    if not isinstance(rows, list) or not rows or len(rows) > 257:
        raise InputError(f"{source}: budgets_by_state: a list of 1 to 257 rows")
    table = np.zeros((len(rows), len(task_names)))
    order = [tasks.index(t) for t in task_names]
    cap = np.broadcast_to(np.asarray(max_tokens, dtype=float), (len(task_names),))
    for s, row in enumerate(rows):
        where = f"{source}: budgets_by_state[{s}]"
        if not isinstance(row, list) or len(row) != len(tasks):
            raise InputError(f"{where}: a list of {len(tasks)} budgets (one per task)")
        for j, k in enumerate(order):
            task = task_names[j]
            x = parse_number(row[k], f"{where}, task {task}", minimum=0.0)
            if x > cap[j]:
                raise InputError(f"{where}, task {task}: {x:g} is above max_tokens {cap[j]:g}")
            table[s, j] = x
    rising = np.argwhere(np.diff(table, axis=0) > 1e-9)
    if rising.size:
        s, j = (int(v) for v in rising[0])
        raise InputError(
            f"{source}: budgets_by_state[{s + 1}], task {task_names[j]}: {table[s + 1, j]:g} "
            f"tokens is above the row before ({table[s, j]:g}): a longer queue never gets a "
            "larger budget"
        )
    held = data.get("held_out", {})
    learned = held.get("learned", {}) if isinstance(held, dict) else {}
    replayed = {
        k: float(v)
        for k, v in (learned.items() if isinstance(learned, dict) else ())
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    return LearnedTable(source=source, table=table, replayed=replayed)


def engine_queue(text: str, engine: str) -> float | None:
    """Requests in the engine's system (running plus waiting, summed over its label sets)
    from its Prometheus exposition `text`, or None when neither gauge is in it or the
    text does not parse.

    Args:
        text: the engine's `/metrics` text.
        engine: `"vllm"` or `"sglang"`: which gauges are read.

    Returns:
        The requests in the engine's system, or None.
    """
    from prometheus_client.parser import text_string_to_metric_families

    names = set(QUEUE_METRICS[engine])
    total, seen = 0.0, False
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in names and math.isfinite(sample.value) and sample.value >= 0:
                    total += sample.value
                    seen = True
    except (ValueError, TypeError, IndexError):
        return None
    return total if seen else None
