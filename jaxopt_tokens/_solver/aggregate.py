r"""The default solver: a damped Newton method on the two aggregate prices.

The KKT conditions (17) couple the tasks only through $(E[S], E[S^2])$. Write
$d = 1 - \lambda E[S]$ and $y = \lambda E[S^2] / (2 d^2)$; the marginal latency cost of
task k is then $c_k (v + u t_k)$ with $u = \lambda/d$ and $v = 1 + \lambda y$ (eq. (10)).
Given $(d, y)$ every budget is closed-form, eqs. (19)-(23):

$$l_k(d, y) = \mathrm{clip}\big(\log(q_k/\omega(x_k)) / b_k,\ 0,\ l_{\max}\big),\quad
q_k = \frac{\alpha A_k b_k^2}{u c_k^2},\quad x_k = \log q_k + \frac{b_k (v + u t_{0k})}{u
c_k},$$

with $\omega$ the Wright omega function. This is eq. (22) rewritten with
$W(e^x) = \omega(x)$ and the identity $\omega + \log\omega = x$, which removes the
cancellation between $W/b_k$ and $K_k$ (docs: *Solvers*) and the overflow of $e^{-b_k K_k}$.
The same identity gives $l_k = (\omega(x_k) - \beta_k)/b_k$ with $x_k = \log q_k + \beta_k$;
each budget is taken from whichever form has the smaller operands.

What is left is a system of two equations in $(d, y)$,
$e_1 = 1 - \lambda E[S](l) - d = 0$ and $e_2 = \lambda E[S^2](l)/(2d^2) - y = 0$.
It is the gradient of the Lagrangian dual of (9) after introducing $d$ as a variable: convex
in $y$, concave in $d$, so its Jacobian is never singular. Newton's method on it, each price
kept inside a bracket that only shrinks (`AggregateNewton`), converges from a start derived
from the zero-token prices in a handful of iterations whatever N is. Each iteration costs N
evaluations of $\omega$ and O(N) arithmetic in two passes over the tasks; the stopping test
is the projected KKT residual of the budgets themselves (`kkt_residual`), computed without an
exponential.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._errors import InputError
from .._implicit import newton_polish
from .._kkt import kkt_residual
from .._lambertw import wright_omega
from .._objective import objective, service_moments
from .._reduce import task_reduce
from .._status import Status
from .._validate import default_rtol
from .._workload import Workload
from .base import AbstractSolver, Iterate, Problem, certified, usable_start

__all__ = [
    "AggregateNewton",
    "TaskConstants",
    "check_mg1",
    "budgets_at_prices",
    "task_constants",
    "unclipped_budgets",
]

POLISH_STEPS = 8  # final Newton steps on the budgets (quadratic near l*; O(N) each)


class TaskConstants(eqx.Module):
    """The parts of eqs. (19)-(23) that depend on the workload alone, computed once per solve
    (a step then takes one logarithm and one omega per task)."""

    has_gain: Bool[Array, "*b n"]  # A_k > 0
    log_q0: Float[Array, "*b n"]  # log(alpha A b^2 / c^2), in pieces ((b/c)^2 overflows)
    log_b_over_c: Float[Array, "*b n"]
    b_over_c: Float[Array, "*b n"]
    gain: Float[Array, "*b n"]  # alpha A b: the marginal accuracy value at zero tokens
    gain_at_cap: Float[Array, "*b n"]  # ... and at max_tokens


def task_constants(w: Workload) -> TaskConstants:
    """The `TaskConstants` of `w`."""
    has_gain = w.A > 0
    log_b_over_c = jnp.log(w.b) - jnp.log(w.c)
    gain = w.alpha[..., None] * w.A * w.b
    return TaskConstants(
        has_gain=has_gain,
        log_q0=jnp.log(jnp.where(has_gain, w.alpha[..., None] * w.A, 1)) + 2 * log_b_over_c,
        log_b_over_c=log_b_over_c,
        b_over_c=w.b / w.c,
        gain=gain,
        gain_at_cap=gain * jnp.exp(-w.b * w.max_tokens[..., None]),
    )


def unclipped_budgets(d, y, w: Workload, constants: TaskConstants | None = None):
    """The budgets of eq. (22) at prices $(d, y)$ before the box projection (23).

    `-inf` for a task with $A_k = 0$ (no accuracy to gain). `constants`: `task_constants(w)`,
    when the caller has it.
    """
    tc = task_constants(w) if constants is None else constants
    lam = w.arrival_rate
    u = lam / d
    v = 1 + lam * y
    log_u = jnp.log(u)[..., None]
    log_q = tc.log_q0 - log_u
    u, v = u[..., None], v[..., None]
    z = v + u * w.t0
    # beta = (b/c)(v/u + t0) overflows when u is tiny (an arrival rate near the smallest normal
    # number) or b/c is huge; there omega(log q + beta) = beta to rounding, and the budget is
    # (log q - log beta)/b with log beta = log(b/c) + log z - log u
    beta = tc.b_over_c * (z / u)
    huge = ~(beta <= jnp.finfo(log_q.dtype).max * math.exp(-20))  # NaN (inf * 0) counts too
    beta = jnp.where(huge, 1.0, beta)
    omega = wright_omega(jnp.where(huge, 1.0, log_q + beta))
    # one logarithm per task serves both branches: of omega, or of z where beta is huge
    log_arg = jnp.log(jnp.where(huge, z, omega))
    log_omega = log_arg  # where beta is not huge
    # Two exact forms of the same budget (omega + log omega = x): (log q - log omega)/b and
    # (omega - beta)/b. Each cancels differently; take the one with the smaller operands, so
    # that budgets with a tiny b_k l_k keep full relative accuracy in float32.
    use_linear = jnp.maximum(omega, beta) < jnp.maximum(jnp.abs(log_q), jnp.abs(log_omega))
    raw = jnp.where(use_linear, omega - beta, log_q - log_omega)
    raw = jnp.where(huge, log_q - (tc.log_b_over_c + log_arg - log_u), raw) / w.b
    return jnp.where(tc.has_gain, raw, -jnp.inf)


def budgets_at_prices(d, y, w: Workload, constants: TaskConstants | None = None):
    r"""Budgets $l_k(d, y)$ and their sensitivities `g_k` (zero where a bound is active).

    `g_k = 1 / (b_k (v + u t_k) + u c_k)`: $\partial l_k/\partial v = -g_k$,
    $\partial l_k/\partial u = -t_k g_k$ for a free budget.
    """
    tc = task_constants(w) if constants is None else constants
    raw = unclipped_budgets(d, y, w, tc)
    u = w.arrival_rate / d
    v = 1 + w.arrival_rate * y
    lmax = w.max_tokens[..., None]
    tokens = jnp.where(tc.has_gain, jnp.clip(raw, 0, lmax), 0)
    free = tc.has_gain & (raw > 0) & (raw < lmax)
    t = w.t0 + w.c * tokens
    u, v = u[..., None], v[..., None]
    g = jnp.where(free, 1 / (w.b * (v + u * t) + u * w.c), 0)
    return tokens, t, g


def _equations(d, y, w, tc: TaskConstants):
    """The budgets at $(d, y)$, the two price equations and the Jacobian's sums over tasks,
    all in one pass over the tasks (`task_reduce`)."""
    lam = w.arrival_rate
    tokens, t, g = budgets_at_prices(d, y, w, tc)
    pt = w.share * t
    pcg = w.share * w.c * g
    (m1, m2, s_c, s_ct, s_ctt), _ = task_reduce((pt, pt * t, pcg, pcg * t, pcg * t * t))
    e1 = 1 - lam * m1 - d
    e2 = lam * m2 / (2 * d * d) - y
    return tokens, t, e1, e2, (m2, s_c, s_ct, s_ctt)


def _jacobian(d, w, sums):
    """The Jacobian of $(e_1, e_2)$ in $(d, y)$ from the sums `_equations` returns."""
    lam = w.arrival_rate
    u = lam / d
    m2, s_c, s_ct, s_ctt = sums
    # dl/dd = u t g / d,  dl/dy = -lam g
    j11 = -lam * u / d * s_ct - 1
    j12 = lam * lam * s_c
    j21 = lam * u / d**3 * s_ctt - lam * m2 / d**3
    j22 = -(lam * lam / (d * d)) * s_ct - 1
    return j11, j12, j21, j22


def _safeguarded(x, x_new, lo, hi, last_step, falsi=None):
    """Newton proposal `x_new` from `x`, or a point inside the bracket `[lo, hi]`.

    The proposal is taken only inside the open bracket and when its step (in log units) is at
    most half the previous one, the rule that keeps safeguarded Newton from cycling at kinks
    (budgets meeting a bound make the equations piecewise smooth). Otherwise the point is
    `falsi` where given and strictly inside the bracket (a regula falsi point), else the
    bisection of the bracket in logs. A bracket still open above grows by 4x. Returns the new
    point and its step length.
    """
    step = jnp.abs(jnp.log(x_new) - jnp.log(x))
    ok = (x_new > lo) & (x_new < hi) & jnp.isfinite(x_new) & (step <= 0.5 * last_step)
    finite_hi = jnp.isfinite(hi)
    mid = jnp.where(lo > 0, jnp.sqrt(lo * jnp.where(finite_hi, hi, lo)), 0.5 * (lo + hi))
    if falsi is not None:
        mid = jnp.where((falsi > lo) & (falsi < hi), falsi, mid)  # False for NaN
    fallback = jnp.where(
        finite_hi, mid, 4 * jnp.maximum(jnp.maximum(lo, x), jnp.finfo(x.dtype).tiny)
    )
    out = jnp.where(ok, x_new, fallback)
    return out, jnp.abs(jnp.log(out) - jnp.log(x))


def _polish(p: Problem, tokens, residual, rtol):
    """Damped Newton steps on the budgets themselves while the certificate is not met and each
    step lowers the residual (none at all for a batch the price iteration has solved)."""
    w = p.workload

    def cond(c):
        tokens, residual, k = c
        value = objective(tokens, w)
        return ~certified(p, tokens, residual, value, rtol) & (k < POLISH_STEPS)

    def body(c):
        tokens, residual, k = c
        new = newton_polish(tokens, w)
        res_new = kkt_residual(new, w)
        better = res_new < residual
        return (
            jnp.where(better, new, tokens),
            jnp.where(better, res_new, residual),
            jnp.where(better, k + 1, POLISH_STEPS),
        )

    tokens, residual, _ = jax.lax.while_loop(
        cond, body, (tokens, residual, jnp.zeros((), jnp.int32))
    )
    return tokens, residual


def _certify(p: Problem, tokens, residual, rtol, stats) -> Iterate:
    value = objective(tokens, p.workload)
    status = jnp.where(
        certified(p, tokens, residual, value, rtol), Status.CONVERGED, Status.MAX_ITERATIONS
    ).astype(jnp.int32)
    return Iterate(tokens, value, status, residual, stats)


def check_mg1(solver, model) -> None:
    """`InputError` unless `model` has the paper's two-price structure (`FIFO()`)."""
    if model.structure != "mg1":
        raise InputError(
            f"solver: {type(solver).__name__} solves the paper's model (FIFO with deterministic "
            f"service) only, not {type(model).__name__}; use solver='default'"
        )


