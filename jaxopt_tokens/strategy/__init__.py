"""Latency- and token-aware selection of a decoding strategy per query.

Each query gets the strategy (greedy, best-of-n, majority vote, beam search) that maximises
predicted accuracy minus priced tokens and latency (the strategy-selection paper); `select`
is the hard choice, `soft_select` its differentiable relaxation, `select_queueing` the joint
choice per task type under the queueing objective, and `train_probe` the accuracy probe
that predicts accuracy from query features. Docs: *Strategy selection*.
"""

from ._benchmark import (
    Frontier,
    SyntheticQueries,
    frontier,
    frontier_dominance_gaps,
    queueing_arrival_sweep,
    queueing_instance,
    run_benchmark,
    synthetic_queries,
    true_accuracy,
)
from ._probe import AccuracyProbe, probe_log_loss, soft_log_loss, train_probe
from ._select import (
    METHODS,
    QueueChoice,
    SoftSelection,
    Table,
    default_table,
    queueing_objective,
    select,
    select_queueing,
    soft_select,
    utility,
)

__all__ = [
    "METHODS",
    "Table",
    "default_table",
    "utility",
    "select",
    "soft_select",
    "SoftSelection",
    "select_queueing",
    "queueing_objective",
    "QueueChoice",
    "AccuracyProbe",
    "train_probe",
    "probe_log_loss",
    "soft_log_loss",
    "SyntheticQueries",
    "synthetic_queries",
    "true_accuracy",
    "Frontier",
    "frontier",
    "frontier_dominance_gaps",
    "run_benchmark",
    "queueing_instance",
    "queueing_arrival_sweep",
]
