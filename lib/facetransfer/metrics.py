"""Every point metric of the project, in one place, on scikit-learn.

Accuracy, per-class and macro precision / recall / F1, the confusion matrix, ROC-AUC,
MAE, the reliability table (``sklearn.calibration.calibration_curve``) with its expected
calibration error, and the one ``degenerate`` rule of every head. Intervals and tests
live in :mod:`facetransfer.stats`; they call these functions on resampled data.

Conventions (the ``metrics.json`` contract): confusion matrices have rows = true class,
columns = predicted class, classes in label order (gender: female 0, male 1); macro
averages run over the classes present in the truth or the predictions, an undefined
per-class score counting 0 (scikit-learn's ``zero_division=0``); an undefined AUC (one
true class) is ``None`` in ``metrics.json`` and NaN in tables.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.dummy import DummyClassifier, DummyRegressor

from facetransfer.errors import FacetransferError, ParamError

GENDER_CLASSES = ("female", "male")
AGE_GROUPS = ("0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100")
# Years -> Adience group: the boundaries lie halfway between neighbouring groups, a value
# on a boundary goes to the younger group (the rule of datasets.adience.group_of).
AGE_GROUP_EDGES = (3.0, 7.0, 13.5, 22.5, 35.0, 45.5, 56.5)
DEGENERATE_SHARE = 0.95  # a classifier putting more than this share into one class is flagged
MIN_AGE_SPREAD = 1.0  # an age head whose predictions have a smaller std (years) is flagged
THRESHOLD = 0.5
TASKS = ("gender", "age", "age_group", "age_gender")


# ---------------------------------------------------------------- point metrics
def _labels(y) -> np.ndarray:
    return np.asarray(y).astype(np.int64).ravel()


def accuracy(y_true, y_pred) -> float:
    """Fraction of equal labels; NaN for zero samples."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    return float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else math.nan


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class (classes 0..n_classes-1)."""
    return skm.confusion_matrix(_labels(y_true), _labels(y_pred), labels=np.arange(n_classes))


def f1_macro(y_true, y_pred) -> float:
    """Macro F1 over the classes present in either array (undefined per-class F1 counts 0)."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)) if len(y_true) else math.nan


def roc_auc(y_true, prob) -> float:
    """Area under the ROC curve of P(class 1); NaN when ``y_true`` holds one class only."""
    y_true = _labels(y_true)
    if len(np.unique(y_true)) < 2:
        return math.nan
    return float(skm.roc_auc_score(y_true, np.asarray(prob, dtype=np.float64).ravel()))


def mae(y_true, y_pred) -> float:
    """Mean absolute error; NaN for zero samples."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    return float(skm.mean_absolute_error(y_true, np.asarray(y_pred, dtype=np.float64).ravel())) if len(y_true) else math.nan


def one_class(y_true) -> bool:
    """True when ``y_true`` holds a single class: F1 and AUC are then n/a (one class)."""
    return len(np.unique(np.asarray(y_true))) < 2


def age_to_group(years) -> np.ndarray:
    """Ages in years → Adience group index 0..7 (nearest group; ties to the younger one)."""
    return np.digitize(np.asarray(years, dtype=np.float64).ravel(), AGE_GROUP_EDGES, right=True).astype(np.int64)


# ---------------------------------------------------------------- calibration
def _confidence_and_hit(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    """Binary (``prob`` 1-D = P(class 1)): confidence = prob, hit = (y_true == 1).
    Multiclass (``prob`` 2-D): confidence = top probability, hit = (argmax == y_true)."""
    y_true = np.asarray(y_true).ravel()
    prob = np.asarray(prob, dtype=np.float64)
    if prob.shape[:1] != y_true.shape or prob.ndim not in (1, 2):
        raise FacetransferError(f"prob must be 1-D (P(male)) or 2-D (N, classes) with N = {len(y_true)} rows; got shape {prob.shape}")
    if prob.size and (not np.all(np.isfinite(prob)) or prob.min() < 0.0 or prob.max() > 1.0):
        raise FacetransferError("prob must hold finite probabilities in [0, 1]")
    if prob.ndim == 1:
        if not set(np.unique(y_true).tolist()) <= {0, 1}:
            raise FacetransferError("binary calibration needs y_true in {0, 1} (1 = male); pass prob as (N, classes) for multiclass")
        return prob, (y_true == 1).astype(np.int64)
    return prob.max(axis=1), (prob.argmax(axis=1) == y_true).astype(np.int64)


def calibration_table(y_true, prob, n_bins: int = 10) -> pd.DataFrame:
    """Reliability table over ``n_bins`` equal-width bins of [0, 1] (scikit-learn's
    ``calibration_curve(strategy="uniform")`` and its binning).

    Binary (``prob`` 1-D, P(male)): ``mean_confidence`` is the mean P(male) in the bin and
    ``accuracy`` the share of males in it. Multiclass (``prob`` 2-D): confidence = top
    probability, accuracy = share whose top class is right. Empty bins: count 0 and NaN
    means. Columns: bin, lo, hi, count, mean_confidence, accuracy. ``attrs["ece"]``: the
    expected calibration error.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise FacetransferError(f"n_bins={n_bins!r} must be an integer >= 1")
    confidence, hit = _confidence_and_hit(y_true, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=n_bins)  # calibration_curve's bins
    table = pd.DataFrame({"bin": np.arange(n_bins), "lo": edges[:-1], "hi": edges[1:], "count": count,
                          "mean_confidence": np.nan, "accuracy": np.nan})
    if len(hit):
        prob_true, prob_pred = calibration_curve(hit, confidence, n_bins=n_bins, strategy="uniform", pos_label=1)
        table.loc[count > 0, "mean_confidence"] = prob_pred
        table.loc[count > 0, "accuracy"] = prob_true
    filled = table[table["count"] > 0]
    gaps = (filled["accuracy"] - filled["mean_confidence"]).abs()
    table.attrs["ece"] = float((filled["count"] / len(hit) * gaps).sum()) if len(hit) else math.nan
    return table


