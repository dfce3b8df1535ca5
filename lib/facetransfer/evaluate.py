"""Metrics of a trained model on the validation and test splits.

The metric functions work on plain numpy arrays (and are tested against scikit-learn).
:func:`evaluate_run` predicts the validation and test splits of a prepared data set and
returns an :class:`Evaluation`: the metrics dict that goes into ``metrics.json`` and a
predictions table (one row per image) that the notebooks and ``stats`` read.

Metrics per split, by task (every dict also has ``n``, ``degenerate`` and
``degenerate_reason``):

- ``gender``: ``accuracy``, ``precision`` / ``recall`` / ``f1`` / ``support`` per class
  (``{"female": ..., "male": ...}``), ``precision_macro``, ``recall_macro``, ``f1_macro``,
  ``auc`` (ROC-AUC of P(male)), ``confusion_matrix`` (rows = true, cols = predicted, order female, male),
  ``classes``, ``majority_rate``, ``predicted_share``.
- ``age_group``: the same over the 8 Adience groups (no ``auc``), plus
  ``one_off_accuracy`` (prediction within one group of the truth).
- ``age``: ``mae``, ``rmse``, ``baseline_mae`` (always predicting the median age), and the
  predicted years binned into the 8 age groups: ``accuracy``, ``one_off_accuracy``,
  ``f1_macro``, ``confusion_matrix`` (8 x 8) — so every task has ``accuracy`` and
  ``f1_macro``.
- ``age_gender``: the gender metrics at the top level, ``mae`` of the age output at the
  top level, and ``outputs: {"gender": {...}, "age": {...}}`` with both full dicts.

A model is flagged ``degenerate`` when it puts more than 95 % of a split into one class
that is not itself more than 95 % of the truth, or when it does not beat the majority
rate (age: does not beat ``baseline_mae``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from facetransfer.errors import FacetransferError, ParamError

GENDER_CLASSES = ("female", "male")
AGE_GROUPS = ("0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100")
# Years -> Adience group: the boundaries lie halfway between neighbouring groups, a value
# on a boundary goes to the younger group (the rule of datasets.adience.group_of).
AGE_GROUP_EDGES = (3.0, 7.0, 13.5, 22.5, 35.0, 45.5, 56.5)
DEGENERATE_SHARE = 0.95
THRESHOLD = 0.5
EXTRA_COLUMNS = ("race", "Young")  # record columns copied into predictions when present


@dataclass
class Evaluation:
    metrics: dict  # {"val": {...} | None, "test": {...}}
    predictions: pd.DataFrame  # path, split, row, y_true, y_pred, prob, ... (see evaluate_run)


# ---------------------------------------------------------------- metric functions


def _labels(y) -> np.ndarray:
    return np.asarray(y).astype(np.int64).ravel()


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class (classes 0..n_classes-1)."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def precision_recall_f1(y_true, y_pred, n_classes: int) -> dict:
    """Per-class ``precision``, ``recall``, ``f1``, ``support`` arrays (0 where undefined)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(n_classes), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n_classes), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n_classes), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def f1_macro(y_true, y_pred, n_classes: int) -> float:
    """Unweighted mean F1 over the classes present in the truth or the predictions."""
    prf = precision_recall_f1(y_true, y_pred, n_classes)
    present = np.union1d(_labels(y_true), _labels(y_pred))
    return float(prf["f1"][present].mean()) if len(present) else float("nan")


def roc_auc(y_true, score) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied ranks); None with one class only."""
    y_true = _labels(y_true)
    score = np.asarray(score, dtype=np.float64).ravel()
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def mae(y_true, y_pred) -> float:
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    return float(np.mean(np.abs(y_true - y_pred)))


def rmse(y_true, y_pred) -> float:
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def one_off_accuracy(y_true, y_pred) -> float:
    """Share of predictions at most one (ordered) class away from the truth."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    return float(np.mean(np.abs(y_true - y_pred) <= 1))


def majority_rate(y_true) -> float:
    """Accuracy of always predicting the most frequent true class."""
    y_true = _labels(y_true)
    return float(np.bincount(y_true).max() / len(y_true))


def age_to_group(years) -> np.ndarray:
    """Ages in years → Adience group index 0..7 (nearest group; ties to the younger one)."""
    return np.digitize(np.asarray(years, dtype=np.float64).ravel(), AGE_GROUP_EDGES, right=True).astype(np.int64)


