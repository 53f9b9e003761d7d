"""Budgets learned on the operator's own trace: the differentiable replay (`replay_draws`,
`replay_metrics`), queue-aware budget tables (`QueuePolicy`) and the learner (`learn_budgets`).
Docs: *Learned policies*.
"""

from typing import TYPE_CHECKING

from ._lazy import attach

if TYPE_CHECKING:
    from ._learn.learn import LearnedBudgets, learn_budgets
    from ._learn.replay import (
        QueuePolicy,
        ReplayDraws,
        ReplayMetrics,
        replay_draws,
        replay_metrics,
    )

__all__ = [
    "replay_draws",
    "ReplayDraws",
    "replay_metrics",
    "ReplayMetrics",
    "QueuePolicy",
    "learn_budgets",
    "LearnedBudgets",
]

__getattr__, __dir__ = attach(__name__, __file__)
