"""A trained model's predictions and metrics on the validation and test splits.

:func:`evaluate_run` predicts the validation and test splits of a prepared data set and
returns an :class:`Evaluation`: the metrics dict that goes into ``metrics.json`` (computed
by :mod:`facetransfer.metrics`, the one home of every metric) and a predictions table (one
row per image, with its ``subject`` where the dataset has identities) that the notebooks
and :mod:`facetransfer.stats` read.

Metrics per split, by task (every dict also has ``n``, ``degenerate``,
``degenerate_reason`` and ``baseline``, the training-split baseline of the degenerate rule):

- ``gender``: ``accuracy``, ``precision`` / ``recall`` / ``f1`` / ``support`` per class
  (``{"female": ..., "male": ...}``), ``precision_macro``, ``recall_macro``, ``f1_macro``,
  ``auc`` (ROC-AUC of P(male); ``None`` with one true class), ``confusion_matrix`` (rows =
  true, cols = predicted, order female, male), ``classes``, ``predicted_share``.
- ``age_group``: the same over the 8 Adience groups (no ``auc``), plus
  ``one_off_accuracy`` (prediction within one group of the truth).
- ``age``: ``mae``, ``rmse``, and the predicted years binned into the 8 age groups:
  ``accuracy``, ``one_off_accuracy``, ``f1_macro``, ``confusion_matrix`` (8 x 8) — so
  every task has ``accuracy`` and ``f1_macro``.
- ``age_gender``: the gender metrics at the top level, ``mae`` of the age output at the
  top level, and ``outputs: {"gender": {...}, "age": {...}}`` with both full dicts; it is
  degenerate when either head is.

The degenerate rule (:mod:`facetransfer.metrics`): a class head that puts more than 95 %
of a split into one class (which holds at most 95 % of the training labels) or does not
beat the training split's majority class; an age head whose predictions are nearly
constant or do not beat the training split's median age.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from facetransfer.errors import FacetransferError, ParamError
from facetransfer.metrics import THRESHOLD, age_to_group, task_metrics

__all__ = ["Evaluation", "age_to_group", "check_subgroups", "evaluate_run", "evaluate_split", "predict_split"]

EXTRA_COLUMNS = ("race", "Young")  # record columns copied into predictions when present


@dataclass
class Evaluation:
    metrics: dict  # {"val": {...} | None, "test": {...}}
    predictions: pd.DataFrame  # path, split, row, y_true, y_pred, prob, ... (see evaluate_run)


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
    return task_metrics(cfg["task"], data.targets(split), outputs, data.targets("train"))


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

    Predictions columns: ``path, split, row`` (row in the image cache), ``subject`` where
    the dataset has identities (the unit of the person-level intervals), then by task
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
        metrics[split] = task_metrics(task, y_true, out, data.targets("train"))
        recs = data.records[data.records["split"] == split]
        frame = pd.DataFrame({"path": recs["path"].to_numpy(), "split": split, "row": recs["row"].to_numpy()})
        if "subject" in recs.columns and recs["subject"].notna().any():
            frame["subject"] = recs["subject"].to_numpy()
        frame = _prediction_frame(task, frame, y_true, out)
        for col in extra:
            frame[col] = recs[col].to_numpy()
        frames.append(frame)
    return Evaluation(metrics=metrics, predictions=pd.concat(frames, ignore_index=True))