def expected_calibration_error(y_true, prob, n_bins: int = 10) -> float:
    """ECE = sum over bins of (count / N) * |accuracy - mean_confidence| (:func:`calibration_table`)."""
    return calibration_table(y_true, prob, n_bins).attrs["ece"]


# ---------------------------------------------------------------- baselines and degenerate
def class_baseline(train_labels, n_classes: int) -> DummyClassifier:
    """The majority-class predictor fit on the TRAINING labels."""
    train_labels = _labels(train_labels)
    if not len(train_labels):
        raise FacetransferError("the degenerate rule needs training labels; the train split is empty")
    return DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train_labels), 1)), train_labels)


def age_baseline(train_ages) -> DummyRegressor:
    """The median-age predictor fit on the TRAINING ages."""
    train_ages = np.asarray(train_ages, dtype=np.float64).ravel()
    if not len(train_ages):
        raise FacetransferError("the degenerate rule needs training ages; the train split is empty")
    return DummyRegressor(strategy="median").fit(np.zeros((len(train_ages), 1)), train_ages)


def _class_degenerate(y_true, y_pred, n_classes: int, train_labels, names) -> dict:
    """The rule for a class head: one class gets more than 95 % of the predictions while
    it holds at most 95 % of the training labels, or accuracy does not beat the majority
    class of the training labels."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    dummy = class_baseline(train_labels, n_classes)
    majority = int(dummy.classes_[np.argmax(dummy.class_prior_)])
    base = accuracy(y_true, dummy.predict(np.zeros((len(y_true), 1))))
    train_share = np.bincount(_labels(train_labels), minlength=n_classes) / len(_labels(train_labels))
    pred_share = np.bincount(y_pred, minlength=n_classes) / len(y_pred)
    top = int(pred_share.argmax())
    acc = accuracy(y_true, y_pred)
    reason = None
    if pred_share[top] > DEGENERATE_SHARE and train_share[top] <= DEGENERATE_SHARE:
        reason = f"predicts {names[top]} for {pred_share[top]:.1%} of {len(y_pred)} images (training share {train_share[top]:.1%})"
    elif acc <= base:
        reason = f"accuracy {acc:.3f} does not beat the training majority class ({names[majority]}) at {base:.3f}"
    baseline = {"strategy": "majority class of the training split", "class": names[majority],
                "train_share": float(train_share[majority]), "accuracy": base}
    return {"degenerate": reason is not None, "degenerate_reason": reason, "baseline": baseline}


def _age_degenerate(age_true, age_pred, train_ages) -> dict:
    """The rule for an age head: predictions nearly constant (std < 1 year), or an MAE
    no better than always predicting the median TRAINING age."""
    age_true, age_pred = np.asarray(age_true, dtype=np.float64), np.asarray(age_pred, dtype=np.float64)
    dummy = age_baseline(train_ages)
    median = float(dummy.constant_.ravel()[0])
    base = mae(age_true, dummy.predict(np.zeros((len(age_true), 1))))
    err, spread = mae(age_true, age_pred), float(np.std(age_pred))
    reason = None
    if spread < MIN_AGE_SPREAD:
        reason = f"age predictions nearly constant (std {spread:.2f} years)"
    elif err >= base:
        reason = f"MAE {err:.2f} does not beat the median training age ({median:g} years) at {base:.2f}"
    baseline = {"strategy": "median age of the training split", "median_age": median, "mae": base}
    return {"degenerate": reason is not None, "degenerate_reason": reason, "baseline": baseline}


# ---------------------------------------------------------------- per-task metrics
def classification_metrics(y_true, y_pred, class_names, train_labels, prob=None) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix, AUC (binary,
    with ``prob``), and the degenerate flag with its training baseline."""
    n_classes = len(class_names)
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    classes = np.arange(n_classes)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    macro = skm.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    out = {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "classes": list(class_names),
        "precision": dict(zip(class_names, precision.tolist(), strict=True)),
        "recall": dict(zip(class_names, recall.tolist(), strict=True)),
        "f1": dict(zip(class_names, f1.tolist(), strict=True)),
        "support": dict(zip(class_names, support.tolist(), strict=True)),
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "f1_macro": float(macro[2]),
        "confusion_matrix": confusion_matrix(y_true, y_pred, n_classes).tolist(),
        "predicted_share": dict(zip(class_names, (np.bincount(y_pred, minlength=n_classes) / len(y_pred)).tolist(), strict=True)),
    }
    out.update(_class_degenerate(y_true, y_pred, n_classes, train_labels, class_names))
    if prob is not None and n_classes == 2:
        auc = roc_auc(y_true, prob)
        out["auc"] = None if math.isnan(auc) else auc
    return out


