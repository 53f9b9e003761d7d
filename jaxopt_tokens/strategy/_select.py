"""Latency- and token-aware selection of a decoding strategy (docs: *Strategy selection*).

Per query x and decoding strategy s (greedy, best-of-N, majority vote, beam search, ...),
the utility of the strategy-selection paper ("Latency and Token-Aware Test-Time Compute",
arXiv:2509.09864, section 2.3) is

    U_s(x) = a_s(x) - lam_T * T_s - lam_L * L_s,

with `a_s(x)` the predicted success probability (see `_probe.py`), `T_s` and `L_s` the
per-strategy average token and latency costs, and `lam_T`, `lam_L` their prices. The hard
policy is `argmax_s U_s(x)`; `soft_select` is its softmax relaxation with a temperature,
differentiable in every input, so that the selection can sit inside a training loop.

`select_queueing` couples the choice to the server's queue: one strategy per task
type, scored by the queueing objective of docs: *Model*, eq. (7), with the strategy's
service time in place of `t0 + c l`. The coupling is only through the two service moments
`E[S]`, `E[S^2]`, which makes exact enumeration (for small `S^K`) and coordinate ascent cheap.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._errors import InputError
from .._objective import pk_wait
from .._validate import (
    as_float_array,
    check_nonnegative,
    check_probability,
    is_concrete,
)

__all__ = [
    "Table",
    "default_table",
    "utility",
    "select",
    "soft_select",
    "SoftSelection",
    "QueueChoice",
    "queueing_objective",
    "select_queueing",
    "METHODS",
]

#: Decoding-method families; the probe sees them as a one-hot vector.
METHODS = ("greedy", "best_of_n", "majority_vote", "beam_search")

#: Largest number of joint choices `S**K` that `select_queueing` enumerates.
MAX_ENUMERATION = 100_000

#: Round-off accepted outside [0, 1] for probabilities.


# --------------------------------------------------------------------------- validation


def _check_costs(name: str, cost: Array, num_strategies: int) -> None:
    if cost.ndim == 0 or cost.shape[-1] != num_strategies:
        raise InputError(
            f"{name}: last axis must have one entry per strategy ({num_strategies}), got shape "
            f"{cost.shape}"
        )
    check_nonnegative(name, cost)


# --------------------------------------------------------------------------- cost table


class Table(eqx.Module):
    """Per-strategy descriptors and average costs (the paper's pre-computed cost model, sec. 2.4).

    Attributes:
        names: static labels, e.g. `"best_of_n[8]"`.
        method: static method family per strategy, one of `METHODS`.
        n: number of samples / beam width per strategy (1 for greedy).
        token_cost: average generated tokens `T_s` per query.
        latency_cost: average wall-clock latency `L_s` per query, seconds.

    `params` is the strategy-parameter block the accuracy probe concatenates to the query
    features: `[log2 n, one-hot(method)]`, shape `(S, 1 + len(METHODS))`.
    """

    names: tuple[str, ...] = eqx.field(static=True)
    method: tuple[str, ...] = eqx.field(static=True)
    n: Float[Array, " s"]
    token_cost: Float[Array, " s"]
    latency_cost: Float[Array, " s"]

    def __init__(self, names, method, n, token_cost, latency_cost):
        names, method = tuple(str(x) for x in names), tuple(str(x) for x in method)
        s = len(names)
        if s == 0:
            raise InputError("names: a strategy table needs at least one strategy")
        if len(set(names)) != s:
            raise InputError("names: strategy names must be unique")
        if len(method) != s:
            raise InputError(f"method: expected {s} entries (one per name), got {len(method)}")
        unknown = sorted(set(method) - set(METHODS))
        if unknown:
            raise InputError(f"method: unknown method(s) {unknown}; expected one of {METHODS}")
        arrays = {}
        for field, value in (("n", n), ("token_cost", token_cost), ("latency_cost", latency_cost)):
            arr = as_float_array(field, value)
            if arr.shape != (s,):
                raise InputError(
                    f"{field}: expected shape ({s},) (one per strategy), got {arr.shape}"
                )
            check_nonnegative(field, arr)
            arrays[field] = arr
        if is_concrete(arrays["n"]) and bool(jnp.any(arrays["n"] < 1)):
            raise InputError("n: number of samples / beam width must be >= 1")
        self.names, self.method = names, method
        self.n, self.token_cost, self.latency_cost = (
            arrays["n"],
            arrays["token_cost"],
            arrays["latency_cost"],
        )

    @property
    def num_strategies(self) -> int:
        return len(self.names)

    @property
    def method_index(self) -> Int[Array, " s"]:
        """Index of each strategy's method in `METHODS`."""
        return jnp.asarray([METHODS.index(m) for m in self.method])

    @property
    def params(self) -> Float[Array, "s p"]:
        """Probe inputs per strategy: `[log2 n, one-hot(method)]`."""
        onehot = jax.nn.one_hot(self.method_index, len(METHODS), dtype=self.n.dtype)
        return jnp.concatenate([jnp.log2(self.n)[:, None], onehot], axis=1)

    def index(self, name: str) -> int:
        """Position of the strategy called `name`."""
        try:
            return self.names.index(name)
        except ValueError:
            raise InputError(f"names: no strategy called {name!r}; have {self.names}") from None


def default_table(
    tokens_per_sample: float = 400.0,
    seconds_per_token: float = 0.012,
    dtype: DTypeLike | None = None,
) -> Table:
    """A default table: greedy, best-of-N (N=2,4,8,16), majority vote (N=4,8,16), beam (width 2,4).

    **The costs are synthetic**, chosen to be plausible, not measured:

    - tokens: each sampled chain costs `tokens_per_sample`; best-of-N adds 10% per sample for
      the verifier's scoring; beam search of width w explores `2w` partial chains and re-scores
      each step with a process reward model (+30%).
    - latency: samples run in parallel on the batch, so latency grows sub-linearly in N
      (`(1 + 0.15 (N-1))` sequential-chain equivalents); best-of-N adds one verifier pass;
      beam search is step-synchronous and pays a PRM call per step (`1.6 + 0.4 w` chains).
      One chain takes `tokens_per_sample * seconds_per_token` seconds (Table I's `c` ~ 0.012 s).

    Args:
        tokens_per_sample: tokens of one sampled chain.
        seconds_per_token: decode seconds per token.
        dtype: the floating dtype (default: JAX's default float).

    Returns:
        The `Table`.
    """
    dtype = dtype or jnp.result_type(float)
    chain = tokens_per_sample * seconds_per_token
    rows = [("greedy", "greedy", 1)]
    rows += [(f"best_of_n[{n}]", "best_of_n", n) for n in (2, 4, 8, 16)]
    rows += [(f"majority_vote[{n}]", "majority_vote", n) for n in (4, 8, 16)]
    rows += [(f"beam_search[{w}]", "beam_search", w) for w in (2, 4)]
    tokens, latency = [], []
    for _, method, n in rows:
        if method == "greedy":
            tokens.append(tokens_per_sample)
            latency.append(chain)
        elif method == "best_of_n":
            tokens.append(1.1 * n * tokens_per_sample)
            latency.append(chain * (1 + 0.15 * (n - 1)) + 0.1 * chain)
        elif method == "majority_vote":
            tokens.append(n * tokens_per_sample)
            latency.append(chain * (1 + 0.15 * (n - 1)))
        else:  # beam search: 2w partial chains, PRM per step
            tokens.append(1.3 * 2 * n * tokens_per_sample)
            latency.append(chain * (1.6 + 0.4 * n))
    return Table(
        names=[r[0] for r in rows],
        method=[r[1] for r in rows],
        n=jnp.asarray([r[2] for r in rows], dtype),
        token_cost=jnp.asarray(tokens, dtype),
        latency_cost=jnp.asarray(latency, dtype),
    )


# --------------------------------------------------------------------------- per-query selection


def _prepare_selection(pred_accuracy, token_cost, latency_cost, price_tokens, price_latency):
    a = as_float_array("pred_accuracy", pred_accuracy)
    if a.ndim == 0:
        raise InputError(
            "pred_accuracy: expected shape (..., S) with one column per strategy, got a scalar"
        )
    check_probability("pred_accuracy", a)
    s = a.shape[-1]
    T = as_float_array("token_cost", token_cost)
    L = as_float_array("latency_cost", latency_cost)
    _check_costs("token_cost", T, s)
    _check_costs("latency_cost", L, s)
    lam_T = as_float_array("price_tokens", price_tokens)
    lam_L = as_float_array("price_latency", price_latency)
    check_nonnegative("price_tokens", lam_T)
    check_nonnegative("price_latency", lam_L)
    for name, x, other in (("token_cost", T, a), ("latency_cost", L, a)):
        try:
            jnp.broadcast_shapes(x.shape, other.shape)
        except ValueError:
            raise InputError(
                f"{name}: shape {x.shape} does not broadcast against pred_accuracy {a.shape}"
            ) from None
    for name, x in (("price_tokens", lam_T), ("price_latency", lam_L)):
        try:
            jnp.broadcast_shapes(x.shape, a.shape[:-1])
        except ValueError:
            raise InputError(
                f"{name}: shape {x.shape} does not broadcast against the query axes {a.shape[:-1]}"
            ) from None
    return a, T, L, lam_T, lam_L


def _utility(a, T, L, lam_T, lam_L):
    return a - lam_T[..., None] * T - lam_L[..., None] * L


def utility(
    pred_accuracy: Float[ArrayLike, "*q s"],
    token_cost: Float[ArrayLike, "*#q s"],
    latency_cost: Float[ArrayLike, "*#q s"],
    price_tokens: Float[ArrayLike, "*#q"],
    price_latency: Float[ArrayLike, "*#q"],
) -> Float[Array, "*q s"]:
    r"""$U_s(x) = a_s(x) - \lambda_T T_s - \lambda_L L_s$ (paper sec. 2.3).

    Docs: *Strategy selection*.

    Costs have shape `(S,)` (the paper's per-strategy averages) or `(..., S)` (per query);
    prices are scalars or broadcast against the query axes `...`.

    Args:
        pred_accuracy: predicted success probability $a_s(x)$ of each strategy, shape `(..., S)`.
        token_cost: tokens $T_s$ of each strategy, `(S,)` or per query `(..., S)`.
        latency_cost: latency $L_s$ (s) of each strategy, shaped like `token_cost`.
        price_tokens: $\lambda_T$, per token.
        price_latency: $\lambda_L$, per second.

    Returns:
        $U_s(x)$, shape `(..., S)`.
    """
    return _utility(
        *_prepare_selection(pred_accuracy, token_cost, latency_cost, price_tokens, price_latency)
    )


def select(
    pred_accuracy: Float[ArrayLike, "*q s"],
    token_cost: Float[ArrayLike, "*#q s"],
    latency_cost: Float[ArrayLike, "*#q s"],
    price_tokens: Float[ArrayLike, "*#q"],
    price_latency: Float[ArrayLike, "*#q"],
) -> Int[Array, "*q"]:
    r"""Index of $\arg\max_s a_s(x) - \lambda_T T_s - \lambda_L L_s$ per query.

    Docs: *Strategy selection*.

    Ties go to the lowest index (list cheaper strategies first to break ties toward them).

    Args:
        pred_accuracy: predicted success probability $a_s(x)$ of each strategy, shape `(..., S)`.
        token_cost: tokens $T_s$ of each strategy, `(S,)` or per query `(..., S)`.
        latency_cost: latency $L_s$ (s) of each strategy, shaped like `token_cost`.
        price_tokens: $\lambda_T$, per token.
        price_latency: $\lambda_L$, per second.

    Returns:
        The chosen strategy's index per query.
    """
    return jnp.argmax(
        utility(pred_accuracy, token_cost, latency_cost, price_tokens, price_latency), axis=-1
    )


class SoftSelection(NamedTuple):
    r"""Result of `soft_select`: selection probabilities and the expected utility under them.

    Attributes:
        probabilities: $q_s$ per query, shape `(..., S)`.
        expected_utility: $\sum_s q_s U_s$ per query.
    """

    probabilities: Float[Array, "*q s"]
    expected_utility: Float[Array, "*q"]


def soft_select(
    pred_accuracy: Float[ArrayLike, "*q s"],
    token_cost: Float[ArrayLike, "*#q s"],
    latency_cost: Float[ArrayLike, "*#q s"],
    price_tokens: Float[ArrayLike, "*#q"],
    price_latency: Float[ArrayLike, "*#q"],
    temperature: float | Float[ArrayLike, ""] = 0.01,
) -> SoftSelection:
    r"""Softmax relaxation of `select` (docs: *Strategy selection*, "differentiable relaxation").

    $q_s = \mathrm{softmax}_s(U_s / \tau)$ and the expected utility $\sum_s q_s U_s$. Smooth in
    accuracies, costs and prices for $\tau > 0$; as $\tau \to 0$ the probabilities tend to the
    one-hot argmax and the expected utility to $\max_s U_s$ (error at most $\tau \log S$).

    Args:
        pred_accuracy: predicted success probability $a_s(x)$ of each strategy, shape `(..., S)`.
        token_cost: tokens $T_s$ of each strategy, `(S,)` or per query `(..., S)`.
        latency_cost: latency $L_s$ (s) of each strategy, shaped like `token_cost`.
        price_tokens: $\lambda_T$, per token.
        price_latency: $\lambda_L$, per second.
        temperature: $\tau > 0$.

    Returns:
        The `SoftSelection`.
    """
    tau = as_float_array("temperature", temperature)
    if tau.ndim != 0:
        raise InputError(f"temperature: expected a scalar, got shape {tau.shape}")
    if is_concrete(tau) and not float(tau) > 0:
        raise InputError(f"temperature: must be > 0, got {float(tau)}")
    u = utility(pred_accuracy, token_cost, latency_cost, price_tokens, price_latency)
    q = jax.nn.softmax(u / tau, axis=-1)
    return SoftSelection(q, jnp.sum(q * u, axis=-1))


# --------------------------------------------------------------------------- queue-aware joint
# choice


class QueueChoice(eqx.Module):
    r"""One strategy per task type, chosen for the queueing objective.

    Docs: *Model* and *Strategy selection*.

    `choice[k]` is the strategy index for type k; `objective` is
    $J = \alpha \sum_k \pi_k a_{k,s_k} - E[T]$ (`-inf` if the queue is unstable); the other
    fields are its parts. `method` records how it was found (`"enumerate"` is exact,
    `"coordinate"` is a multi-start coordinate ascent).

    Attributes:
        choice: the strategy index of each task type.
        objective: $J$ (`-inf` if the queue is unstable).
        mean_accuracy: $\sum_k \pi_k a_{k,s_k}$.
        mean_service_time: $E[S]$ (s).
        mean_system_time: $E[T]$ (s).
        utilization: $\lambda E[S]$.
        method: how the choice was found.
    """

    choice: Int[Array, "*b k"]
    objective: Float[Array, "*b"]
    mean_accuracy: Float[Array, "*b"]
    mean_service_time: Float[Array, "*b"]
    mean_system_time: Float[Array, "*b"]
    utilization: Float[Array, "*b"]
    method: str = eqx.field(static=True)


def _moments(choice, acc, t, share):
    k = jnp.arange(acc.shape[0])
    a = acc[k, choice]
    tt = t[k, choice]
    return jnp.sum(share * a, -1), jnp.sum(share * tt, -1), jnp.sum(share * tt * tt, -1)


def _joint_objective(choice, acc, t, share, lam, alpha):
    mean_acc, m1, m2 = _moments(choice, acc, t, share)
    return alpha * mean_acc - (pk_wait(lam, m1, m2) + m1)


def _result(choice, acc, t, share, lam, alpha, method) -> QueueChoice:
    mean_acc, m1, m2 = _moments(choice, acc, t, share)
    et = pk_wait(lam, m1, m2) + m1
    return QueueChoice(
        choice=choice,
        objective=alpha * mean_acc - et,
        mean_accuracy=mean_acc,
        mean_service_time=m1,
        mean_system_time=et,
        utilization=lam * m1,
        method=method,
    )


def _decode(index: Int[Array, " c"], num_types: int, num_strategies: int) -> Int[Array, "c k"]:
    """Mixed-radix digits of `index`: the joint choice number `index` as one strategy per type."""
    powers = num_strategies ** jnp.arange(num_types)
    return (index[:, None] // powers) % num_strategies


@jax.jit
def _enumerate(acc, t, share, lam, alpha):
    K, S = acc.shape
    combos = _decode(jnp.arange(S**K), K, S)
    values = jax.vmap(lambda c: _joint_objective(c, acc, t, share, lam, alpha))(combos)
    return combos[jnp.argmax(values)]


def _coordinate_sweep(choice, acc, t, share, lam, alpha):
    """One pass over the types; type k moves to its best strategy given the others (strict gains
    only)."""
    K, S = acc.shape

    def body(k, ch):
        candidates = jnp.broadcast_to(ch, (S, K)).at[:, k].set(jnp.arange(S))
        values = jax.vmap(lambda c: _joint_objective(c, acc, t, share, lam, alpha))(candidates)
        current = _joint_objective(ch, acc, t, share, lam, alpha)
        best = jnp.argmax(values)
        better = values[best] > current + 1e-12 * jnp.abs(current)
        return ch.at[k].set(jnp.where(better, best, ch[k]))

    return jax.lax.fori_loop(0, K, body, choice)


def _pair_sweep(choice, acc, t, share, lam, alpha):
    """One pass over pairs of types; each pair moves jointly to its best of the S^2 options."""
    K, S = acc.shape
    if K < 2:
        return choice
    first, second = np.triu_indices(K, 1)
    pairs = jnp.asarray(np.stack([first, second], axis=1))
    grid = _decode(jnp.arange(S * S), 2, S)  # (S^2, 2)

    def body(i, ch):
        k1, k2 = pairs[i, 0], pairs[i, 1]
        candidates = (
            jnp.broadcast_to(ch, (S * S, K)).at[:, k1].set(grid[:, 0]).at[:, k2].set(grid[:, 1])
        )
        values = jax.vmap(lambda c: _joint_objective(c, acc, t, share, lam, alpha))(candidates)
        current = _joint_objective(ch, acc, t, share, lam, alpha)
        best = jnp.argmax(values)
        better = values[best] > current + 1e-12 * jnp.abs(current)
        return jnp.where(better, candidates[best], ch)

    return jax.lax.fori_loop(0, pairs.shape[0], body, choice)


def _coordinate_ascent(start, acc, t, share, lam, alpha, max_sweeps):
    """Single-type moves, then pair moves, repeated until neither improves J."""

    def cond(state):
        _, changed, i = state
        return changed & (i < max_sweeps)

    def body(state):
        ch, _, i = state
        new = _coordinate_sweep(ch, acc, t, share, lam, alpha)
        new = _pair_sweep(new, acc, t, share, lam, alpha)
        return new, jnp.any(new != ch), i + 1

    final, _, _ = jax.lax.while_loop(cond, body, (start, jnp.array(True), 0))
    return final


def _linearised_starts(acc, t, share, lam, alpha, num_iterations):
    r"""Iterated linearisation of E[T] in (E[S], E[S^2]), which decouples the types.

    At the current choice, $g_1 = \partial E[T]/\partial E[S]$,
    $g_2 = \partial E[T]/\partial E[S^2]$;
    each type then independently maximises $\alpha a_{k,s} - g_1 t_{k,s} - g_2 t_{k,s}^2$. Starting
    from the cheapest choice; every iterate is returned as a candidate start.
    """

    def et(m):
        return pk_wait(lam, m[0], m[1]) + m[0]

    def step(ch, _):
        _, m1, m2 = _moments(ch, acc, t, share)
        g = jax.grad(et)(jnp.stack([m1, m2]))
        new = jnp.argmax(alpha * acc - g[0] * t - g[1] * t * t, axis=-1)
        # unstable linearisation point: gradient is zero; fall back to the cheapest choice
        stable = jnp.isfinite(et(jnp.stack([m1, m2])))
        new = jnp.where(stable, new, jnp.argmin(t, axis=-1))
        return new, new

    cheapest = jnp.argmin(t, axis=-1)
    _, iterates = jax.lax.scan(step, cheapest, None, length=num_iterations)
    return iterates


@functools.partial(jax.jit, static_argnames="num_random_starts")
def _coordinate(acc, t, share, lam, alpha, key, num_random_starts):
    K, S = acc.shape
    cheapest = jnp.argmin(t, axis=-1)
    most_accurate = jnp.argmax(acc, axis=-1)
    # decoupled no-queue choice: accuracy against the linear service-time term only
    no_wait = jnp.argmax(alpha * acc - t, axis=-1)
    random = jax.random.randint(key, (num_random_starts, K), 0, S)
    starts = jnp.concatenate(
        [
            jnp.stack([cheapest, most_accurate, no_wait]),
            _linearised_starts(acc, t, share, lam, alpha, 8),
            random,
        ]
    )
    finals = jax.vmap(
        lambda s: _coordinate_ascent(s, acc, t, share, lam, alpha, 4 * acc.shape[0] + 4)
    )(starts)
    values = jax.vmap(lambda c: _joint_objective(c, acc, t, share, lam, alpha))(finals)
    return finals[jnp.argmax(values)]


def queueing_objective(
    choice: Int[ArrayLike, "*b k"],
    task_accuracy: Float[ArrayLike, "k s"],
    service_time: Float[ArrayLike, "k s"],
    share: Float[ArrayLike, " k"],
    arrival_rate: float | Float[ArrayLike, ""],
    alpha: float | Float[ArrayLike, ""],
) -> Float[Array, "*b"]:
    r"""$J(s) = \alpha \sum_k \pi_k a_{k,s_k} - E[W] - E[S]$ for joint choices `choice`.

    Docs: *Model*, eq. (7).

    $E[S] = \sum_k \pi_k t_{k,s_k}$, $E[S^2] = \sum_k \pi_k t_{k,s_k}^2$ and the
    Pollaczek-Khinchine
    wait (5); `-inf` when $\lambda E[S] \ge 1$.

    Args:
        choice: a strategy index per task type (any leading batch axes).
        task_accuracy: `[k, s]`, type k's success probability under strategy s.
        service_time: `[k, s]`, the server time (s) type k occupies under strategy s.
        share: the task mix $\pi$.
        arrival_rate: $\lambda$, queries per second.
        alpha: the accuracy weight $\alpha$.

    Returns:
        $J$, with the batch shape of `choice`.
    """
    acc, t, share, lam, alpha = _prepare_queueing(
        task_accuracy, service_time, share, arrival_rate, alpha
    )
    ch = jnp.asarray(choice)
    if ch.ndim == 0 or ch.shape[-1] != acc.shape[0]:
        raise InputError(
            f"choice: last axis must have one entry per task type ({acc.shape[0]}), got {ch.shape}"
        )
    if not jnp.issubdtype(ch.dtype, jnp.integer):
        raise InputError(f"choice: expected integer strategy indices, got dtype {ch.dtype}")
    if is_concrete(ch) and bool(jnp.any((ch < 0) | (ch >= acc.shape[1]))):
        raise InputError(f"choice: strategy indices must lie in [0, {acc.shape[1]})")
    flat = ch.reshape(-1, acc.shape[0])
    values = jax.vmap(lambda c: _joint_objective(c, acc, t, share, lam, alpha))(flat)
    return values.reshape(ch.shape[:-1])


def _prepare_queueing(task_accuracy, service_time, share, arrival_rate, alpha):
    acc = as_float_array("task_accuracy", task_accuracy)
    t = as_float_array("service_time", service_time)
    share = as_float_array("share", share)
    lam = as_float_array("arrival_rate", arrival_rate)
    alpha = as_float_array("alpha", alpha)
    if acc.ndim != 2 or acc.shape[0] == 0 or acc.shape[1] == 0:
        raise InputError(
            f"task_accuracy: expected shape (K, S) (task types x strategies), got {acc.shape}"
        )
    if t.shape != acc.shape:
        raise InputError(
            f"service_time: expected shape {acc.shape} like task_accuracy, got {t.shape}"
        )
    if share.shape != acc.shape[:1]:
        raise InputError(
            f"share: expected shape ({acc.shape[0]},) (one per task type), got {share.shape}"
        )
    for name, x in (("arrival_rate", lam), ("alpha", alpha)):
        if x.ndim != 0:
            raise InputError(f"{name}: expected a scalar, got shape {x.shape}")
    check_probability("task_accuracy", acc)
    check_nonnegative("service_time", t)
    check_nonnegative("share", share)
    check_nonnegative("arrival_rate", lam)
    check_nonnegative("alpha", alpha)
    if is_concrete(share) and abs(float(jnp.sum(share)) - 1) > 1e-6:
        raise InputError(f"share: must sum to 1, got {float(jnp.sum(share)):.8g}")
    dtype = jnp.result_type(acc, t, share, lam, alpha)
    return (
        acc.astype(dtype),
        t.astype(dtype),
        share.astype(dtype),
        lam.astype(dtype),
        alpha.astype(dtype),
    )


def select_queueing(
    task_accuracy: Float[ArrayLike, "k s"],
    service_time: Float[ArrayLike, "k s"],
    share: Float[ArrayLike, " k"],
    arrival_rate: float | Float[ArrayLike, ""],
    alpha: float | Float[ArrayLike, ""],
    method: str = "auto",
    *,
    num_random_starts: int = 16,
    key: PRNGKeyArray | None = None,
) -> QueueChoice:
    r"""Choose one decoding strategy per task type to maximise the queueing objective.

    $J = \alpha \sum_k \pi_k a_{k,s_k} - E[T]$, with $E[T] = E[W] + E[S]$ from the
    Pollaczek-Khinchine formula of docs: *Model* ((3), (5), (6)) and the strategy utility of
    section 3. `task_accuracy[k, s]` is type k's success probability under strategy s and
    `service_time[k, s]` the server time it occupies (e.g. `t0_k + c_k T_s`).

    Methods:

    - `"enumerate"`: exact, all `S**K` joint choices vectorised in JAX (at most 100 000).
    - `"coordinate"`: coordinate ascent (each type in turn moves to its best strategy given the
      others, until no move improves J) from several starts: the cheapest choice, the most
      accurate, the no-wait choice and the iterates of a linearisation of E[T] in
      (E[S], E[S^2]) that decouples the types, plus `num_random_starts` uniform random choices
      (drawn from `key`, default `jax.random.key(0)`). Moves are single types, then pairs of
      types. The result is a local optimum for those moves, not guaranteed global.
    - `"auto"`: `"enumerate"` when `S**K <= 100 000`, else `"coordinate"`.

    If even the cheapest choice is unstable (`lam * E[S] >= 1`), `objective` is `-inf`.

    Args:
        task_accuracy: `[k, s]`, type k's success probability under strategy s.
        service_time: `[k, s]`, the server time (s) type k occupies under strategy s.
        share: the task mix $\pi$.
        arrival_rate: $\lambda$, queries per second.
        alpha: the accuracy weight $\alpha$.
        method: `"enumerate"` (exact, every joint choice), `"coordinate"` (multi-start coordinate
            ascent) or `"auto"` (enumerate when there are few joint choices).
        num_random_starts: random starts of the coordinate ascent.
        key: the random key of the starts.

    Returns:
        The `QueueChoice`.
    """
    acc, t, share, lam, alpha = _prepare_queueing(
        task_accuracy, service_time, share, arrival_rate, alpha
    )
    K, S = acc.shape
    combos = S**K  # Python int: no overflow
    if method == "auto":
        method = "enumerate" if combos <= MAX_ENUMERATION else "coordinate"
    if method == "enumerate":
        if combos > MAX_ENUMERATION:
            raise InputError(
                f"method: 'enumerate' needs S**K = {S}**{K} = {combos} joint choices, more than "
                f"{MAX_ENUMERATION}; "
                "use 'coordinate' or 'auto'"
            )
        choice = _enumerate(acc, t, share, lam, alpha)
    elif method == "coordinate":
        if int(num_random_starts) < 0:
            raise InputError(f"num_random_starts: must be >= 0, got {num_random_starts}")
        key = jax.random.key(0) if key is None else key
        choice = _coordinate(acc, t, share, lam, alpha, key, int(num_random_starts))
    else:
        raise InputError(f"method: expected 'auto', 'enumerate' or 'coordinate', got {method!r}")
    return _result(choice, acc, t, share, lam, alpha, method)
