r"""CLEAR: one global token budget shared by a batch of queries, cleared by a shadow price.

docs: *CLEAR* and the CLEAR paper ("The Shadow Price of Reasoning", Algorithm 1, eqs. 1-16).
Query $i$ has a threshold $\tau_i$ (predicted minimum useful length) and the shifted-surge
utility $U_i(x) = v (x-\tau_i) e^{-\beta (x-\tau_i)}$ for $x \ge \tau_i$, else 0. With shadow
price $\mu$ the surge-branch optimum is

$$x_i(\mu) = \tau_i + \frac{1 - W(e\mu/v)}{\beta}, \qquad 0 \le \mu \le v,$$

(principal Lambert W, our own `lambertw`), kept only while its net surplus
$U_i(x_i) - \mu x_i$ is positive (*rational abandonment*); then capped at `query_cap`.
Writing $w = W(e\mu/v)$ the surplus is $\mu\,((1-w)^2/(\beta w) - \tau_i)$, so the admission
test is the closed form $\beta\tau_i w < (1-w)^2$: at any price the admitted queries are the
ones with the smallest thresholds. W depends on $\mu$ only (one scalar per price), so a
bisection step costs a few elementwise operations per query.

Clearing, in two stages (fixed iteration counts, `lax.fori_loop`, no host round trips):

1. Bisection on $\mu \in [0, v]$ for the demand $D(\mu) = \sum_i x_i(\mu)$ with
   abandonment, keeping the feasible end ($D \le B$). This fixes the admitted set $A$.
   $D$ jumps down where a query is abandoned, so $D(\mu_1)$ can fall short of $B$ by up to
   one query's allocation.
2. Bisection on $\mu \in [0, \mu_1]$ for
   $D_A(\mu) = \sum_{i \in A} \min(x_i(\mu), x_{\max})$
   with $A$ frozen. $D_A$ is continuous, so the leftover goes to the admitted queries at
   the price that clears the budget exactly.
3. If even $\mu = 0$ leaves a remainder $r = B - D_A(0) > 0$ (every admitted query at its
   peak $\tau_i + 1/\beta$ or cap), the cheapest abandoned query $j$ receives
   $\min(r, \tau_j + 1/\beta, x_{\max})$ tokens when $r > \tau_j$ (it then has positive
   utility).

What holds (tested): total $\le B$ always; total $= B$ up to rounding whenever status is
`CLEARED` (0); status `SLACK` (1) means every query is admitted at its peak or cap and still
fits ($D(0) \le B$); status `INDIVISIBLE` (3) means every admitted query sits at its peak
$\tau_i + 1/\beta$ (or cap) and the remainder is at most the threshold of the cheapest abandoned
query (or that query's cap is below its threshold), so no query gains utility from it (it is
common at scarce budgets when thresholds are spread wide compared to $1/\beta$; pass
`spread_remainder=True` to hand it to the admitted queries anyway); `INVALID` (2)
flags bad input. Total tokens are non-decreasing in the budget and the allocation is
permutation equivariant.

Adaptive decay (the paper's eq. 16 was lost in extraction; this is our explicit choice):
$1/\beta = \max(B/n - \bar\tau,\; s\,\bar\tau,\; 1)$ tokens, $s$ = `min_scale`. When the
first term wins, $D(0) = \sum_i \tau_i + n/\beta = B$: the budget surplus per query is spread
as an equal allowance above each threshold at $\mu = 0$. When budget is scarce, the floor
$s\bar\tau$ keeps a margin above the threshold (a strict, high $\beta$, as the paper's
sensitivity study recommends at low budgets) and the price rises to abandon the hardest queries.
Allocations scale with $(\tau, B)$ and do not depend on $v$ (only $\mu/v$ enters).

Gradients w.r.t. thresholds, budget, velocity and decay come from implicit differentiation of
the clearing condition $D_A(\mu) = B$ (the bisection itself carries none): the returned price
is $\mu^* - (g(\mu^*,\theta) - \mathrm{sg}[g])/\mathrm{sg}[\partial_\mu g]$, whose
derivative is
$-\partial_\theta g / \partial_\mu g$ with the admitted set held fixed (piecewise, away from
abandonment kinks and caps).
"""

