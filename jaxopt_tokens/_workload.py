"""The workload: per-task accuracy and latency curves plus the operating point.

A `Workload` is an equinox Module, hence a pytree: stack several along a leading axis and
`jax.vmap` any solver over them. Task names are static metadata, everything else is traced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._errors import InputError, WorkloadError
from ._validate import PER_TASK_FIELDS, SCALAR_FIELDS, as_float_array, check_values

__all__ = ["Workload", "WorkloadError", "make_workload"]


def _float_field(name: str):
    """The converter of field `name`: a floating JAX array (integers are promoted); complex or
    non-numeric values are refused with an `InputError` naming the field."""

    def convert(x: Any) -> Array:
        return as_float_array(f"field '{name}'", x)

    return convert


class Workload(eqx.Module):
    r"""N task types served FIFO by one server (the queueing paper, Section II).

    Per-task fields have shape `(..., N)`, scalar fields shape `(...)`.

    Attributes:
        A: accuracy gain of each task's curve $p_k(l) = A_k (1 - e^{-b_k l}) + D_k$, eq. (2).
        b: the curve's rate per token.
        D: the curve's accuracy at zero tokens.
        t0: service time at zero tokens, seconds: $t_k(l) = t_{0k} + c_k l$, eq. (1).
        c: seconds per reasoning token.
        share: the probability $\pi_k$ that a query is of type k (sums to 1).
        arrival_rate: Poisson arrival rate $\lambda$ (queries per second).
        alpha: weight of mean accuracy against mean system time in J, eq. (7) (seconds).
        max_tokens: the architectural cap $l_{\max}$.
        names: the task names (static).

    `names` are static labels. Leading axes (`...`) make a batch of workloads for `vmap`.
    Values are not checked on construction (so that jit and vmap can build workloads);
    call `validate()` on concrete inputs, as the loaders and the CLI do.
    """

    A: Float[Array, "*batch n"] = eqx.field(converter=_float_field("A"))
    b: Float[Array, "*batch n"] = eqx.field(converter=_float_field("b"))
    D: Float[Array, "*batch n"] = eqx.field(converter=_float_field("D"))
    t0: Float[Array, "*batch n"] = eqx.field(converter=_float_field("t0"))
    c: Float[Array, "*batch n"] = eqx.field(converter=_float_field("c"))
    share: Float[Array, "*batch n"] = eqx.field(converter=_float_field("share"))
    arrival_rate: Float[Array, "*batch"] = eqx.field(converter=_float_field("arrival_rate"))
    alpha: Float[Array, "*batch"] = eqx.field(converter=_float_field("alpha"))
    max_tokens: Float[Array, "*batch"] = eqx.field(converter=_float_field("max_tokens"))
    names: tuple[str, ...] = eqx.field(static=True, default=())

    def __check_init__(self):
        # Shapes are static: a mismatch is refused here, at construction or trace time.
        shape = self.A.shape
        if not shape:
            raise WorkloadError("field 'A' must hold one value per task, got a scalar")
        for f in PER_TASK_FIELDS:
            s = getattr(self, f).shape
            if not s:
                raise WorkloadError(f"field '{f}' must hold one value per task, got a scalar")
            if s[-1] != shape[-1]:
                raise WorkloadError(
                    f"field '{f}' has {s[-1]} values but 'A' has {shape[-1]}: every "
                    "per-task field needs one value per task"
                )
        if self.names and len(self.names) != shape[-1]:
            raise WorkloadError(f"'names' has {len(self.names)} entries for {shape[-1]} tasks")

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
            raise InputError(f"Workload has no field(s) {sorted(unknown)}")
        kwargs = {f: getattr(self, f) for f in PER_TASK_FIELDS + SCALAR_FIELDS + ("names",)}
        kwargs.update(changes)
        return Workload(**kwargs)

    def astype(self, dtype) -> Workload:
        """A copy with every array field cast to `dtype` (e.g. `jnp.float32`)."""
        return self.replace(
            **{f: getattr(self, f).astype(dtype) for f in PER_TASK_FIELDS + SCALAR_FIELDS}
        )

    def validate(self, stability: bool = True, *, server: str = "mg1") -> Workload:
        """Check every value eagerly; raise `WorkloadError` naming the field and task.

        Accepts a single workload or a batch (leading axes); for a batch the message names
        the first offending member. Which rules apply depends on the server the workload is
        for (`SERVERS`): every rule for the single M/G/1 server (`"mg1"`, the paper's and
        every single-server model's), all but its stability at zero tokens for a continuously
        batching server (`"batching"`, whose stability is `ContinuousBatching`'s own and is
        checked when it is solved or simulated). `stability=False` is the same as
        `server="batching"`. Returns `self` so that calls can be chained.
        """
        check_values(
            {f: getattr(self, f) for f in PER_TASK_FIELDS + SCALAR_FIELDS},
            self.names,
            self.dtype,
            stability and server_rules(server),
        )
        return self


#: the servers a workload may be validated for: which rules apply (`Workload.validate`)
SERVERS = ("mg1", "batching")


def server_rules(server: str) -> bool:
    """Whether the M/G/1 stability rule applies to a workload for `server`."""
    if server not in SERVERS:
        raise WorkloadError(f"server: one of {', '.join(SERVERS)}; got {server!r}")
    return server == "mg1"


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
    server: str = "mg1",
) -> Workload:
    r"""Build and validate a single workload; equal shares when `share` is omitted. `server`
    (`"mg1"` or `"batching"`) says which rules apply (`Workload.validate`).

    Args:
        A: accuracy gain of each task, eq. (2).
        b: accuracy rate of each task (1/token).
        D: accuracy at zero tokens of each task.
        t0: service time at zero tokens of each task (seconds).
        c: service seconds per reasoning token of each task.
        share: the task mix $\pi$ (default: equal shares).
        arrival_rate: $\lambda$, queries per second.
        alpha: the accuracy weight $\alpha$ of the objective (seconds per unit accuracy).
        max_tokens: the budget cap $l_{\max}$.
        names: task names (default `task0`, `task1`, ...).
        server: `"mg1"` or `"batching"`: which validity rules apply.

    Returns:
        The validated `Workload`.
    """
    try:
        n = len(A)
    except TypeError:
        raise WorkloadError(f"field 'A': expected one value per task, got {A!r}") from None
    if n == 0:
        raise WorkloadError("the workload has no tasks (field 'A' is empty)")
    if share is None:
        share = [1.0 / n] * n
    w = Workload(
        A=A,
        b=b,
        D=D,
        t0=t0,
        c=c,
        share=share,
        arrival_rate=arrival_rate,
        alpha=alpha,
        max_tokens=max_tokens,
        names=tuple(names),
    )
    return w.validate(server=server)
