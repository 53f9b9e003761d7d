"""Learned routers trained through the solver: a synthetic task pool, a curve model and
`train_router`. Docs: *Tuning*.
"""

from typing import TYPE_CHECKING

from ._lazy import attach

if TYPE_CHECKING:
    from ._tuning.router import (
        CurveModel,
        TaskPool,
        realised_objective,
        synthetic_task_pool,
        train_router,
    )

__all__ = [
    "train_router",
    "CurveModel",
    "TaskPool",
    "realised_objective",
    "synthetic_task_pool",
]

__getattr__, __dir__ = attach(__name__, __file__)
