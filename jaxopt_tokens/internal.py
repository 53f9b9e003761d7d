"""The solver driver's parts, for profiling and for writing drivers of your own.

`jaxopt_tokens.internal` is public (it is how `benchmarks/step_cost.py` times the phases of
a staged solve) but not stable: names here follow the driver's implementation and may change
between releases without notice, as `equinox.internal` does. Everything a user needs to solve,
differentiate and simulate is in `jaxopt_tokens` itself.

- validation: `validate_members` (once per solve), `masked_solution`;
- one member: `run`, `run_until`, `running`, `finish`;
- the staged driver (docs: *Solvers*): `staged_run`, `rounds`, `on_members`, `per_member`,
  `buffer_sizes` and its schedule `FIRST_STEPS`, `ROUND_STEPS`, `BUFFER_FRACTIONS`,
  `MIN_STAGED_BATCH`;
- the default solver's closed form: `task_constants`, `unclipped_budgets`,
  `budgets_at_prices`;
- the implicit derivative: `attach_gradient`;
- programs kept ahead of time (`jaxopt_tokens.keep_programs_in`): `call_program`,
  `kept_programs_dir`.
"""

from ._programs import call as call_program
from ._programs import kept_in as kept_programs_dir
from ._solver.aggregate import budgets_at_prices, task_constants, unclipped_budgets
from ._solver.base import finish, run, run_until, running
from ._solver.solution import masked_solution
from ._solver.solve import attach_gradient
from ._solver.staged import (
    BUFFER_FRACTIONS,
    FIRST_STEPS,
    MIN_STAGED_BATCH,
    ROUND_STEPS,
    buffer_sizes,
    on_members,
    per_member,
    rounds,
    staged_run,
)
from ._validate import validate_members

__all__ = [
    "call_program",
    "kept_programs_dir",
    "validate_members",
    "masked_solution",
    "run",
    "run_until",
    "running",
    "finish",
    "staged_run",
    "rounds",
    "on_members",
    "per_member",
    "buffer_sizes",
    "FIRST_STEPS",
    "ROUND_STEPS",
    "BUFFER_FRACTIONS",
    "MIN_STAGED_BATCH",
    "task_constants",
    "unclipped_budgets",
    "budgets_at_prices",
    "attach_gradient",
]