class _State(eqx.Module):
    y: Array
    y_lo: Array
    y_hi: Array
    d: Array
    d_lo: Array
    d_hi: Array
    f_lo: Array  # the reduced chi at d_lo (> 0) and d_hi (< 0), NaN where not known
    f_hi: Array
    side: Array  # which end the last outer step replaced: 1 d_lo, -1 d_hi, 0 neither yet
    y_step: Array
    d_step: Array
    residual: Array
    best: Array
    best_d: Array
    best_y: Array
    stall: Array
    iterations: Array
    outer: Array


class AggregateNewton(AbstractSolver):
    r"""Bracketed Newton on the aggregate prices $(d, y)$ (the default solver).

    For fixed $y$, $e_1(d)$ is strictly decreasing on $(0, 1-\rho_0]$ with $e_1(0^+) > 0 \ge
    e_1(1-\rho_0)$, so its root $d(y)$ is bracketed and every iterate is a *stable* allocation.
    The reduced equation $\phi(y) = e_2(d(y), y) = 0$ is strictly decreasing in $y$ (its
    derivative is the Schur complement $j_{22} - j_{21}j_{12}/j_{11} < 0$ of the 2x2 Jacobian),
    with $\phi(0) \ge 0$. Both 1-D equations are solved by Newton's method safeguarded by
    a bracket that only shrinks, so the method converges on every instance that is stable at
    zero tokens, and quadratically near the solution. Where Newton's proposal is refused, the
    outer price falls back to regula falsi (the Illinois variant) on its bracket once both
    ends carry a value, else to bisection in logs; the inner price to bisection. At prices
    whose budgets overload the server ($1 - \lambda E[S] \le 0$, where the log form is
    undefined) the outer proposal is a Newton step on $e_1$ itself.

    The two levels share one loop (one Newton step on $d$ per iteration, or, once $e_1$ is
    solved, one step on $y$ together with the first-order prediction of $d(y)$), so under
    `vmap` the batch runs for the largest *total* number of steps rather than the product of
    the two loops' worst cases.

    Attributes:
        rtol: target projected KKT residual (default 1e-9 in float64, 1e-4 in float32).
        max_steps: the step limit (default 200).
        joint_threshold: how well the inner equation must be solved before the outer price
            moves, as a bound on `|log F - log y|`. Smaller values solve the inner equation
            more tightly at each outer step; too large a value (0.1) lets the outer bracket
            close on a wrong sign for heavily loaded members (the choice of the default is
            measured in `benchmarks/README.md`).
        stall_steps: in the endgame, stop after this many steps that fail to halve the best
            residual (the rounding floor of the dtype has been reached).
    """

    rtol: float | None = None
    max_steps: int = 200
    joint_threshold: float = 0.03
    stall_steps: int = 12

    def check(self, model) -> None:
        check_mg1(self, model)

    def prepare(self, problem: Problem) -> TaskConstants:
        return task_constants(problem.workload)

    def _cheap_residual(self, p: Problem, d, y, tokens, t, e1, e2):
        """`kkt_residual` without an exponential: a free budget's marginal accuracy value
        equals the iteration's price c(v_it + u_it t) by construction; at a bound it is a
        constant. Only the true prices, from the moments, are new."""
        w = p.workload
        lam, gain, gain_at_cap = w.arrival_rate, p.constants.gain, p.constants.gain_at_cap
        lmax = w.max_tokens[..., None]
        d_true = e1 + d  # 1 - lam E[S]
        stable = d_true > 0
        u_it, v_it = (lam / d)[..., None], (1 + lam * y)[..., None]
        dt = jnp.where(stable, d_true, 1)
        u = (lam / dt)[..., None]
        v = (1 + lam * (e2 + y) * (d / dt) ** 2)[..., None]
        value = jnp.where(
            tokens <= 0, gain, jnp.where(tokens >= lmax, gain_at_cap, w.c * (v_it + u_it * t))
        )
        r = value / (w.c * (v + u * t)) - 1
        # b |l - clip(l + r/b, 0, l_max)| for l in the box, split by the direction of the move
        # (one division a task, and a variadic reduce: `task_reduce`)
        up = jnp.where(r > 0, jnp.minimum(r, w.b * (lmax - tokens)), 0)
        down = jnp.where(r < 0, jnp.minimum(-r, w.b * tokens), 0)
        _, (res_up, res_down) = task_reduce((), (up, down))
        return jnp.where(stable, jnp.maximum(res_up, res_down), jnp.inf)

    def init(self, p: Problem, start=None) -> _State:
        w = p.workload
        lam = w.arrival_rate
        m1_0, m2_0 = service_moments(jnp.zeros_like(w.A), w)
        d_top = 1 - lam * m1_0
        # A lower bound on the optimal d from J(l*) >= J(0): with Gamma = alpha sum pi A + E[T](0),
        # lam E[S]^2 / (2d) <= E[W] <= Gamma and E[S] = (1 - d)/lam give (1-d)^2 <= 2 lam Gamma d.
        gamma = w.alpha * jnp.sum(w.share * w.A, -1) + lam * m2_0 / (2 * d_top) + m1_0
        lg = lam * gamma
        d_floor = 1 / ((1 + lg) + jnp.sqrt((1 + lg) ** 2 - 1))  # the smaller root, stably
        # start three quarters of the way up the bracket in log d: the floor is loose and the
        # optimum sits in the upper part of [log d_floor, log d_top], so from there the first
        # step overshoots less (the steps saved are in benchmarks/README.md)
        d0 = d_floor**0.25 * d_top**0.75
        y0 = lam * m2_0 / (2 * d0 * d0)
        # with no service time at zero tokens (every t0 = 0) that price is 0, a poor start for
        # Newton in log y: such a member starts instead from F(0) = lam E[S^2](l(d0, 0)) /
        # (2 d0^2) >= y(d0), which its first call of `step` computes (uncounted) and nothing
        # else (a budget evaluation here would cost every member of a batch one)
        y0 = jnp.where(y0 > jnp.finfo(w.dtype).tiny, y0, 0)
        d_lo = 0.5 * d_floor
        if start is not None:  # a warm start: the prices its budgets imply, inside the bracket
            tokens, finite = usable_start(start, w)
            m1_s, m2_s = service_moments(tokens, w)
            d_s = 1 - lam * m1_s
            ok = finite & (d_s > d_lo) & (d_s <= d_top)
            d_s = jnp.where(ok, d_s, d0)
            y_s = lam * m2_s / (2 * d_s * d_s)
            ok = ok & jnp.isfinite(y_s) & (y_s > jnp.finfo(w.dtype).tiny)
            d0, y0 = jnp.where(ok, d_s, d0), jnp.where(ok, y_s, y0)
        zero = jnp.zeros_like(y0)
        inf = jnp.full_like(y0, jnp.inf)
        return _State(
            y=y0,
            y_lo=zero,
            y_hi=inf,
            d=d0,
            d_lo=d_lo,
            d_hi=d_top,
            f_lo=jnp.full_like(y0, jnp.nan),
            f_hi=jnp.full_like(y0, jnp.nan),
            side=jnp.zeros((), jnp.int32),
            y_step=inf,
            d_step=inf,
            residual=inf,
            best=inf,
            best_d=d0,
            best_y=y0,
            stall=jnp.zeros((), jnp.int32),
            iterations=jnp.zeros((), jnp.int32),
            outer=jnp.zeros((), jnp.int32),
        )

    def terminate(self, p: Problem, s: _State):
        w = p.workload
        eps = jnp.finfo(w.dtype).eps
        rtol = default_rtol(w.dtype, self.rtol)

        def collapsed(lo, hi):
            return jnp.isfinite(hi) & (hi - lo <= 4 * eps * hi)

        done = (s.residual <= 0.5 * rtol) | (collapsed(s.d_lo, s.d_hi) & collapsed(s.y_lo, s.y_hi))
        return done | (s.stall >= self.stall_steps)  # no progress: rounding is all that is left

    def step(self, p: Problem, s: _State) -> _State:
        w = p.workload
        eps = jnp.finfo(w.dtype).eps
        tiny = jnp.finfo(w.dtype).tiny
        rtol = default_rtol(w.dtype, self.rtol)
        tokens, t, e1, e2, sums = _equations(s.d, s.y, w, p.constants)
        j11, j12, j21, j22 = _jacobian(s.d, w, sums)
        residual = self._cheap_residual(p, s.d, s.y, tokens, t, e1, e2)
        # Log forms: chi = log G - log d, psi = log F - log y with G = 1 - lam E[S] and
        # F = lam E[S^2] / (2 d^2): same roots and monotonicity, nearly linear in logs.
        G = e1 + s.d
        F = jnp.maximum(e2 + s.y, tiny)
        ys = jnp.maximum(s.y, tiny)
        stable = G > 0
        chi = jnp.log(jnp.where(stable, G, 1)) - jnp.log(s.d)
        psi = jnp.log(F) - jnp.log(ys)
        a11 = s.d * (j11 + 1) / jnp.where(stable, G, 1) - 1
        a12 = ys * j12 / jnp.where(stable, G, 1)
        a21 = s.d * j21 / F
        a22 = ys * (j22 + 1) / F - 1  # <= -1
        # inner step: y(d) for the current d (Newton on psi in log y), bracketed by sign(e2).
        # F(y) = e2 + y is decreasing in y with fixed point y(d), so below the root F(y) bounds
        # it from above and above the root from below: the bracket is never open-ended (with
        # zero-token prices y = 0, e.g. every t0 = 0, it would otherwise grow 4x per step).
        F_raw = e2 + s.y
        slack = 4 * eps
        y_lo = jnp.where(e2 > 0, s.y, jnp.maximum(s.y_lo, F_raw * (1 - slack)))
        y_hi = jnp.where(e2 > 0, jnp.minimum(s.y_hi, F_raw * (1 + slack)), s.y)
        y_in, y_step = _safeguarded(
            ys, ys * jnp.exp(jnp.clip(-psi / a22, -30, 30)), y_lo, y_hi, s.y_step
        )
        # outer step, once y ~ y(d): Newton on the reduced chi in log d (Schur slope), d
        # bracketed by the sign of the reduced e1; then the matching correction of log y
        joint = jnp.abs(psi) <= self.joint_threshold
        correction = j12 * e2 / j22
        e1_r = e1 - correction
        # the reduced sign is trusted for the bracket only where second-order terms cannot
        # flip it: the inner equation solved tightly, or the correction small next to e1
        trusted = (jnp.abs(psi) <= 1e3 * eps) | (jnp.abs(correction) <= 0.25 * jnp.abs(e1))
        up, down = trusted & (e1_r > 0), trusted & (e1_r <= 0)
        chi_r = chi - a12 * psi / a22
        d_lo = jnp.where(up, s.d, s.d_lo)
        d_hi = jnp.where(down, s.d, s.d_hi)
        # Illinois: the end kept a second time running has its value halved
        # (values whose sign disagrees with the bracket's, or with no log form, are not kept)
        f_lo = jnp.where(up, jnp.where(stable & (chi_r > 0), chi_r, jnp.nan), s.f_lo)
        f_lo = jnp.where(down & (s.side == -1), 0.5 * f_lo, f_lo)
        f_hi = jnp.where(down, jnp.where(stable & (chi_r < 0), chi_r, jnp.nan), s.f_hi)
        f_hi = jnp.where(up & (s.side == 1), 0.5 * f_hi, f_hi)
        side = jnp.where(up, 1, jnp.where(down, -1, s.side))
        log_lo, log_hi = jnp.log(d_lo), jnp.log(d_hi)
        falsi = jnp.exp((log_lo * f_hi - log_hi * f_lo) / (f_hi - f_lo))
        ds = -chi_r / (a11 - a12 * a21 / a22)
        # budgets that overload the server (G <= 0) have no log form: a Newton step on the
        # reduced e1 itself, in d
        d_linear = s.d - e1_r / (j11 - j12 * j21 / j22)
        d_newton = jnp.where(
            stable,
            s.d * jnp.exp(jnp.clip(ds, -30, 30)),
            jnp.where(d_linear > 0, d_linear, jnp.nan),
        )
        d_out, d_step = _safeguarded(s.d, d_newton, d_lo, d_hi, s.d_step, falsi)
        dz = -(psi + a21 * (jnp.log(d_out) - jnp.log(s.d))) / a22
        y_out = ys * jnp.exp(jnp.clip(dz, -30, 30))
        stop = residual <= 0.5 * rtol  # margin for rounding; the certificate is recomputed
        # the start y = 0 (`init`) becomes F(0) before the first counted step
        starting = (s.iterations == 0) & ~(s.y > 0) & (F_raw > tiny)
        # once d's bracket has collapsed to rounding, d cannot move: keep solving for y(d)
        # inside its own bracket (resetting it would cycle) until that collapses too
        d_done = jnp.isfinite(s.d_hi) & (s.d_hi - s.d_lo <= 4 * eps * s.d_hi)
        move_d = joint & ~stop & ~d_done
        improved = residual < 0.5 * s.best
        new = _State(
            y=jnp.where(stop, s.y, jnp.where(move_d, y_out, y_in)),
            y_lo=jnp.where(move_d, jnp.zeros_like(s.y), jnp.where(stop, s.y_lo, y_lo)),
            y_hi=jnp.where(move_d, jnp.inf, jnp.where(stop, s.y_hi, y_hi)),
            d=jnp.where(move_d, d_out, s.d),
            d_lo=jnp.where(move_d, d_lo, s.d_lo),
            d_hi=jnp.where(move_d, d_hi, s.d_hi),
            f_lo=jnp.where(move_d, f_lo, s.f_lo),
            f_hi=jnp.where(move_d, f_hi, s.f_hi),
            side=jnp.where(move_d, side, s.side),
            y_step=jnp.where(move_d, jnp.inf, jnp.where(stop, s.y_step, y_step)),
            d_step=jnp.where(move_d, d_step, s.d_step),
            residual=residual,
            best=jnp.minimum(residual, s.best),
            best_d=jnp.where(residual < s.best, s.d, s.best_d),
            best_y=jnp.where(residual < s.best, s.y, s.best_y),
            stall=jnp.where(improved | (s.best > 1e3 * rtol), 0, s.stall + 1),
            iterations=s.iterations + (~stop).astype(jnp.int32),
            outer=s.outer + move_d.astype(jnp.int32),
        )
        return jax.tree_util.tree_map(
            lambda first, after: jnp.where(starting, first, after),
            eqx.tree_at(lambda t: t.y, s, F_raw),
            new,
        )

    def postprocess(self, p: Problem, s: _State) -> Iterate:
        w = p.workload
        rtol = default_rtol(w.dtype, self.rtol)
        tokens, _, _ = budgets_at_prices(s.best_d, s.best_y, w, p.constants)
        residual = kkt_residual(tokens, w)
        return _certify(p, tokens, residual, rtol, {"outer_iterations": s.outer})

    def refine(self, p: Problem, it: Iterate) -> Iterate:
        """Newton steps on the budgets themselves for a member the price iteration left
        uncertified (`_polish`), then its certificate anew."""
        rtol = default_rtol(p.workload.dtype, self.rtol)
        tokens, residual = _polish(p, it.tokens, it.residual, rtol)
        return _certify(p, tokens, residual, rtol, it.stats)
