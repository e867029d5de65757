"""The project's one percentile, so "p95" is the same number on the dashboard, in /metrics, in a
load-test report and in a benchmark's results.

Definition: linear interpolation between the closest ranks (numpy's default ``linear`` method,
Hyndman & Fan type 7): for sorted values x[0..n-1] the q-quantile is x[k] + (x[k+1] - x[k]) * f,
with k + f = (n - 1) * q. It is defined for any n (with one value every percentile is that value),
p50 is the median, and it moves smoothly as samples arrive instead of jumping from sample to
sample as nearest-rank does. The load test's stored reports were always computed this way.
"""
from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float | None], q: float) -> float | None:
    """The ``q``-quantile (0 <= q <= 1) of ``values``, ignoring None; None when there is none."""
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile is between 0 and 1, not {q}")
    k = (len(ordered) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def percentiles(values: Iterable[float | None], qs=(0.5, 0.95, 0.99)) -> dict[str, float | None]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` for ``qs``."""
    values = list(values)
    return {f"p{round(q * 100)}": percentile(values, q) for q in qs}