from __future__ import annotations

import functools
from typing import ClassVar, Union

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._errors import InputError
from .._lambertw import E, lambertw
from .._status import HasStatus, StatusEnum

__all__ = [
    "Allocation",
    "AllocationStatus",
    "allocate",
    "check_inputs",
    "adaptive_inverse_decay",
    "surge_utility",
    "integer_tokens",
    "valid_batch",
]


class AllocationStatus(StatusEnum):
    """Outcome of `allocate` per batch member (see the module docstring)."""

    CLEARED = 0, "cleared: the budget binds and the allocations spend it exactly"
    SLACK = 1, "slack: every query fits at its peak (or cap); the price is zero"
    INVALID = (
        2,
        (
            "invalid input: NaN or negative thresholds, a negative or non-finite budget, or a bad "
            "velocity or decay"
        ),
    )
    INDIVISIBLE = 3, "indivisible: a remainder below every abandoned query's threshold stays unused"


class Allocation(HasStatus):
    r"""Result of `allocate`; leading batch axes as in the inputs.

    Attributes:
        tokens: the allocated tokens $x_i$ (0 when abandoned).
        price: the clearing shadow price $\mu$ of the admitted set.
        admitted: the queries with a positive allocation.
        beta: the decay used (adaptive or given).
        status: an `AllocationStatus` code per member.
        unused: the budget minus the tokens allocated (>= 0 up to rounding).
    """

    tokens: Float[Array, "*batch n"]  # allocated tokens x_i (0 when abandoned)
    price: Float[Array, " *batch"]  # clearing shadow price mu (of the admitted set)
    admitted: Bool[Array, "*batch n"]  # queries with positive allocation
    beta: Float[Array, " *batch"]  # decay used (adaptive or given)
    status: Int[Array, " *batch"]  # AllocationStatus codes
    unused: Float[Array, " *batch"]  # budget - total tokens (>= 0 up to rounding)

    STATUS: ClassVar[type[AllocationStatus]] = AllocationStatus


def surge_utility(
    x: ArrayLike, thresholds: ArrayLike, beta: ArrayLike, velocity: ArrayLike = 1.0
) -> Array:
    r"""Shifted-surge utility $U(x) = v (x-\tau) e^{-\beta(x-\tau)}$ for $x \ge \tau$, else 0
    (eq. 1).

    Args:
        x: the tokens given.
        thresholds: the thresholds $\tau$.
        beta: the decay $\beta$.
        velocity: the velocity $v$.

    Returns:
        $U(x)$, broadcast over the arguments.
    """
    x, tau = jnp.asarray(x), jnp.asarray(thresholds)
    z = jnp.maximum(x - tau, 0.0)
    return jnp.where(x >= tau, velocity * z * jnp.exp(-jnp.asarray(beta) * z), 0.0)


def adaptive_inverse_decay(
    thresholds: Float[ArrayLike, "*batch n"],
    budget: Float[ArrayLike, " *batch"],
    min_scale: float = 0.25,
) -> Float[Array, " *batch"]:
    r"""$1/\beta = \max(B/n - \bar\tau, s\bar\tau, 1)$: the adaptive decay length (module
    docstring).

    Args:
        thresholds: the thresholds, queries on the last axis.
        budget: the total budget $B$.
        min_scale: $s$.

    Returns:
        $1/\beta$, with the batch shape.
    """
    if isinstance(min_scale, (int, float)) and not min_scale >= 0:
        raise InputError(f"min_scale: must be >= 0, got {min_scale}")
    tau = jnp.asarray(thresholds)
    mean_tau = jnp.mean(tau, axis=-1)
    surplus = jnp.asarray(budget) / tau.shape[-1] - mean_tau
    return jnp.maximum(jnp.maximum(surplus, min_scale * mean_tau), 1.0)


