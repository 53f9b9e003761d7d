r"""The accuracy probe $a_s(x)$ of the strategy-selection paper (docs: *Strategy selection*).

"Latency and Token-Aware Test-Time Compute" (arXiv:2509.09864, sec. 2.4 and appendix A.1)
estimates, for query x and strategy s, the probability that s answers x correctly with a
small MLP on the query's features concatenated with the strategy's parameters
(`[log2 N, one-hot(method)]`, see `Table.params`). It is trained with binary
cross-entropy on *soft* labels (the empirical success rate of s on x over repeated samples)
and then Platt-scaled: a scalar $(a, b)$ fitted on a held-out split so that
$\sigma(a z + b)$ of the MLP's logit $z$ minimises the log loss.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._errors import InputError
from .._validate import as_float_array, check_finite, check_int, check_probability

__all__ = ["AccuracyProbe", "train_probe", "probe_log_loss", "soft_log_loss"]


def soft_log_loss(logits: Float[Array, "*b"], labels: Float[Array, "*b"]) -> Float[Array, ""]:
    """Mean binary cross-entropy of `sigmoid(logits)` against soft labels in [0, 1].

    Args:
        logits: the logits.
        labels: soft labels in [0, 1], shaped like `logits`.

    Returns:
        The mean binary cross-entropy.
    """
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


class AccuracyProbe(eqx.Module):
    """Two-hidden-layer MLP over `[standardised features, strategy params]`, then Platt scaling.

    `probe(features)` maps `(..., d)` query features to `(..., S)` success probabilities, one
    per row of `strategy_params`. `logits(features)` gives the uncalibrated MLP logits.

    Attributes:
        mlp: the network.
        strategy_params: each strategy's parameter block (`Table.params`).
        feature_mean: the features' training mean.
        feature_scale: the features' training scale.
        platt_a: Platt scaling's slope.
        platt_b: Platt scaling's intercept.
    """

    mlp: eqx.nn.MLP
    strategy_params: Float[Array, "s p"]
    feature_mean: Float[Array, " d"]
    feature_scale: Float[Array, " d"]
    platt_a: Float[Array, ""]
    platt_b: Float[Array, ""]

    def logits(self, features: Float[ArrayLike, "*q d"]) -> Float[Array, "*q s"]:
        x = jnp.asarray(features)
        d = self.feature_mean.shape[0]
        if x.ndim == 0 or x.shape[-1] != d:
            raise InputError(
                f"features: last axis must have {d} query features, got shape {x.shape}"
            )
        batch = x.shape[:-1]
        x = ((x - self.feature_mean) / self.feature_scale).reshape(-1, d)
        S = self.strategy_params.shape[0]
        inputs = jnp.concatenate(
            [
                jnp.broadcast_to(x[:, None, :], (x.shape[0], S, d)),
                jnp.broadcast_to(self.strategy_params, (x.shape[0],) + self.strategy_params.shape),
            ],
            axis=-1,
        )
        z = jax.vmap(jax.vmap(self.mlp))(inputs)[..., 0]
        return z.reshape(batch + (S,))

    def __call__(self, features: Float[ArrayLike, "*q d"]) -> Float[Array, "*q s"]:
        return jax.nn.sigmoid(self.platt_a * self.logits(features) + self.platt_b)


def probe_log_loss(
    probe: AccuracyProbe, features: Float[ArrayLike, "n d"], soft_labels: Float[ArrayLike, "n s"]
) -> Float[Array, ""]:
    """Calibrated log loss of `probe` on `(features, soft_labels)`.

    Args:
        probe: the probe.
        features: query features, `(n, d)`.
        soft_labels: success rates, `(n, S)`.

    Returns:
        The mean binary cross-entropy.
    """
    z = probe.platt_a * probe.logits(features) + probe.platt_b
    return soft_log_loss(z, jnp.asarray(soft_labels))


def _fit_platt(z: Float[Array, " m"], y: Float[Array, " m"], iterations: int = 50):
    r"""Platt scaling: $\min_{a,b}$ BCE$(\sigma(a z + b), y)$ by damped Newton (convex in (a,
    b))."""

    def loss(ab):
        return soft_log_loss(ab[0] * z + ab[1], y)

    def step(ab, _):
        g = jax.grad(loss)(ab)
        H = jax.hessian(loss)(ab) + 1e-8 * jnp.eye(2, dtype=ab.dtype)
        new = ab - jnp.linalg.solve(H, g)
        # keep the step only if it does not increase the loss (safeguard)
        return jnp.where(loss(new) <= loss(ab), new, ab - 0.1 * g), None

    ab, _ = jax.lax.scan(step, jnp.array([1.0, 0.0], z.dtype), None, length=iterations)
    return ab[0], ab[1]


def _validate_training(features, strategy_params, soft_labels, holdout_fraction):
    x = as_float_array("features", features)
    p = as_float_array("strategy_params", strategy_params)
    y = as_float_array("soft_labels", soft_labels)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"features: expected shape (n, d) with n >= 2 queries, got {x.shape}")
    if p.ndim != 2:
        raise InputError(f"strategy_params: expected shape (S, p), got {p.shape}")
    if y.shape != (x.shape[0], p.shape[0]):
        raise InputError(
            f"soft_labels: expected shape (n, S) = ({x.shape[0]}, {p.shape[0]}) from features and "
            f"strategy_params, got {y.shape}"
        )
    check_finite("features", x)
    check_finite("strategy_params", p)
    check_probability("soft_labels", y)
    if not 0 < holdout_fraction < 1:
        raise InputError(f"holdout_fraction: must lie in (0, 1), got {holdout_fraction}")
    return x, p, y


def train_probe(
    key: PRNGKeyArray,
    features: Float[ArrayLike, "n d"],
    strategy_params: Float[ArrayLike, "s p"],
    soft_labels: Float[ArrayLike, "n s"],
    *,
    width: int = 64,
    steps: int = 1500,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    batch_size: int | None = 512,
    holdout_fraction: float = 0.2,
) -> AccuracyProbe:
    r"""Train the accuracy probe (docs: *Strategy selection*; paper sec. 2.4, appendix A.1).

    1. Split the queries at random: `1 - holdout_fraction` for training, the rest for calibration.
    2. Fit a two-hidden-layer MLP (`width` units, ReLU) on standardised features concatenated
       with each strategy's parameters, by AdamW (`optax.adamw`) on the mean binary
       cross-entropy against the soft labels, `steps` minibatch steps of `batch_size` queries
       (all strategies of a query in the same batch; `None` = full batch).
    3. Platt scaling: fit scalars $(a, b)$ on the held-out split by minimising the log loss of
       $\sigma(a z + b)$.

    Args:
        key: the random key.
        features: query features, `(n, d)`.
        strategy_params: each strategy's parameter block, `(S, p)`.
        soft_labels: each query's empirical success rate per strategy, `(n, S)`.
        width: hidden units per layer.
        steps: AdamW steps.
        learning_rate: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        batch_size: queries per step (None: all).
        holdout_fraction: the share kept for calibration.

    Returns:
        The calibrated `AccuracyProbe`.
    """
    x, p, y = _validate_training(features, strategy_params, soft_labels, holdout_fraction)
    n, d = x.shape
    steps = check_int("steps", steps, 1)
    width = check_int("width", width, 1, 1 << 16)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    n_hold = max(1, int(round(holdout_fraction * n)))
    if n - n_hold < 1:
        raise InputError("holdout_fraction: leaves no training queries")
    k_split, k_init, k_train = jax.random.split(key, 3)
    perm = jax.random.permutation(k_split, n)
    train_idx, hold_idx = perm[n_hold:], perm[:n_hold]
    mean = jnp.mean(x[train_idx], axis=0)
    scale = jnp.std(x[train_idx], axis=0)
    scale = jnp.where(scale > 0, scale, 1.0)
    mlp = eqx.nn.MLP(
        d + p.shape[1], 1, int(width), 2, activation=jax.nn.relu, key=k_init, dtype=x.dtype
    )
    probe = AccuracyProbe(mlp, p, mean, scale, jnp.array(1.0, x.dtype), jnp.array(0.0, x.dtype))
    probe = _fit_mlp(
        probe,
        x[train_idx],
        y[train_idx],
        k_train,
        int(steps),
        learning_rate,
        weight_decay,
        batch_size,
    )
    a, b = _fit_platt(probe.logits(x[hold_idx]).ravel(), y[hold_idx].ravel())
    return eqx.tree_at(lambda m: (m.platt_a, m.platt_b), probe, (a, b))


def _fit_mlp(probe, x, y, key, steps, learning_rate, weight_decay, batch_size):
    """AdamW on the soft-label BCE; only the MLP's weights train (strategy params etc. are
    frozen)."""
    n = x.shape[0]
    bs = n if batch_size is None else min(int(batch_size), n)
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)
    spec = jax.tree_util.tree_map(lambda _: False, probe)
    spec = eqx.tree_at(
        lambda m: m.mlp, spec, replace=jax.tree_util.tree_map(eqx.is_inexact_array, probe.mlp)
    )
    trainable, static = eqx.partition(probe, spec)

    def loss_fn(tr, xb, yb):
        return soft_log_loss(eqx.combine(tr, static).logits(xb), yb)

    @jax.jit
    def run(tr, key):
        def step(carry, k):
            tr, opt_state = carry
            idx = jax.random.choice(k, n, (bs,), replace=False) if bs < n else jnp.arange(n)
            loss, grads = jax.value_and_grad(loss_fn)(tr, x[idx], y[idx])
            updates, opt_state = optimizer.update(grads, opt_state, tr)
            return (eqx.apply_updates(tr, updates), opt_state), loss

        (tr, _), losses = jax.lax.scan(step, (tr, optimizer.init(tr)), jax.random.split(key, steps))
        return tr, losses

    trained, _ = run(trainable, key)
    return eqx.combine(trained, static)