def gender_metrics(y_true, prob, train_labels, threshold: float = THRESHOLD) -> dict:
    """Binary metrics from P(male); class order female (0), male (1)."""
    prob = np.asarray(prob, dtype=np.float64).ravel()
    y_pred = (prob >= threshold).astype(np.int64)
    out = classification_metrics(y_true, y_pred, GENDER_CLASSES, train_labels, prob=prob)
    out["threshold"] = threshold
    return out


def age_group_metrics(y_true, prob, train_labels) -> dict:
    """Metrics of an 8-way age-group classifier from its (N, 8) probabilities."""
    y_pred = np.asarray(prob).reshape(len(prob), -1).argmax(axis=1)
    out = classification_metrics(y_true, y_pred, AGE_GROUPS, train_labels)
    out["one_off_accuracy"] = float(np.mean(np.abs(_labels(y_true) - y_pred) <= 1))
    return out


def age_metrics(y_true, y_pred, train_ages) -> dict:
    """Regression metrics in years, the age-group metrics of the binned predictions, and
    the degenerate flag against the median training age."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    g_true, g_pred = age_to_group(y_true), age_to_group(y_pred)
    out = {
        "n": int(len(y_true)),
        "mae": mae(y_true, y_pred),
        "rmse": float(skm.root_mean_squared_error(y_true, y_pred)),
        "accuracy": accuracy(g_true, g_pred),
        "one_off_accuracy": float(np.mean(np.abs(g_true - g_pred) <= 1)),
        "f1_macro": float(skm.f1_score(g_true, g_pred, average="macro", zero_division=0)),
        "classes": list(AGE_GROUPS),
        "confusion_matrix": confusion_matrix(g_true, g_pred, len(AGE_GROUPS)).tolist(),
    }
    out.update(_age_degenerate(y_true, y_pred, train_ages))
    return out


def task_metrics(task: str, y_true: dict, y_pred: dict, train: dict) -> dict:
    """Metrics of one split from its true labels and raw model outputs (keyed by output
    name); ``train``: the TRAINING split's labels, keyed the same way (the baselines of
    the degenerate rule). An ``age_gender`` run is degenerate when either head is, and
    non-finite outputs (a diverged model) make any split degenerate."""
    bad = sum(int((~np.isfinite(np.asarray(v, dtype=np.float64))).sum()) for v in y_pred.values())
    # scikit-learn refuses NaN: score the finite part as 0 and flag the split (the reason says why)
    finite = {k: np.nan_to_num(np.asarray(v, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0) for k, v in y_pred.items()}
    metrics = _task_metrics(task, y_true, finite, train)
    if bad:
        metrics["degenerate"] = True
        metrics["degenerate_reason"] = f"{bad} non-finite model outputs (did training diverge?)"
    return metrics


def _task_metrics(task: str, y_true: dict, y_pred: dict, train: dict) -> dict:
    if task == "gender":
        return gender_metrics(y_true["gender"], y_pred["gender"], train["gender"])
    if task == "age":
        return age_metrics(y_true["age"], y_pred["age"], train["age"])
    if task == "age_group":
        return age_group_metrics(y_true["age_group"], y_pred["age_group"], train["age_group"])
    if task == "age_gender":
        g = gender_metrics(y_true["gender"], y_pred["gender"], train["gender"])
        a = age_metrics(y_true["age"], y_pred["age"], train["age"])
        heads = [f"{name} head: {m['degenerate_reason']}" for name, m in (("gender", g), ("age", a)) if m["degenerate"]]
        return {**g, "mae": a["mae"], "degenerate": bool(heads), "degenerate_reason": "; ".join(heads) or None,
                "baseline": {"gender": g["baseline"], "age": a["baseline"]}, "outputs": {"gender": g, "age": a}}
    raise ParamError("task", f"{task!r} is not allowed; allowed: {', '.join(TASKS)}")


def macro_precision_recall(y_true, y_pred) -> tuple[float, float]:
    """Macro precision and recall over the classes present (undefined per-class values count 0)."""
    precision, recall, _, _ = skm.precision_recall_fscore_support(_labels(y_true), _labels(y_pred), average="macro", zero_division=0)
    return float(precision), float(recall)


# ---------------------------------------------------------------- many resamples at once
# scikit-learn scores one weighting per call (about a millisecond each, more under load); a
# bootstrap needs a thousand, so these score a (B, n) matrix of resample counts in one pass.
# They equal f1_score / roc_auc_score with sample_weight=row (tests/test_stats.py checks it).
def f1_macro_resampled(y_true, y_pred, weights) -> np.ndarray:
    """Macro F1 per row of ``weights`` (B, n): scikit-learn's ``f1_score(average="macro",
    zero_division=0)`` on each weighted resample (classes present in it)."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    weights = np.asarray(weights, dtype=np.float64)
    total = np.zeros(len(weights))
    present = np.zeros(len(weights))
    for c in np.union1d(y_true, y_pred):
        tp = weights @ ((y_true == c) & (y_pred == c))
        support_plus_predicted = weights @ ((y_true == c).astype(np.float64) + (y_pred == c))
        here = support_plus_predicted > 0
        total += np.where(here, 2 * tp / np.where(here, support_plus_predicted, 1), 0.0)
        present += here
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present > 0, total / present, np.nan)


