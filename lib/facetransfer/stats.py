"""Intervals and tests: how sure is each number, and is one run really better?

Faces come in persons: CelebA has 2-30+ images per identity, Adience many per
``user_id``. Two images of one person are not two independent observations, so wherever
the test split has persons with more than one image, every interval and paired test here
resamples PERSONS (a cluster bootstrap: draw persons with replacement, keep all their
images). Without identities (CelebA30k, UTKFace) the unit is the image. :func:`unit` decides
and says which in words ("per person, 812 persons" / "per image: no identities"), and
every table carries that text.

The point metrics come from :mod:`facetransfer.metrics` (scikit-learn); Wilson intervals
from ``scipy.stats.binomtest``; McNemar's test and Holm's correction from statsmodels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from facetransfer.errors import FacetransferError

MISSING_GROUP = "<missing>"
UNITS = ("auto", "person", "image")
EXACT_MCNEMAR_BELOW = 25  # discordant pairs below which McNemar's exact binomial test is used


def _check_conf(conf: float) -> None:
    if not 0.0 < conf < 1.0:
        raise FacetransferError(f"conf={conf!r} must be a confidence level strictly between 0 and 1, e.g. 0.95")


# ---------------------------------------------------------------- the resampling unit
@dataclass(frozen=True)
class Unit:
    """What the bootstrap resamples: ``codes[i]`` is the unit (person, or image) of row i."""

    codes: np.ndarray
    n_units: int
    per_person: bool
    text: str  # "per person, 812 persons" | "per image: no identities" | ...
    note: str | None = None  # a request that could not be honoured, in one line


def unit(subject=None, n: int | None = None, *, requested: str = "auto") -> Unit:
    """The resampling unit of a test split with ``subject`` ids (``None`` or all missing:
    the dataset has no identities).

    ``requested`` (``eval.unit``): ``auto`` resamples persons whenever some person has
    more than one image, else images; ``person`` asks for persons and, where the data
    cannot give them, says so in ``note`` (the method used is always stated, never
    silently changed); ``image`` treats images as independent (stated as such). A row
    without a subject id is its own unit.
    """
    if requested not in UNITS:
        raise FacetransferError(f"eval.unit={requested!r} is not allowed; allowed: {', '.join(UNITS)}")
    if subject is None:
        if n is None:
            raise FacetransferError("unit() needs the subject ids or the number of rows n")
        ids = pd.Series([pd.NA] * n, dtype=object)
    else:
        ids = pd.Series(np.asarray(subject, dtype=object))
    n = len(ids)
    known = ids.notna()
    codes = np.arange(n)
    if known.any():
        person = pd.factorize(ids[known])[0]
        codes = np.empty(n, dtype=np.int64)
        codes[known.to_numpy()] = person
        codes[~known.to_numpy()] = person.max() + 1 + np.arange(int((~known).sum()))
    n_units = int(codes.max()) + 1 if n else 0
    if not known.any():
        why = "no identities"
    elif n_units == n:
        why = f"every one of the {int(known.sum())} persons has one test image"
    else:
        why = None
    if requested == "image":
        return Unit(np.arange(n), n, False, "per image (eval.unit: image)" + (f"; {n_units} persons in the data" if why is None else ""))
    if why is not None:
        note = f"person-level statistics asked for (eval.unit: person), but {why}: intervals and tests are per image" if requested == "person" else None
        return Unit(np.arange(n), n, False, f"per image: {why}", note)
    missing = f", {int((~known).sum())} images without an id count as their own person" if not known.all() else ""
    return Unit(codes, n_units, True, f"per person, {int(ids[known].nunique())} persons{missing}")


def _counts(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_units): how often each unit is drawn in each resample.

    Written by hand because scipy.stats.bootstrap resamples observations, not clusters:
    drawing n_units units with replacement is one multinomial draw per resample.
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot)


class BootstrapCI(tuple):
    """``(point, lo, hi)`` that also carries ``n_used`` (resamples where the statistic was
    defined), ``n_boot``, ``conf``, ``p_value`` (two-sided, of "the statistic is 0"; for
    paired differences) and ``unit`` (its text). Unpacks as three values."""

    def __new__(cls, point, lo, hi, *, n_used: int, n_boot: int, conf: float, p_value: float = math.nan, unit: str = ""):
        self = super().__new__(cls, (float(point), float(lo), float(hi)))
        self.n_used, self.n_boot, self.conf, self.p_value, self.unit = n_used, n_boot, conf, float(p_value), unit
        return self

    point = property(lambda self: self[0])
    lo = property(lambda self: self[1])
    hi = property(lambda self: self[2])

    def __repr__(self) -> str:
        return f"BootstrapCI(point={self[0]:.6g}, lo={self[1]:.6g}, hi={self[2]:.6g}, p={self.p_value:.4g}, n_used={self.n_used}/{self.n_boot}, {self.unit})"


def _check_n_boot(n_boot) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise FacetransferError(f"n_boot={n_boot!r} must be an integer >= 0")


def _summarise(point: float, values: np.ndarray, n_boot: int, conf: float, unit_text: str) -> BootstrapCI:
    used = values[np.isfinite(values)]
    if used.size == 0 or not math.isfinite(point):
        return BootstrapCI(point, math.nan, math.nan, n_used=int(used.size), n_boot=n_boot, conf=conf, unit=unit_text)
    alpha = 1.0 - conf
    lo, hi = np.percentile(used, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    # test of "statistic = 0": the bootstrap distribution shifted to the null (Hall & Wilson 1991)
    p = (1 + np.sum(np.abs(used - point) >= abs(point))) / (used.size + 1)
    return BootstrapCI(point, lo, hi, n_used=int(used.size), n_boot=n_boot, conf=conf, p_value=min(1.0, p), unit=unit_text)


MIN_UNITS = 10  # fewer persons (or images) than this: no bootstrap interval or test (said, not shown)
CHUNK = 100  # resamples scored at once by a ``resampled`` statistic (bounds the (chunk, n) weights)


def bootstrap(statistic: Callable[..., float] | None, *arrays, unit: Unit | None = None, n_boot: int = 1000,
              conf: float = 0.95, seed: int = 0, resampled: Callable[..., np.ndarray] | None = None) -> BootstrapCI:
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling ``unit``
    (default: every row its own unit) with the same draw for every array (paired).

    ``statistic=None`` with one array: the mean of that per-image value (accuracy from
    ``correct``, MAE from ``abs_error``, a paired difference from their differences),
    computed without materialising the resamples. A resample where the statistic is
    undefined (NaN, e.g. AUC of a one-class resample) is skipped and counted in
    ``n_used``. ``p_value``: two-sided test of "the statistic is 0". Same seed → same result.
    Fewer than ``MIN_UNITS`` units: no interval and no test (NaN; callers say why).
    ``resampled(*arrays, weights)``: the statistic of every row of a (B, n) matrix of draw
    counts at once (:func:`facetransfer.metrics.f1_macro_resampled`), the same numbers as
    calling ``statistic`` on each resample, a thousand times faster.
    """
    _check_conf(conf)
    _check_n_boot(n_boot)
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays or len({len(a) for a in arrays}) > 1:
        raise FacetransferError(f"bootstrap needs one or more arrays of the same length; got lengths {[len(a) for a in arrays]}")
    n = len(arrays[0])
    unit = unit or Unit(np.arange(n), n, False, "per image")
    if len(unit.codes) != n:
        raise FacetransferError(f"the resampling unit has {len(unit.codes)} rows, the arrays {n}")
    if statistic is None:
        if len(arrays) != 1:
            raise FacetransferError("bootstrap(None, values): the mean path takes exactly one array")
        values = arrays[0].astype(np.float64)
        point = float(values.mean()) if n else math.nan
    else:
        point = float(statistic(*arrays))
    if n == 0 or n_boot == 0 or unit.n_units < MIN_UNITS:
        return BootstrapCI(point, math.nan, math.nan, n_used=0, n_boot=int(n_boot), conf=conf, unit=unit.text)
    counts = _counts(unit.n_units, n_boot, seed)
    if statistic is None:
        sums = np.bincount(unit.codes, weights=values, minlength=unit.n_units)
        sizes = np.bincount(unit.codes, minlength=unit.n_units)
        with np.errstate(invalid="ignore", divide="ignore"):
            boots = (counts @ sums) / (counts @ sizes)
    elif resampled is not None:
        boots = np.concatenate([resampled(*arrays, weights=counts[start:start + CHUNK][:, unit.codes])
                                for start in range(0, n_boot, CHUNK)])
    else:
        rows = np.arange(n)
        boots = np.empty(n_boot)
        for b in range(n_boot):
            idx = np.repeat(rows, counts[b, unit.codes])
            boots[b] = statistic(*(a[idx] for a in arrays))
    return _summarise(point, boots, int(n_boot), conf, unit.text)


