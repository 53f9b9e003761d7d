r"""Fitting the paper's accuracy and latency curves to measurements, with standard errors.

Accuracy, eq. (2): $p_k(l) = A_k (1 - e^{-b_k l}) + D_k$, fitted by maximum binomial
likelihood under $A, D \ge 0$, $A + D \le 1$, $b > 0$. The solver is a projected
Levenberg-Marquardt / Fisher-scoring loop of our own in JAX (vmapped over tasks) on
$(A, \log b, D)$, started from a variable-projection grid: for fixed $b$ the curve is linear
in $(A, D)$, so a weighted least-squares fit per grid value of $b$ gives the start.
Standard errors are the inverse Fisher information $\sum_j n_j \nabla p_j \nabla p_j^\top /
(p_j (1 - p_j))$ in $(A, b, D)$; a parameter held at a bound is fixed (reported with SE 0
and `at_bound`). Goodness of fit: the binomial deviance against $\chi^2$ with
(cells - free parameters) degrees of freedom.

Latency, eq. (1): $t_k(l) = t_{0k} + c_k l$, fitted to the rows' mean latencies (pooled
by budget) by weighted least squares under request noise of variance $s_0^2 + (\mathrm{cv}\,
t_k(l))^2$: additive noise, noise proportional to the mean, or a mix, the shape chosen by
restricted likelihood (`_fit_latency`). Standard errors are model-based, raised to the HC3
sandwich value where that is larger; intervals use Student's t with (budgets - 3) degrees of
freedom, so that they cover at their nominal rate for either kind of noise (tested by
simulation). A slope that is not clearly positive, or an intercept above every measured
latency, raises a `FitWarning`.

Budgets solved from a fitted workload carry the fit's uncertainty: `budget_uncertainty`
propagates the parameter covariance to $l^*$ by the delta method, with the solver's implicit
derivative (`solve` is differentiable).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from .._errors import InputError
from .._solver.solve import solve
from .._stats import student_t_quantile
from .._status import HasStatus, StatusEnum
from .._workload import Workload
from .measurements import Measurements

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FitResult",
    "FitStatus",
    "FitWarning",
    "TaskFit",
    "fit",
    "budget_uncertainty",
    "plot_fit",
]

FIELDS = ("A", "b", "D", "t0", "c")
_BOUND = 1e-7
_ITERATIONS = 300
_MONOTONE_Z = 3.5
_NORMALS = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 1.0), (0.0, 1.0, 0.0))
_LATENCY_PASSES = 3
_B_GRID = np.exp(np.linspace(np.log(1e-6), np.log(2.0), 80))


class FitStatus(StatusEnum):
    """Outcome of one task's fit (`TaskFit.status`); a `FitWarning` accompanies every code but
    `FITTED`."""

    FITTED = 0, "fitted: monotone data, an acceptable fit"
    NOT_MONOTONE = 1, "the measured accuracy is not monotone in the budget"
    POOR_FIT = (
        2,
        "the accuracy curve fits the data poorly (goodness-of-fit p-value below the threshold)",
    )


class FitWarning(UserWarning):
    """A fitted curve is questionable: not monotone, a poor fit, or a parameter at a bound."""


@dataclass(frozen=True)
class TaskFit:
    """One task's fitted parameters, standard errors and diagnostics.

    Attributes:
        name: the task.
        params: the estimates of `A`, `b`, `D`, `t0`, `c`.
        se: their standard errors.
        accuracy_cov: the covariance of `(A, b, D)`.
        latency_cov: the covariance of `(t0, c)`.
        at_bound: the parameters that sit at a constraint.
        deviance: the binomial deviance of the accuracy fit.
        dof: its degrees of freedom.
        p_value: the goodness-of-fit p-value.
        monotone: whether the measured accuracy rises with the budget.
        latency_dof: degrees of freedom of the latency fit.
        latency_noise: the estimated latency noise (additive and proportional parts).
        warnings: what the fit flags.
        poor_fit: whether the p-value is below the warning level.
    """

    name: str
    params: dict[str, float]  # A, b, D, t0, c
    se: dict[str, float]
    accuracy_cov: np.ndarray  # (3, 3) over (A, b, D)
    latency_cov: np.ndarray  # (2, 2) over (t0, c)
    at_bound: tuple[str, ...]
    deviance: float
    dof: int
    p_value: float
    monotone: bool
    latency_dof: int
    #: the fitted per-request latency noise: standard deviation $s_0$ (s) and coefficient of
    #: variation, variance $s_0^2 + (\mathrm{cv}\,t(l))^2$
    latency_noise: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    poor_fit: bool = False

    @property
    def status(self) -> FitStatus:
        """`NOT_MONOTONE` before `POOR_FIT` before `FITTED`."""
        if not self.monotone:
            return FitStatus.NOT_MONOTONE
        return FitStatus.POOR_FIT if self.poor_fit else FitStatus.FITTED

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        """Wald interval for parameter `name`: normal quantile for A, b, D; Student t with
        `latency_dof` degrees of freedom for t0, c (their variance is estimated)."""
        if name in ("t0", "c"):
            with jax.enable_x64(True):
                q = float(student_t_quantile(0.5 + level / 2, max(self.latency_dof, 1)))
        else:
            q = float(jax.scipy.special.ndtri(0.5 + level / 2))
        return self.params[name] - q * self.se[name], self.params[name] + q * self.se[name]


class FitResult(HasStatus):
    """The fitted workload and per-task fits (`tasks`), in the measurements' task order;
    `status` holds one `FitStatus` per task.

    Attributes:
        workload: the fitted workload.
        tasks: each task's `TaskFit`.
        measurements: the measurements fitted.
        fields: the workload's scalar fields used (arrival rate, alpha, max tokens).
    """

    workload: Workload
    tasks: tuple[TaskFit, ...]
    measurements: Measurements = eqx.field(repr=False)
    #: the fitted fields as float64 numpy values, whatever the JAX dtype of `workload`
    fields: dict = eqx.field(default_factory=dict, repr=False)

    def workload_float64(self) -> Workload:
        """The fitted workload in float64 (for writing it at full precision)."""
        with jax.enable_x64(True):
            return Workload(**self.fields, names=self.workload.names)

    STATUS: ClassVar[type[FitStatus]] = FitStatus

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(w for t in self.tasks for w in t.warnings)

    @property
    def status(self) -> np.ndarray:
        """The `FitStatus` code of every task (int32, in task order)."""
        return np.asarray([int(t.status) for t in self.tasks], dtype=np.int32)

    def covariance(self) -> np.ndarray:
        """(N, 5, 5) covariance of (A, b, D, t0, c) per task (accuracy and latency independent)."""
        cov = np.zeros((len(self.tasks), 5, 5))
        for k, t in enumerate(self.tasks):
            cov[k, :3, :3] = t.accuracy_cov
            cov[k, 3:, 3:] = t.latency_cov
        return cov

    def table(self) -> list[dict]:
        return [
            {
                "task": t.name,
                **{p: (t.params[p], t.se[p]) for p in ("A", "b", "D", "t0", "c")},
                "deviance": t.deviance,
                "dof": t.dof,
                "p_value": t.p_value,
                "at_bound": list(t.at_bound),
            }
            for t in self.tasks
        ]


# ---------------------------------------------------------------- accuracy (binomial MLE)


def _curve(theta, l):
    A, u, D = theta[0], theta[1], theta[2]
    return -A * jnp.expm1(-jnp.exp(u) * l) + D


def _project(theta):
    """Euclidean projection of (A, D) onto {A >= 0, D >= 0, A + D <= 1}; log b is free."""
    A, u, D = theta
    A, D = jnp.maximum(A, 0), jnp.maximum(D, 0)
    excess = jnp.maximum(A + D - 1, 0)
    A2, D2 = A - excess / 2, D - excess / 2
    A3 = jnp.where(D2 < 0, 1.0, jnp.where(A2 < 0, 0.0, A2))
    D3 = jnp.where(D2 < 0, 0.0, jnp.where(A2 < 0, 1.0, D2))
    return jnp.stack([A3, u, D3])


def _loglik(theta, l, y, n):
    eps = jnp.finfo(l.dtype).eps
    raw = _curve(theta, l)
    # the value is clipped away from 0 and 1, the gradient is not: at D = 0 with correct
    # answers at budget 0, a plain clip would zero the pull of that row and leave D stuck at
    # its bound (found by the noise-free recovery property test)
    p = raw + jax.lax.stop_gradient(jnp.clip(raw, eps, 1 - eps) - raw)
    return jnp.sum(
        jnp.where(y > 0, y * jnp.log(p), 0) + jnp.where(n - y > 0, (n - y) * jnp.log1p(-p), 0)
    )


def _start(l, y, n):
    """Variable projection over a grid of b: weighted LS for (A, D), keep the best likelihood."""
    rate = y / jnp.where(n > 0, n, 1)

    def at(b):
        g = -jnp.expm1(-b * l)
        X = jnp.stack([g, jnp.ones_like(g)], -1) * jnp.sqrt(n)[:, None]
        coef = jnp.linalg.lstsq(X, rate * jnp.sqrt(n))[0]
        theta = _project(jnp.stack([coef[0], jnp.log(b), coef[1]]))
        return theta, _loglik(theta, l, y, n)

    thetas, lls = jax.vmap(at)(jnp.asarray(_B_GRID, l.dtype))
    return thetas[jnp.argmax(lls)]


def _fisher(theta, l, n):
    """Fisher information in the optimisation parameters (A, log b, D)."""
    eps = jnp.finfo(l.dtype).eps
    J = jax.jacfwd(_curve)(theta, l)  # (M, 3)
    p = jnp.clip(_curve(theta, l), eps, 1 - eps)
    return J.T @ (J * (n / (p * (1 - p)))[:, None])


def _free_projector(active, dtype):
    """Projector onto the directions of (A, log b, D) that active constraints leave free.

    `active` flags (A >= 0, D >= 0, A + D <= 1, b held); normals are rows of `_NORMALS`."""
    normals = jnp.asarray(_NORMALS[: active.shape[0]], dtype) * active[:, None]
    return jnp.eye(3, dtype=dtype) - jnp.linalg.pinv(normals) @ normals


def _fit_one(l, y, n):
    """Projected Levenberg-Marquardt (Fisher scoring) for one task's binomial likelihood."""
    theta0 = _start(l, y, n)

    def body(_, state):
        theta, ll, lam = state
        g = jax.grad(_loglik)(theta, l, y, n)
        F = _fisher(theta, l, n)
        scale = jnp.diag(F) + jnp.finfo(l.dtype).tiny ** 0.5
        M = F + lam * jnp.diag(scale) + 1e-12 * jnp.eye(3, dtype=l.dtype)
        # active set: bounds the ascent direction pushes against are held (projected Newton)
        A, D = theta[0], theta[2]
        active = jnp.stack(
            [
                (A <= _BOUND) & (g[0] < 0),
                (D <= _BOUND) & (g[2] < 0),
                (A + D >= 1 - _BOUND) & (g[0] + g[2] > 0),
            ]
        )
        P = _free_projector(active, l.dtype)
        eye = jnp.eye(3, dtype=l.dtype)
        step = P @ jnp.linalg.solve(P @ M @ P + eye - P, P @ g)
        trial = _project(theta + step)
        ll_trial = _loglik(trial, l, y, n)
        better = ll_trial > ll
        return (
            jnp.where(better, trial, theta),
            jnp.where(better, ll_trial, ll),
            jnp.where(better, lam / 3, lam * 4).clip(1e-12, 1e12),
        )

    theta, ll, _ = jax.lax.fori_loop(
        0, _ITERATIONS, body, (theta0, _loglik(theta0, l, y, n), jnp.asarray(1e-3, l.dtype))
    )
    return theta, ll


