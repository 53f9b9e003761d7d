"""jaxopt_tokens: queueing-aware reasoning-token budgets for LLM servers, in JAX.

The top level holds what every user needs: the workload, the objective and its certificate,
the solvers and integer budgets, the latency models, simulation and tuning by gradient. The
rest lives in named namespaces (a table is in the docs, *API*):

- `jaxopt_tokens.traffic`: recorded traces, replay settings, burstiness, windowed plans;
- `jaxopt_tokens.learn`: budgets learned on a trace (differentiable replay, queue-aware);
- `jaxopt_tokens.deploy`: fitting curves and step times, replicas, export to engines;
- `jaxopt_tokens.sweeps`: sweeps, frontiers and figures;
- `jaxopt_tokens.router`: learned routers trained through the solver;
- `jaxopt_tokens.theory`: the papers' constants, bounds and kernels;
- `jaxopt_tokens.gateway`: the budget gateway in front of an engine;
- `jaxopt_tokens.clear` (one token budget shared by a batch) and `jaxopt_tokens.strategy`
  (a decoding strategy per query): the two other systems.

Every name loads on first use. Implementation lives in private modules.
"""

from typing import TYPE_CHECKING

from ._errors import InputError, UnstableQueueWarning, WorkloadError
from ._lazy import attach
from ._version import __version__

if TYPE_CHECKING:
    from . import clear, deploy, gateway, learn, router, strategy, sweeps, theory, traffic
    from ._choices import DISCIPLINES, ROUTINGS, SOLVER_NAMES
    from ._integer import integer_budgets
    from ._io import (
        default_workload,
        dump_workload,
        load_workload,
        workload_from_dict,
        workload_to_dict,
    )
    from ._kkt import kkt_residual, objective_gradient
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
    from ._queue.results import BatchingSimulation, Simulation, SimulationResult, SimulationStatus
    from ._queue.simulation import simulate
    from ._random import random_workloads
    from ._solver.aggregate import AggregateNewton
    from ._solver.base import AbstractSolver, Iterate, Problem
    from ._solver.batching import BatchingNewton
    from ._solver.fixed_point import FixedPoint
    from ._solver.gradient import ProjectedGradient, SpectralGradient
    from ._solver.solution import Solution
    from ._solver.solve import default_solver, solve, solve_latency
    from ._status import Status, StatusEnum
    from ._tuning.tune import AlphaTuning, TuneStatus, tune, tune_alpha
    from ._workload import SERVERS, Workload, make_workload

__getattr__, __dir__ = attach(__name__, __file__)

__all__ = [
    "clear",
    "strategy",
    "gateway",
    "traffic",
    "learn",
    "deploy",
    "sweeps",
    "router",
    "theory",
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
    "WorkloadError",
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
    "integer_budgets",
    "LatencyModel",
    "AbstractSingleServer",
    "FIFO",
    "Priority",
    "ProcessorSharing",
    "ContinuousBatching",
    "ROUTINGS",
    "BatchingSimulation",
    "latency_objective",
    "simulate",
    "DISCIPLINES",
    "Simulation",
    "SimulationResult",
    "SimulationStatus",
    "UnstableQueueWarning",
    "Kingman",
    "TimeVarying",
    "tune_alpha",
    "tune",
    "AlphaTuning",
    "TuneStatus",
    "__version__",
]
