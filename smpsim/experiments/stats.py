"""Replications: a point run with several seeds, summarised as a mean and a 95% confidence interval.

- A metric: the mean over the seeds and Student's t interval, mean +- t(0.975, n-1) * s / sqrt(n) (s the
  sample standard deviation): the seeds are independent replications of the same point.
- A ratio to the baseline point: computed per seed (the point and its baseline run with the same seed, so
  the workload's randomness cancels as far as it can) and summarised on the log scale, since ratios
  multiply: the geometric mean exp(mean(log r)) with the t interval of the logs taken back, so "40x fewer"
  and "0.025x as many" are the same statement with the same interval. Where some seed's ratio is 0 (the
  point has none of it) the logs do not exist: the arithmetic mean and t interval of the ratios, its low
  end clipped at 0. docs/analysis.md says the same for users.

scipy's t quantile rather than a table: exact for any number of seeds, and one well-kept function instead of
numbers copied by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LEVEL = 0.95

Interval = tuple[float | None, float | None, float | None]  # (centre, low, high); bounds None below 2 values


def _t(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, n - 1))


def mean_ci(values: Sequence[float | None]) -> Interval:
    """Mean of the values given (None ignored) and its t interval."""
    xs = [float(x) for x in values if x is not None]
    if not xs:
        return None, None, None
    m = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return m, None, None
    if all(x == xs[0] for x in xs):  # every seed agrees: the interval is the value itself, not rounding noise
        return xs[0], xs[0], xs[0]
    s = math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    half = _t(len(xs)) * s / math.sqrt(len(xs))
    return m, m - half, m + half


def ratio_ci(ratios: Sequence[float | None]) -> Interval:
    """Per-seed ratios summarised: geometric mean and interval when all are positive, else arithmetic
    (low end clipped at 0); None ignored."""
    rs = [float(r) for r in ratios if r is not None]
    if rs and all(r > 0 for r in rs):
        c, lo, hi = mean_ci([math.log(r) for r in rs])
        return (math.exp(c) if c is not None else None, math.exp(lo) if lo is not None else None,
                math.exp(hi) if hi is not None else None)
    c, lo, hi = mean_ci(rs)
    return c, (max(lo, 0.0) if lo is not None else None), hi
