r"""Evaluation harness for CLEAR: a synthetic oracle pool, four traffic streams, accuracy tables.

Reproduces the *layout* of the CLEAR paper's Table 1 (accuracy per stream and per-query budget,
gain of CLEAR vs Uniform) and its predictor-noise robustness study (Figure 11) on a synthetic
pool; docs: *CLEAR*. The numbers are not the paper's (its pool comes from real model runs).

The pool (`synthetic_pool`) follows the evaluation rows of the paper's Table 6 (Qwen2.5-Math-7B):
one query per dataset item, with the dataset's pass@1 as the chance that the query is
*solvable* and its average solution length as the mean of a log-normal true length
$L \sim \mathrm{LogNormal}(\log \bar L - s^2/2, s)$ (clipped to [16, 8192], `length_sigma`
$s = 0.6$). Tiers as in Table 6: MATH-500 is *moderate*, OlympiadBench and AMC-23 are *hard*,
AIME 2024/2025 and Minerva are *very hard*. The predicted threshold is the true length with
log-normal predictor noise, $\tau = L e^{\sigma\varepsilon}$, $\varepsilon \sim N(0,1)$.

Streams (`STREAMS`) draw `stream_size` queries (the paper uses 500) without replacement from the
tiers with these shares (moderate, hard, very hard): Balanced (1/3, 1/3, 1/3), Mostly-Easy
(0.7, 0.2, 0.1), Mostly-Hard (0.1, 0.3, 0.6), U-Shaped (0.45, 0.1, 0.45). A query counts as
correct when it is solvable and receives at least its true length in tokens.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from .._files import csv_reader, parse_number, read_text, text_lines
from .._validate import check_int, check_memory
from ._allocate import allocate
from ._baselines import BASELINES, oracle_allocation

__all__ = [
    "Pool",
    "PAPER_DATASETS",
    "TIERS",
    "STREAMS",
    "POLICIES",
    "synthetic_pool",
    "default_pool",
    "load_pool",
    "write_pool",
    "sample_stream",
    "stream_accuracy",
    "evaluate_streams",
    "noise_robustness",
]

TIERS: tuple[str, ...] = ("moderate", "hard", "very_hard")

#: the evaluation datasets of the CLEAR paper (its Table 6, Qwen2.5-Math-7B) from which the
#: synthetic pool is drawn: name, count, pass@1, average length, tier
PAPER_DATASETS: tuple[tuple[str, int, float, float, str], ...] = (
    ("MATH-500", 500, 0.708, 1074.0, "moderate"),
    ("OlympiadBench", 675, 0.130, 1059.0, "hard"),
    ("AMC-23", 40, 0.475, 1490.0, "hard"),
    ("AIME-2024", 30, 0.267, 1369.0, "very_hard"),
    ("AIME-2025", 30, 0.067, 1886.0, "very_hard"),
    ("Minerva", 272, 0.129, 2274.0, "very_hard"),
)

STREAMS: dict[str, tuple[float, float, float]] = {
    "Balanced": (1 / 3, 1 / 3, 1 / 3),
    "Mostly-Easy": (0.7, 0.2, 0.1),
    "Mostly-Hard": (0.1, 0.3, 0.6),
    "U-Shaped": (0.45, 0.1, 0.45),
}

BUDGETS: tuple[int, ...] = (256, 512, 1024, 2048)
MAX_TOKENS = 8192.0  # the 7B backbone's max new tokens (paper, Table 5)


@dataclasses.dataclass(frozen=True)
class Pool:
    """An oracle pool: per query the predicted threshold, true length, solvable flag, tier index.

    Attributes:
        threshold: each query's predicted threshold.
        true_length: the tokens it really needs.
        solvable: whether it can be solved at all.
        tier: its difficulty tier, an index into `TIERS`.
    """

    threshold: np.ndarray
    true_length: np.ndarray
    solvable: np.ndarray
    tier: np.ndarray  # index into TIERS

    def __len__(self) -> int:
        return int(self.threshold.size)

    def take(self, idx: np.ndarray) -> "Pool":
        return Pool(self.threshold[idx], self.true_length[idx], self.solvable[idx], self.tier[idx])

    def with_noise(self, sigma: float, seed: int = 0) -> "Pool":
        r"""Same queries, thresholds redrawn as $L e^{\sigma \varepsilon}$ (log-normal noise)."""
        eps = np.random.default_rng(seed).standard_normal(len(self))
        return dataclasses.replace(self, threshold=self.true_length * np.exp(sigma * eps))


def synthetic_pool(
    seed: int = 0, *, predictor_sigma: float = 0.5, length_sigma: float = 0.6
) -> Pool:
    """The Table-6-shaped synthetic pool described in the module docstring (deterministic in
    seed).

    Args:
        seed: the random seed.
        predictor_sigma: the log-normal noise of the predicted thresholds.
        length_sigma: the log-normal spread of the true lengths.

    Returns:
        The `Pool`.
    """
    rng = np.random.default_rng(seed)
    lengths, solvable, tiers = [], [], []
    for _, count, pass1, avg_len, tier in PAPER_DATASETS:
        mu = np.log(avg_len) - length_sigma**2 / 2
        lengths.append(np.clip(np.round(rng.lognormal(mu, length_sigma, count)), 16, MAX_TOKENS))
        solvable.append(rng.random(count) < pass1)
        tiers.append(np.full(count, TIERS.index(tier)))
    length = np.concatenate(lengths)
    threshold = np.round(length * np.exp(predictor_sigma * rng.standard_normal(length.size)), 1)
    return Pool(threshold, length, np.concatenate(solvable), np.concatenate(tiers))


def _default_pool_path() -> Path:
    return Path(__file__).parent.parent / "data" / "clear_pool.csv"


def default_pool() -> Pool:
    """The shipped pool `data/clear_pool.csv` (= `synthetic_pool(0)`, written by `write_pool`).

    Returns:
        The `Pool`.
    """
    return load_pool(_default_pool_path())


def write_pool(pool: Pool, path: str | Path) -> None:
    """CSV with columns threshold, true_length, solvable (0/1), tier (name).

    Args:
        pool: the pool.
        path: the CSV file.
    """
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["threshold", "true_length", "solvable", "tier"])
        for t, L, s, k in zip(pool.threshold, pool.true_length, pool.solvable, pool.tier):
            w.writerow([f"{t:g}", f"{L:g}", int(s), TIERS[int(k)]])


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def load_pool(path: str | Path) -> Pool:
    """Read a pool CSV with header columns `threshold, true_length, solvable` and an optional
    `tier` (moderate / hard / very_hard). Without `tier`, queries are put in tiers by threshold
    tertiles. Bad rows raise `InputError` naming the file, line and column.

    Args:
        path: the CSV file.

    Returns:
        The `Pool`.
    """
    text = read_text(path, "pool CSV")
    path = Path(path)
    rows = csv_reader(text_lines(text))
    if not rows:
        raise InputError(f"{path}: empty file; expected a header threshold,true_length,solvable")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("threshold", "true_length", "solvable") if c not in header]
    if missing:
        raise InputError(f"{path}:1: missing column(s) {', '.join(missing)} in header {rows[0]}")
    col = {name: header.index(name) for name in header}
    thr, length, solv, tier = [], [], [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{lineno}"
        if len(row) != len(header):
            raise InputError(f"{where}: expected {len(header)} fields, got {len(row)}")
        thr.append(parse_number(row[col["threshold"]].strip(), f"{where}: threshold", minimum=0))
        length.append(
            parse_number(row[col["true_length"]].strip(), f"{where}: true_length", positive=True)
        )
        s = row[col["solvable"]].strip().lower()
        if s not in _TRUE | _FALSE:
            raise InputError(
                f"{where}: solvable must be 0/1 or true/false, got {row[col['solvable']]!r}"
            )
        solv.append(s in _TRUE)
        if "tier" in col:
            t = row[col["tier"]].strip().lower().replace("-", "_").replace(" ", "_")
            if t not in TIERS:
                raise InputError(
                    f"{where}: tier must be one of {', '.join(TIERS)}, got {row[col['tier']]!r}"
                )
            tier.append(TIERS.index(t))
    if not thr:
        raise InputError(f"{path}: no data rows")
    threshold = np.asarray(thr)
    if "tier" in col:
        tiers = np.asarray(tier)
    else:
        tiers = np.searchsorted(np.quantile(threshold, [1 / 3, 2 / 3]), threshold, side="right")
    return Pool(threshold, np.asarray(length), np.asarray(solv, bool), tiers.astype(int))


def sample_stream(pool: Pool, stream: str, size: int = 500, seed: int = 0) -> Pool:
    """`size` queries drawn without replacement from the tiers with the stream's shares
    (with replacement within a tier only if the tier is smaller than its share).

    Args:
        pool: the pool.
        stream: the stream's name, a key of `STREAMS`.
        size: queries in the stream.
        seed: the random seed.

    Returns:
        The stream, as a `Pool`.
    """
    if stream not in STREAMS:
        raise InputError(f"stream: must be one of {', '.join(STREAMS)}, got {stream!r}")
    size = check_int("size", size, 1)
    check_memory(8.0 * 8 * size, f"a stream of {size:,} queries", "draw a smaller stream")
    seed = check_int("seed", seed, 0, 2**32 - 1)
    rng = np.random.default_rng(seed)
    shares = np.asarray(STREAMS[stream])
    counts = np.floor(shares * size).astype(int)
    counts[np.argmax(shares)] += size - counts.sum()
    picks = []
    for k, count in enumerate(counts):
        members = np.flatnonzero(pool.tier == k)
        if count == 0:
            continue
        if members.size == 0:
            raise InputError(
                f"pool: stream {stream!r} needs tier {TIERS[k]!r}, which has no queries"
            )
        picks.append(rng.choice(members, count, replace=members.size < count))
    return pool.take(rng.permutation(np.concatenate(picks)))


def _clear_policy(thresholds, budget, *, query_cap=MAX_TOKENS):
    return allocate(thresholds, budget, query_cap=query_cap).tokens


POLICIES: dict[str, Callable] = {
    "Uniform": BASELINES["uniform"],
    "Predictor": BASELINES["predictor"],
    "Heuristic": BASELINES["heuristic"],
    "Auction": BASELINES["auction"],
    "CLEAR": _clear_policy,
}

_JITTED = {name: jax.jit(fn, static_argnames="query_cap") for name, fn in POLICIES.items()}


@jax.jit
def _correct(x, length, solvable):
    return jnp.mean(solvable & (x >= length))


def stream_accuracy(
    stream: Pool, per_query_budget: float, policy: str, query_cap: float = MAX_TOKENS
) -> float:
    """Accuracy (%) of `policy` (a `POLICIES` key or "Oracle") on one stream at budget $n b$.

    Args:
        stream: the stream's queries.
        per_query_budget: $b$; the batch's budget is $n b$.
        policy: a `POLICIES` key or `"Oracle"`.
        query_cap: the per-query cap.

    Returns:
        The accuracy (%).
    """
    budget = float(per_query_budget) * len(stream)
    if policy == "Oracle":
        x = oracle_allocation(
            stream.true_length, budget, solvable=stream.solvable, query_cap=query_cap
        )
    elif policy in POLICIES:
        x = _JITTED[policy](jnp.asarray(stream.threshold), budget, query_cap=query_cap)
    else:
        raise InputError(
            f"policy: must be one of {', '.join([*POLICIES, 'Oracle'])}, got {policy!r}"
        )
    return 100.0 * float(_correct(x, jnp.asarray(stream.true_length), jnp.asarray(stream.solvable)))


def evaluate_streams(
    pool: Optional[Pool] = None,
    *,
    budgets: Sequence[int] = BUDGETS,
    seed: int = 0,
    stream_size: int = 500,
    repeats: int = 1,
    policies: Sequence[str] = (*POLICIES, "Oracle"),
) -> dict:
    """The paper's Table 1 layout: accuracy (%) per policy, stream and per-query budget, averaged
    over `repeats` stream draws, and CLEAR's gain over Uniform (when both are evaluated).

    Args:
        pool: the pool (default: the shipped synthetic pool).
        budgets: the per-query budgets.
        seed: the random seed of the streams.
        stream_size: queries per stream.
        repeats: stream draws averaged.
        policies: the policies evaluated.

    Returns:
        `{"budgets", "streams", "policies", "accuracy": {policy: {stream: [acc per budget]}},
        "gain": {stream: [...]}}`.
    """
    pool = default_pool() if pool is None else pool
    acc = {p: {s: [0.0] * len(budgets) for s in STREAMS} for p in policies}
    for r in range(repeats):
        for si, stream in enumerate(STREAMS):
            sample = sample_stream(pool, stream, stream_size, seed=seed + 1000 * r + si)
            for bi, b in enumerate(budgets):
                for p in policies:
                    acc[p][stream][bi] += stream_accuracy(sample, b, p) / repeats
    out = {
        "budgets": list(budgets),
        "streams": list(STREAMS),
        "policies": list(policies),
        "accuracy": acc,
    }
    if "CLEAR" in acc and "Uniform" in acc:
        out["gain"] = {
            s: [c - u for c, u in zip(acc["CLEAR"][s], acc["Uniform"][s])] for s in STREAMS
        }
    return out


def noise_robustness(
    pool: Optional[Pool] = None,
    *,
    sigmas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    per_query_budget: float = 256,
    stream: str = "Balanced",
    seed: int = 0,
    stream_size: int = 500,
    policies: Sequence[str] = ("Uniform", "CLEAR"),
) -> dict:
    r"""Accuracy (%) vs log-normal predictor noise $\sigma$ (the paper's Figure 11): thresholds are
    redrawn as $L e^{\sigma\varepsilon}$ for one stream.

    Args:
        pool: the pool (default: the shipped synthetic pool).
        sigmas: the noise levels.
        per_query_budget: the per-query budget.
        stream: the stream's name.
        seed: the random seed.
        stream_size: queries in the stream.
        policies: the policies evaluated.

    Returns:
        `{policy: [accuracy (%) per sigma]}`.
    """
    pool = default_pool() if pool is None else pool
    base = sample_stream(pool, stream, stream_size, seed=seed)
    return {
        "sigmas": list(sigmas),
        **{
            p: [stream_accuracy(base.with_noise(s, seed + 1), per_query_budget, p) for s in sigmas]
            for p in policies
        },
    }
