"""The papers' constructions, for checking and extending them: the Lemma constants and the
provable box, Lambert W and Wright omega, the integer bounds and searches of eqs. (39)-(41),
and the simulator's building blocks (the Lindley recursion, a query stream). Docs: *Solvers*,
*Simulation*.
"""

from typing import TYPE_CHECKING

from ._lazy import attach

if TYPE_CHECKING:
    from ._integer import (
        best_floor_ceil,
        integer_lower_bound,
        local_search_budgets,
        paper_integer_lower_bound,
        round_budgets,
    )
    from ._kkt import contraction_constant, gradient_lipschitz, provable_box
    from ._lambertw import lambertw, wright_omega
    from ._queue.server_sim import lindley_waits
    from ._queue.stream import sample_query_stream

__all__ = [
    "provable_box",
    "contraction_constant",
    "gradient_lipschitz",
    "lambertw",
    "wright_omega",
    "integer_lower_bound",
    "paper_integer_lower_bound",
    "round_budgets",
    "best_floor_ceil",
    "local_search_budgets",
    "lindley_waits",
    "sample_query_stream",
]

__getattr__, __dir__ = attach(__name__, __file__)
