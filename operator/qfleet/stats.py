"""How sure a gate can be: confidence bounds for the canary's measurements, from the counts Prometheus keeps.

Pure and deterministic (no random numbers), so a restarted operator computes the same bounds from the same counts:

- a latency quantile: a rank interval. Among n observations, how many fall under the true quantile is binomial, so
  exact binomial sums give the ranks of the order statistics that bracket it; each rank is placed in its bucket by
  the linear interpolation `histogram_quantile` uses. It works over whatever buckets the histogram has;
- a ratio of two quantiles: the canary's bound over the stable's opposite bound, each at half the error allowed
  (Bonferroni), so the pair holds with at least the confidence asked;
- a paired difference of two accuracies on the same positions (live quality: lost minus gained over scored): a normal
  interval from the per-position variance;
- a proportion (the fallback rate): the Wilson score interval.

Each bound is one-sided at the confidence asked: a gate passes when the upper bound is within its max and fails when
the lower bound is above it, so `[lower, upper]` read together is the two-sided interval of equivalence tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

INF = math.inf
_TAIL_SDS = 12
"""Binomial terms further than this many standard deviations from the mean weigh less than 1e-30: skipped."""


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram's cumulative counts: (upper bound `le`, observations at or under it), ascending, the
    last bound +Inf."""

    buckets: tuple[tuple[float, float], ...]

    @classmethod
    def of(cls, pairs: Sequence[tuple[float, float]]) -> Histogram:
        ordered, highest = [], 0.0
        for le, count in sorted((float(le), float(count)) for le, count in pairs):
            # increase() extrapolates each bucket's series on its own, so counts can dip by a fraction.
            highest = max(highest, count)
            ordered.append((le, highest))
        if not ordered or ordered[-1][0] != INF:
            ordered.append((INF, highest))
        return cls(tuple(ordered))

    @property
    def count(self) -> float:
        return self.buckets[-1][1]

    def lower_edge(self, index: int) -> float:
        """Where bucket `index` starts: the bound before it, or 0 for the first (as `histogram_quantile` assumes)."""
        return self.buckets[index - 1][0] if index > 0 else min(0.0, self.buckets[0][0])

    def last_finite_bound(self) -> float:
        finite = [le for le, _ in self.buckets if le != INF]
        return finite[-1] if finite else 0.0


@dataclass(frozen=True)
class Interval:
    value: float
    lower: float
    upper: float


def histogram_quantile(histogram: Histogram, q: float) -> float | None:
    """Prometheus' `histogram_quantile`: linear within the bucket that holds rank q*count; a rank in the +Inf bucket
    gives the highest finite bound."""
    if histogram.count <= 0:
        return None
    return _value_at_rank(histogram, q * histogram.count, histogram.last_finite_bound())


def _value_at_rank(histogram: Histogram, rank: float, in_inf_bucket: float) -> float:
    below = 0.0
    for index, (le, cumulative) in enumerate(histogram.buckets):
        if cumulative >= rank and cumulative > below or index == len(histogram.buckets) - 1:
            if le == INF:
                return in_inf_bucket
            start = histogram.lower_edge(index)
            inside = cumulative - below
            return le if inside <= 0 else start + (le - start) * max(0.0, rank - below) / inside
        below = cumulative
    return in_inf_bucket


def binomial_ranks(n: int, q: float, confidence: float) -> tuple[int, int]:
    """(l, u): with n observations, the l-th smallest is at or under the q-quantile with at least `confidence`, and
    the u-th smallest at or above it (u = n + 1 when no observation is). Exact binomial sums over the terms that
    matter."""
    mean, sd = n * q, math.sqrt(n * q * (1 - q))
    low, high = max(0, math.floor(mean - _TAIL_SDS * sd) - 1), min(n, math.ceil(mean + _TAIL_SDS * sd) + 1)
    base, log_p, log_q = math.lgamma(n + 1), math.log(q), math.log1p(-q)
    below_lower, upper, cumulative = low - 1, n + 1, 0.0
    for i in range(low, high + 1):
        cumulative += math.exp(base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        if cumulative <= 1 - confidence:
            below_lower = i
        if cumulative >= confidence:
            upper = i + 1
            break
    return below_lower + 1, upper


def quantile_interval(histogram: Histogram, q: float, confidence: float) -> Interval | None:
    """The q-quantile with a lower and an upper bound, each one-sided at `confidence`: the order statistics whose
    binomial ranks bracket the quantile, placed in their buckets as `histogram_quantile` places a rank. With too few
    observations for the upper rank, the bound stops at the top of the slowest observation's bucket (what a
    bootstrap would say, and why a gate also needs minSamples); in the +Inf bucket it is infinite."""
    value = histogram_quantile(histogram, q)
    if value is None:
        return None
    n = max(1, round(histogram.count))
    lower_rank, upper_rank = binomial_ranks(n, q, confidence)
    scale = histogram.count / n  # increase() extrapolates: counts need not be whole
    lower = _value_at_rank(histogram, max(lower_rank - 1, 0) * scale, histogram.last_finite_bound())
    upper = _value_at_rank(histogram, min(upper_rank, n) * scale, INF)
    return Interval(value, min(lower, value), max(upper, value))


def quantile_ratio_interval(canary: Histogram, stable: Histogram, q: float, confidence: float) -> Interval | None:
    """canary q-quantile / stable q-quantile. The upper bound is the canary's upper over the stable's lower, the
    lower bound the canary's lower over the stable's upper, each side at 1 - (1 - confidence) / 2."""
    each = 1 - (1 - confidence) / 2
    ours, theirs = quantile_interval(canary, q, each), quantile_interval(stable, q, each)
    if ours is None or theirs is None or theirs.value <= 0:
        return None
    lower = ours.lower / theirs.upper if theirs.upper not in (0.0, INF) else 0.0
    upper = ours.upper / theirs.lower if theirs.lower > 0 else INF
    return Interval(ours.value / theirs.value, lower, upper)


def paired_drop_interval(lost: float, gained: float, scored: float, confidence: float) -> Interval | None:
    """(lost - gained) / scored, the difference of two accuracies measured on the same positions (each position
    scores -1, 0 or +1), with a normal interval from the per-position variance; needs two positions."""
    if scored < 2:
        return None
    z = NormalDist().inv_cdf(confidence)
    drop = (lost - gained) / scored
    variance = max(0.0, (lost + gained) / scored - drop * drop)
    error = math.sqrt(variance / scored)
    return Interval(drop, drop - z * error, drop + z * error)


def proportion_interval(hits: float, total: float, confidence: float) -> Interval | None:
    """hits / total with the Wilson score bounds, which stay inside 0..1 and are honest at 0 hits."""
    if total <= 0:
        return None
    z = NormalDist().inv_cdf(confidence)
    share = min(1.0, max(0.0, hits / total))
    spread = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    centre = share + z * z / (2 * total)
    scale = 1 + z * z / total
    lower = 0.0 if hits <= 0 else max(0.0, (centre - spread) / scale)  # exact at the ends: no rounding residue
    upper = 1.0 if hits >= total else min(1.0, (centre + spread) / scale)
    return Interval(share, lower, upper)
