"""One status convention for every result type of the package.

A result (`Solution`, `AlphaTuning`, `clear.Allocation`, `SimulationResult`, `FitResult`)
stores its outcome per batch member as an int32 array `status` holding codes of one
`StatusEnum` subclass; each code has a message. `messages()` on a result, or
`Enum.describe(codes)`, turns the codes into text on the host.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import equinox as eqx
import numpy as np

__all__ = ["StatusEnum", "Status", "HasStatus"]


class StatusEnum(enum.IntEnum):
    """An integer status code that carries a human-readable message.

    Members are declared as `NAME = code, "message"`.
    """

    _message: str

    def __new__(cls, value: int, message: str = ""):
        obj = int.__new__(cls, value)
        obj._value_ = value
        obj._message = message
        return obj

    @property
    def message(self) -> str:
        return self._message

    @classmethod
    def describe(cls, codes) -> np.ndarray:
        """The message of every code in `codes` (host side), as an object array of its shape."""
        codes = np.asarray(codes)
        return np.vectorize(lambda s: cls(int(s)).message, otypes=[object])(codes)


class Status(StatusEnum):
    """Outcome of a solve, per batch member (`Solution.status`)."""

    CONVERGED = 0, "converged: the projected KKT residual is below the tolerance"
    MAX_ITERATIONS = 1, "stopped at the iteration limit before reaching the tolerance"
    NOT_CONTRACTIVE = (
        2,
        (
            "the fixed-point map left the stability region or stalled: it is not a contraction "
            "here (use the default solver)"
        ),
    )
    UNSTABLE_INPUT = 3, "the queue is unstable even with zero tokens (its load at zero tokens >= 1)"
    NONFINITE_INPUT = 4, "the workload holds NaN or infinite values"
    INVALID_INPUT = 5, "the workload holds values outside the model (see Workload.validate)"


class HasStatus(eqx.Module):
    """Base of the result types: an int32 `status` per member (a field or a property) holding
    codes of the class's `STATUS` enumeration."""

    STATUS: ClassVar[type[StatusEnum]]

    def messages(self) -> np.ndarray:
        """The status message of every member (host side)."""
        return self.STATUS.describe(getattr(self, "status"))