def _accuracy_cov(theta, l, n):
    r"""Covariance of (A, b, D): the inverse Fisher information on the face of active bounds.

    With projector $P$ onto the directions the active constraints leave free,
    $\Sigma = P (P F P + I - P)^{-1} P$ (the inverse on that subspace, zero across it).
    """
    A, u, D = theta
    nat = jnp.stack([A, jnp.exp(u), D])

    def curve_nat(q):
        return -q[0] * jnp.expm1(-q[1] * l) + q[2]

    eps = jnp.finfo(l.dtype).eps
    J = jax.jacfwd(curve_nat)(nat)
    p = jnp.clip(curve_nat(nat), eps, 1 - eps)
    F = J.T @ (J * (n / (p * (1 - p)))[:, None])
    # active constraints A >= 0, D >= 0, A + D <= 1: restrict F to their null space
    active = jnp.stack([A < _BOUND, D < _BOUND, A + D > 1 - _BOUND])
    # with A = 0 the rate b is not identified: hold it too (its SE is reported as inf)
    P = _free_projector(jnp.concatenate([active, active[:1]]), F.dtype)
    cov = P @ jnp.linalg.inv(P @ F @ P + (jnp.eye(3, dtype=F.dtype) - P)) @ P
    return cov, active


@jax.jit
def _fit_accuracy(l, y, n):
    theta, ll = jax.vmap(_fit_one)(l, y, n)
    cov, fixed = jax.vmap(_accuracy_cov)(theta, l, n)
    return theta, ll, cov, fixed


