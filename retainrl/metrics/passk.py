"""Unbiased pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1).

For one problem with n sampled completions of which c pass, the probability that at least one
of k completions drawn without replacement from those n passes is

    pass@k = 1 - C(n - c, k) / C(n, k)

computed, as in the paper's reference code, as the product
    1 - prod_{i = n - c + 1}^{n} (1 - k / i)
which never forms a binomial coefficient, so it neither overflows nor loses precision for large n.
When n - c < k every draw of k contains a passing sample and pass@k is exactly 1.

The functions are vectorised over problems: `n` and `c` are arrays of shape (N,) (or scalars,
broadcast against each other) and the result has shape (N,). pass@1 equals c / n exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

_CHUNK = 4096  # problems per block when building the (problems, max_n) product table


def _as_counts(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be integer counts, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise ValueError(f"{name} must be integer counts, got {arr.tolist()}")
    return arr.astype(np.int64)


def pass_at_k(n, c, k: int) -> np.ndarray:
    """Unbiased pass@k per problem.

    n: samples drawn per problem, int or array (N,).
    c: passing samples per problem, int or array (N,), 0 <= c <= n.
    k: the k of pass@k, 1 <= k <= n for every problem (ValueError otherwise: the estimator
       is undefined when fewer than k samples were drawn).
    Returns float64 array (N,) (shape of the broadcast of n and c; 0-d for two scalars).
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an int, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_arr, c_arr = np.broadcast_arrays(_as_counts(n, "n"), _as_counts(c, "c"))
    if np.any(c_arr < 0) or np.any(c_arr > n_arr):
        raise ValueError(f"need 0 <= c <= n for every problem, got n={n_arr.tolist()}, c={c_arr.tolist()}")
    if np.any(n_arr < k):
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem, got n={n_arr.min()}")
    shape = n_arr.shape
    n_flat, c_flat = n_arr.ravel(), c_arr.ravel()
    out = np.ones(n_flat.shape, dtype=np.float64)  # n - c < k: certain pass
    todo = np.flatnonzero(n_flat - c_flat >= k)
    for start in range(0, todo.size, _CHUNK):
        rows = todo[start:start + _CHUNK]
        nn, cc = n_flat[rows, None], c_flat[rows, None]
        i = np.arange(1, int(nn.max()) + 1)[None, :]  # (1, max_n)
        terms = np.where((i > nn - cc) & (i <= nn), 1.0 - k / i, 1.0)  # (rows, max_n)
        out[rows] = 1.0 - np.prod(terms, axis=1)
    return out.reshape(shape)


def mean_pass_at_k(n, c, k: int) -> float:
    """Mean of `pass_at_k` over problems (the benchmark-level pass@k)."""
    values = pass_at_k(n, c, k)
    if values.size == 0:
        raise ValueError("mean pass@k of zero problems is undefined")
    return float(np.mean(values))


def pass_at_k_from_results(results: Sequence[Iterable[bool]], ks: Iterable[int] = (1,)) -> dict[str, float]:
    """Benchmark pass@k for several k from per-problem pass/fail lists.

    results: one list of booleans per problem (one entry per sampled completion).
    Returns {"pass@1": ..., "pass@10": ...}. Raises ValueError if a problem has fewer than k samples.
    """
    lists = [[bool(x) for x in r] for r in results]
    n = [len(r) for r in lists]
    c = [sum(r) for r in lists]
    return {f"pass@{k}": mean_pass_at_k(n, c, k) for k in ks}
