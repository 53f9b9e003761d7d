r"""The one contract for a valid workload, checked eagerly and per batch member.

`RULES` lists every condition the model places on a workload (finite values, shares that
are a distribution, accuracy curves within [0, 1], positive slopes and rates, a queue stable
at zero tokens). The same rules are evaluated two ways:

- `check_values` on concrete arrays (host side, `Workload.validate()`, the loaders, the
  CLI): the first violation raises a `WorkloadError` naming the field, the task and the batch
  member;
- `member_status` on traced arrays (under `jit`/`vmap`; `validate_members` runs it once per
  solve): each member gets the `Status` of its first violated rule, so a member outside the
  model is never reported as converged, and `sanitise` swaps it for a harmless stand-in so
  the loops stay finite.

It also holds the eager checks shared by the other systems (`as_float_array`,
`check_finite`, `check_nonnegative`, `check_probability`). Docs: *Workloads and validity*.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from ._errors import InputError, WorkloadError
from ._status import Status

__all__ = [
    "PER_TASK_FIELDS",
    "SCALAR_FIELDS",
    "RULES",
    "share_tolerance",
    "check_values",
    "VALID",
    "member_status",
    "validate_members",
    "sanitise",
    "default_rtol",
    "as_float_array",
    "check_finite",
    "check_nonnegative",
    "check_probability",
    "PROBABILITY_SLACK",
    "is_concrete",
    "check_int",
    "check_memory",
    "check_key",
]

PER_TASK_FIELDS = ("A", "b", "D", "t0", "c", "share")
SCALAR_FIELDS = ("arrival_rate", "alpha", "max_tokens")
SHARE_TOLERANCE = 1e-6
PROBABILITY_SLACK = 1e-12


def share_tolerance(dtype, num_tasks: int) -> float:
    """How far the shares may sum from 1: 1e-6, or the rounding of an `N`-term sum in `dtype`."""
    return max(SHARE_TOLERANCE, 8 * num_tasks * float(jnp.finfo(dtype).eps))


def _accuracy_tolerance(dtype) -> float:
    return max(1e-12, 4 * float(jnp.finfo(dtype).eps))


class Rule(NamedTuple):
    """One condition: `bad(fields, dtype)` marks violations per task (shape `(..., N)`) or per
    member (shape `(...)`) with numpy or jax arrays alike; `status` is what a member gets;
    `explain(fields, index, dtype)`, where given, writes the eager message's explanation."""

    field: str
    what: str
    bad: Callable[[Mapping[str, Any], Any], Any]
    status: Status = Status.INVALID_INPUT
    explain: Callable[[Mapping[str, Any], tuple, Any], str] | None = None


def _zero_token_load(f):
    return f["arrival_rate"] * (f["share"] * f["t0"]).sum(axis=-1)


def _explain_share_sum(f, idx, dtype) -> str:
    total = f["share"].sum(axis=-1)[idx]
    tol = share_tolerance(dtype, f["share"].shape[-1])
    return (
        f"shares sum to {total:.9g}, they must sum to 1 (within {tol:g}); divide them by their sum"
    )


def _explain_unstable(f, idx, dtype) -> str:
    cap = 1.0 / (f["share"] * f["t0"]).sum(axis=-1)[idx]
    return (
        f"the queue is unstable even with zero reasoning tokens (utilization "
        f"{_zero_token_load(f)[idx]:.4g} >= 1); no budget can help. The arrival rate must be "
        f"below {cap:.6g} queries/s for these prefill times (this is the single M/G/1 "
        "server's rule; a workload for a batching server only: server='batching')"
    )