def check_inputs(
    thresholds: ArrayLike,
    budget: ArrayLike,
    *,
    velocity: ArrayLike = 1.0,
    decay: str | ArrayLike = "adaptive",
    query_cap: ArrayLike | None = None,
    min_scale: float = 0.25,
) -> None:
    r"""Eager validation for user input; raises `InputError` naming the field and index.

    `allocate` itself never raises on values (it returns status `INVALID` per batch member,
    so it can run under `jit`/`vmap`); call this first on data from users.

    Args:
        thresholds: the predicted thresholds $\tau_i$.
        budget: the total budget $B$.
        velocity: the initial velocity $v > 0$.
        decay: `"adaptive"` or a fixed $\beta > 0$.
        query_cap: the per-query cap (None: no cap).
        min_scale: $s$ of the adaptive decay.
    """
    tau = np.asarray(thresholds, dtype=float)
    if tau.ndim == 0 or tau.shape[-1] == 0:
        raise InputError("thresholds: need at least one query (a non-empty last axis)")
    bad = np.argwhere(~np.isfinite(tau))
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        raise InputError(f"thresholds{list(idx)}: must be finite, got {tau[idx]}")
    bad = np.argwhere(tau < 0)
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        raise InputError(f"thresholds{list(idx)}: must be >= 0 tokens, got {tau[idx]:g}")
    b = np.asarray(budget, dtype=float)
    if not np.all(np.isfinite(b)):
        raise InputError(f"budget: must be finite, got {b}")
    if np.any(b < 0):
        raise InputError(f"budget: must be >= 0 tokens, got {b.min():g}")
    if not np.all(np.asarray(velocity, dtype=float) > 0):
        raise InputError(f"velocity: must be > 0, got {velocity}")
    if not isinstance(decay, str) and not np.all(np.asarray(decay, dtype=float) > 0):
        raise InputError(f"decay: must be 'adaptive' or > 0, got {decay}")
    if query_cap is not None and not np.all(np.asarray(query_cap, dtype=float) > 0):
        raise InputError(f"query_cap: must be > 0, got {query_cap}")
    if not (np.isfinite(min_scale) and min_scale >= 0):
        raise InputError(f"min_scale: must be >= 0, got {min_scale}")
    try:
        np.broadcast_shapes(tau.shape[:-1], b.shape)
    except ValueError:
        raise InputError(
            f"budget: shape {b.shape} does not broadcast with thresholds' batch "
            f"shape {tau.shape[:-1]}"
        ) from None


def valid_batch(tau, budget, cap=None) -> Bool[Array, ""]:
    """Whether one batch is inside the model (traced): finite thresholds >= 0, a finite budget
    >= 0 and a positive cap. `allocate` and every baseline use this one test."""
    ok = jnp.all(jnp.isfinite(tau)) & jnp.all(tau >= 0) & jnp.isfinite(budget) & (budget >= 0)
    return ok if cap is None else ok & jnp.all(jnp.asarray(cap) > 0)


def _policy(mu, tau, cap, velocity, inv_beta, capped: bool):
    """Allocation x_i(mu) (capped) and the rational-abandonment mask at price mu."""
    w = lambertw(E * mu / velocity)
    x = tau + (1.0 - w) * inv_beta
    if not capped:
        return x, tau * w < (1.0 - w) ** 2 * inv_beta
    xc = jnp.minimum(x, cap)
    zc = xc - tau
    surplus = velocity * zc * jnp.exp(-zc / inv_beta) - mu * xc
    return xc, (surplus > 0) & (zc > 0)