def degenerate(y_true, y_pred, n_classes: int) -> tuple[bool, str | None]:
    """(flag, reason): one class > 95 % of predictions, or no better than the majority rate."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    pred_share = np.bincount(y_pred, minlength=n_classes) / len(y_pred)
    true_share = np.bincount(y_true, minlength=n_classes) / len(y_true)
    top = int(pred_share.argmax())
    if pred_share[top] > DEGENERATE_SHARE and true_share[top] <= DEGENERATE_SHARE:
        return True, f"predicts class {top} for {pred_share[top]:.1%} of {len(y_pred)} images (true share {true_share[top]:.1%})"
    acc, base = accuracy(y_true, y_pred), majority_rate(y_true)
    if acc <= base:
        return True, f"accuracy {acc:.3f} does not beat the majority rate {base:.3f}"
    return False, None


def classification_metrics(y_true, y_pred, class_names, prob=None) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix, degenerate flag."""
    n_classes = len(class_names)
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    prf = precision_recall_f1(y_true, y_pred, n_classes)
    present = np.union1d(y_true, y_pred)
    flag, reason = degenerate(y_true, y_pred, n_classes)
    out = {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "classes": list(class_names),
        "precision": dict(zip(class_names, prf["precision"].tolist(), strict=True)),
        "recall": dict(zip(class_names, prf["recall"].tolist(), strict=True)),
        "f1": dict(zip(class_names, prf["f1"].tolist(), strict=True)),
        "support": dict(zip(class_names, prf["support"].tolist(), strict=True)),
        "precision_macro": float(prf["precision"][present].mean()),
        "recall_macro": float(prf["recall"][present].mean()),
        "f1_macro": float(prf["f1"][present].mean()),
        "confusion_matrix": confusion_matrix(y_true, y_pred, n_classes).tolist(),
        "majority_rate": majority_rate(y_true),
        "predicted_share": dict(zip(class_names, (np.bincount(y_pred, minlength=n_classes) / len(y_pred)).tolist(), strict=True)),
        "degenerate": flag,
        "degenerate_reason": reason,
    }
    if prob is not None and n_classes == 2:
        out["auc"] = roc_auc(y_true, prob)
    return out


def gender_metrics(y_true, prob, threshold: float = THRESHOLD) -> dict:
    """Binary metrics from P(male); class order female (0), male (1)."""
    prob = np.asarray(prob, dtype=np.float64).ravel()
    y_pred = (prob >= threshold).astype(np.int64)
    out = classification_metrics(y_true, y_pred, GENDER_CLASSES, prob=prob)
    out["threshold"] = threshold
    return out


def age_group_metrics(y_true, prob) -> dict:
    """Metrics of an 8-way age-group classifier from its (N, 8) probabilities."""
    y_pred = np.asarray(prob).reshape(len(prob), -1).argmax(axis=1)
    out = classification_metrics(y_true, y_pred, AGE_GROUPS)
    out["one_off_accuracy"] = one_off_accuracy(y_true, y_pred)
    return out


