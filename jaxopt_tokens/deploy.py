"""From measurements to a serving engine: fitting the accuracy curves (`fit`) and a batching
server's step time (`fit_step_time`), the replicas a latency target needs (`plan_replicas`),
and exporting budgets to an engine (`export_policy`). Docs: *Fitting*, *Deploying*.
"""

from typing import TYPE_CHECKING

from ._lazy import attach

if TYPE_CHECKING:
    from ._choices import (
        DEFAULT_ANSWER_RESERVE,
        DEFAULT_ANSWER_TOKENS,
        DEFAULT_EFFORT_BOUNDS,
        EXPORT_FORMATS,
        ROUNDINGS,
        SGLANG_PROCESSORS,
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
    from ._files import read_text

__all__ = [
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
    "DEFAULT_ANSWER_TOKENS",
    "plan_replicas",
    "ReplicaPlan",
    "ReplicaCount",
    "read_text",
]

__getattr__, __dir__ = attach(__name__, __file__)
