"""jaxopt_tokens: queueing-aware reasoning-token budgets for LLM servers, in JAX.

Public API; implementation lives in private `_`-prefixed modules.
"""

from ._errors import InputError
from ._clear import (
    ClearAllocation,
    ClearStatus,
    adaptive_inverse_decay,
    check_clear_inputs,
    clear_allocate,
    integer_tokens,
    surge_utility,
)
from ._clear_baselines import (
    BASELINES,
    auction_allocation,
    exact_allocation,
    heuristic_allocation,
    oracle_allocation,
    predictor_allocation,
    uniform_allocation,
)
from ._clear_eval import (
    POLICIES,
    STREAMS,
    TABLE6_DATASETS,
    TIERS,
    ClearPool,
    default_pool,
    evaluate_streams,
    load_pool,
    noise_robustness,
    stream_accuracy,
    synthetic_pool,
    write_pool,
)
from ._io import default_workload, dump_workload, load_workload, workload_from_dict, workload_to_dict
from ._objective import (
    mean_accuracy,
    mean_system_time,
    mean_wait,
    objective,
    service_moments,
    service_times,
    task_accuracy,
    utilization,
)
from ._aggregate import AggregateNewton
from ._fixed_point import FixedPoint
from ._integer import (
    best_floor_ceil,
    integer_budgets,
    integer_lower_bound,
    local_search_budgets,
    paper_integer_lower_bound,
    round_budgets,
)
from ._kkt import contraction_constant, gradient_lipschitz, kkt_residual, objective_gradient, provable_box
from ._lambertw import lambertw, wright_omega
from ._pga import ProjectedGradient
from ._random import random_workloads
from ._solution import Solution, Status
from ._export import (
    DEFAULT_ANSWER_RESERVE,
    DEFAULT_EFFORT_BOUNDS,
    EXPORT_FORMATS,
    export_policy,
    load_tokens,
    openai_client_kwargs,
    tokens_from_data,
    write_policy,
)
from ._fit import FitResult, FitWarning, TaskFit, budget_uncertainty, fit, plot_fit
from ._latency import FIFO, LatencyModel, Priority, ProcessorSharing, latency_objective, solve_latency
from ._measurements import (
    Measurements,
    parse_measurements,
    read_measurements,
    read_request_log,
    synthetic_measurements,
)
from ._probe import AccuracyProbe, probe_log_loss, soft_log_loss, train_probe
from ._strategy import (
    METHOD_NAMES,
    QueueStrategyChoice,
    SoftSelection,
    StrategyTable,
    default_strategy_table,
    queueing_strategy_objective,
    select_strategies_queueing,
    select_strategy,
    soft_select,
    strategy_utility,
)
from ._strategy_bench import (
    StrategyFrontier,
    SyntheticQueries,
    frontier_dominance_gaps,
    queueing_arrival_sweep,
    queueing_strategy_instance,
    run_strategy_benchmark,
    strategy_frontier,
    synthetic_queries,
    true_strategy_accuracy,
)
from ._simulate import SimulationResult, UnstableQueueWarning, simulate
from ._router import CurveModel, TaskPool, realised_objective, synthetic_task_pool, train_router
from ._solve import METHODS, solve
from ._sweep import read_sweep_metadata, sweep, write_sweep
from ._frontier import frontier_by_alpha, frontier_by_arrival_rate, uniform_curve, with_simulated_tail
from ._figures import all_figures
from ._tune import AlphaTuning, TuneStatus, tune, tune_alpha
from ._workload import Workload, WorkloadError, make_workload

__version__ = "0.1.0"
