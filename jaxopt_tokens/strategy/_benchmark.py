r"""A synthetic strategy-selection benchmark with known ground truth (docs: *Strategy selection*).

Every query has a latent difficulty z; its single-sample success probability is
$p(z) = \sigma(1 - 2 z)$ and each strategy's true success probability is a closed form in p:

- greedy: $p$;
- best-of-N with a verifier that finds a correct candidate, when there is one, with probability
  $v = 0.85$ (else picks at random): $v (1 - (1-p)^N) + (1 - v) p$;
- majority vote over N samples:
$P(\mathrm{Bin}(N, p) > N/2) + \tfrac12 P(\mathrm{Bin}(N,p) = N/2)$
  (amplifies easy queries, hurts hard ones);
- beam search of width w with a process reward model of quality $q = 0.9$ over $3w$ effective
  step-level candidates: $q (1 - (1-p)^{3w}) + (1 - q) p$.

The probe sees only features: a noisy copy $z + \sigma\varepsilon$ mixed by a random rotation
with nuisance coordinates, and learns from soft labels (success rates over a few samples).
`frontier` compares, along a ray of prices $(\lambda_T, \lambda_L) = \mu (1/T_0, w/L_0)$,
the adaptive policy (probe + `select`), the oracle (true probabilities) and every static
strategy: mean true accuracy, mean tokens, mean latency. These models and constants are
synthetic, chosen for plausibility; they are not measurements.
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._io import default_workload
from .._validate import check_int, check_memory
from .._workload import Workload
from ._probe import AccuracyProbe, train_probe
from ._select import Table, default_table, select, select_queueing

__all__ = [
    "true_accuracy",
    "SyntheticQueries",
    "synthetic_queries",
    "Frontier",
    "frontier",
    "frontier_dominance_gaps",
    "run_benchmark",
    "queueing_instance",
    "queueing_arrival_sweep",
]

VERIFIER_QUALITY = 0.85
PRM_QUALITY = 0.9


def _majority_vote(p: Float[Array, "*q"], n: Float[Array, ""]) -> Float[Array, "*q"]:
    r"""$P(\mathrm{Bin}(n, p) > n/2) + \tfrac12 P(\mathrm{Bin}(n, p) = n/2)$ via the regularised
    incomplete beta function (traceable in n)."""
    half = jnp.floor(n / 2)
    above = jax.scipy.special.betainc(half + 1, n - half, p)  # P(X >= half + 1)
    log_tie = (
        gammaln(n + 1)
        - 2 * gammaln(n / 2 + 1)
        + (n / 2) * (jnp.log(jnp.maximum(p, 1e-300)) + jnp.log(jnp.maximum(1 - p, 1e-300)))
    )
    tie = jnp.where((half * 2 == n) & (p > 0) & (p < 1), jnp.exp(log_tie), 0.0)
    return above + 0.5 * tie


def true_accuracy(p: Float[Array, "*q"], table: Table) -> Float[Array, "*q s"]:
    """Closed-form success probability of each strategy in `table` given single-sample success p.

    Args:
        p: single-sample success probabilities.
        table: the strategies.

    Returns:
        Each strategy's success probability, shape `(..., S)`.
    """
    p = jnp.asarray(p)
    cols = []
    for i, method in enumerate(table.method):
        n = table.n[i]
        if method == "greedy":
            cols.append(p)
        elif method == "best_of_n":
            cols.append(VERIFIER_QUALITY * (1 - (1 - p) ** n) + (1 - VERIFIER_QUALITY) * p)
        elif method == "majority_vote":
            cols.append(_majority_vote(p, n))
        else:  # beam_search
            cols.append(PRM_QUALITY * (1 - (1 - p) ** (3 * n)) + (1 - PRM_QUALITY) * p)
    return jnp.clip(jnp.stack(cols, axis=-1), 0.0, 1.0)


class SyntheticQueries(eqx.Module):
    """Queries with latent difficulty, observed features, true and empirical per-strategy
    accuracy.

    Attributes:
        difficulty: each query's latent difficulty $z$.
        features: its observed features.
        true_accuracy: its true success probability per strategy.
        soft_labels: its empirical success rate per strategy.
    """

    difficulty: Float[Array, " n"]
    features: Float[Array, "n d"]
    true_accuracy: Float[Array, "n s"]
    soft_labels: Float[Array, "n s"]


def synthetic_queries(
    key: PRNGKeyArray,
    num_queries: int,
    table: Table,
    *,
    num_features: int = 6,
    feature_noise: float = 0.3,
    samples_per_label: int = 8,
    rotation_key: PRNGKeyArray | None = None,
) -> SyntheticQueries:
    r"""Draw queries: $z \sim N(0, 1.2^2)$, $p = \sigma(1 - 2z)$, features = rotation of
    $[z + \sigma\varepsilon, \text{nuisance}]$, soft labels = success rate over
    `samples_per_label` draws.

    Use the same `rotation_key` for train and test sets (the feature map must be shared).

    Args:
        key: the random key.
        num_queries: queries drawn.
        table: the strategies.
        num_features: features per query.
        feature_noise: $\sigma$, the noise on the difficulty feature.
        samples_per_label: draws per soft label.
        rotation_key: the key of the feature rotation (share it between train and test).

    Returns:
        The `SyntheticQueries`.
    """
    num_queries = check_int("num_queries", num_queries, 1)
    num_features = check_int("num_features", num_features, 1, 1 << 12)
    samples_per_label = check_int("samples_per_label", samples_per_label, 1, 1 << 12)
    check_memory(
        8.0 * num_queries * (num_features + 4 * samples_per_label + 16),
        f"{num_queries:,} synthetic queries",
        "draw fewer queries",
    )
    rotation_key = jax.random.key(12345) if rotation_key is None else rotation_key
    return _synthetic_queries(
        key,
        rotation_key,
        table,
        int(num_queries),
        int(num_features),
        float(feature_noise),
        int(samples_per_label),
    )


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _synthetic_queries(
    key, rotation_key, table, num_queries, num_features, feature_noise, samples_per_label
):
    dtype = table.token_cost.dtype
    k_z, k_eps, k_nuis, k_lab = jax.random.split(key, 4)
    z = 1.2 * jax.random.normal(k_z, (num_queries,), dtype)
    p = jax.nn.sigmoid(1.0 - 2.0 * z)
    acc = true_accuracy(p, table)
    noisy = z + feature_noise * jax.random.normal(k_eps, (num_queries,), dtype)
    raw = jnp.concatenate(
        [noisy[:, None], jax.random.normal(k_nuis, (num_queries, num_features - 1), dtype)], 1
    )
    rotation, _ = jnp.linalg.qr(
        jax.random.normal(rotation_key, (num_features, num_features), dtype)
    )
    draws = jax.random.uniform(k_lab, (samples_per_label,) + acc.shape, dtype) < acc
    return SyntheticQueries(z, raw @ rotation, acc, jnp.mean(draws, axis=0).astype(dtype))


class Frontier(eqx.Module):
    r"""Accuracy/cost frontier along a ray of prices; all accuracies are true (ground-truth) means.

    `cost` is the scalarised cost on the price ray, $T/T_0 + w L/L_0$, so that utility is
    $a - \mu \cdot$ cost. Rows of the `adaptive_*`/`oracle_*` fields follow `mu`; `static_*`
    follow the table's strategies (`names`).

    Attributes:
        names: the static strategies.
        mu: the price scale of each point on the ray.
        price_tokens: $\lambda_T$ of each point.
        price_latency: $\lambda_L$ of each point.
        adaptive_accuracy: the adaptive choice's true accuracy.
        adaptive_tokens: its mean tokens.
        adaptive_latency: its mean latency (s).
        adaptive_cost: its scalarised cost.
        oracle_accuracy: the oracle's true accuracy.
        oracle_tokens: its mean tokens.
        oracle_latency: its mean latency (s).
        oracle_cost: its scalarised cost.
        static_accuracy: each static strategy's true accuracy.
        static_tokens: its tokens.
        static_latency: its latency (s).
        static_cost: its scalarised cost.
        adaptive_choice_share: how often the adaptive choice picks each strategy, per point.
    """

    names: tuple[str, ...] = eqx.field(static=True)
    mu: Float[Array, " p"]
    price_tokens: Float[Array, " p"]
    price_latency: Float[Array, " p"]
    adaptive_accuracy: Float[Array, " p"]
    adaptive_tokens: Float[Array, " p"]
    adaptive_latency: Float[Array, " p"]
    adaptive_cost: Float[Array, " p"]
    oracle_accuracy: Float[Array, " p"]
    oracle_tokens: Float[Array, " p"]
    oracle_latency: Float[Array, " p"]
    oracle_cost: Float[Array, " p"]
    static_accuracy: Float[Array, " s"]
    static_tokens: Float[Array, " s"]
    static_latency: Float[Array, " s"]
    static_cost: Float[Array, " s"]
    adaptive_choice_share: Float[Array, "p s"]


def _policy_means(choice, queries, table, unit_cost):
    acc = jnp.mean(jnp.take_along_axis(queries.true_accuracy, choice[:, None], 1)[:, 0])
    share = jnp.mean(jax.nn.one_hot(choice, table.num_strategies, dtype=unit_cost.dtype), axis=0)
    return (acc, share @ table.token_cost, share @ table.latency_cost, share @ unit_cost, share)


def frontier(
    probe_accuracy: Float[Array, "n s"],
    queries: SyntheticQueries,
    table: Table,
    mu: Float[Array, " p"],
    latency_weight: float = 1.0,
) -> Frontier:
    r"""Evaluate adaptive (`probe_accuracy`), oracle (`queries.true_accuracy`) and static policies.

    Prices on the ray: $\lambda_T = \mu / T_0$, $\lambda_L = \mu w / L_0$ with $T_0$, $L_0$ the
    cheapest strategy's costs (so greedy costs $1 + w$ units).

    Args:
        probe_accuracy: the probe's predicted accuracy, `(n, S)`.
        queries: the test queries.
        table: the strategies.
        mu: the price scales on the ray.
        latency_weight: $w$, the latency's weight in the cost.

    Returns:
        The `Frontier`.
    """
    mu = jnp.asarray(mu, table.token_cost.dtype)
    t_ref, l_ref = jnp.min(table.token_cost), jnp.min(table.latency_cost)
    lam_T, lam_L = mu / t_ref, mu * latency_weight / l_ref
    unit = table.token_cost / t_ref + latency_weight * table.latency_cost / l_ref

    def at_price(lt, ll):
        adaptive = select(probe_accuracy, table.token_cost, table.latency_cost, lt, ll)
        oracle = select(queries.true_accuracy, table.token_cost, table.latency_cost, lt, ll)
        return _policy_means(adaptive, queries, table, unit), _policy_means(
            oracle, queries, table, unit
        )

    (aa, at, al, ac, ashare), (oa, ot, ol, oc, _) = jax.vmap(at_price)(lam_T, lam_L)
    return Frontier(
        names=table.names,
        mu=mu,
        price_tokens=lam_T,
        price_latency=lam_L,
        adaptive_accuracy=aa,
        adaptive_tokens=at,
        adaptive_latency=al,
        adaptive_cost=ac,
        oracle_accuracy=oa,
        oracle_tokens=ot,
        oracle_latency=ol,
        oracle_cost=oc,
        static_accuracy=jnp.mean(queries.true_accuracy, axis=0),
        static_tokens=table.token_cost,
        static_latency=table.latency_cost,
        static_cost=unit,
        adaptive_choice_share=ashare,
    )


def _interp_accuracy(cost, accuracy, at_cost):
    """Upper envelope of (cost, accuracy) points, linearly interpolated (mixing two prices)."""
    order = np.argsort(cost)
    c, a = np.asarray(cost)[order], np.maximum.accumulate(np.asarray(accuracy)[order])
    return np.interp(at_cost, c, a, left=-np.inf, right=a[-1])


def frontier_dominance_gaps(frontier: Frontier, which: str = "adaptive") -> dict[str, np.ndarray]:
    """How far the `which` ("adaptive" or "oracle") frontier is above each static strategy.

    - `interpolated`: frontier accuracy at the static strategy's scalarised cost (interpolating
      between adjacent prices, i.e. randomising between them) minus the static accuracy;
    - `at_one_price`: max over prices with cost <= the static cost (+1e-9) of accuracy minus the
      static accuracy (`-inf` if no price is that cheap).

    Non-negative (up to noise) gaps mean the frontier is at or above every static strategy.

    Args:
        frontier: the frontier.
        which: `"adaptive"` or `"oracle"`.

    Returns:
        `{"interpolated": ..., "at_one_price": ...}`, one gap per static strategy.
    """
    acc = np.asarray(getattr(frontier, f"{which}_accuracy"))
    cost = np.asarray(getattr(frontier, f"{which}_cost"))
    s_acc, s_cost = np.asarray(frontier.static_accuracy), np.asarray(frontier.static_cost)
    interpolated = _interp_accuracy(cost, acc, s_cost) - s_acc
    at_one = np.array(
        [np.max(np.where(cost <= c + 1e-9, acc, -np.inf)) - a for a, c in zip(s_acc, s_cost)]
    )
    return {"interpolated": interpolated, "at_one_price": at_one}


def run_benchmark(
    key: PRNGKeyArray,
    *,
    table: Table | None = None,
    num_train: int = 3000,
    num_test: int = 4000,
    mu: Float[Array, " p"] | None = None,
    latency_weight: float = 1.0,
    probe_steps: int = 1500,
    feature_noise: float = 0.3,
    **probe_kwargs: Any,
) -> tuple[Frontier, AccuracyProbe, SyntheticQueries]:
    """Train the probe on synthetic queries and evaluate the frontier on fresh ones.

    Returns `(frontier, probe, test_queries)`; extra keyword arguments go to `train_probe`.

    Args:
        key: the random key.
        table: the strategies (default: `default_table()`).
        num_train: training queries.
        num_test: test queries.
        mu: the price scales (default: 0 and 80 log-spaced scales from 1e-4 to 10^0.5).
        latency_weight: $w$, the latency's weight in the cost.
        probe_steps: the probe's training steps.
        feature_noise: the noise on the difficulty feature.
        **probe_kwargs: passed to `train_probe`.

    Returns:
        `(frontier, probe, test_queries)`.
    """
    table = default_table() if table is None else table
    mu = jnp.concatenate([jnp.zeros(1), jnp.logspace(-4, 0.5, 80)]) if mu is None else mu
    k_train, k_test, k_probe = jax.random.split(key, 3)
    train = synthetic_queries(k_train, num_train, table, feature_noise=feature_noise)
    test = synthetic_queries(k_test, num_test, table, feature_noise=feature_noise)
    probe = train_probe(
        k_probe, train.features, table.params, train.soft_labels, steps=probe_steps, **probe_kwargs
    )
    return frontier(probe(test.features), test, table, mu, latency_weight), probe, test


# --------------------------------------------------------------------------- queue-aware demo


def queueing_instance(
    table: Table | None = None, workload: Workload | None = None
) -> tuple[Array, Array, Array, Array]:
    """Per-type accuracy and service time of each strategy on the paper's Table I workload.

    Type k's single-sample success is its Table I curve at one chain's tokens,
    $p_k = A_k (1 - e^{-b_k T_0}) + D_k$ (eq. (2)), mapped through `true_accuracy`;
    the service time is eq. (1) at the strategy's tokens, $t_{k,s} = t_{0k} + c_k T_s$.
    Returns `(task_accuracy (K, S), service_time (K, S), share (K,), alpha)`.

    Args:
        table: the strategies (default: `default_table()`).
        workload: the workload (default: Table I).

    Returns:
        `(task_accuracy (K, S), service_time (K, S), share (K,), alpha)`.
    """

    table = default_table() if table is None else table
    w = default_workload() if workload is None else workload
    dtype = table.token_cost.dtype
    A, b, D, t0, c, share = (
        jnp.asarray(getattr(w, f), dtype) for f in ("A", "b", "D", "t0", "c", "share")
    )
    p = A * (1 - jnp.exp(-b * jnp.min(table.token_cost))) + D
    acc = jnp.clip(true_accuracy(p, table), 0.0, 1.0)
    service = t0[:, None] + c[:, None] * table.token_cost[None, :]
    return acc, service, share, jnp.asarray(w.alpha, dtype)


def queueing_arrival_sweep(
    arrival_rates: ArrayLike,
    table: Table | None = None,
    workload: Workload | None = None,
    alpha: float | None = None,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queue-aware choice per arrival rate; returns `(choices (R, K), mean service time (R,), J
    (R,))`.

    As the arrival rate grows the wait term dominates and cheaper strategies win.

    Args:
        arrival_rates: the arrival rates.
        table: the strategies (default: `default_table()`).
        workload: the workload (default: Table I).
        alpha: the accuracy weight (default: the workload's).
        method: as in `select_queueing`.

    Returns:
        `(choices (R, K), mean service time (R,), J (R,))`.
    """
    acc, service, share, alpha_default = queueing_instance(table, workload)
    price = alpha_default if alpha is None else alpha
    out = [
        select_queueing(acc, service, share, lam, price, method)
        for lam in np.asarray(arrival_rates)
    ]
    return (
        np.stack([np.asarray(r.choice) for r in out]),
        np.array([float(r.mean_service_time) for r in out]),
        np.array([float(r.objective) for r in out]),
    )