RULES: tuple[Rule, ...] = (
    Rule("share", "shares must be non-negative", lambda f, _: f["share"] < 0),
    Rule("A", "A must be >= 0", lambda f, _: f["A"] < 0),
    Rule("D", "D must be >= 0", lambda f, _: f["D"] < 0),
    Rule(
        "A",
        "A + D is the best attainable accuracy and must be <= 1",
        lambda f, dt: f["A"] + f["D"] > 1 + _accuracy_tolerance(dt),
    ),
    Rule("b", "b must be > 0", lambda f, _: f["b"] <= 0),
    Rule("c", "c (seconds per token) must be > 0", lambda f, _: f["c"] <= 0),
    Rule("t0", "t0 (seconds) must be >= 0", lambda f, _: f["t0"] < 0),
    Rule(
        "share",
        "shares must sum to 1",
        lambda f, dt: abs(f["share"].sum(axis=-1) - 1) > share_tolerance(dt, f["share"].shape[-1]),
        explain=_explain_share_sum,
    ),
    Rule("arrival_rate", "must be > 0", lambda f, _: f["arrival_rate"] <= 0),
    Rule("alpha", "must be > 0", lambda f, _: f["alpha"] <= 0),
    Rule("max_tokens", "must be >= 0", lambda f, _: f["max_tokens"] < 0),
    Rule(
        "arrival_rate",
        "the queue is unstable even with zero reasoning tokens",
        lambda f, _: _zero_token_load(f) >= 1,
        Status.UNSTABLE_INPUT,
        explain=_explain_unstable,
    ),
)


def _member(index: tuple[int, ...]) -> str:
    return f" (batch member {index})" if index else ""