# ---------------------------------------------------------------- latency (variance-function WLS)

_SHAPES = 49  # grid of variance shapes between proportional and additive noise


def _pooled_latency(m: Measurements, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task k's latency rows pooled by budget: (budgets, weighted mean latency, requests).

    Rows that repeat a budget (per-request rows, several runs) carry no information about
    the mean line beyond their weighted mean, so the fit sees one row per budget whatever
    the file's granularity; per-request and aggregated files give the same fit.
    """
    rows = m.rows_of(k)
    rows = rows[(m.latency_weight[rows] > 0) & np.isfinite(m.latency[rows])]
    budgets, where = np.unique(m.budget[rows], return_inverse=True)
    weight = np.bincount(where, weights=m.latency_weight[rows], minlength=budgets.size)
    total = np.bincount(
        where, weights=m.latency_weight[rows] * m.latency[rows], minlength=budgets.size
    )
    return budgets, total / weight, weight


@jax.jit
def _fit_latency(l, t, n):
    r"""Mean line $t_0 + c\,l$ under request noise of variance $s_0^2 + (\mathrm{cv}\;\mu)^2$.

    A row's mean of $n_j$ requests has variance $\phi\,(\theta + (1 - \theta)\,\mu_j^2 /
    \bar{\mu^2}) / n_j$: $\theta = 1$ is additive noise, $\theta = 0$ noise proportional to
    the mean. For each $\theta$ on a grid the line is fitted by iteratively reweighted least
    squares; $\theta$ is chosen by the restricted (REML) likelihood, which does not reward
    the two fitted mean parameters. The covariance of $(t_0, c)$ is the model-based one,
    $\hat\phi (X^\top W X)^{-1}$, with each standard error raised to its HC3 sandwich value
    where that is larger (a guard against a mis-estimated shape with few rows); intervals
    use Student's t with (rows - 3) degrees of freedom (one more for the shape). Padding rows
    have $n_j = 0$. Returns the line, its covariance, the number of rows and $(s_0, cv)$.
    """
    theta = jnp.concatenate(
        [jnp.zeros(1), jax.nn.sigmoid(jnp.linspace(-14.0, 14.0, _SHAPES)), jnp.ones(1)]
    ).astype(l.dtype)
    tiny = jnp.finfo(l.dtype).tiny ** 0.25

    def one(l, t, n):
        X = jnp.stack([jnp.ones_like(l), l], -1)
        live = n > 0
        y = jnp.where(live, t, 0)
        m = jnp.sum(live)

        def wls(wt):
            XtW = X.T * wt
            G = XtW @ X
            Gi = jnp.linalg.inv(G)
            return Gi @ (XtW @ y), Gi

        beta0, _ = wls(n)
        scale = jnp.sum(jnp.where(live, n * (X @ beta0) ** 2, 0)) / jnp.sum(n)
        scale = jnp.maximum(scale, tiny)

        def at_shape(th):
            beta = beta0
            for _ in range(_LATENCY_PASSES):
                mu = jnp.maximum(X @ beta, tiny)
                v = th + (1 - th) * mu**2 / scale
                wt = jnp.where(live, n / v, 0)
                beta, Gi = wls(wt)
            r = jnp.where(live, y - X @ beta, 0)
            dof = jnp.maximum(m - 2, 1)
            phi = jnp.maximum(jnp.sum(wt * r * r) / dof, jnp.finfo(l.dtype).tiny)
            logv = jnp.where(live, jnp.log(v / jnp.where(live, n, 1)), 0)
            reml = -0.5 * jnp.sum(logv) - 0.5 * dof * jnp.log(phi)
            reml = reml + 0.5 * jnp.linalg.slogdet(Gi)[1]
            return reml, beta, Gi, wt, r, phi

        reml, betas, Gis, wts, rs, phis = jax.vmap(at_shape)(theta)
        i = jnp.argmax(jnp.where(jnp.isfinite(reml), reml, -jnp.inf))
        beta, Gi, wt, r, phi = betas[i], Gis[i], wts[i], rs[i], phis[i]
        model = phi * Gi
        h = wt * jnp.einsum("ij,jk,ik->i", X, Gi, X)
        e2 = r * r / jnp.maximum(1 - h, jnp.finfo(l.dtype).eps) ** 2
        sandwich = Gi @ ((X.T * (wt * wt * e2)) @ X) @ Gi
        raise_by = jnp.sqrt(
            jnp.maximum(jnp.diag(sandwich) / jnp.maximum(jnp.diag(model), tiny**4), 1.0)
        )
        cov = model * raise_by[:, None] * raise_by[None, :]
        noise = jnp.sqrt(phi * jnp.stack([theta[i], (1 - theta[i]) / scale]))  # (s0, cv)
        return beta, cov, m, noise

    return jax.vmap(one)(l, t, n)


# ---------------------------------------------------------------- driver


def _pad(m: Measurements, values: np.ndarray, k: int, width: int, fill: float) -> np.ndarray:
    rows = m.rows_of(k)
    out = np.full(width, fill)
    out[: len(rows)] = values[rows]
    return out


def _monotone(m: Measurements, k: int) -> tuple[bool, str]:
    """Pooled accuracy per budget must not fall by more than `_MONOTONE_Z` standard errors.

    Every pair of budgets is compared, so the threshold is strict (3.5: about a 1% false
    alarm rate for a flat curve measured at a dozen budgets).
    """
    rows = m.rows_of(k)
    budgets = np.unique(m.budget[rows])
    y = np.array([m.n_correct[rows][m.budget[rows] == b].sum() for b in budgets])
    n = np.array([m.n_total[rows][m.budget[rows] == b].sum() for b in budgets])
    rate = y / n
    for i in range(len(budgets) - 1):
        for j in range(i + 1, len(budgets)):
            se = math.sqrt(
                max(rate[i] * (1 - rate[i]) / n[i] + rate[j] * (1 - rate[j]) / n[j], 1e-12)
            )
            if rate[j] < rate[i] - _MONOTONE_Z * se:
                return False, (
                    f"accuracy is not monotone in the budget: {rate[i]:.3f} at {budgets[i]:g} "
                    f"tokens but {rate[j]:.3f} at {budgets[j]:g} (more than {_MONOTONE_Z} SE lower)"
                )
    return True, ""


def fit(
    measurements: Measurements,
    *,
    shares: ArrayLike | None = None,
    arrival_rate: float = 0.1,
    alpha: float = 30.0,
    max_tokens: float = 32768.0,
    min_p_value: float = 1e-3,
) -> FitResult:
    """Fit $A_k, b_k, D_k$ (eq. (2)) and $t_{0k}, c_k$ (eq. (1)) for every measured task.

    Args:
        measurements: from `read_measurements` / `parse_measurements`.
        shares: one per task in the measurements' order (default equal shares).
        arrival_rate: the workload's arrival rate.
        alpha: the workload's accuracy weight.
        max_tokens: the workload's budget cap.
        min_p_value: a deviance goodness-of-fit p-value below it triggers a `FitWarning`.

    Returns:
        a `FitResult` with the fitted (validated) `Workload` and per-task `TaskFit`s
        (estimates, SEs, covariances, deviance, monotonicity).

    Emits `FitWarning` for curves that are not monotone, fit poorly or sit at a constraint.
    Raises `InputError` naming the task when a task has too few budgets or no latency.
    """
    m = measurements
    K = len(m.tasks)
    width = max(len(m.rows_of(k)) for k in range(K))
    for k, name in enumerate(m.tasks):
        rows = m.rows_of(k)
        if len(np.unique(m.budget[rows])) < 3:
            raise InputError(
                f"{m.source}: task {name!r}: need at least 3 distinct budgets to fit A, b, D"
            )
        lat = rows[m.latency_weight[rows] > 0]
        if len(np.unique(m.budget[lat])) < 2:
            raise InputError(
                f"{m.source}: task {name!r}: need latency at 2 or more distinct budgets to fit "
                "t0, c"
            )
    with jax.enable_x64(True):
        f64 = jnp.float64
        L = jnp.asarray(np.stack([_pad(m, m.budget, k, width, 0.0) for k in range(K)]), f64)
        Y = jnp.asarray(np.stack([_pad(m, m.n_correct, k, width, 0.0) for k in range(K)]), f64)
        N = jnp.asarray(np.stack([_pad(m, m.n_total, k, width, 0.0) for k in range(K)]), f64)
        pooled = [_pooled_latency(m, k) for k in range(K)]
        lat_width = max(b.size for b, _, _ in pooled)

        def lat_pad(i):
            return jnp.asarray(
                np.stack([np.pad(p[i], (0, lat_width - p[i].size)) for p in pooled]), f64
            )

        theta, _, acc_cov, fixed = (np.asarray(x) for x in _fit_accuracy(L, Y, N))
        beta, lat_cov, lat_rows, noise = (
            np.asarray(x) for x in _fit_latency(lat_pad(0), lat_pad(1), lat_pad(2))
        )
        P = np.asarray(jax.vmap(_curve)(jnp.asarray(theta), L))
    y, n = np.asarray(Y), np.asarray(N)
    tasks = []
    for k, name in enumerate(m.tasks):
        notes = []
        A, b, D = float(theta[k, 0]), float(np.exp(theta[k, 1])), float(theta[k, 2])
        t0, c = float(beta[k, 0]), float(beta[k, 1])
        se_t0, se_c = np.sqrt(np.clip(np.diag(lat_cov[k]), 0, None))
        budgets, lat, _ = pooled[k]
        span = float(budgets.max() - budgets.min())
        mean_lat = float(np.mean(lat))
        if c <= 0 or c < 2 * se_c or c * span < 1e-3 * mean_lat:
            why = (
                f"fitted latency slope c = {c:.3g} s/token (SE {se_c:.2g}) is not clearly positive"
                if c * span >= 1e-3 * mean_lat or c <= 0
                else f"fitted latency slope c = {c:.3g} s/token adds under 0.1% to the mean "
                f"latency over the measured budgets"
            )
            notes.append(
                f"task {name!r}: {why}: latency does not grow with the budget, so tokens look "
                "(nearly) free and this task's budget will be driven to max_tokens; check the "
                "latency column" + ("; c is clamped to 1e-9" if c <= 0 else "")
            )
            c = max(c, 1e-9)
        if t0 - 3 * se_t0 > float(lat.max()):
            notes.append(
                f"task {name!r}: fitted t0 = {t0:.3g} s (SE {se_t0:.2g}) exceeds the largest "
                f"measured latency ({float(lat.max()):.3g} s): the latency line does not fit "
                "the data (latency falling with the budget?)"
            )
        if t0 < 0:
            notes.append(f"task {name!r}: fitted t0 = {t0:.3g} s < 0; clamped to 0")
            t0 = 0.0
        if budgets.size < 4:
            notes.append(
                f"task {name!r}: latency at only {budgets.size} distinct budgets: the noise "
                "shape cannot be estimated and the intervals for t0, c are unreliable"
            )
        at_bound = tuple(c_ for c_, f in zip(("A = 0", "D = 0", "A + D = 1"), fixed[k]) if f)
        # snap estimates within _BOUND of an active constraint onto it
        A = 0.0 if "A = 0" in at_bound else A
        D = 0.0 if "D = 0" in at_bound else (1.0 - A if "A + D = 1" in at_bound else D)
        if "A = 0" in at_bound:
            notes.append(
                f"task {name!r}: A = 0, accuracy does not rise with the budget (b is not "
                "identified); its budget will be 0"
            )
        valid = n[k] > 0
        p = np.clip(P[k], 1e-300, 1 - 1e-16)
        yk, nk = y[k][valid], n[k][valid]
        pk = p[valid]
        with np.errstate(divide="ignore", invalid="ignore"):
            dev_terms = np.where(yk > 0, yk * np.log(yk / (nk * pk)), 0) + np.where(
                nk - yk > 0, (nk - yk) * np.log((nk - yk) / (nk * (1 - pk))), 0
            )
        deviance = float(2 * dev_terms.sum())
        dof = int(valid.sum() - (3 - len(at_bound)))  # each active bound fixes one direction
        p_value = (
            float(jax.scipy.special.gammaincc(dof / 2, deviance / 2)) if dof > 0 else float("nan")
        )
        poor_fit = dof > 0 and p_value < min_p_value
        if poor_fit:
            notes.append(
                f"task {name!r}: the accuracy curve fits poorly (deviance {deviance:.1f} on {dof} "
                f"degrees of freedom, p = {p_value:.2g})"
            )
        monotone, why = _monotone(m, k)
        if not monotone:
            notes.append(f"task {name!r}: {why}")
        se_acc = np.sqrt(np.clip(np.diag(acc_cov[k]), 0, None))
        if "A = 0" in at_bound:
            se_acc[1] = np.inf  # b is not identified by a flat curve
        tasks.append(
            TaskFit(
                name=name,
                params={"A": A, "b": b, "D": D, "t0": t0, "c": c},
                se={
                    "A": float(se_acc[0]),
                    "b": float(se_acc[1]),
                    "D": float(se_acc[2]),
                    "t0": float(se_t0),
                    "c": float(se_c),
                },
                accuracy_cov=acc_cov[k],
                latency_cov=lat_cov[k],
                at_bound=at_bound,
                deviance=deviance,
                dof=dof,
                p_value=p_value,
                monotone=monotone,
                latency_dof=max(int(lat_rows[k]) - 3, 1),
                latency_noise={"sd": float(noise[k, 0]), "cv": float(noise[k, 1])},
                warnings=tuple(notes),
                poor_fit=poor_fit,
            )
        )
    for t in tasks:
        for note in t.warnings:
            warnings.warn(note, FitWarning, stacklevel=2)
    if shares is None:
        shares = np.full(K, 1.0 / K)
    shares = np.asarray(shares, dtype=np.float64)
    if shares.shape != (K,):
        raise InputError(
            f"shares: expected {K} values (one per measured task), got shape {shares.shape}"
        )
    fields = {
        **{p: np.array([t.params[p] for t in tasks], dtype=np.float64) for p in FIELDS},
        "share": shares,
        "arrival_rate": np.float64(arrival_rate),
        "alpha": np.float64(alpha),
        "max_tokens": np.float64(max_tokens),
    }
    try:
        w = Workload(**fields, names=m.tasks).validate()
    except InputError as e:
        latency_notes = [n for t in tasks for n in t.warnings if "latency" in n or "t0" in n]
        if not latency_notes:
            raise
        raise InputError(
            f"{m.source}: {'; '.join(latency_notes)}; so the fitted workload is invalid: {e}"
        ) from None
    return FitResult(workload=w, tasks=tuple(tasks), measurements=m, fields=fields)


def budget_uncertainty(result: FitResult, method: str = "default") -> tuple[np.ndarray, np.ndarray]:
    r"""Optimal budgets of the fitted workload and their delta-method standard errors.

    $\mathrm{Var}(l^*_j) \approx \sum_k g_{jk}^\top \Sigma_k g_{jk}$ with $g_{jk}$ the
    derivative of $l^*_j$ with respect to task k's $(A, b, D, t_0, c)$ (implicit
    differentiation through the solver) and $\Sigma_k$ the fit covariance.

    Args:
        result: the fit.
        method: the solver name `solve` takes.

    Returns:
        `(optimal budgets, their standard errors)`, in task order.
    """

    with jax.enable_x64(True):
        w = result.workload.astype(jnp.float64)
        fields = ("A", "b", "D", "t0", "c")
        params = jnp.stack([getattr(w, f) for f in fields], -1)  # (N, 5)

        def tokens(p):
            return solve(w.replace(**{f: p[:, i] for i, f in enumerate(fields)}), method).tokens

        l_star = tokens(params)
        jac = np.asarray(jax.jacfwd(tokens)(params))  # (N_out, N, 5)
    cov = result.covariance()
    var = np.einsum("jki,kil,jkl->j", jac, cov, jac)
    return np.asarray(l_star), np.sqrt(np.clip(var, 0, None))


def plot_fit(result: FitResult, path: str | Path | None = None, *, level: float = 0.95) -> Figure:
    """Goodness-of-fit figure (the paper's Fig. 2 layout): per task, measured accuracy with
    binomial intervals and the fitted curve with a delta-method band (top row), measured mean
    latency and the fitted line (bottom row). Saves to `path` if given; returns the figure.

    Args:
        result: the fit.
        path: where to save the figure (not saved when None).
        level: the confidence level of the intervals and bands.

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = result.measurements
    z = float(jax.scipy.special.ndtri(0.5 + level / 2))
    K = len(result.tasks)
    fig, axes = plt.subplots(2, K, figsize=(3.0 * K, 5.6), squeeze=False)
    for k, t in enumerate(result.tasks):
        rows = m.rows_of(k)
        l = m.budget[rows]
        rate = m.n_correct[rows] / m.n_total[rows]
        err = z * np.sqrt(np.clip(rate * (1 - rate), 1e-12, None) / m.n_total[rows])
        grid = np.linspace(0, max(l.max(), 1.0), 200)
        A, b, D = t.params["A"], t.params["b"], t.params["D"]
        curve = A * -np.expm1(-b * grid) + D
        grad = np.stack(
            [-np.expm1(-b * grid), A * grid * np.exp(-b * grid), np.ones_like(grid)], -1
        )
        band = z * np.sqrt(np.einsum("gi,ij,gj->g", grad, t.accuracy_cov, grad))
        ax = axes[0, k]
        ax.errorbar(l, rate, yerr=err, fmt="o", ms=3, color="k", label="measured")
        ax.plot(grid, curve, color="#2b7bba", label="fit")
        ax.fill_between(grid, curve - band, curve + band, color="#2b7bba", alpha=0.2)
        flag = "" if not t.warnings else "  (!)"
        ax.set(title=f"{t.name}{flag}", xlabel="budget (tokens)", ylim=(-0.02, 1.02))
        ax.set_xscale("symlog", linthresh=16)
        ax.set_xlim(0, grid[-1] * 1.05)  # budgets start at 0, never below
        ax.text(0.97, 0.04, f"p = {t.p_value:.2f}", transform=ax.transAxes, ha="right", fontsize=8)
        has = rows[m.latency_weight[rows] > 0]
        ax2 = axes[1, k]
        ax2.plot(m.budget[has], m.latency[has], "o", ms=3, color="k")
        ax2.plot(grid, t.params["t0"] + t.params["c"] * grid, color="#d95f02")
        ax2.set(xlabel="budget (tokens)")
        ax2.set_xscale("symlog", linthresh=16)
        ax2.set_xlim(0, grid[-1] * 1.05)
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("mean latency (s)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    return fig
