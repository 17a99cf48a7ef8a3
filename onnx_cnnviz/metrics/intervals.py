"""Confidence intervals of a metric's mean over images: Student's t, not the normal approximation.

A metric table usually averages a handful to a few hundred images; at n = 4 the normal interval (1.96 s / sqrt(n)) is
1.6 times too narrow. The t quantile is computed here without SciPy (a core dependency it is not): the distribution
function of Student's t with an integer number of degrees of freedom is a finite trigonometric sum (Abramowitz &
Stegun, Handbook of Mathematical Functions, 26.7.3 and 26.7.4), inverted by bisection; above
:data:`EXPANSION_DF` degrees of freedom, the Cornish-Fisher expansion around the normal quantile (A&S 26.7.5) is
exact to better than 1e-9.

**Clipped to the metric's range.** With few images the interval ``mean +- t s / sqrt(n)`` can reach values the
metric cannot take (a deletion AUC of probabilities below 0, an average drop above 1). Given the metric's range
(:func:`value_range`, from :data:`RANGES`), :func:`mean_interval` clips the interval to it and says so
(``clipped``); the mean and the standard deviation are never changed.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

#: Degrees of freedom above which the quantile comes from A&S 26.7.5 instead of the exact sum.
EXPANSION_DF = 200


def _two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (A&S 26.7.3 for odd, 26.7.4 for even ``df``)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, 1.0
        if df > 1:
            total = term
            for k in range(1, (df - 3) // 2 + 1):
                term *= c2 * (2 * k) / (2 * k + 1)
                total += term
        return (2 / math.pi) * (theta + s * math.cos(theta) * total) if df > 1 else 2 * theta / math.pi
    total, term = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def _normal_quantile(p: float) -> float:
    """The standard normal quantile, by bisection on erf (exact to double precision)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom: the ``t`` with
    P(|T| <= t) = level (2.776 for df = 4 at 95%)."""
    df = int(df)
    if df < 1:
        raise InputError(f"degrees of freedom must be >= 1, not {df}.")
    if not 0 < level < 1:
        raise InputError(f"level must lie in (0, 1), not {level}.")
    if df > EXPANSION_DF:
        z = _normal_quantile((1 + level) / 2)
        g1 = (z ** 3 + z) / 4
        g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
        g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
        g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
        return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4
    lo, hi = 0.0, 1.0
    while _two_sided(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _two_sided(mid, df) < level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


_INF = math.inf
_UNIT, _SIGNED_UNIT, _NON_NEGATIVE, _ANY = (0.0, 1.0), (-1.0, 1.0), (0.0, _INF), (-_INF, _INF)

#: The values each registered metric can take: ``name -> (range when it reads probabilities, range when it reads
#: scores)``. Deletion/insertion AUCs and ROAD's changes are bounded only on probabilities; the average drop
#: ``max(0, Y - O) / Y`` is at most 1 on probabilities (``O >= 0``); the hit rates, the energy share and the increase
#: in confidence lie in [0, 1] and the model-randomisation correlations (Spearman, SSIM) in [-1, 1] whatever is read;
#: infidelity and sensitivity-max are non-negative.
RANGES = {
    "deletion": (_UNIT, _ANY), "insertion": (_UNIT, _ANY),
    "average-drop": (_UNIT, _NON_NEGATIVE), "increase-in-confidence": (_UNIT, _UNIT),
    "road-morf": (_SIGNED_UNIT, _ANY), "road-lerf": (_SIGNED_UNIT, _ANY), "road-combined": (_SIGNED_UNIT, _ANY),
    "infidelity": (_NON_NEGATIVE, _NON_NEGATIVE), "sensitivity-max": (_NON_NEGATIVE, _NON_NEGATIVE),
    "pointing-game": (_UNIT, _UNIT), "energy-pointing-game": (_UNIT, _UNIT), "localisation-accuracy": (_UNIT, _UNIT),
    "model-randomisation": (_SIGNED_UNIT, _SIGNED_UNIT),
}


def value_range(metric: str, output: str | None = None) -> tuple:
    """The values ``metric`` can take, ``(low, high)`` (infinite where unbounded).

    Args:
        metric: a registry name (``deletion``, ``average-drop``, ...); a metric not in :data:`RANGES` (one a user
            registered) is unbounded.
        output: what the metric read from the model: ``"probability"`` or ``"score"``, or the description a
            :class:`~onnx_cnnviz.metrics.base.MetricResult` gives (``"probability (softmax of the scores)"``); None
            for a metric that reads no output (the same range either way).

    Returns:
        ``(low, high)`` floats.
    """
    probability, score = RANGES.get(metric, (_ANY, _ANY))
    reads_scores = output is not None and not str(output).startswith("probability")
    return score if reads_scores else probability


def mean_interval(values, level: float = 0.95, bounds=None) -> dict:
    """``mean``, ``std`` (the sample standard deviation, ddof=1; 0 for one value), ``n`` and the Student-t interval
    ``mean +- t(level, n - 1) * std / sqrt(n)`` as ``low`` / ``high`` (both the mean for one value). NaN values are
    left out.

    Args:
        values: the per-image values.
        level: the interval's coverage, in (0, 1).
        bounds: the metric's range ``(low, high)`` (:func:`value_range`); when given, the interval is clipped to it
            and the result has ``clipped``: whether an end was moved.

    Returns:
        The dict above.

    Raises:
        InputError: ``level`` outside (0, 1), or ``bounds`` not two numbers with low <= high.
    """
    if not isinstance(level, (int, float, np.floating)) or isinstance(level, bool) or not 0 < level < 1:
        raise InputError(f"level must lie in (0, 1), not {level!r}.")
    lo_bound = hi_bound = None
    if bounds is not None:
        try:
            lo_bound, hi_bound = (float(v) for v in bounds)
        except (TypeError, ValueError):
            raise InputError(f"bounds must be (low, high), two numbers, not {bounds!r}.") from None
        if not lo_bound <= hi_bound:
            raise InputError(f"bounds must be (low, high) with low <= high, not {bounds!r}.")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        nan = float("nan")
        out = {"mean": nan, "std": nan, "n": 0, "low": nan, "high": nan}
    else:
        mean = float(v.mean())
        std = float(v.std(ddof=1)) if n > 1 else 0.0
        half = t_quantile(n - 1, level) * std / math.sqrt(n) if n > 1 else 0.0
        out = {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half}
    if bounds is not None:
        low = max(out["low"], lo_bound) if n else out["low"]
        high = min(out["high"], hi_bound) if n else out["high"]
        out["clipped"] = bool(n) and (low != out["low"] or high != out["high"])
        out["low"], out["high"] = low, high
    return out


__all__ = ["t_quantile", "mean_interval", "value_range", "RANGES", "EXPANSION_DF"]
