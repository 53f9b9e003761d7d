"""jaxopt_tokens: queueing-aware reasoning-token budgets for LLM servers, in JAX.

Public API; implementation lives in private `_`-prefixed modules.
"""

from ._errors import InputError
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
from ._solution import Solution, Status
from ._workload import Workload, WorkloadError, make_workload

__version__ = "0.1.0"
