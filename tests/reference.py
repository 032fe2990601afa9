"""Slow, plainly written reference implementations: the test oracle.

Written with Python loops over numpy float64 arrays, straight from the formulas, so that they share
no code (and no clever trick) with the library.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def neural_sort_ref(s: np.ndarray, tau: float, descending: bool = True) -> np.ndarray:
    """P_hat[i, :] = softmax(((n + 1 - 2i) s - A_s 1) / tau) for a single score vector."""
    s = np.asarray(s, dtype=np.float64)
    n = len(s)
    rowsum = np.zeros(n)
    for j in range(n):
        for k in range(n):
            rowsum[j] += abs(s[j] - s[k])
    p = np.zeros((n, n))
    for i in range(1, n + 1):
        logits = [((n + 1 - 2 * i) * s[j] - rowsum[j]) / tau for j in range(n)]
        m = max(logits)
        e = [math.exp(v - m) for v in logits]
        z = sum(e)
        for j in range(n):
            p[i - 1, j] = e[j] / z
    if not descending:
        p = p[::-1].copy()
    return p


def softsort_ref(s: np.ndarray, tau: float, descending: bool = False) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    order = sorted(range(len(s)), key=lambda j: -s[j] if descending else s[j])
    p = np.zeros((len(s), len(s)))
    for i, oi in enumerate(order):
        logits = [-abs(s[oi] - s[j]) / tau for j in range(len(s))]
        m = max(logits)
        e = [math.exp(v - m) for v in logits]
        for j in range(len(s)):
            p[i, j] = e[j] / sum(e)
    return p


def sinkhorn_ref(log_alpha: np.ndarray, n_iters: int, tau: float) -> np.ndarray:
    x = np.exp(np.asarray(log_alpha, dtype=np.float64) / tau)
    for _ in range(n_iters):
        x = x / x.sum(axis=1, keepdims=True)
        x = x / x.sum(axis=0, keepdims=True)
    return x


def plackett_luce_log_prob_ref(logits: np.ndarray, perm: tuple[int, ...]) -> float:
    s = np.exp(np.asarray(logits, dtype=np.float64))
    prob = 1.0
    remaining = list(perm)
    for z in perm:
        prob *= s[z] / sum(s[r] for r in remaining)
        remaining.remove(z)
    return math.log(prob)


def all_permutations(n: int) -> list[tuple[int, ...]]:
    return list(itertools.permutations(range(n)))


def neural_sort_published_ref(s: np.ndarray, tau: float) -> np.ndarray:
    """The paper's matrix form, descending: ``softmax(((n+1-2i) s^T - A_s 1 1^T) / tau)``.

    Built exactly as published (the row sums by a product with a matrix of ones), to pin the
    library to the formula in the paper, not just to our reading of it.
    """
    s = np.asarray(s, dtype=np.float64).reshape(-1, 1)
    n = s.shape[0]
    a = np.abs(s - s.T)
    b = a @ np.ones((n, n))  # every column holds the row sums
    scaling = (n + 1 - 2 * (np.arange(n) + 1)).astype(np.float64)
    c = s @ scaling[None, :]  # c[j, i] = (n + 1 - 2i) s_j
    logits = ((c - b).T) / tau
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)
