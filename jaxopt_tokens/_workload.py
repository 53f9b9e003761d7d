"""The workload: per-task accuracy and latency curves plus the operating point.

A `Workload` is an equinox Module, hence a pytree: stack several along a leading axis and
`jax.vmap` any solver over them. Task names are static metadata, everything else is traced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import InputError

__all__ = ["Workload", "WorkloadError"]

PER_TASK_FIELDS = ("A", "b", "D", "t0", "c", "share")
SCALAR_FIELDS = ("arrival_rate", "alpha", "max_tokens")
SHARE_TOLERANCE = 1e-6


class WorkloadError(InputError):
    """A workload value that the model cannot accept; the message names field and task."""


def _as_float_array(x: Any) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


class Workload(eqx.Module):
    """N task types served FIFO by one server (the queueing paper, Section II).

    **Arguments** (per task, shape `(..., N)`):

    - `A`, `b`, `D`: accuracy curve $p_k(l) = A_k (1 - e^{-b_k l}) + D_k$, eq. (2).
    - `t0`, `c`: service time $t_k(l) = t_{0k} + c_k l$ in seconds, eq. (1).
    - `share`: the probability $\\pi_k$ that a query is of type k (sums to 1).

    **Arguments** (scalars, shape `(...)`):

    - `arrival_rate`: Poisson arrival rate $\\lambda$ (queries per second).
    - `alpha`: weight of mean accuracy against mean system time in J, eq. (7) (seconds).
    - `max_tokens`: the architectural cap $l_{\\max}$.

    `names` are static labels. Leading axes (`...`) make a batch of workloads for `vmap`.
    Values are not checked on construction (so that jit and vmap can build workloads);
    call `validate()` on concrete inputs, as the loaders and the CLI do.
    """

    A: Float[Array, "*batch n"] = eqx.field(converter=_as_float_array)
    b: Float[Array, "*batch n"] = eqx.field(converter=_as_float_array)
    D: Float[Array, "*batch n"] = eqx.field(converter=_as_float_array)
    t0: Float[Array, "*batch n"] = eqx.field(converter=_as_float_array)
    c: Float[Array, "*batch n"] = eqx.field(converter=_as_float_array)
    share: Float[Array, "*batch n"] = eqx.field(converter=_as_float_array)
    arrival_rate: Float[Array, "*batch"] = eqx.field(converter=_as_float_array)
    alpha: Float[Array, "*batch"] = eqx.field(converter=_as_float_array)
    max_tokens: Float[Array, "*batch"] = eqx.field(converter=_as_float_array)
    names: tuple[str, ...] = eqx.field(static=True, default=())

    @property
    def num_tasks(self) -> int:
        return self.A.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.A.shape[:-1]

    @property
    def dtype(self):
        """The floating dtype the solvers compute in (the promoted dtype of all fields)."""
        return jnp.result_type(*(getattr(self, f) for f in PER_TASK_FIELDS + SCALAR_FIELDS))

    @property
    def task_names(self) -> tuple[str, ...]:
        if self.names:
            return self.names
        return tuple(f"task{k}" for k in range(self.num_tasks))

    def replace(self, **changes: Any) -> Workload:
        """A copy with some fields replaced (values are converted like the constructor's)."""
        unknown = set(changes) - set(PER_TASK_FIELDS + SCALAR_FIELDS + ("names",))
        if unknown:
            raise TypeError(f"Workload has no field(s) {sorted(unknown)}")
        kwargs = {f: getattr(self, f) for f in PER_TASK_FIELDS + SCALAR_FIELDS + ("names",)}
        kwargs.update(changes)
        return Workload(**kwargs)

    def astype(self, dtype) -> Workload:
        """A copy with every array field cast to `dtype` (e.g. `jnp.float32`)."""
        return self.replace(
            **{f: getattr(self, f).astype(dtype) for f in PER_TASK_FIELDS + SCALAR_FIELDS}
        )

    def validate(self) -> Workload:
        """Check every value eagerly; raise `WorkloadError` naming the field and task.

        Accepts a single workload or a batch (leading axes); for a batch the message names
        the first offending member. Returns `self` so that calls can be chained.
        """
        _validate(self)
        return self


def _member(index: tuple[int, ...]) -> str:
    return f" (batch member {index})" if index else ""


def _validate(w: Workload) -> None:
    try:
        arrays = {f: np.asarray(getattr(w, f), dtype=np.float64) for f in PER_TASK_FIELDS}
        scalars = {f: np.asarray(getattr(w, f), dtype=np.float64) for f in SCALAR_FIELDS}
    except Exception as e:  # tracers or objects that are not numbers
        raise WorkloadError(f"validate() needs concrete numeric values: {e}") from None
    n = arrays["A"].shape[-1] if arrays["A"].ndim else 0
    batch = arrays["A"].shape[:-1]
    for f, a in arrays.items():
        if a.ndim == 0:
            raise WorkloadError(f"field '{f}' must hold one value per task, got a scalar")
        if a.shape != arrays["A"].shape:
            raise WorkloadError(
                f"field '{f}' has {a.shape[-1]} values but 'A' has {n}: every per-task field "
                "needs one value per task"
                if a.shape[:-1] == batch
                else f"field '{f}' has shape {a.shape}, expected {arrays['A'].shape}"
            )
    if n == 0:
        raise WorkloadError("the workload has no tasks")
    for f, s in scalars.items():
        if s.shape != batch:
            raise WorkloadError(f"field '{f}' has shape {s.shape}, expected {batch}")
    if w.names and len(w.names) != n:
        raise WorkloadError(f"'names' has {len(w.names)} entries for {n} tasks")
    names = w.task_names

    def fail_task(field: str, bad: np.ndarray, what: str, values: np.ndarray) -> None:
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        k = idx[-1]
        raise WorkloadError(
            f"field '{field}', task '{names[k]}'{_member(idx[:-1])}: {what} "
            f"(got {float(values[idx]):g})"
        )

    def fail_scalar(field: str, bad: np.ndarray, what: str, values: np.ndarray) -> None:
        idx = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
        raise WorkloadError(f"field '{field}'{_member(idx)}: {what} (got {float(values[idx]):g})")

    for f, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            fail_task(f, bad, "must be a finite number", a)
    for f, s in scalars.items():
        bad = ~np.isfinite(s)
        if bad.any():
            fail_scalar(f, bad, "must be a finite number", s)
    A, b, D, t0, c, share = (arrays[f] for f in PER_TASK_FIELDS)
    checks = [
        ("share", share < 0, "shares must be non-negative"),
        ("A", A < 0, "A must be >= 0"),
        ("D", D < 0, "D must be >= 0"),
        ("A", A + D > 1 + 1e-12, "A + D is the best attainable accuracy and must be <= 1"),
        ("b", b <= 0, "b must be > 0"),
        ("c", c <= 0, "c (seconds per token) must be > 0"),
        ("t0", t0 < 0, "t0 (seconds) must be >= 0"),
    ]
    for f, bad, what in checks:
        if bad.any():
            fail_task(f, bad, what, arrays[f])
    total = share.sum(axis=-1)
    bad = np.abs(total - 1) > SHARE_TOLERANCE
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
        raise WorkloadError(
            f"field 'share'{_member(idx)}: shares sum to {total[idx]:.9g}, they must sum to 1 "
            f"(within {SHARE_TOLERANCE:g}); divide them by their sum"
        )
    lam, alpha, lmax = (scalars[f] for f in SCALAR_FIELDS)
    for f, bad, what in [
        ("arrival_rate", lam <= 0, "must be > 0"),
        ("alpha", alpha <= 0, "must be > 0"),
        ("max_tokens", lmax < 0, "must be >= 0"),
    ]:
        if bad.any():
            fail_scalar(f, bad, what, scalars[f])
    rho0 = lam * (share * t0).sum(axis=-1)
    bad = rho0 >= 1
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
        cap = 1.0 / (share * t0).sum(axis=-1)[idx]
        raise WorkloadError(
            f"field 'arrival_rate'{_member(idx)}: the queue is unstable even with zero reasoning "
            f"tokens (utilization {rho0[idx]:.4g} >= 1); no budget can help. The arrival rate "
            f"must be below {cap:.6g} queries/s for these prefill times"
        )


def make_workload(
    *,
    A: Sequence[float],
    b: Sequence[float],
    D: Sequence[float],
    t0: Sequence[float],
    c: Sequence[float],
    share: Sequence[float] | None = None,
    arrival_rate: float,
    alpha: float,
    max_tokens: float,
    names: Sequence[str] = (),
) -> Workload:
    """Build and validate a single workload; equal shares when `share` is omitted."""
    n = len(A)
    if share is None:
        share = [1.0 / n] * n
    w = Workload(
        A=A, b=b, D=D, t0=t0, c=c, share=share,
        arrival_rate=arrival_rate, alpha=alpha, max_tokens=max_tokens, names=tuple(names),
    )
    return w.validate()
