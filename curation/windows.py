"""The arithmetic of curation: best windows and return cutoffs, vectorized over many groups.

    >>> import numpy as np
    >>> from curation.windows import best_windows, window_sizes
    >>> returns = np.array([1., 5., 5., 2., 9., 1.])          # two groups: 3 + 3 episodes
    >>> w = best_windows(returns, counts=np.array([3, 3]), widths=np.array([2, 1]))
    >>> w.start.tolist(), w.mean.tolist()                     # offsets inside each group
    ([1, 1], [5.0, 9.0])

Episodes arrive sorted by group, then in collection order, one flat array for all groups.
Everything is O(N) numpy: one cumulative sum for every window of every group, and
``ufunc.reduceat`` for per-group maxima. The cumulative sum runs over returns centred on
their group mean so its rounding error does not grow with the dataset; window sums that
agree to within ``TIE_RTOL`` (relative to the group's largest |return|) are ties, and a tie
goes to the latest window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIE_RTOL = 1e-9
"""Windows whose mean differs from the best by at most this times max|R| of the group tie."""

FLOOR_SLACK = 1e-9
"""floor(frac * N) is computed as floor(frac * N + slack) so 0.1 * 30 is 3, not 2.999..."""


@dataclass(frozen=True)
class Windows:
    """The best window of every group: ``start`` is the offset inside the group, ``mean`` the
    mean return of that window (the group's expert return), ``width`` its size W."""

    start: np.ndarray  # (G,) int64
    mean: np.ndarray  # (G,) float64
    width: np.ndarray  # (G,) int64


def window_sizes(counts: np.ndarray, window: int | None = None, frac: float = 0.1,
                 max_window: int = 1000) -> np.ndarray:
    """W per group: ``window`` if given, else min(max_window, floor(frac * N)), at least 1.

    Gato's formula is W = min(1000, 0.1 N); the caller checks W <= N (a fixed ``window`` can
    exceed a small group) so it can name the group in its error.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if window is not None:
        return np.full(counts.shape, int(window), dtype=np.int64)
    sizes = np.floor(counts * float(frac) + FLOOR_SLACK).astype(np.int64)
    return np.clip(sizes, 1, max(1, int(max_window)))


def best_windows(returns: np.ndarray, counts: np.ndarray, widths: np.ndarray) -> Windows:
    """The latest window of maximal mean return in every group.

    ``returns`` holds the groups back to back (``counts`` episodes each, every count >= 1
    and >= its width). The reported mean is summed directly over the chosen window, so a
    window of integers gives an exact mean.
    """
    r = np.asarray(returns, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    assert counts.sum() == r.size and (counts >= widths).all() and (widths >= 1).all()
    starts = group_starts(counts)
    group = np.repeat(np.arange(counts.size), counts)  # (N,) group of each episode
    centre = np.add.reduceat(r, starts) / counts
    cumulative = np.concatenate(([0.0], np.cumsum(r - centre[group])))  # (N + 1,)

    n_windows = counts - widths + 1  # valid window starts per group, contiguous from its start
    first = group_starts(n_windows)
    window_group = np.repeat(np.arange(counts.size), n_windows)
    begin = np.arange(n_windows.sum()) - first[window_group] + starts[window_group]  # global index
    sums = cumulative[begin + widths[window_group]] - cumulative[begin]  # centred window sums

    best = np.maximum.reduceat(sums, first)
    scale = np.maximum.reduceat(np.abs(r), starts)
    tied = sums >= (best - TIE_RTOL * scale * widths)[window_group]
    latest = np.maximum.reduceat(np.where(tied, np.arange(sums.size), -1), first)
    start = latest - first
    inside = window_mask(counts, start, widths)
    mean = np.add.reduceat(np.where(inside, r, 0.0), starts) / widths
    return Windows(start=start.astype(np.int64), mean=mean, width=widths)


def window_mask(counts: np.ndarray, start: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """(N,) bool: True for the episodes inside each group's window [start, start + W)."""
    counts = np.asarray(counts, dtype=np.int64)
    begin = group_starts(counts) + np.asarray(start, dtype=np.int64)
    edges = np.zeros(int(counts.sum()) + 1, dtype=np.int64)
    np.add.at(edges, begin, 1)
    np.add.at(edges, begin + np.asarray(widths, dtype=np.int64), -1)
    return np.cumsum(edges[:-1]) > 0


def cutoffs(expert: np.ndarray, baseline: np.ndarray, threshold: float) -> np.ndarray:
    """Return cutoff per group: B + t * (R_expert - B) for baseline B.

    B = 0 is Gato's "t x expert return"; B = the random-policy return makes the cutoff "a
    normalized score of 100 t %", which stays meaningful when returns are negative.
    """
    expert = np.asarray(expert, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    return baseline + float(threshold) * (expert - baseline)


def group_starts(counts: np.ndarray) -> np.ndarray:
    """Offsets where each of the back-to-back groups begins."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
