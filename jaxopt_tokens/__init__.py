"""jaxopt_tokens: queueing-aware reasoning-token budgets for LLM servers, in JAX.

The top level is the core system: the workload, the objective and its certificate, the
solvers, integer budgets, queue models and simulation, fitting and export, sweeps and
tuning. The two other systems have their own namespaces: `jaxopt_tokens.clear` (one token
budget shared by a batch) and `jaxopt_tokens.strategy` (a decoding strategy per query).
Implementation lives in private modules; see the documentation site for the architecture.
"""

from typing import TYPE_CHECKING

from ._errors import InputError, UnstableQueueWarning, WorkloadError
from ._lazy import attach
from ._version import __version__

if TYPE_CHECKING:
    from . import clear, gateway, strategy
    from ._choices import (
        DEFAULT_ANSWER_RESERVE,
        DEFAULT_ANSWER_TOKENS,
        DEFAULT_EFFORT_BOUNDS,
        DISCIPLINES,
        EXPORT_FORMATS,
        ROUNDINGS,
        ROUTINGS,
        SERVICES,
        SGLANG_PROCESSORS,
        SOLVER_NAMES,
        TASK_SOURCES,
        TIME_UNITS,
        TRACE_FORMATS,
    )
    from ._deploy.capacity import ReplicaCount, ReplicaPlan, plan_replicas
    from ._deploy.export import (
        export_policy,
        load_tokens,
        openai_client_kwargs,
        tokens_from_data,
        write_policy,
    )
    from ._deploy.fit import (
        FitResult,
        FitStatus,
        FitWarning,
        TaskFit,
        budget_uncertainty,
        fit,
        plot_fit,
    )
    from ._deploy.measurements import (
        Measurements,
        parse_measurements,
        read_measurements,
        read_request_log,
        synthetic_measurements,
    )
    from ._deploy.step_time import StepTimeFit, fit_step_time, read_step_times
    from ._deploy.windows import WindowPlan, plan_windows
    from ._files import read_text
    from ._integer import (
        best_floor_ceil,
        integer_budgets,
        integer_lower_bound,
        local_search_budgets,
        paper_integer_lower_bound,
        round_budgets,
    )
    from ._io import (
        default_workload,
        dump_workload,
        load_workload,
        workload_from_dict,
        workload_to_dict,
    )
    from ._kkt import (
        contraction_constant,
        gradient_lipschitz,
        kkt_residual,
        objective_gradient,
        provable_box,
    )
    from ._lambertw import lambertw, wright_omega
    from ._learn.learn import LearnedBudgets, learn_budgets
    from ._learn.replay import QueuePolicy, ReplayDraws, ReplayMetrics, replay_draws, replay_metrics
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
    from ._programs import keep_in as keep_programs_in
    from ._queue.batching import ContinuousBatching
    from ._queue.models import (
        FIFO,
        AbstractSingleServer,
        Kingman,
        LatencyModel,
        Priority,
        ProcessorSharing,
        TimeVarying,
        latency_objective,
    )
    from ._queue.results import (
        BatchingSimulation,
        Simulation,
        SimulationResult,
        SimulationStatus,
    )
    from ._queue.server_sim import lindley_waits
    from ._queue.simulation import simulate
    from ._queue.stream import sample_query_stream
    from ._random import random_workloads
    from ._solver.aggregate import AggregateNewton
    from ._solver.base import AbstractSolver, Iterate, Problem
    from ._solver.batching import BatchingNewton
    from ._solver.fixed_point import FixedPoint
    from ._solver.gradient import ProjectedGradient, SpectralGradient
    from ._solver.solution import Solution
    from ._solver.solve import default_solver, solve, solve_latency
    from ._status import Status, StatusEnum
    from ._sweeps.dataset import read_sweep
    from ._sweeps.figures import (
        all_figures,
        converged_optimum,
        figure_budget_sensitivity,
        figure_frontier,
        figure_heatmaps,
        figure_names,
        figure_uniform_vs_optimal,
        save_figure,
    )
    from ._sweeps.frontier import (
        frontier_by_alpha,
        frontier_by_arrival_rate,
        uniform_curve,
        with_simulated_tail,
    )
    from ._sweeps.sweep import SweepRun, read_sweep_metadata, sweep, write_sweep
    from ._traffic.replay import Replay
    from ._traffic.stats import (
        DISPERSION_WINDOWS,
        ArrivalStats,
        TrafficWarning,
        arrival_scv,
        arrival_stats,
        plot_arrivals,
    )
    from ._traffic.trace import Trace, read_trace
    from ._tuning.router import (
        CurveModel,
        TaskPool,
        realised_objective,
        synthetic_task_pool,
        train_router,
    )
    from ._tuning.tune import AlphaTuning, TuneStatus, tune, tune_alpha
    from ._workload import SERVERS, Workload, make_workload

