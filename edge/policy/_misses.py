"""How far the link estimate missed the samples that followed it, and how the link comes
back after a dip (the statistics half of :mod:`edge.policy._link`).

The spread of the belief is how far below the estimate the next sample has come lately
(the lower one-sigma quantile, about the 16th percentile, of its recent forecast errors:
what a decision about the next transfer risks), not how widely the samples scatter; a
quantile rather than a standard deviation, so that one outage does not make every plan
that relies on the link look hopeless for the next dozen requests.

The harmonic mean the estimator keeps is cautious on purpose, and after a dip it sits
well below the link's usual level (the median of the last ``_LEVEL_WINDOW`` samples)
while the link, on every trace family here, mostly comes back. How much of that gap the
next sample closes is learnt online: a robust line (median of pairwise slopes) through
the recent forecast errors against the gap each was made at, refitted when a sample
arrives (the ``rebound`` of an estimate; 0 on a link whose dips last). It serves
decisions that can be undone cheaply (an upload that is given up in time), not the
estimate itself.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

# Forecast errors: how many describe the link, how many before they are trusted, the
# quantile taken as one sigma below (a normal's 15.9 %), and the least spread believed.
_ERROR_WINDOW = 16
_MIN_ERRORS = 4
_LOW_QUANTILE = 0.159
_MIN_SPREAD = 0.05
# The link's usual level: the median of this many recent samples (log bit/s); and how
# many (gap, error) pairs before the rebound is learnt from them.
_LEVEL_WINDOW = 16
_MIN_LEVELS = 4
_MIN_REBOUND_PAIRS = 8
# Before the link has shown how it comes back: half the gap, as if from this many pairs.
# (Fitted to the requests' bandwidths, one every two seconds, the line's slope is
# 0.64-0.95 on every trace family in shared/data/traces; half is the cautious side.)
_PRIOR_REBOUND = 0.5
_PRIOR_PAIRS = 4


def _median(ordered: list[float]) -> float:
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _fit_rebound(pairs: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """A line ``error = a + b * gap`` through ``pairs``, fitted robustly (the median of
    the pairwise slopes, then the median intercept: one outage must not tilt it) with
    ``b`` kept in [0, 1] (a gap is never expected to widen, nor to be overshot). Until
    the link has shown its own, it leans on a prior (``_PRIOR_REBOUND`` worth
    ``_PRIOR_PAIRS`` pairs). Returns (a, b, spread below, spread above), the spreads
    the residuals' one-sigma quantiles, or 0 while fewer than ``_MIN_REBOUND_PAIRS``."""
    n = len(pairs)
    slopes = sorted((e2 - e1) / (g2 - g1)
                    for i, (g1, e1) in enumerate(pairs) for g2, e2 in pairs[i + 1:]
                    if abs(g2 - g1) > 1e-3)
    fitted = min(max(_median(slopes), 0.0), 1.0) if slopes else _PRIOR_REBOUND
    slope = (n * fitted + _PRIOR_PAIRS * _PRIOR_REBOUND) / (n + _PRIOR_PAIRS)
    base = _median(sorted(e - slope * g for g, e in pairs)) * n / (n + _PRIOR_PAIRS)
    if n < _MIN_REBOUND_PAIRS:
        return base, slope, 0.0, 0.0
    resid = sorted(e - base - slope * g for g, e in pairs)
    k = int(len(resid) * _LOW_QUANTILE)
    return base, slope, max(-resid[k], _MIN_SPREAD), max(resid[-1 - k], _MIN_SPREAD)


class Spreads(NamedTuple):
    """One sigma below and above the estimate (log units), and the mean of estimate /
    sample, which sets the expected transfer time."""

    down: float
    up: float
    bias: float


class Misses:
    """The estimate's recent forecast errors, the link's usual level and the rebound line
    fitted through them (not thread-safe: the estimator holds its lock around it)."""

    def __init__(self, window: int) -> None:
        # log(sample / estimate just before it): how far the estimate missed. Longer than
        # the sample window: it describes the kind of link, which changes more slowly.
        self.errors: deque[float] = deque(maxlen=max(3 * window, _ERROR_WINDOW))
        self.levels: deque[float] = deque(maxlen=_LEVEL_WINDOW)  # log bit/s
        # (log(level / estimate), the error that followed) for the rebound's line.
        self._pairs: deque[tuple[float, float]] = deque(maxlen=self.errors.maxlen)
        # The line through them, refitted as each pair arrives: (a, b, spread below,
        # spread above); the spreads are 0 until _MIN_REBOUND_PAIRS are known.
        self._fit = (0.0, _PRIOR_REBOUND, 0.0, 0.0)

    def record(self, bps: float, estimate_bps: float | None) -> None:
        """Note how far ``estimate_bps`` (None: no estimate from samples yet) missed
        ``bps``, and at what gap below the level, then count ``bps`` in the level."""
        if estimate_bps is not None:
            est = math.log(estimate_bps)
            err = math.log(max(bps, 1.0)) - est
            self.errors.append(err)
            level = self.level()
            if level is not None:
                self._pairs.append((level - est, err))
                self._fit = _fit_rebound(list(self._pairs))
        self.levels.append(math.log(max(bps, 1.0)))

    def level(self) -> float | None:
        """The link's usual level (log bit/s); None until enough samples are known."""
        if len(self.levels) < _MIN_LEVELS:
            return None
        return _median(sorted(self.levels))

    def spreads(self) -> Spreads | None:
        """How far below (and above) the estimate the next sample came, at one sigma;
        None while too few misses are known to say."""
        if len(self.errors) < _MIN_ERRORS:
            return None
        ordered = sorted(self.errors)
        k = int(len(ordered) * _LOW_QUANTILE)
        return Spreads(max(-ordered[k], _MIN_SPREAD), max(ordered[-1 - k], _MIN_SPREAD),
                       sum(math.exp(-e) for e in self.errors) / len(self.errors))

    def rebound(self, bw: float) -> tuple[float, float, float]:
        """The rebound forecast at estimate ``bw`` below the link's level and its spreads
        below and above (0: the belief's own); (0, 0, 0) until the level is known."""
        level = self.level()
        if level is None:
            return 0.0, 0.0, 0.0
        base, slope, down, up = self._fit
        return base + slope * (level - math.log(bw)), down, up

    def clear(self) -> None:
        self.errors.clear()
        self.levels.clear()
        self._pairs.clear()
        self._fit = (0.0, _PRIOR_REBOUND, 0.0, 0.0)
