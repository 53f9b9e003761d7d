r"""A router trained through the solver: decision-focused learning of accuracy curves.

A model maps each task type's features to its accuracy curve $(A_k, b_k)$ (eq. 2); the
differentiable `solve` turns the predicted workload into budgets; training maximises the
*realised* objective J of those budgets under the true curves. The baseline fits the same model
to noisy measurements of $(A_k, \log b_k)$ by mean squared error and then solves (two-stage).

Exact implicit gradients vanish for budgets held at a bound, which can starve training. With
`temperature > 0` the training loss uses smoothed budgets instead: the unclipped closed form of
eq. (22) at the optimal prices, passed through a softplus box
$l = \tau\,\mathrm{softplus}(\hat l/\tau)$ (then capped the same way at $l_{\max}$), which
equals
the exact budget away from the bounds and keeps a gradient at them. Evaluation always uses the
exact budgets.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._objective import objective, service_moments
from .._solver.aggregate import unclipped_budgets
from .._solver.solve import solve
from .._validate import check_int, check_memory
from .._workload import Workload

__all__ = ["TaskPool", "CurveModel", "synthetic_task_pool", "train_router", "realised_objective"]


class TaskPool(eqx.Module):
    """Task types with features and true curves; workloads are drawn as subsets of them.

    Attributes:
        features: each type's features, shape `(m, d)`.
        A: true accuracy gains.
        b: true accuracy rates.
        D: true zero-token accuracies.
        t0: zero-token service times (s).
        c: seconds per token.
        A_observed: the noisy observation of `A` the baseline sees.
        log_b_observed: the noisy observation of `log b`.
    """

    features: Float[Array, "m d"]
    A: Float[Array, " m"]
    b: Float[Array, " m"]
    D: Float[Array, " m"]
    t0: Float[Array, " m"]
    c: Float[Array, " m"]
    A_observed: Float[Array, " m"]  # noisy measurements the two-stage baseline fits
    log_b_observed: Float[Array, " m"]

    def workload(
        self,
        idx: Int[Array, " n"],
        A: Float[Array, " n"] | None = None,
        b: Float[Array, " n"] | None = None,
        *,
        arrival_rate,
        alpha,
        max_tokens,
    ) -> Workload:
        """The workload of the task types `idx` in equal shares, with accuracy curves `A, b`
        (by default the pool's true ones; a router passes its predictions)."""
        n = idx.shape[0]
        A = self.A[idx] if A is None else A
        b = self.b[idx] if b is None else b
        return Workload(
            A=A,
            b=b,
            D=self.D[idx],
            t0=self.t0[idx],
            c=self.c[idx],
            share=jnp.full(n, 1.0 / n, A.dtype),
            arrival_rate=arrival_rate,
            alpha=alpha,
            max_tokens=max_tokens,
        )


def synthetic_task_pool(
    key: PRNGKeyArray,
    num_types: int = 60,
    num_features: int = 4,
    noise: float = 0.15,
    dtype: DTypeLike | None = None,
) -> TaskPool:
    r"""Synthetic task types whose true curves depend non-linearly on their features.

    $A = (1 - D)\,\sigma(x^\top a + \sin(2 x^\top a'))$, $\log b = \log 10^{-3} + x^\top v +
    0.5 (x^\top v')^2$, latency parameters like Table I's; the baseline sees $A$ and $\log b$ with
    Gaussian noise of scale `noise`. A linear model cannot represent these curves exactly, which is
    the regime where fitting for decisions and fitting for accuracy of the parameters differ.

    Args:
        key: the random key.
        num_types: task types.
        num_features: features per type.
        noise: the scale of the observation noise.
        dtype: the floating dtype (default: JAX's default float).

    Returns:
        The `TaskPool`.
    """
    num_types = check_int("num_types", num_types, 1)
    num_features = check_int("num_features", num_features, 1, 1 << 12)
    check_memory(
        8.0 * num_types * (num_features + 16), f"{num_types:,} task types", "draw fewer types"
    )
    dtype = dtype or jnp.result_type(float)
    ks = jax.random.split(key, 10)
    x = jax.random.normal(ks[0], (num_types, num_features), dtype)
    a, a2, v, v2 = (
        jax.random.normal(k, (num_features,), dtype) / jnp.sqrt(num_features) for k in ks[1:5]
    )
    D = jax.random.uniform(ks[5], (num_types,), dtype, 0.0, 0.4)
    A = (1 - D) * jax.nn.sigmoid(x @ a + jnp.sin(2 * x @ a2))
    log_b = jnp.log(1e-3) + x @ v + 0.5 * (x @ v2) ** 2
    t0 = jax.random.uniform(ks[6], (num_types,), dtype, 0.02, 0.2)
    c = jax.random.uniform(ks[7], (num_types,), dtype, 0.01, 0.015)
    return TaskPool(
        features=x,
        A=A,
        b=jnp.exp(log_b),
        D=D,
        t0=t0,
        c=c,
        A_observed=jnp.clip(A + noise * jax.random.normal(ks[8], A.shape, dtype), 0.0, 1 - D),
        log_b_observed=log_b + 2 * noise * jax.random.normal(ks[9], A.shape, dtype),
    )


class CurveModel(eqx.Module):
    """Features -> $(A_k, b_k)$; `width=0` is a linear model.

    Args:
        num_features: features per task type.
        key: the random key of the initial weights.
        width: hidden units (0: a linear model).
    """

    net: eqx.Module

    def __init__(self, num_features: int, key: PRNGKeyArray, width: int = 0):
        if width:
            self.net = eqx.nn.MLP(num_features, 2, width, 1, key=key)
        else:
            self.net = eqx.nn.Linear(num_features, 2, key=key)

    def __call__(self, features: Float[Array, "n d"], D: Float[Array, " n"]):
        out = jax.vmap(self.net)(features)  # pyright: ignore[reportArgumentType]
        A = (1 - D) * jax.nn.sigmoid(out[:, 0])
        b = jnp.exp(jnp.log(1e-3) + out[:, 1])
        return A, b


def _smoothed_tokens(tokens, w: Workload, temperature: float):
    m1, m2 = service_moments(tokens, w)
    d = 1 - w.arrival_rate * m1
    y = w.arrival_rate * m2 / (2 * d * d)
    raw = unclipped_budgets(d, y, w)
    low = temperature * jax.nn.softplus(raw / temperature)
    return w.max_tokens - temperature * jax.nn.softplus((w.max_tokens - low) / temperature)


def realised_objective(
    model: CurveModel,
    pool: TaskPool,
    idx: Int[Array, "batch n"],
    *,
    arrival_rate: float = 0.1,
    alpha: float = 30.0,
    max_tokens: float = 4096.0,
    temperature: float = 0.0,
) -> Float[Array, " batch"]:
    """J under the TRUE curves of the budgets solved from the model's PREDICTED curves.

    Args:
        model: the `CurveModel`.
        pool: the task types.
        idx: the types of each workload, shape `(batch, n)`.
        arrival_rate: the workloads' arrival rate.
        alpha: their accuracy weight.
        max_tokens: their budget cap.
        temperature: smoothing of the box projection (0: none).

    Returns:
        The true J of each workload.
    """

    def one(i):
        A_hat, b_hat = model(pool.features[i], pool.D[i])
        w_hat = pool.workload(
            i, A_hat, b_hat, arrival_rate=arrival_rate, alpha=alpha, max_tokens=max_tokens
        )
        tokens = solve(w_hat).tokens
        if temperature > 0:
            tokens = _smoothed_tokens(tokens, w_hat, temperature)
        w_true = pool.workload(i, arrival_rate=arrival_rate, alpha=alpha, max_tokens=max_tokens)
        return objective(tokens, w_true)

    return jax.vmap(one)(idx)


def train_router(
    model: CurveModel,
    pool: TaskPool,
    train_types: Int[Array, " m"],
    key: PRNGKeyArray,
    *,
    decision_focused: bool = True,
    steps: int = 300,
    batch: int = 32,
    tasks_per_workload: int = 6,
    learning_rate: float = 3e-2,
    temperature: float = 0.0,
    **operating_point: float,
) -> tuple[CurveModel, Float[Array, " steps"]]:
    r"""Train `model` on the task types `train_types`; returns (model, loss history).

    Decision-focused: minimise $-J_{\rm true}$ of the solved budgets over random workloads of
    `tasks_per_workload` training types. Two-stage: minimise the squared error of
    $(A, \log b)$ against the noisy observations.

    Args:
        model: the `CurveModel` to train.
        pool: the task types.
        train_types: the indices of the types trained on.
        key: the random key.
        decision_focused: train on the solved J (else on the curves' squared error).
        steps: optimisation steps.
        batch: workloads per step.
        tasks_per_workload: task types per workload.
        learning_rate: Adam's learning rate.
        temperature: smoothing of the box projection (0: none).
        **operating_point: `arrival_rate`, `alpha`, `max_tokens` of the workloads.

    Returns:
        `(trained model, loss at every step)`.
    """
    opt = optax.adam(learning_rate)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    def loss_fn(params, k):
        m = eqx.combine(params, static)
        if decision_focused:
            idx = jax.vmap(
                lambda kk: jax.random.choice(kk, train_types, (tasks_per_workload,), replace=False)
            )(jax.random.split(k, batch))
            return -jnp.mean(
                realised_objective(m, pool, idx, temperature=temperature, **operating_point)
            )
        A_hat, b_hat = m(pool.features[train_types], pool.D[train_types])
        return jnp.mean(
            (A_hat - pool.A_observed[train_types]) ** 2
            + 0.05 * (jnp.log(b_hat) - pool.log_b_observed[train_types]) ** 2
        )

    @jax.jit
    def step(carry, k):
        params, state = carry
        value, g = jax.value_and_grad(loss_fn)(params, k)
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), value

    (params, _), history = jax.lax.scan(step, (params, state), jax.random.split(key, steps))
    return eqx.combine(params, static), history
