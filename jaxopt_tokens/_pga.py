"""Projected gradient ascent (29): the paper's fixed step and a safeguarded variant.

Both project onto the provable box $[0, \\min(l_{\\max}, \\bar u)]$ (`provable_box`), which
holds $l^*$. On it Lemma 3's constant $L_J$ (31)-(32) usually exists even when it does not
on $[0, l_{\\max}]$ (Table I: $\\rho_{\\max} = 41$ there, $0.27$ on the box), and the step
$\\eta = $ `step_fraction` $\\cdot 2/L_J$ with `step_fraction < 1` satisfies (38).

- `ProjectedGradient(safeguarded=False)`: the paper's method. If $L_J$ does not exist on the
  box the status is `NOT_CONTRACTIVE` and the iterate stays at 0.
- `ProjectedGradient(safeguarded=True)`: a spectral projected gradient method: the trial step
  is the Barzilai-Borwein step $s^\top s / (-s^\top y)$ of the last move, then backtracking
  along the projection arc (Armijo, allowing roundoff in J). J is `-inf` outside the
  stability region, so every accepted iterate is stable; it needs no $L_J$.

The update is composed from optax: `optax.sgd` on $-J$ and `optax.projections.projection_box`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from ._kkt import gradient_lipschitz, kkt_residual, objective_gradient, provable_box
from ._objective import objective
from ._solution import Solution, Status, default_rtol, finish, prepare
from ._workload import Workload

__all__ = ["ProjectedGradient"]


class _State(eqx.Module):
    tokens: Array
    grad: Array
    value: Array
    step: Array
    residual: Array
    iterations: Array


class ProjectedGradient(eqx.Module):
    """Projected gradient ascent on J over the provable box.

    **Arguments:** `safeguarded` (backtracking variant), `step_fraction` (fixed step as a
    fraction of $2/L_J$; default 0.95), `rtol`, `max_steps` (default 100000: a first-order
    method on a problem whose curvature spans decades), `max_backtracks`.
    """

    safeguarded: bool = False
    step_fraction: float = 0.95
    rtol: float | None = None
    max_steps: int = 100000
    max_backtracks: int = 60

    def __call__(self, w: Workload) -> Solution:
        dtype = w.dtype
        rtol = default_rtol(dtype, self.rtol)
        status_in, ok_in, safe = prepare(w)
        upper = provable_box(safe)
        L_J = gradient_lipschitz(safe, upper)
        has_L = jnp.isfinite(L_J) & (L_J > 0)
        eta0 = jnp.where(has_L, self.step_fraction * 2 / jnp.where(has_L, L_J, 1), 1.0).astype(dtype)

        def project(tokens):
            return optax.projections.projection_box(tokens, jnp.zeros_like(upper), upper)

        def ascent(tokens, eta):
            # one optax SGD step on -J, then the projection of (29)
            opt = optax.sgd(eta)
            updates, _ = opt.update(-objective_gradient(tokens, safe), opt.init(tokens))
            return project(optax.apply_updates(tokens, updates))

        eps = jnp.finfo(dtype).eps

        def fixed_step(s):
            new = ascent(s.tokens, s.step)
            return _State(
                new, objective_gradient(new, safe), objective(new, safe), s.step,
                kkt_residual(new, safe), s.iterations + 1,
            )

        def spectral_step(s):
            def trial(eta):
                new = ascent(s.tokens, eta)
                val = objective(new, safe)
                slack = 8 * eps * jnp.abs(s.value)  # roundoff in J near the optimum
                ok = val >= s.value + 1e-4 * jnp.sum(s.grad * (new - s.tokens)) - slack
                return new, val, ok

            def bt_cond(c):
                return ~c[3] & (c[4] < self.max_backtracks)

            def bt_body(c):
                eta = 0.5 * c[0]
                new, val, ok = trial(eta)
                return eta, new, val, ok, c[4] + 1

            new, val, ok = trial(s.step)
            eta, new, val, ok, _ = jax.lax.while_loop(bt_cond, bt_body, (s.step, new, val, ok, 0))
            new = jnp.where(ok, new, s.tokens)
            val = jnp.where(ok, val, s.value)
            grad = objective_gradient(new, safe)
            ds = new - s.tokens
            curv = -jnp.sum(ds * (grad - s.grad))
            bb = jnp.where(curv > 0, jnp.sum(ds * ds) / jnp.where(curv > 0, curv, 1), 2 * eta)
            bb = jnp.clip(bb, eta0 * 1e-6, eta0 * 1e6)
            return _State(new, grad, val, bb, kkt_residual(new, safe), s.iterations + 1)

        def cond(s):
            return (s.residual > rtol) & (s.iterations < self.max_steps) & (self.safeguarded | has_L)

        zeros = jnp.zeros_like(safe.A)
        state = _State(zeros, objective_gradient(zeros, safe), objective(zeros, safe), eta0, kkt_residual(zeros, safe), jnp.zeros((), jnp.int32))
        state = jax.lax.while_loop(cond, spectral_step if self.safeguarded else fixed_step, state)
        converged = state.residual <= rtol
        status = jnp.where(converged, Status.CONVERGED, Status.MAX_ITERATIONS)
        if not self.safeguarded:
            status = jnp.where(has_L | converged, status, Status.NOT_CONTRACTIVE)
        stats = {
            "lipschitz_box": L_J,
            "lipschitz": gradient_lipschitz(safe),
            "step_size": state.step if self.safeguarded else eta0,
        }
        return finish(ok_in, status_in, status, state.tokens, state.value, state.residual, state.iterations, stats)
