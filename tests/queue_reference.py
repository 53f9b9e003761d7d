"""An exact reference for queue-aware budgets: the M/M/1-type FIFO server with Poisson arrivals,
exponential service of mean $t_k(l) = t_{0k} + c_k l$, and a budget table by the number of
requests an arrival finds (row min(n, S)), as a continuous-time Markov chain solved exactly.

The chain's state is the number in the system n and the (task, row) of the first min(n, L)
requests in line, L = max(S, 1). That is enough: a request at position j >= L arrived
finding at least L requests, so its row is S, and its task, independent of everything so
far, is drawn when it moves up to position L - 1 (the principle of deferred decisions). A
request at position j < L has a row in min(j, S)..S. The chain is truncated at `n_max`
(arrivals there are lost); the stationary distribution is solved with scipy's sparse LU, and
the mass at `n_max` is reported so a test can require it negligible. By PASTA an arrival
sees the time average, and by Little's law E[T] = E[N] / lambda.

Independent of the package: numpy and scipy only, written from the model's definition."""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla


def table_metrics(
    A, b, D, t0, c, share, rate: float, alpha: float, table, n_max: int
) -> dict[str, float]:
    """Exact mean system time, accuracy per arrival and J = alpha * accuracy - E[T] of the
    budget `table` (shape (S + 1, N)), with the stationary mass at the truncation."""
    table = np.atleast_2d(np.asarray(table, float))
    S = table.shape[0] - 1
    L = max(S, 1)  # requests tracked at the head of the line
    N = table.shape[1]
    share = np.asarray(share, float)
    mean = np.asarray(t0, float) + np.asarray(c, float) * table  # (S + 1, N) service means
    acc = np.asarray(A) * (1 - np.exp(-np.asarray(b) * table)) + np.asarray(D)  # (S + 1, N)

    index: dict[tuple, int] = {}
    states: list[tuple[int, tuple]] = []
    for n in range(n_max + 1):
        m = min(n, L)
        slots = [[(k, r) for k in range(N) for r in range(min(j, S), S + 1)] for j in range(m)]
        for line in itertools.product(*slots):
            index[(n, line)] = len(states)
            states.append((n, line))

    rows, cols, vals = [], [], []

    def add(i, state, rate_):
        j = index[state]
        rows.append(i)
        cols.append(j)
        vals.append(rate_)

    for i, (n, line) in enumerate(states):
        if n < n_max:  # an arrival, given row min(n, S)
            r = min(n, S)
            if n < L:
                for k in range(N):
                    add(i, (n + 1, (*line, (k, r))), rate * share[k])
            else:
                add(i, (n + 1, line), rate)
        if n > 0:  # the head departs
            k0, r0 = line[0]
            mu = 1.0 / mean[r0, k0]
            rest = line[1:]
            if n - 1 >= L:  # the request at position L moves up: its task is drawn now
                for k in range(N):
                    add(i, (n - 1, (*rest, (k, S))), mu * share[k])
            else:
                add(i, (n - 1, rest), mu)
    size = len(states)
    Q = sp.csr_matrix((vals, (rows, cols)), shape=(size, size))
    Q = Q - sp.diags(np.asarray(Q.sum(axis=1)).ravel())
    # pi Q = 0 with sum(pi) = 1: the last balance equation replaced by the normalisation
    M = Q.T.tolil()
    M[size - 1, :] = np.ones(size)
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    pi = spla.spsolve(M.tocsc(), rhs)
    n_of = np.array([n for n, _ in states], float)
    mean_n = float(pi @ n_of)
    arriving = np.array([float(share @ acc[min(n, S)]) for n, _ in states])
    admitted = 1.0 - float(pi[n_of == n_max].sum())
    accuracy = float(pi[n_of < n_max] @ arriving[n_of < n_max]) / admitted
    mean_t = mean_n / (rate * admitted)
    return {
        "mean_system_time": mean_t,
        "accuracy": accuracy,
        "objective": alpha * accuracy - mean_t,
        "truncated_mass": 1.0 - admitted,
        "states": size,
    }
