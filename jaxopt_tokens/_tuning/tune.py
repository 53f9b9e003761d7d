r"""Tuning workload parameters by gradient through the solver.

- `tune_alpha`: the accuracy weight alpha whose optimal allocation has mean system time
  $E[T] = \tau$. Because J is the Lagrangian of "maximise mean accuracy subject to
  $E[T] \le \tau$" with multiplier $1/\alpha$, that allocation is the most accurate one
  meeting the latency SLO. $E[T](l^*(\alpha))$ is non-decreasing in alpha; it is solved by
  Newton's method in $\log\alpha$ with the implicit derivative (docs: *Tuning*), safeguarded by
  a bracket.
- `tune`: any differentiable outer loss of (solution, workload) minimised over chosen fields
  with an optax optimizer, in a `lax.scan`, so it `vmap`s over targets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from .._errors import InputError
from .._objective import mean_accuracy, mean_system_time
from .._solver.solution import Solution
from .._solver.solve import solve
from .._status import HasStatus, Status, StatusEnum
from .._validate import PER_TASK_FIELDS, SCALAR_FIELDS, VALID, member_status
from .._workload import Workload

__all__ = ["TuneStatus", "AlphaTuning", "tune_alpha", "tune"]


class TuneStatus(StatusEnum):
    """Outcome of `tune_alpha`, per target (`AlphaTuning.status`)."""

    CONVERGED = 0, "E[T] meets the target"
    MAX_ITERATIONS = 1, "stopped at the iteration limit"
    TARGET_BELOW_MINIMUM = 2, "the target is below the mean system time with zero tokens"
    TARGET_ABOVE_MAXIMUM = (
        3,
        (
            "the target is at or above the latency at which more tokens stop helping "
            "(every budget at its cap, or alpha beyond the search range)"
        ),
    )
    SOLVE_FAILED = 4, "the workload is outside the model, or the inner solve did not converge"
    INVALID_INPUT = 5, "the target is not a positive, finite number of seconds"


class AlphaTuning(HasStatus):
    """Result of `tune_alpha` (one per target under `vmap`).

    Attributes:
        alpha: the alpha found.
        solution: the optimal allocation at that alpha.
        mean_system_time: its E[T] (s).
        accuracy: its mean accuracy.
        status: a `TuneStatus` code.
        iterations: the steps taken.
    """

    alpha: Float[Array, ""]
    solution: Solution
    mean_system_time: Float[Array, ""]
    accuracy: Float[Array, ""]
    status: Int[Array, ""]
    iterations: Int[Array, ""]

    STATUS: ClassVar[type[TuneStatus]] = TuneStatus


def tune_alpha(
    workload: Workload,
    target_latency: float | Float[Array, ""],
    *,
    rtol: float | None = None,
    max_steps: int = 100,
    log_alpha_range: tuple[float, float] = (-30.0, 30.0),
) -> AlphaTuning:
    r"""The alpha whose optimal allocation has $E[T]$ equal to the target (seconds).

    Works under `jit` and `vmap` (e.g. over 1,000 targets). `status` says when the target is
    unreachable: below the zero-token latency, or at/above the latency at which more tokens
    stop helping; a target that is not a positive finite number is `INVALID_INPUT`, and a
    workload outside the model (or one the inner solve cannot solve) is `SOLVE_FAILED`.
    `rtol` is the relative tolerance on $E[T]$ (default 1e-9 in float64, 1e-5 in float32: the
    latency itself is known only to about 1e-7 in float32). Docs: *Sweeps and tuning*.

    Args:
        workload: the workload (its `alpha` is replaced).
        target_latency: the mean system time to reach (s).
        rtol: the relative tolerance on E[T] (default 1e-9 in float64, 1e-5 in float32).
        max_steps: the most bisection-Newton steps.
        log_alpha_range: the bracket of $\log\alpha$ searched.

    Returns:
        The `AlphaTuning`.
    """
    w = workload
    dtype = w.dtype
    rtol = (1e-9 if dtype == jnp.float64 else 1e-5) if rtol is None else rtol
    tau = jnp.asarray(target_latency, dtype)

    def evaluate(la):
        """E[T] at the optimum for alpha = exp(la), its derivative in la, and the solution."""

        def latency(x):
            wa = w.replace(alpha=jnp.exp(x))
            sol = solve(wa)
            return mean_system_time(sol.tokens, wa), sol

        T, dT, sol = jax.jvp(latency, (la,), (jnp.ones_like(la),), has_aux=True)
        return T, dT, sol

    lo0, hi0 = (jnp.asarray(v, dtype) for v in log_alpha_range)
    T_hi, _, _ = evaluate(hi0)
    zero = jnp.zeros_like(w.A)
    T_zero = mean_system_time(zero, w)
    below = tau < T_zero * (1 + rtol)
    above = ~(tau < T_hi)

    def cond(s):
        la, lo, hi, T, k = s
        return (
            (jnp.abs(T - tau) > rtol * tau)
            & (k < max_steps)
            & (hi - lo > 1e-13 * jnp.maximum(1, jnp.abs(hi)))
        )

    def body(s):
        la, lo, hi, T, k = s
        T, dT, _ = evaluate(la)
        lo = jnp.where(T < tau, la, lo)
        hi = jnp.where(T < tau, hi, la)
        newton = la - (T - tau) / jnp.where(dT > 0, dT, 1)
        ok = (dT > 0) & (newton > lo) & (newton < hi)
        la_new = jnp.where(ok, newton, 0.5 * (lo + hi))
        T_new, _, _ = evaluate(la_new)
        return la_new, lo, hi, T_new, k + 1

    la0 = jnp.clip(jnp.log(w.alpha), lo0, hi0)
    T0, _, _ = evaluate(la0)
    la, _, _, T, k = jax.lax.while_loop(cond, body, (la0, lo0, hi0, T0, jnp.zeros((), jnp.int32)))
    T, _, sol = evaluate(la)
    met = jnp.abs(T - tau) <= rtol * tau
    status = jnp.where(met, TuneStatus.CONVERGED, TuneStatus.MAX_ITERATIONS)
    status = jnp.where(sol.status != Status.CONVERGED, TuneStatus.SOLVE_FAILED, status)
    status = jnp.where(above, TuneStatus.TARGET_ABOVE_MAXIMUM, status)
    status = jnp.where(below, TuneStatus.TARGET_BELOW_MINIMUM, status)
    status = jnp.where(member_status(w) != VALID, TuneStatus.SOLVE_FAILED, status)
    target_ok = jnp.isfinite(tau) & (tau > 0)
    status = jnp.where(target_ok, status, TuneStatus.INVALID_INPUT).astype(jnp.int32)
    alpha = jnp.exp(la)
    wa = w.replace(alpha=alpha)
    return AlphaTuning(
        alpha=alpha,
        solution=sol,
        mean_system_time=T,
        accuracy=mean_accuracy(sol.tokens, wa),
        status=status,
        iterations=k,
    )


def tune(
    workload: Workload,
    loss: Callable[[Solution, Workload], Float[Array, ""]],
    fields: Sequence[str],
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 200,
    log_space: bool = True,
) -> tuple[Workload, Float[Array, " steps"]]:
    """Minimise `loss(solve(w), w)` over the workload `fields` with optax.

    Positive fields are optimised in log space by default (`log_space=True`). Returns the tuned
    workload and the loss at every step. Runs as one `lax.scan`, so it `jit`s and `vmap`s (for
    instance over a batch of targets closed over by `loss` through a vmapped argument).

    Args:
        workload: the starting workload.
        loss: `loss(solution, workload)`, a scalar to minimise.
        fields: the workload fields tuned (`"alpha"`, `"max_tokens"`, `"arrival_rate"`, ...).
        optimizer: an optax transformation (default Adam, learning rate 0.05).
        steps: optimisation steps.
        log_space: optimise positive fields in log space.

    Returns:
        `(tuned workload, loss at every step)`.
    """
    fields = tuple(fields)
    unknown = [f for f in fields if f not in PER_TASK_FIELDS + SCALAR_FIELDS]
    if unknown:
        raise InputError(f"unknown workload field(s) {unknown}")
    optimizer = optimizer or optax.adam(5e-2)
    to_param = jnp.log if log_space else (lambda x: x)
    from_param = jnp.exp if log_space else (lambda x: x)
    params = {f: to_param(getattr(workload, f)) for f in fields}

    def objective_of(p):
        w = workload.replace(**{f: from_param(v) for f, v in p.items()})
        return loss(solve(w), w)

    value_and_grad = jax.value_and_grad(objective_of)

    def step(carry, _):
        p, state = carry
        value, g = value_and_grad(p)
        updates, state = optimizer.update(g, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), history = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    fitted: dict[str, Array] = params  # type: ignore[assignment]  # the optax tree is this dict
    return workload.replace(**{f: from_param(v) for f, v in fitted.items()}), history
