r"""The marginal latency prices of the paper's model at a budget vector.

With $d = 1 - \lambda E[S]$, $\partial E[T] / \partial l_k = \pi_k c_k (v + u\, t_k)$ where
$u = \lambda / d$ and $v = 1 + \tfrac12 u^2 E[S^2]$ (eq. (10)). The certificate (`_kkt.py`)
and the implicit derivative (`_implicit.py`) both price tokens this way. Docs: *Model*.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._objective import service_moments
from ._workload import Workload

__all__ = ["latency_prices"]


def latency_prices(
    tokens: Float[Array, "*b n"], w: Workload
) -> tuple[Float[Array, "*b"], Float[Array, "*b"], Bool[Array, "*b"]]:
    """`(u, v, stable)` at `tokens`; `u`, `v` are finite (and meaningless) where unstable."""
    m1, m2 = service_moments(tokens, w)
    lam = w.arrival_rate
    rho = lam * m1
    stable = rho < 1
    d = jnp.where(stable, 1 - rho, 1)  # double where: the unstable branch stays finite
    u = lam / d
    return u, 1 + 0.5 * u * u * m2, stable