def _bisect(demand, budget, lo, hi, hi_aux, iterations):
    """Bisection keeping the feasible end: `demand(mu) -> (total, aux)`, total(hi) <= budget.

    Returns `(hi, aux at hi)`: the auxiliary output (the admitted set) is carried from the very
    evaluation that found hi feasible, so a query exactly at its abandonment kink cannot flip
    between the test and its later use (rounding differs between fused loop code and eager code).
    """

    def body(_, state):
        lo, hi, aux = state
        mid = 0.5 * (lo + hi)
        total, mid_aux = demand(mid)
        over = total > budget
        aux = jax.tree_util.tree_map(lambda a, m: jnp.where(over, a, m), aux, mid_aux)
        return jnp.where(over, mid, lo), jnp.where(over, hi, mid), aux

    _, hi, aux = jax.lax.fori_loop(0, iterations, body, (lo, hi, hi_aux))
    return hi, aux


def _clear_one(
    tau,
    budget,
    cap,
    velocity,
    inv_beta_in,
    *,
    capped: bool,
    iterations: int,
    spread_remainder: bool = False,
):
    """CLEAR for one batch member: tau (n,), scalars budget/velocity/inv_beta, cap (n,)."""
    dtype = tau.dtype
    valid = (
        valid_batch(tau, budget, cap)
        & jnp.isfinite(velocity)
        & (velocity > 0)
        & jnp.isfinite(inv_beta_in)
        & (inv_beta_in > 0)
    )
    # Benign values where invalid, so nothing below produces NaN (status carries the verdict).
    tau = jnp.where(valid, tau, 1.0)
    budget = jnp.where(valid, budget, 0.0)
    velocity = jnp.where(valid, velocity, 1.0)
    inv_beta = jnp.where(valid, inv_beta_in, 1.0)
    cap = jnp.where(valid, cap, 1.0)

    sg = jax.lax.stop_gradient
    tau_s, b_s, cap_s, v_s, ib_s = sg(tau), sg(budget), sg(cap), sg(velocity), sg(inv_beta)
    zero = jnp.zeros((), dtype)

    def demand(mu):
        x, adm = _policy(mu, tau_s, cap_s, v_s, ib_s, capped)
        return jnp.sum(jnp.where(adm, x, 0.0)), adm

    # Stage 1: the admitted set (at mu = v every query is abandoned).
    total0, all_in = demand(zero)
    slack = total0 <= b_s
    mu1, admitted = _bisect(demand, b_s, zero, v_s, jnp.zeros_like(all_in), iterations)
    mu1 = jnp.where(slack, zero, mu1)
    admitted = jnp.where(slack, all_in, admitted)

    # Stage 2: clear the budget with the admitted set frozen.
    def demand_a(mu):
        x, _ = _policy(mu, tau_s, cap_s, v_s, ib_s, capped)
        return jnp.sum(jnp.where(admitted, x, 0.0)), None

    binding = demand_a(zero)[0] > b_s
    mu2 = jnp.where(binding, _bisect(demand_a, b_s, zero, mu1, None, iterations)[0], zero)

    # Implicit differentiation of g(mu, theta) = D_A(mu; theta) - B = 0 at mu2.
    def g(mu, tau, cap, velocity, inv_beta, budget):
        x, _ = _policy(mu, tau, cap, velocity, inv_beta, capped)
        return jnp.sum(jnp.where(admitted, x, 0.0)) - budget

    g_theta = g(mu2, tau, cap, velocity, inv_beta, budget)
    g_mu = jax.grad(g)(mu2, tau_s, cap_s, v_s, ib_s, b_s)
    usable = binding & (g_mu < 0)
    correction = (g_theta - sg(g_theta)) / jnp.where(usable, g_mu, -1.0)
    price = mu2 - jnp.where(usable, correction, 0.0)

    x, _ = _policy(price, tau, cap, velocity, inv_beta, capped)
    tokens = jnp.where(admitted, x, 0.0)

    # Stage 3: a remainder no admitted query can use goes to the cheapest abandoned query.
    remainder = budget - jnp.sum(tokens)
    candidates = ~admitted & (cap_s > tau_s)
    j = jnp.argmin(jnp.where(candidates, tau_s, jnp.inf))
    peak_j = jnp.minimum(tau[j] + inv_beta, cap[j])
    fill = (~binding) & (~slack) & candidates[j] & (remainder > tau[j])
    fill_tokens = jnp.minimum(remainder, peak_j)
    onehot = jnp.arange(tau.shape[0]) == j
    tokens = jnp.where(onehot & fill, fill_tokens, tokens)
    admitted = admitted | (onehot & fill)

    remainder_after = budget - jnp.sum(tokens)
    if spread_remainder:
        # Optional: the unusable remainder goes equally to admitted queries below their cap
        # (past their utility peak; useful when thresholds are noisy predictions).
        room = admitted & (tokens < cap)
        extra = (budget - jnp.sum(tokens)) / jnp.maximum(jnp.sum(room), 1)
        spread = (~binding) & (~slack) & (extra > 0)
        tokens = jnp.where(spread & room, jnp.minimum(tokens + extra, cap), tokens)
    tol = 64 * jnp.finfo(dtype).eps * jnp.maximum(budget, 1.0)
    status = jnp.where(
        ~valid,
        AllocationStatus.INVALID,
        jnp.where(
            slack,
            AllocationStatus.SLACK,
            jnp.where(
                binding | (remainder_after <= tol),
                AllocationStatus.CLEARED,
                AllocationStatus.INDIVISIBLE,
            ),
        ),
    )
    tokens = jnp.where(valid, tokens, 0.0)
    admitted = admitted & valid
    nan = jnp.asarray(jnp.nan, dtype)
    return (
        tokens,
        jnp.where(valid, price, nan),
        admitted,
        jnp.where(valid, 1.0 / inv_beta, nan),
        status.astype(jnp.int32),
        jnp.where(valid, budget - jnp.sum(tokens), nan),
    )