def paired(statistic: Callable[..., float], arrays_a: Sequence, arrays_b: Sequence, *,
           resampled: Callable[..., np.ndarray] | None = None, **kw) -> BootstrapCI:
    """``statistic(*arrays_a) - statistic(*arrays_b)`` on the same test images, with the
    paired (cluster) bootstrap interval and p-value of :func:`bootstrap` (same keywords)."""
    k = len(arrays_a)
    both = None
    if resampled is not None:
        def both(*arrs, weights):
            return resampled(*arrs[:k], weights=weights) - resampled(*arrs[k:], weights=weights)
    return bootstrap(lambda *arrs: statistic(*arrs[:k]) - statistic(*arrs[k:]), *arrays_a, *arrays_b, resampled=both, **kw)


def wilson_ci(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials (scipy ``binomtest``)."""
    _check_conf(conf)
    if int(n) != n or int(k) != k or n <= 0 or not 0 <= k <= n:
        raise FacetransferError(f"wilson_ci needs integers 0 <= k <= n and n > 0; got k={k!r}, n={n!r}")
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=conf, method="wilson")
    return float(ci.low), float(ci.high)


def proportion(correct, unit: Unit, *, n_boot: int = 1000, conf: float = 0.95, seed: int = 0) -> BootstrapCI:
    """Accuracy with its interval: Wilson per image, cluster bootstrap per person."""
    correct = np.asarray(correct, dtype=bool)
    if unit.per_person:
        return bootstrap(None, correct, unit=unit, n_boot=n_boot, conf=conf, seed=seed)
    if not len(correct):
        return BootstrapCI(math.nan, math.nan, math.nan, n_used=0, n_boot=0, conf=conf, unit=unit.text)
    lo, hi = wilson_ci(int(correct.sum()), len(correct), conf)
    return BootstrapCI(correct.mean(), lo, hi, n_used=0, n_boot=0, conf=conf, unit=unit.text + " (Wilson)")


# ---------------------------------------------------------------- McNemar and Holm
def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test (statsmodels) of two classifiers on the same images, images taken
    as independent: exact binomial below 25 discordant pairs, else chi-square with
    continuity correction. ``b``: A right and B wrong; ``c``: A wrong and B right."""
    a, b_arr = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_arr.shape or a.ndim != 1:
        raise FacetransferError(f"correct_a and correct_b must be 1-D of the same length; got {a.shape} and {b_arr.shape}")
    b, c = int(np.sum(a & ~b_arr)), int(np.sum(~a & b_arr))
    table = [[int(np.sum(a & b_arr)), b], [c, int(np.sum(~a & ~b_arr))]]
    exact = b + c < EXACT_MCNEMAR_BELOW
    result = sm_mcnemar(table, exact=exact, correction=True)
    method = "exact binomial" if exact else "chi-square, continuity corrected"
    p = 1.0 if b + c == 0 else min(1.0, float(result.pvalue))
    return {"b": b, "c": c, "n": int(a.size), "statistic": float(result.statistic), "p_value": p, "method": method}


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels ``multipletests``), same order as given."""
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if p.size == 0:
        return p
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise FacetransferError("p_values must be finite numbers in [0, 1]")
    return multipletests(p, method="holm")[1]


# ---------------------------------------------------------------- published figures
def versus_published(ours: BootstrapCI, published: float, n_published: int | None, *, n_ours: int,
                     fraction: bool, conf: float = 0.95) -> dict:
    """Our figure minus the published one, with an interval that adds the published
    figure's sampling error to ours (normal approximation; our standard error from our
    interval, so it is per person where ours is).

    The published standard error: sqrt(p (1 - p) / n) for a fraction (accuracy, F1, AUC:
    the binomial approximation), or ours scaled by sqrt(n_ours / n_published) otherwise
    (MAE: assumes the same spread of errors). ``n_published=None``: the interval holds our
    error only, and ``note`` says so. ``verdict``: "consistent" when the interval holds 0,
    else "higher" / "lower" (ours vs published).
    """
    z = float(sps.norm.ppf(0.5 + conf / 2))
    difference = ours.point - published
    se_ours = (ours.hi - ours.lo) / (2 * z) if math.isfinite(ours.lo) and math.isfinite(ours.hi) else math.nan
    if n_published is None:
        se_pub, note = 0.0, "published n unknown: its sampling error is not included"
    elif fraction:
        se_pub, note = math.sqrt(published * (1 - published) / n_published), f"published n = {n_published}"
    else:
        se_pub, note = se_ours * math.sqrt(n_ours / n_published), f"published n = {n_published} (its spread assumed equal to ours)"
    se = math.hypot(se_ours, se_pub)
    if not math.isfinite(se):
        return {"difference": difference, "lo": math.nan, "hi": math.nan, "verdict": "no interval", "note": "no interval for our figure"}
    lo, hi = difference - z * se, difference + z * se
    verdict = "consistent" if lo <= 0 <= hi else "higher" if lo > 0 else "lower"
    return {"difference": difference, "lo": lo, "hi": hi, "verdict": verdict, "note": note}


# ---------------------------------------------------------------- subgroups
def gap(values: pd.Series) -> float:
    """Best minus worst of the eligible groups' values (NaN with fewer than two)."""
    finite = values.dropna()
    return float(finite.max() - finite.min()) if len(finite) >= 2 else math.nan


