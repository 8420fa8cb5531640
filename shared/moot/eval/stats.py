"""The statistics of an evaluation: how sure an accuracy is, and whether two strategies differ.

Pure, no I/O, deterministic for a given seed. An outcome is one question answered right (True) or
wrong (False); a strategy's accuracy is the mean of its outcomes.
- `accuracy_interval`: the bootstrap (BCa) interval of the accuracy, resampling questions. When
  every answer is right (or every one wrong) the bootstrap has nothing to resample but copies of
  one value and would claim certainty (1.00 to 1.00 after 10 of 10); the exact Clopper-Pearson
  interval is given instead (0.69 to 1.00), which says what 10 answers can and cannot show.
- `paired_difference`: how much more accurate `b` is than `a` on the same questions, with a
  paired bootstrap interval: each resample draws questions, and both strategies' outcomes on
  them, so what the questions share (some are hard for everyone) cancels out.
- `mcnemar`: the exact McNemar test. Only the questions one strategy got right and the other
  wrong say anything about which is better; under "no difference" each of them is a coin flip.
- `percentile`: of latencies, None when there are none.
No outcomes at all is a ValueError: there is no accuracy to give an interval of, and a caller
showing partial progress says "no answers yet" rather than reading an interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import stats

# Values resampled at once (resamples x questions): bounds the memory of a large evaluation
# (10,000 questions) to tens of MB; below it, one batch.
_BATCH_VALUES = 2_000_000

Statistic = Callable[..., npt.NDArray[np.float64]]


def accuracy_interval(
    outcomes: Sequence[bool], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """The `level` interval of the share of True in `outcomes`: bootstrap (BCa), exact when all agree."""
    x = _as_array(outcomes)
    right = int(x.sum())
    if right in (0, len(x)):
        ci = stats.binomtest(right, len(x)).proportion_ci(level, method="exact")
        return float(ci.low), float(ci.high)
    return _bootstrap((x,), _mean, level, resamples, seed)


def paired_difference(
    a: Sequence[bool], b: Sequence[bool], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """`b`'s accuracy minus `a`'s on the same questions (same order), with its paired bootstrap interval.

    When every question differs the same way (most often: no question differs), every resample
    gives the same difference, and so does the interval."""
    xa, xb = _as_array(a), _as_array(b)
    if len(xa) != len(xb):
        raise ValueError(f"paired outcomes differ in length: {len(xa)} and {len(xb)}")
    difference = float(xb.mean() - xa.mean())
    if len(np.unique(xb - xa)) == 1:
        return difference, difference, difference
    low, high = _bootstrap((xa, xb), _mean_difference, level, resamples, seed, paired=True)
    return difference, low, high


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """(wins: `b` right where `a` is wrong, losses: the reverse, the exact two-sided McNemar p)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} and {len(b)}")
    wins = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    losses = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    if wins + losses == 0:
        return 0, 0, 1.0
    return wins, losses, min(1.0, float(stats.binomtest(wins, wins + losses).pvalue))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`th percentile (0 to 100, linear between values) of `values`; None when empty."""
    return float(np.percentile(values, q)) if len(values) else None


def _as_array(outcomes: Sequence[bool]) -> npt.NDArray[np.float64]:
    if not len(outcomes):
        raise ValueError("no outcomes: an accuracy needs at least one answered question")
    return np.asarray(outcomes, dtype=np.float64)


def _bootstrap(
    data: tuple[npt.NDArray[np.float64], ...],
    statistic: Statistic,
    level: float,
    resamples: int,
    seed: int,
    *,
    paired: bool = False,
) -> tuple[float, float]:
    result = stats.bootstrap(
        data,
        statistic,
        n_resamples=resamples,
        batch=max(1, _BATCH_VALUES // len(data[0])),
        vectorized=True,
        paired=paired,
        confidence_level=level,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _mean(x: npt.NDArray[np.float64], axis: int = -1) -> npt.NDArray[np.float64]:
    return np.mean(x, axis=axis)


def _mean_difference(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], axis: int = -1
) -> npt.NDArray[np.float64]:
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)