@functools.partial(jax.jit, static_argnames=("capped", "iterations", "spread_remainder"))
def _clear_batched(tau, budget, cap, velocity, inv_beta, *, capped, iterations, spread_remainder):
    """`_clear_one` vmapped over every leading batch axis (inputs already broadcast)."""
    fn = functools.partial(
        _clear_one, capped=capped, iterations=iterations, spread_remainder=spread_remainder
    )
    for _ in range(budget.ndim):
        fn = jax.vmap(fn)
    return fn(tau, budget, cap, velocity, inv_beta)


def allocate(
    thresholds: Float[ArrayLike, "*batch n"],
    budget: Float[ArrayLike, " *batch"],
    *,
    velocity: Union[float, Float[ArrayLike, " *batch"]] = 1.0,
    decay: Union[str, float, Float[ArrayLike, " *batch"]] = "adaptive",
    query_cap: Union[None, float, Float[ArrayLike, "*batch n"]] = None,
    iterations: int = 60,
    min_scale: float = 0.25,
    spread_remainder: bool = False,
) -> Allocation:
    r"""Split a global token budget over a batch of queries by the CLEAR shadow price.

    docs: *CLEAR*; the CLEAR paper's Algorithm 1 with the two-stage clearing and the
    explicit adaptive decay described in this module's docstring.

    Args:
        thresholds: predicted thresholds $\tau_i \ge 0$ (tokens), shape `(..., n)`.
        budget: total token budget $B \ge 0$ per batch member, shape broadcasting with `(...)`.
        velocity: initial velocity $v > 0$ (the reservation price; allocations do not depend on it).
        decay: `"adaptive"` for $1/\beta = \max(B/n - \bar\tau, s\bar\tau, 1)$ with
            $s$ = `min_scale`, or a fixed $\beta > 0$ (per token).
        query_cap: per-query cap $x_{\max}$ (scalar or `(..., n)`); `None` for no cap.
        iterations: bisection steps per stage (60 reach float64 resolution of the price).
        min_scale: floor of the adaptive decay length, as a fraction of the mean threshold.
        spread_remainder: if True, a remainder that no query can use under the utility model
            (status `INDIVISIBLE`) is split equally over the admitted queries (up to their cap),
            past their utility peak; status stays `INDIVISIBLE` but the budget is used. Off by
            default (the paper's policy leaves it unused).

    Returns:
        `Allocation`. Never raises on values (use `check_inputs` for user data);
        invalid members get status 2, zero tokens and NaN price. Works under `jit`, `vmap`, `grad`.
    """
    if not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"iterations: must be a positive integer, got {iterations!r}")
    adaptive = isinstance(decay, str)
    if adaptive and decay != "adaptive":
        raise InputError(f"decay: must be 'adaptive' or a positive number, got {decay!r}")
    tau = jnp.asarray(thresholds)
    if not jnp.issubdtype(tau.dtype, jnp.floating):
        tau = tau.astype(jnp.result_type(float))
    if tau.ndim == 0 or tau.shape[-1] == 0:
        raise InputError("thresholds: need at least one query (a non-empty last axis)")
    dtype = tau.dtype
    b = jnp.asarray(budget, dtype)
    try:  # shapes are static: refuse a mismatch before computing anything
        np.broadcast_shapes(tau.shape[:-1], b.shape, np.shape(velocity))
    except ValueError:
        raise InputError(
            f"budget: shape {b.shape} (velocity {np.shape(velocity)}) does not broadcast with "
            f"the thresholds' batch shape {tau.shape[:-1]}"
        ) from None
    if adaptive:
        inv_beta = adaptive_inverse_decay(tau, b, min_scale)
    else:
        inv_beta = 1.0 / jnp.asarray(decay, dtype)
    capped = query_cap is not None
    cap = jnp.asarray(jnp.inf if query_cap is None else query_cap, dtype)
    batch = jnp.broadcast_shapes(
        tau.shape[:-1],
        b.shape,
        jnp.shape(inv_beta),
        jnp.shape(velocity),
        cap.shape[:-1] if cap.ndim else (),
    )
    n = tau.shape[-1]
    tau = jnp.broadcast_to(tau, (*batch, n))
    cap = jnp.broadcast_to(cap, (*batch, n))
    b = jnp.broadcast_to(b, batch)
    v = jnp.broadcast_to(jnp.asarray(velocity, dtype), batch)
    inv_beta = jnp.broadcast_to(inv_beta, batch)

    tokens, price, admitted, beta, status, unused = _clear_batched(
        tau,
        b,
        cap,
        v,
        inv_beta,
        capped=capped,
        iterations=iterations,
        spread_remainder=spread_remainder,
    )
    return Allocation(
        tokens=tokens, price=price, admitted=admitted, beta=beta, status=status, unused=unused
    )


def integer_tokens(
    allocation: Allocation, budget: Float[ArrayLike, " *batch"]
) -> Int[Array, "*batch n"]:
    """Whole tokens: floor, then one extra token to the admitted queries with the largest
    fractional parts until the floored total (of the budget, or of the allocation if less) is
    used; never above the budget or on abandoned
    queries. Works on batched allocations.

    Args:
        allocation: the `Allocation`.
        budget: the total budget it was made for.

    Returns:
        Whole tokens per query.
    """
    x = allocation.tokens
    base = jnp.floor(x)
    frac = jnp.where(allocation.admitted, x - base, -1.0)
    b = jnp.asarray(budget, x.dtype)
    target = jnp.minimum(jnp.floor(b), jnp.floor(jnp.sum(x, axis=-1) + 1e-6 * jnp.maximum(b, 1.0)))
    left = target - jnp.sum(base, axis=-1)
    left = jnp.clip(left, 0, jnp.sum(allocation.admitted, axis=-1))
    rank = jnp.argsort(jnp.argsort(-frac, axis=-1), axis=-1)
    extra = (rank < left[..., None]) & allocation.admitted
    return (base + extra).astype(jnp.result_type(int))