def mean_gap(values, groups, names: Sequence, *, unit: Unit, n_boot: int = 1000, conf: float = 0.95, seed: int = 0) -> BootstrapCI:
    """Gap (max − min) of the per-group means of ``values`` over the groups ``names``,
    with the same (cluster) bootstrap as :func:`bootstrap`, vectorised: accuracy and MAE
    gaps of subgroups. A resample where a group is empty is skipped and counted."""
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups, dtype=object)
    index = {name: i for i, name in enumerate(names)}
    gcode = np.array([index.get(g, -1) for g in groups])
    keep = gcode >= 0
    k = len(names)
    flat = unit.codes[keep] * k + gcode[keep]
    sums = np.bincount(flat, weights=values[keep], minlength=unit.n_units * k).reshape(unit.n_units, k)
    sizes = np.bincount(flat, minlength=unit.n_units * k).reshape(unit.n_units, k)
    means = sums.sum(axis=0) / sizes.sum(axis=0)
    point = float(means.max() - means.min())
    if n_boot == 0 or unit.n_units < MIN_UNITS:
        return BootstrapCI(point, math.nan, math.nan, n_used=0, n_boot=int(n_boot), conf=conf, unit=unit.text)
    counts = _counts(unit.n_units, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = (counts @ sums) / (counts @ sizes)
    spread = np.where(np.isfinite(boots).all(axis=1), boots.max(axis=1) - boots.min(axis=1), np.nan)
    return _summarise(point, spread, int(n_boot), conf, unit.text)


def age_band(ages, edges: Sequence[float] = (0, 20, 30, 40, 50, 60)) -> pd.Series:
    """Age in years → band labels "0-19", "20-29", ..., "60+" (NaN age stays missing)."""
    ages = pd.Series(ages, dtype=float)
    edges = list(edges)
    if len(edges) < 1 or sorted(edges) != edges or len(set(edges)) != len(edges):
        raise FacetransferError(f"age band edges {edges} must be strictly increasing")
    if (ages.dropna() < edges[0]).any():
        raise FacetransferError(f"ages below the first band edge {edges[0]} found")
    labels = [f"{lo:g}-{hi - 1:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)] + [f"{edges[-1]:g}+"]
    return pd.cut(ages, bins=edges + [math.inf], labels=labels, right=False)


# ---------------------------------------------------------------- repeats / folds
def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof = 1), n); non-finite values are an error
    (a failed repeat must be shown, not averaged away). std is NaN for a single value."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        return math.nan, math.nan, 0
    if not np.all(np.isfinite(arr)):
        raise FacetransferError(f"mean_std got non-finite values {arr.tolist()}; exclude failed runs explicitly")
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else math.nan
    return float(np.mean(arr)), std, int(arr.size)


def t_interval(values, conf: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaN bounds for fewer than two)."""
    mean, std, n = mean_std(values)
    if n < 2:
        return math.nan, math.nan
    lo, hi = sps.t.interval(conf, n - 1, loc=mean, scale=std / math.sqrt(n)) if std > 0 else (mean, mean)
    return float(lo), float(hi)


def format_mean_std(values, digits: int = 3) -> str:
    """``"0.912 ± 0.010 (n=3)"``; a single value prints without ±."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "—"
    if n == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"
