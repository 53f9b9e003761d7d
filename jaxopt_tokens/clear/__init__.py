r"""CLEAR: one global token budget shared by a batch of queries, by a market-clearing price.

Each query gets the budget that maximises its shifted-surge utility net of a shadow price
$\mu$; $\mu$ clears the market so the batch spends exactly the budget (the CLEAR paper,
Algorithm 1). `allocate` is the allocator (jit/vmap-safe, a status per member, implicit
gradients); the baselines, the exact dynamic program and the stream harness that reproduces
the paper's evaluation are beside it. Docs: *CLEAR*.
"""

from ._allocate import (
    Allocation,
    AllocationStatus,
    adaptive_inverse_decay,
    allocate,
    check_inputs,
    integer_tokens,
    surge_utility,
)
from ._baselines import (
    BASELINES,
    auction_allocation,
    exact_allocation,
    heuristic_allocation,
    oracle_allocation,
    predictor_allocation,
    uniform_allocation,
)
from ._evaluate import (
    PAPER_DATASETS,
    POLICIES,
    STREAMS,
    TIERS,
    Pool,
    default_pool,
    evaluate_streams,
    load_pool,
    noise_robustness,
    sample_stream,
    stream_accuracy,
    synthetic_pool,
    write_pool,
)

__all__ = [
    "allocate",
    "Allocation",
    "AllocationStatus",
    "check_inputs",
    "integer_tokens",
    "surge_utility",
    "adaptive_inverse_decay",
    "BASELINES",
    "uniform_allocation",
    "predictor_allocation",
    "heuristic_allocation",
    "auction_allocation",
    "oracle_allocation",
    "exact_allocation",
    "Pool",
    "POLICIES",
    "STREAMS",
    "PAPER_DATASETS",
    "TIERS",
    "default_pool",
    "synthetic_pool",
    "load_pool",
    "write_pool",
    "sample_stream",
    "stream_accuracy",
    "evaluate_streams",
    "noise_robustness",
]