def _first(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()


def _check_shapes(
    arrays: Mapping[str, np.ndarray], scalars: Mapping[str, np.ndarray], names
) -> None:
    a_shape = arrays["A"].shape
    n = a_shape[-1] if a_shape else 0
    batch = a_shape[:-1]
    for f, a in arrays.items():
        if a.ndim == 0:
            raise WorkloadError(f"field '{f}' must hold one value per task, got a scalar")
        if a.shape != a_shape:
            raise WorkloadError(
                f"field '{f}' has {a.shape[-1]} values but 'A' has {n}: every per-task field "
                "needs one value per task"
                if a.shape[:-1] == batch
                else f"field '{f}' has shape {a.shape}, expected {a_shape}"
            )
    if n == 0:
        raise WorkloadError("the workload has no tasks")
    for f, s in scalars.items():
        if s.shape != batch:
            raise WorkloadError(f"field '{f}' has shape {s.shape}, expected {batch}")
    if names and len(names) != n:
        raise WorkloadError(f"'names' has {len(names)} entries for {n} tasks")


def check_values(
    fields: Mapping[str, Any], names: tuple[str, ...], dtype, stability: bool = True
) -> None:
    """Raise `WorkloadError` at the first violation of `RULES` (concrete values only).
    `stability=False` skips the M/G/1 server's stability rule (for a workload served by
    another model, such as a batching server, which has its own)."""
    try:
        arrays = {f: np.asarray(fields[f], dtype=np.float64) for f in PER_TASK_FIELDS}
        scalars = {f: np.asarray(fields[f], dtype=np.float64) for f in SCALAR_FIELDS}
    except Exception as e:  # tracers or objects that are not numbers
        raise WorkloadError(f"validate() needs concrete numeric values: {e}") from None
    _check_shapes(arrays, scalars, names)
    # the solvers compute in `dtype`, where values below its smallest normal number are zero
    # (flushed on CPU and accelerators alike): judge them as such, as the traced check does
    tiny = float(jnp.finfo(dtype).tiny)
    arrays = {f: np.where(np.abs(a) < tiny, 0.0, a) for f, a in arrays.items()}
    scalars = {f: np.where(np.abs(s) < tiny, 0.0, s) for f, s in scalars.items()}
    names = names or tuple(f"task{k}" for k in range(arrays["A"].shape[-1]))
    every = {**arrays, **scalars}
    for f, a in every.items():
        bad = ~np.isfinite(a)
        if bad.any():
            _raise(f, "must be a finite number", bad, every, names)
    for rule in RULES:
        if not stability and rule.status == Status.UNSTABLE_INPUT:
            continue
        bad = np.asarray(rule.bad(every, dtype))
        if bad.any():
            _raise(rule.field, rule.what, bad, every, names, rule, dtype)


def _raise(field, what, bad, every, names, rule: Rule | None = None, dtype=np.float64):
    idx = _first(bad)
    if rule is not None and rule.explain is not None:
        raise WorkloadError(f"field '{field}'{_member(idx)}: {rule.explain(every, idx, dtype)}")
    value = float(every[field][idx])
    if bad.ndim == every["A"].ndim:
        raise WorkloadError(
            f"field '{field}', task '{names[idx[-1]]}'{_member(idx[:-1])}: {what} (got {value:g})"
        )
    raise WorkloadError(f"field '{field}'{_member(idx)}: {what} (got {value:g})")


#: what `member_status` gives a member that passes every rule (it is not a `Status`: a
#: valid member has not been solved yet)
VALID = -1


def member_status(w, stability: bool = True) -> Int[Array, "*batch"]:
    """The input status of every member under `RULES` (jit/vmap safe): `VALID` when the
    member may be solved, else `NONFINITE_INPUT`, `INVALID_INPUT` or `UNSTABLE_INPUT`.
    `stability=False` skips the M/G/1 stability rule (for a server with its own)."""
    every = {f: getattr(w, f) for f in PER_TASK_FIELDS + SCALAR_FIELDS}
    batch = w.batch_shape
    status = jnp.full(batch, VALID, jnp.int32)
    for rule in reversed(RULES):  # the first violated rule wins
        if not stability and rule.status == Status.UNSTABLE_INPUT:
            continue
        bad = rule.bad(every, w.dtype)
        if bad.ndim > len(batch):
            bad = jnp.any(bad, axis=-1)
        status = jnp.where(bad, rule.status, status)
    finite = jnp.ones(batch, bool)
    for f, a in every.items():
        ok = jnp.isfinite(a)
        finite &= jnp.all(ok, axis=-1) if f in PER_TASK_FIELDS else ok
    return jnp.where(finite, status, Status.NONFINITE_INPUT).astype(jnp.int32)


def default_rtol(dtype, rtol: float | None) -> float:
    """The solvers' default target residual: 1e-9 in float64, 1e-4 in float32."""
    if rtol is not None:
        return rtol
    return 1e-9 if dtype == jnp.float64 else 1e-4


def validate_members(w, load: Callable[[Any, Any], Any] | None = None, valid: Any = True):
    """Validate every member of `w` once, under jit/vmap: `(status_in, ok_in, safe)`, the
    input status per member (`VALID` or the rejecting `Status`), whether it may be solved,
    and the workload with rejected members swapped for a harmless one so that the loops that
    follow stay finite.

    `load(tokens, w)`: the server's load; a member whose load at zero tokens is not below 1
    by more than the dtype's rounding (a load computed as 1 - 2 eps is a server at its
    capacity) is `UNSTABLE_INPUT`. `None`: the M/G/1 rule of `RULES`. `valid`: whether the
    model's own (possibly traced) parameters are in its domain; where not, `INVALID_INPUT`.
    """
    status_in = member_status(w, stability=load is None)
    model_ok = jnp.broadcast_to(jnp.asarray(valid), status_in.shape)
    status_in = jnp.where((status_in == VALID) & ~model_ok, Status.INVALID_INPUT, status_in).astype(
        jnp.int32
    )
    if load is not None:
        ok = status_in == VALID
        margin = 1 - 16 * jnp.finfo(w.dtype).eps
        unstable = ok & ~(load(jnp.zeros_like(w.A), sanitise(w, ok)) < margin)
        status_in = jnp.where(unstable, Status.UNSTABLE_INPUT, status_in).astype(jnp.int32)
    ok_in = status_in == VALID
    return status_in, ok_in, sanitise(w, ok_in)


def sanitise(w, ok: Bool[Array, "*batch"]):
    """Replace a rejected member by a small stable workload (its result is masked out)."""
    one = jnp.ones_like(w.A)
    n = w.num_tasks

    def pick(x, good):
        return jnp.where(ok if x.ndim == ok.ndim else ok[..., None], x, good)

    return w.replace(
        A=pick(w.A, 0.5 * one),
        b=pick(w.b, 1e-3 * one),
        D=pick(w.D, 0 * one),
        t0=pick(w.t0, 0.1 * one),
        c=pick(w.c, 0.01 * one),
        share=pick(w.share, one / n),
        arrival_rate=pick(w.arrival_rate, jnp.ones_like(w.arrival_rate) * 0.1),
        alpha=pick(w.alpha, jnp.ones_like(w.alpha)),
        max_tokens=pick(w.max_tokens, jnp.ones_like(w.max_tokens) * 1000),
    )


# ------------------------------------------------------------- eager checks of plain arrays


def is_concrete(x) -> bool:
    """Whether `x` holds values (not a tracer), so an eager check can read it."""
    return not isinstance(x, jax.core.Tracer)  # pyright: ignore[reportAttributeAccessIssue]


def _host_data(x) -> bool:
    """Whether `x` is plain host data (NumPy arrays and scalars, and lists or tuples of them
    and of Python numbers): what can be converted on the host without tracing anything."""
    if isinstance(x, np.ndarray | np.generic):
        return True
    if isinstance(x, list | tuple):
        return all(isinstance(v, int | float | complex) or _host_data(v) for v in x)
    return False


def as_float_array(name: str, x) -> Array:
    """`x` as a floating JAX array; `InputError` naming `name` when it is not numeric.

    Plain host data (`_host_data`) is converted by NumPy and put on the device, which compiles
    no program (a fresh process would otherwise compile one per field); a Python number keeps
    JAX's weak type; anything else (JAX arrays, tracers, lists holding them) goes through
    `jnp.asarray`."""
    try:
        if not _host_data(x):
            arr = jnp.asarray(x)
        else:
            host = np.asarray(x)
            numeric = (
                np.issubdtype(host.dtype, np.number)
                or host.dtype == np.bool_
                or jnp.issubdtype(host.dtype, jnp.floating)  # bfloat16, float8 (kind "V")
            )
            if not numeric:
                raise TypeError(f"dtype {host.dtype}")
            if np.issubdtype(host.dtype, np.integer) or host.dtype == np.bool_:
                host = host.astype(np.float64)  # never wrapped to int32 on the way
            arr = jax.device_put(host)
    except (TypeError, ValueError, OverflowError) as e:
        raise InputError(f"{name}: not a numeric array ({e})") from None
    if not (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
        or arr.dtype == jnp.bool_
    ):
        raise InputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def check_finite(name: str, x: Array) -> None:
    """`InputError` when a concrete `x` holds NaN or infinities (tracers pass)."""
    if is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
        raise InputError(f"{name}: contains NaN or infinite values")


def check_nonnegative(name: str, x: Array) -> None:
    """`check_finite`, and `InputError` when a concrete `x` has a negative entry."""
    check_finite(name, x)
    if is_concrete(x) and bool(jnp.any(x < 0)):
        raise InputError(f"{name}: must be non-negative, got min {float(jnp.min(x)):.6g}")


def check_probability(name: str, x: Array) -> None:
    """`check_finite`, and `InputError` when a concrete `x` leaves [0, 1] (up to rounding)."""
    check_finite(name, x)
    if is_concrete(x) and bool(jnp.any((x < -PROBABILITY_SLACK) | (x > 1 + PROBABILITY_SLACK))):
        raise InputError(
            f"{name}: must lie in [0, 1], got range [{float(jnp.min(x)):.6g}, "
            f"{float(jnp.max(x)):.6g}]"
        )


def check_int(name: str, x, minimum: int, maximum: int | None = None) -> int:
    """`x` as a Python int in `[minimum, maximum]`; `InputError` naming `name` otherwise
    (booleans, fractions such as 100.5, strings and out-of-range values are refused)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer, float, np.floating)):
        raise InputError(f"{name}: expected a whole number, got {x!r}")
    if isinstance(x, (float, np.floating)) and not (np.isfinite(x) and float(x).is_integer()):
        raise InputError(f"{name}: expected a whole number, got {x!r}")
    value = int(x)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InputError(f"{name}: must be {bound}, got {value}")
    return value


def check_key(key) -> None:
    """`InputError` unless `key` is `None` or a JAX PRNG key (`jax.random.key(0)`, or the
    legacy `PRNGKey(0)`, shape (2,) uint32)."""
    if key is None:
        return
    ok = isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.shape == (2,) and key.dtype == jnp.uint32)
    )
    if not ok:
        raise InputError(f"key: expected a JAX PRNG key (jax.random.key(0)), got {key!r}")


def _physical_memory() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a laptop
        return 16 << 30


def check_memory(nbytes: float, what: str, hint: str) -> None:
    """`InputError` when an estimated `nbytes` would not fit in half the machine's memory."""
    limit = _physical_memory() // 2
    if nbytes > limit:
        raise InputError(
            f"{what} would need about {nbytes / 2**30:,.1f} GiB, more than half this machine's "
            f"memory ({limit / 2**30:,.1f} GiB); {hint}"
        )