def roc_auc_resampled(y_true, prob, weights) -> np.ndarray:
    """ROC-AUC per row of ``weights`` (B, n) (ties count half, as ``roc_auc_score``);
    NaN where a resample holds one class."""
    from scipy import sparse

    y_true = _labels(y_true) == 1
    levels, level = np.unique(np.asarray(prob, dtype=np.float64).ravel(), return_inverse=True)
    n, k = len(level), len(levels)
    weights = np.asarray(weights, dtype=np.float64)
    pos = weights @ sparse.csr_matrix((y_true.astype(np.float64), (np.arange(n), level)), shape=(n, k))
    neg = weights @ sparse.csr_matrix(((~y_true).astype(np.float64), (np.arange(n), level)), shape=(n, k))
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.sum(pos * (below + 0.5 * neg), axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))
    return np.where(np.isfinite(auc), auc, np.nan)


def ece_resampled(y_true, prob, weights, n_bins: int = 10) -> np.ndarray:
    """Expected calibration error per row of ``weights`` (B, n), binned as
    :func:`calibration_table`: sum over bins of |hits − confidence sum| / N."""
    confidence, hit = _confidence_and_hit(y_true, prob)
    which = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], confidence)
    weights = np.asarray(weights, dtype=np.float64)
    gaps = np.zeros((len(weights), n_bins))
    for b in np.unique(which):
        inside = which == b
        gaps[:, b] = np.abs(weights[:, inside] @ (hit[inside] - confidence[inside]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return gaps.sum(axis=1) / weights.sum(axis=1)