__getattr__, __dir__ = attach(__name__, __file__)

__all__ = [
    # systems in their own namespaces
    "clear",
    "strategy",
    "gateway",
    # workloads and bad input
    "Workload",
    "make_workload",
    "SERVERS",
    "default_workload",
    "load_workload",
    "keep_programs_in",
    "dump_workload",
    "workload_from_dict",
    "workload_to_dict",
    "random_workloads",
    "InputError",
    "read_text",
    "WorkloadError",
    # the objective, eqs. (1)-(7), and its certificate
    "objective",
    "mean_accuracy",
    "mean_system_time",
    "mean_wait",
    "service_moments",
    "service_times",
    "task_accuracy",
    "utilization",
    "objective_gradient",
    "kkt_residual",
    "provable_box",
    "contraction_constant",
    "gradient_lipschitz",
    "lambertw",
    "wright_omega",
    # solvers
    "solve",
    "solve_latency",
    "BatchingNewton",
    "SOLVER_NAMES",
    "default_solver",
    "AbstractSolver",
    "Problem",
    "Iterate",
    "AggregateNewton",
    "FixedPoint",
    "ProjectedGradient",
    "SpectralGradient",
    "Solution",
    "Status",
    "StatusEnum",
    # integer budgets, eq. (39)
    "integer_budgets",
    "integer_lower_bound",
    "paper_integer_lower_bound",
    "round_budgets",
    "best_floor_ceil",
    "local_search_budgets",
    # queue models and simulation
    "LatencyModel",
    "AbstractSingleServer",
    "FIFO",
    "Priority",
    "ProcessorSharing",
    "ContinuousBatching",
    "ROUTINGS",
    "DEFAULT_ANSWER_TOKENS",
    "BatchingSimulation",
    "plan_replicas",
    "ReplicaPlan",
    "ReplicaCount",
    "latency_objective",
    "simulate",
    "DISCIPLINES",
    "Simulation",
    "SimulationResult",
    "SimulationStatus",
    "lindley_waits",
    "sample_query_stream",
    "UnstableQueueWarning",
    # recorded traffic: traces, burstiness, replay, models of it
    "Trace",
    "read_trace",
    "Replay",
    "TRACE_FORMATS",
    "TIME_UNITS",
    "arrival_stats",
    "ArrivalStats",
    "arrival_scv",
    "DISPERSION_WINDOWS",
    "TrafficWarning",
    "plot_arrivals",
    "SERVICES",
    "TASK_SOURCES",
    "Kingman",
    "TimeVarying",
    "plan_windows",
    "WindowPlan",
    # policies learned on traffic (a differentiable replay)
    "replay_draws",
    "ReplayDraws",
    "replay_metrics",
    "ReplayMetrics",
    "QueuePolicy",
    "learn_budgets",
    "LearnedBudgets",
    # from measurements to deployed budgets
    "Measurements",
    "read_measurements",
    "parse_measurements",
    "read_request_log",
    "synthetic_measurements",
    "fit",
    "FitResult",
    "TaskFit",
    "FitStatus",
    "FitWarning",
    "budget_uncertainty",
    "fit_step_time",
    "read_step_times",
    "StepTimeFit",
    "plot_fit",
    "export_policy",
    "write_policy",
    "load_tokens",
    "tokens_from_data",
    "openai_client_kwargs",
    "EXPORT_FORMATS",
    "ROUNDINGS",
    "DEFAULT_ANSWER_RESERVE",
    "DEFAULT_EFFORT_BOUNDS",
    "SGLANG_PROCESSORS",
    # sweeps, frontiers and figures
    "sweep",
    "SweepRun",
    "read_sweep",
    "write_sweep",
    "read_sweep_metadata",
    "frontier_by_alpha",
    "frontier_by_arrival_rate",
    "uniform_curve",
    "with_simulated_tail",
    "all_figures",
    "figure_names",
    "save_figure",
    "converged_optimum",
    "figure_budget_sensitivity",
    "figure_frontier",
    "figure_heatmaps",
    "figure_uniform_vs_optimal",
    # tuning and learned routers
    "tune_alpha",
    "tune",
    "AlphaTuning",
    "TuneStatus",
    "train_router",
    "CurveModel",
    "TaskPool",
    "realised_objective",
    "synthetic_task_pool",
    "__version__",
]
