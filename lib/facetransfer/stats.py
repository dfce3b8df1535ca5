"""The statistics that make a comparison trustworthy.

Pure numpy / scipy, no Keras. Every number a comparison table shows comes with its
uncertainty: a Wilson interval for accuracy, a paired percentile bootstrap for F1, AUC
and MAE, McNemar's test (with Holm's correction over all pairs) for "is model A really
better than model B on the same test images", the expected calibration error with its
reliability table, and per-subgroup metrics with the best-minus-worst gap.

Inputs are validated at the boundary: a bad input raises :class:`FacetransferError`
with a one-line message; nothing is silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats as sps

from facetransfer.errors import FacetransferError

MISSING_GROUP = "<missing>"


# ---------------------------------------------------------------- validation helpers
def _check_conf(conf: float) -> None:
    if not 0.0 < conf < 1.0:
        raise FacetransferError(f"conf={conf!r} must be a confidence level strictly between 0 and 1, e.g. 0.95")


def _z(conf: float) -> float:
    return float(sps.norm.ppf(0.5 + conf / 2.0))


def _as_1d(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise FacetransferError(f"{name} must be one-dimensional (got shape {arr.shape})")
    return arr


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise FacetransferError(f"arrays must have the same length; got {lengths}")
    return next(iter(lengths.values()))


def _check_probabilities(name: str, prob: np.ndarray) -> None:
    if not np.issubdtype(prob.dtype, np.number) or not np.all(np.isfinite(prob)):
        raise FacetransferError(f"{name} must hold finite numbers (probabilities in [0, 1])")
    if prob.size and (prob.min() < 0.0 or prob.max() > 1.0):
        raise FacetransferError(f"{name} must lie in [0, 1]; got min {prob.min():.4g}, max {prob.max():.4g}")


# ---------------------------------------------------------------- point metrics
def accuracy(y_true, y_pred) -> float:
    """Fraction of equal labels; NaN for zero samples."""
    y_true, y_pred = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    n = _same_length(y_true=y_true, y_pred=y_pred)
    return float(np.mean(y_true == y_pred)) if n else math.nan


def _label_index(name: str, values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    pos = np.clip(np.searchsorted(ordered, values), 0, len(labels) - 1)
    known = ordered[pos] == values
    if not np.all(known):
        unknown = sorted({str(v) for v in values[~known][:50]})
        raise FacetransferError(f"{name} holds labels {unknown[:5]} that are not among the expected labels {labels.tolist()}")
    return order[pos]


def confusion_matrix(y_true, y_pred, labels: Sequence) -> np.ndarray:
    """Counts with rows = true label, columns = predicted label, in ``labels`` order."""
    y_true, y_pred = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    _same_length(y_true=y_true, y_pred=y_pred)
    labels = np.asarray(list(labels))
    k = len(labels)
    if k == 0:
        return np.zeros((0, 0), dtype=np.int64)
    flat = _label_index("y_true", y_true, labels) * k + _label_index("y_pred", y_pred, labels)
    return np.bincount(flat, minlength=k * k).reshape(k, k).astype(np.int64)


def _labels(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence | None) -> list:
    if labels is not None:
        return list(labels)
    return np.union1d(y_true, y_pred).tolist()


def _class_counts(y_true, y_pred, labels: Sequence | None) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    y_true, y_pred = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    labels = _labels(y_true, y_pred, labels)
    cm = confusion_matrix(y_true, y_pred, labels)
    return labels, np.diag(cm).astype(float), cm.sum(axis=0), cm.sum(axis=1)


def per_class_scores(y_true, y_pred, labels: Sequence | None = None) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (rows in ``labels`` order).

    ``labels=None`` uses the labels present in ``y_true`` or ``y_pred``. A score whose
    denominator is zero (precision of a class never predicted, recall of a class absent
    from ``y_true``) is NaN, not 0: an undefined number is shown as undefined.
    """
    labels, tp, predicted, support = _class_counts(y_true, y_pred, labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        denom = predicted + support  # = 2 TP + FP + FN
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return pd.DataFrame({"label": labels, "precision": precision, "recall": recall, "f1": f1, "support": support})


def f1_macro(y_true, y_pred, labels: Sequence | None = None) -> float:
    """Unweighted mean over ``labels`` of F1 = 2TP / (2TP + FP + FN).

    With ``labels=None`` (the labels present in either array) this equals scikit-learn's
    ``f1_score(average="macro")``. With fixed ``labels``, a label that has neither true nor
    predicted samples makes the macro F1 undefined: NaN (a bootstrap skips such resamples).
    """
    _, tp, predicted, support = _class_counts(y_true, y_pred, labels)
    denom = predicted + support  # = 2 TP + FP + FN
    if denom.size == 0 or np.any(denom == 0):
        return math.nan
    return float(np.mean(2 * tp / denom))


def macro_precision_recall(y_true, y_pred, labels: Sequence | None = None, *, zero_division: float = math.nan) -> tuple[float, float]:
    """Macro-averaged precision and recall over ``labels`` (default: those present).

    A class's undefined value (precision of a class never predicted) counts as
    ``zero_division``: NaN by default, which makes the average NaN; 0.0 gives
    scikit-learn's default convention (the one ``metrics.json`` uses).
    """
    scores = per_class_scores(y_true, y_pred, labels)
    precision = scores["precision"].fillna(zero_division).mean(skipna=False)
    recall = scores["recall"].fillna(zero_division).mean(skipna=False)
    return float(precision), float(recall)


def roc_auc(y_true, prob) -> float:
    """Area under the ROC curve of a binary problem (Mann–Whitney U, ties count half).

    NaN when ``y_true`` holds only one class (the AUC is undefined then).
    """
    y_true, prob = _as_1d("y_true", y_true), _as_1d("prob", prob).astype(float)
    _same_length(y_true=y_true, prob=prob)
    positive = y_true == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = sps.rankdata(prob)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def mae(y_true, y_pred) -> float:
    """Mean absolute error; NaN for zero samples."""
    y_true, y_pred = _as_1d("y_true", y_true).astype(float), _as_1d("y_pred", y_pred).astype(float)
    n = _same_length(y_true=y_true, y_pred=y_pred)
    return float(np.mean(np.abs(y_true - y_pred))) if n else math.nan


# ---------------------------------------------------------------- intervals
def wilson_ci(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion of ``k`` successes in ``n`` trials.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and behaves at k = 0 or
    k = n. ``wilson_ci(81, 263)`` is about (0.2553, 0.3662).
    """
    _check_conf(conf)
    if int(n) != n or int(k) != k or n <= 0 or not 0 <= k <= n:
        raise FacetransferError(f"wilson_ci needs integers 0 <= k <= n and n > 0; got k={k!r}, n={n!r}")
    z = _z(conf)
    p = k / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, center - half)  # exact bounds at the edges (no round-off)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


class BootstrapCI(tuple):
    """``(point, lo, hi)`` that also carries ``n_used`` (resamples where the statistic was
    defined), ``n_boot`` (resamples drawn) and ``conf``. Unpacks as three values."""

    def __new__(cls, point: float, lo: float, hi: float, *, n_used: int, n_boot: int, conf: float):
        self = super().__new__(cls, (point, lo, hi))
        self.n_used, self.n_boot, self.conf = n_used, n_boot, conf
        return self

    @property
    def point(self) -> float:
        return self[0]

    @property
    def lo(self) -> float:
        return self[1]

    @property
    def hi(self) -> float:
        return self[2]

    def __repr__(self) -> str:
        return f"BootstrapCI(point={self[0]:.6g}, lo={self[1]:.6g}, hi={self[2]:.6g}, n_used={self.n_used}/{self.n_boot})"


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays,
    n_boot: int = 1000,
    conf: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``statistic(*arrays)``.

    The arrays are resampled *paired*: one set of row indices (drawn with replacement)
    is applied to every array, so e.g. ``bootstrap_ci(f1_macro, y_true, y_pred)`` keeps
    each prediction with its label. A resample where the statistic is undefined (it
    returns NaN / inf, e.g. AUC of a one-class resample) is skipped and counted: the
    result's ``n_used`` says how many of the ``n_boot`` resamples made the interval.
    ``n_boot=0`` gives the point estimate with NaN bounds. Same seed → same interval.
    """
    _check_conf(conf)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise FacetransferError(f"n_boot={n_boot!r} must be an integer >= 0")
    if not arrays:
        raise FacetransferError("bootstrap_ci needs at least one array to resample")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = _same_length(**{f"array {i}": a for i, a in enumerate(arrays)})
    point = float(statistic(*arrays))
    if n == 0 or n_boot == 0:
        return BootstrapCI(point, math.nan, math.nan, n_used=0, n_boot=int(n_boot), conf=conf)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, size=n)
        values[i] = statistic(*(a[idx] for a in arrays))
    used = values[np.isfinite(values)]
    if used.size == 0:
        return BootstrapCI(point, math.nan, math.nan, n_used=0, n_boot=int(n_boot), conf=conf)
    alpha = 1.0 - conf
    lo, hi = np.percentile(used, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return BootstrapCI(point, float(lo), float(hi), n_used=int(used.size), n_boot=int(n_boot), conf=conf)


# ---------------------------------------------------------------- paired tests
def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test of two classifiers on the same test items.

    ``correct_a[i]`` / ``correct_b[i]``: whether each model got item i right. Only the
    discordant pairs count: ``b`` = A right and B wrong, ``c`` = A wrong and B right.
    With b + c < 25 the exact two-sided binomial test (statistic = min(b, c)); otherwise
    the chi-square test with continuity correction, (|b - c| - 1)^2 / (b + c), 1 dof.
    b + c == 0 (the models never disagree) gives p = 1.
    """
    a = _as_1d("correct_a", correct_a).astype(bool)
    b_arr = _as_1d("correct_b", correct_b).astype(bool)
    n = _same_length(correct_a=a, correct_b=b_arr)
    b = int(np.sum(a & ~b_arr))
    c = int(np.sum(~a & b_arr))
    if b + c == 0:
        return {"b": 0, "c": 0, "n": n, "statistic": 0.0, "p_value": 1.0, "method": "no discordant pairs"}
    if b + c < 25:
        p = sps.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
        return {"b": b, "c": c, "n": n, "statistic": float(min(b, c)), "p_value": float(min(1.0, p)), "method": "exact binomial"}
    statistic = (abs(b - c) - 1.0) ** 2 / (b + c)
    p = sps.chi2.sf(statistic, df=1)
    return {"b": b, "c": c, "n": n, "statistic": float(statistic), "p_value": float(p), "method": "chi-square, continuity corrected"}


def holm(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (same order as given), capped at 1."""
    p = _as_1d("p_values", p_values).astype(float)
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise FacetransferError("p_values must be finite numbers in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(scaled))
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted


def verdict(p_adjusted: float, acc_a: float, acc_b: float, name_a: str, name_b: str, alpha: float = 0.05) -> str:
    """Plain-language reading of one (Holm-adjusted) McNemar p-value."""
    if p_adjusted >= alpha:
        return f"no significant difference (alpha {alpha:g})"
    better = name_a if acc_a > acc_b else name_b
    return f"{better} is significantly more accurate (alpha {alpha:g})"


def mcnemar_all_pairs(correct: Mapping[str, Sequence[bool]], *, alpha: float = 0.05) -> pd.DataFrame:
    """McNemar's test for every pair of models, with Holm's correction over all pairs.

    ``correct`` maps a model name to its per-item correctness, items in the same order
    for every model. Columns: a, b (names), n, acc_a, acc_b, b_count, c_count, statistic,
    method, p_value, p_holm, verdict.
    """
    if not 0.0 < alpha < 1.0:
        raise FacetransferError(f"alpha={alpha!r} must be strictly between 0 and 1")
    names = list(correct)
    rows = []
    for name_a, name_b in combinations(names, 2):
        ca = _as_1d(name_a, correct[name_a]).astype(bool)
        cb = _as_1d(name_b, correct[name_b]).astype(bool)
        test = mcnemar(ca, cb)
        rows.append(
            {
                "a": name_a,
                "b": name_b,
                "n": test["n"],
                "acc_a": float(ca.mean()) if ca.size else math.nan,
                "acc_b": float(cb.mean()) if cb.size else math.nan,
                "b_count": test["b"],
                "c_count": test["c"],
                "statistic": test["statistic"],
                "method": test["method"],
                "p_value": test["p_value"],
            }
        )
    columns = ["a", "b", "n", "acc_a", "acc_b", "b_count", "c_count", "statistic", "method", "p_value", "p_holm", "verdict"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p_value"].to_numpy())
    table["verdict"] = [
        verdict(r.p_holm, r.acc_a, r.acc_b, str(r.a), str(r.b), alpha) for r in table.itertuples()
    ]
    return table[columns]


# ---------------------------------------------------------------- calibration
def _confidence_and_hit(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    """Binary (prob 1-D = P(class 1)): confidence = prob, hit = (y_true == 1).
    Multiclass (prob 2-D, one column per class): confidence = max prob,
    hit = (argmax == y_true)."""
    y_true = _as_1d("y_true", y_true)
    prob = np.asarray(prob)
    _check_probabilities("prob", prob)
    prob = prob.astype(float)
    if prob.ndim == 1:
        _same_length(y_true=y_true, prob=prob)
        if not set(np.unique(y_true).tolist()) <= {0, 1}:
            raise FacetransferError("binary calibration needs y_true in {0, 1} (1 = male); pass prob as (N, classes) for multiclass")
        return prob, (y_true == 1).astype(float)
    if prob.ndim == 2:
        _same_length(y_true=y_true, prob=prob)
        return prob.max(axis=1), (prob.argmax(axis=1) == y_true).astype(float)
    raise FacetransferError(f"prob must be 1-D (P(male)) or 2-D (N, classes); got shape {prob.shape}")


def reliability_table(y_true, prob, n_bins: int = 10) -> pd.DataFrame:
    """Reliability-diagram table over ``n_bins`` equal-width bins of [0, 1].

    Binary case (``prob`` 1-D, P(male)): ``mean_confidence`` is the mean P(male) in the
    bin and ``accuracy`` the fraction of males in it (a calibrated model has them equal).
    Multiclass (``prob`` 2-D): the max-probability variant (confidence = top probability,
    accuracy = fraction whose top class is right). Bins are [lo, hi) except the last,
    [lo, 1]. Empty bins have count 0 and NaN means. Columns: bin, lo, hi, count,
    mean_confidence, accuracy.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise FacetransferError(f"n_bins={n_bins!r} must be an integer >= 1")
    confidence, hit = _confidence_and_hit(y_true, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(which, weights=hit, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        acc = np.where(count > 0, hit_sum / count, np.nan)
    return pd.DataFrame(
        {"bin": np.arange(n_bins), "lo": edges[:-1], "hi": edges[1:], "count": count, "mean_confidence": mean_conf, "accuracy": acc}
    )


def expected_calibration_error(y_true, prob, n_bins: int = 10) -> float:
    """ECE = sum over bins of (count / N) * |accuracy - mean_confidence|.

    Same binning and binary / multiclass conventions as :func:`reliability_table`.
    NaN for zero samples.
    """
    table = reliability_table(y_true, prob, n_bins)
    total = table["count"].sum()
    if total == 0:
        return math.nan
    filled = table[table["count"] > 0]
    gaps = (filled["accuracy"] - filled["mean_confidence"]).abs()
    return float((filled["count"] / total * gaps).sum())


# ---------------------------------------------------------------- subgroups
def subgroup_metrics(
    frame: pd.DataFrame,
    group_col: str,
    *,
    y_true: str = "y_true",
    y_pred: str = "y_pred",
    prob: str | None = None,
    age_true: str | None = None,
    age_pred: str | None = None,
    labels: Sequence = (0, 1),
    conf: float = 0.95,
    min_n: int = 1,
) -> pd.DataFrame:
    """Metrics per value of ``group_col``, one row per group (largest first).

    Columns: group, n, accuracy, acc_lo, acc_hi (Wilson ``conf`` interval), f1_macro
    (over ``labels``; NaN when a label has neither true nor predicted samples in the
    group), plus auc when ``prob`` is given and mae when ``age_true``/``age_pred`` are.
    Rows whose group value is missing form their own group ``"<missing>"`` (never
    dropped). Pass ``y_true=None`` for an age-only table.

    The gap is returned in ``table.attrs``: ``attrs["gap"]`` maps each metric to
    best − worst over groups with n >= ``min_n`` (for mae: worst − best, so a gap is
    always >= 0), ``attrs["best"]`` / ``attrs["worst"]`` name the groups with the highest
    / lowest accuracy (lowest / highest mae for age-only tables).
    """
    if group_col not in frame.columns:
        raise FacetransferError(f"subgroup column {group_col!r} is not in the predictions; columns: {', '.join(map(str, frame.columns))}")
    needed = [c for c in (y_true, y_pred, prob, age_true, age_pred) if c is not None]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise FacetransferError(f"columns {missing} are not in the predictions; columns: {', '.join(map(str, frame.columns))}")
    if (y_true is None) != (y_pred is None) or (age_true is None) != (age_pred is None):
        raise FacetransferError("give y_true and y_pred together, and age_true and age_pred together")
    if y_true is None and age_true is None:
        raise FacetransferError("subgroup_metrics needs y_true/y_pred or age_true/age_pred")
    groups = frame[group_col].astype(object).where(frame[group_col].notna(), MISSING_GROUP)
    rows = []
    for value, part in frame.groupby(groups, sort=False):
        row = {"group": value, "n": len(part)}
        if y_true is not None:
            yt, yp = part[y_true].to_numpy(), part[y_pred].to_numpy()
            k = int(np.sum(yt == yp))
            row["accuracy"] = k / len(part)
            row["acc_lo"], row["acc_hi"] = wilson_ci(k, len(part), conf)
            row["f1_macro"] = f1_macro(yt, yp, labels)
            if prob is not None:
                row["auc"] = roc_auc(yt, part[prob].to_numpy(dtype=float))
        if age_true is not None:
            row["mae"] = mae(part[age_true].to_numpy(dtype=float), part[age_pred].to_numpy(dtype=float))
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("n", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "attribute", group_col)
    _attach_gap(table, min_n)
    return table


def _attach_gap(table: pd.DataFrame, min_n: int) -> None:
    eligible = table[table["n"] >= min_n]
    gap = {}
    for metric in ("accuracy", "f1_macro", "auc", "mae"):
        if metric in eligible and eligible[metric].notna().any():
            gap[metric] = float(eligible[metric].max() - eligible[metric].min())
    key, ascending = ("accuracy", False) if "accuracy" in eligible else ("mae", True)
    ranked = eligible.dropna(subset=[key]).sort_values(key, ascending=ascending, kind="stable")
    table.attrs["gap"] = gap
    table.attrs["best"] = ranked["group"].iloc[0] if len(ranked) else None
    table.attrs["worst"] = ranked["group"].iloc[-1] if len(ranked) else None
    table.attrs["min_n"] = min_n


def age_band(ages, edges: Sequence[float] = (0, 20, 30, 40, 50, 60)) -> pd.Series:
    """Age in years → band labels "0-19", "20-29", ..., "60+" (NaN age stays missing)."""
    ages = pd.Series(ages, dtype=float)
    edges = list(edges)
    if len(edges) < 1 or sorted(edges) != edges or len(set(edges)) != len(edges):
        raise FacetransferError(f"age band edges {edges} must be strictly increasing")
    if (ages.dropna() < edges[0]).any():
        raise FacetransferError(f"ages below the first band edge {edges[0]} found")
    labels = [f"{lo:g}-{hi - 1:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)] + [f"{edges[-1]:g}+"]
    bins = edges + [math.inf]
    return pd.cut(ages, bins=bins, labels=labels, right=False)


# ---------------------------------------------------------------- repeats / folds
def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof = 1), n) of the finite values.

    Non-finite values are an error (a failed repeat must be shown, not averaged away).
    std is NaN for a single value.
    """
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        return math.nan, math.nan, 0
    if not np.all(np.isfinite(arr)):
        raise FacetransferError(f"mean_std got non-finite values {arr.tolist()}; exclude failed runs explicitly")
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else math.nan
    return float(np.mean(arr)), std, int(arr.size)


def format_mean_std(values, digits: int = 3) -> str:
    """``"0.912 ± 0.010 (n=3)"``; a single value prints without ±."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "n/a"
    if n == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"