def age_metrics(y_true, y_pred) -> dict:
    """Regression metrics in years plus the age-group metrics of the binned predictions."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    groups = classification_metrics(age_to_group(y_true), age_to_group(y_pred), AGE_GROUPS)
    base = mae(y_true, np.full_like(y_true, np.median(y_true)))
    err = mae(y_true, y_pred)
    flag, reason = groups["degenerate"], groups["degenerate_reason"]
    if err >= base:
        flag, reason = True, f"MAE {err:.2f} does not beat the median-age baseline {base:.2f}"
    return {
        "n": int(len(y_true)),
        "mae": err,
        "rmse": rmse(y_true, y_pred),
        "baseline_mae": base,
        "accuracy": groups["accuracy"],
        "one_off_accuracy": one_off_accuracy(age_to_group(y_true), age_to_group(y_pred)),
        "f1_macro": groups["f1_macro"],
        "classes": groups["classes"],
        "confusion_matrix": groups["confusion_matrix"],
        "degenerate": flag,
        "degenerate_reason": reason,
    }


def task_metrics(task: str, y_true: dict, y_pred: dict) -> dict:
    """Metrics of one split from true labels and raw model outputs, both keyed by output name.

    Non-finite outputs (a diverged model) make the split ``degenerate`` with that reason.
    """
    metrics = _task_metrics(task, y_true, y_pred)
    bad = sum(int((~np.isfinite(np.asarray(v, dtype=np.float64))).sum()) for v in y_pred.values())
    if bad:
        metrics["degenerate"] = True
        metrics["degenerate_reason"] = f"{bad} non-finite model outputs (did training diverge?)"
    return metrics


def _task_metrics(task: str, y_true: dict, y_pred: dict) -> dict:
    if task == "gender":
        return gender_metrics(y_true["gender"], y_pred["gender"])
    if task == "age":
        return age_metrics(y_true["age"], y_pred["age"])
    if task == "age_group":
        return age_group_metrics(y_true["age_group"], y_pred["age_group"])
    if task == "age_gender":
        g = gender_metrics(y_true["gender"], y_pred["gender"])
        a = age_metrics(y_true["age"], y_pred["age"])
        return {**g, "mae": a["mae"], "outputs": {"gender": g, "age": a}}
    raise ParamError("task", f"{task!r} is not allowed; allowed: gender, age, age_group, age_gender")


# ---------------------------------------------------------------- model predictions


def predict_split(model, data, cfg: dict, split: str, *, results_root=None, verbose="auto") -> dict:
    """Raw model outputs for one split, keyed by output name (rows in ``data.rows(split)`` order).

    With ``results_root`` and ``train.feature_cache`` on, a model with a frozen prefix
    predicts from the cached prefix features (the same numbers as from the images, up to
    float rounding; computed once and cached on a miss) — float32 features whatever
    ``train.feature_precision``, so the metrics are those of the saved model; otherwise from
    the images.
    """
    from facetransfer import models, train

    if len(data.rows(split)) == 0:
        raise FacetransferError(f"data.split.fractions: the {split} split is empty; give it a fraction > 0")
    batch_size = cfg["train"]["batch_size"]
    cut = None
    if results_root is not None and cfg["train"]["feature_cache"]:
        cut = models.split_frozen_prefix(model)
    if cut is not None:
        prefix, remainder = cut
        features, _ = train.split_features(prefix, data, cfg, split, results_root, precision="float32")  # what model.keras computes
        out = remainder.predict(train.ArrayFeeder(features, None, batch_size=batch_size), verbose=verbose)
    else:
        out = model.predict(data.feeder(split, batch_size=batch_size, shuffle=False), verbose=verbose)
    if not isinstance(out, dict):
        raise FacetransferError(f"model: expected dict outputs keyed by output name, got {type(out).__name__}")
    return {name: np.asarray(value, dtype=np.float32) for name, value in out.items()}


def evaluate_split(model, data, cfg: dict, split: str, *, results_root=None, verbose="auto") -> dict:
    """Metrics of one split (used by the search on ``val``)."""
    outputs = predict_split(model, data, cfg, split, results_root=results_root, verbose=verbose)
    return task_metrics(cfg["task"], data.targets(split), outputs)


def check_subgroups(cfg: dict, records: pd.DataFrame) -> list[str]:
    """The subgroup columns of ``eval.subgroups``; ParamError naming a missing one."""
    wanted = list(cfg["eval"]["subgroups"])
    for col in wanted:
        if col not in records.columns:
            allowed = ", ".join(c for c in records.columns if c not in ("path", "split", "row"))
            raise ParamError("eval.subgroups", f"{col!r} is not a column of the records; available: {allowed} (add attributes with data.attributes)")
    return wanted + [c for c in EXTRA_COLUMNS if c in records.columns and c not in wanted]


def _prediction_frame(task: str, frame: pd.DataFrame, y_true: dict, out: dict) -> pd.DataFrame:
    if task in ("gender", "age_gender"):
        prob = out["gender"].ravel()
        frame["y_true"] = y_true["gender"].astype(np.int64)
        frame["prob"] = prob
        frame["y_pred"] = (prob >= THRESHOLD).astype(np.int64)
        frame["correct"] = frame["y_true"] == frame["y_pred"]
    if task == "age_group":
        prob = out["age_group"].reshape(len(frame), -1)
        frame["y_true"] = y_true["age_group"].astype(np.int64)
        frame["y_pred"] = prob.argmax(axis=1)
        frame["prob"] = prob.max(axis=1)
        frame["correct"] = frame["y_true"] == frame["y_pred"]
        for k in range(prob.shape[1]):
            frame[f"prob_{k}"] = prob[:, k]
    if task == "age":
        frame["y_true"] = y_true["age"].astype(np.float64)
        frame["y_pred"] = out["age"].ravel().astype(np.float64)
        frame["abs_error"] = (frame["y_true"] - frame["y_pred"]).abs()
    if task == "age_gender":
        frame["age_true"] = y_true["age"].astype(np.float64)
        frame["age_pred"] = out["age"].ravel().astype(np.float64)
        frame["abs_error"] = (frame["age_true"] - frame["age_pred"]).abs()
    return frame


def evaluate_run(model, data, cfg: dict, *, results_root=None, verbose="auto") -> Evaluation:
    """Predict val and test; metrics per split and one predictions row per image.

    Predictions columns: ``path, split, row`` (row in the image cache), then by task
    ``y_true, prob, y_pred, correct`` (gender: prob = P(male); age_group: prob of the
    predicted group plus ``prob_0..prob_7``), ``y_true, y_pred, abs_error`` (age, years),
    and for age_gender the gender columns plus ``age_true, age_pred, abs_error``; then the
    columns of ``eval.subgroups`` and ``race`` / ``Young`` where the records have them.
    An empty val split gives ``metrics["val"] = None``. ``results_root``: predict from the
    cached frozen-prefix features where possible (see :func:`predict_split`).
    """
    task = cfg["task"]
    extra = check_subgroups(cfg, data.records)
    metrics: dict = {}
    frames = []
    for split in ("val", "test"):
        if split == "val" and len(data.rows(split)) == 0:
            metrics[split] = None
            continue
        out = predict_split(model, data, cfg, split, results_root=results_root, verbose=verbose)
        y_true = data.targets(split)
        metrics[split] = task_metrics(task, y_true, out)
        recs = data.records[data.records["split"] == split]
        frame = pd.DataFrame({"path": recs["path"].to_numpy(), "split": split, "row": recs["row"].to_numpy()})
        frame = _prediction_frame(task, frame, y_true, out)
        for col in extra:
            frame[col] = recs[col].to_numpy()
        frames.append(frame)
    return Evaluation(metrics=metrics, predictions=pd.concat(frames, ignore_index=True))
