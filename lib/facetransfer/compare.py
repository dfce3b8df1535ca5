"""The tables of ``04_compare``: a study's runs side by side, with their uncertainty.

Everything here reads the run artifacts only (no model, no Keras):

``results/<study>/study.json``                 the runner's list of runs and the
                                               figures reported elsewhere ("reported")
``results/<study>/runs/<run_id>/metrics.json`` one per run (failed runs too)
``results/<study>/runs/<run_id>/predictions.csv`` per-image predictions

Columns read from ``predictions.csv`` (see :func:`prediction_columns`): ``path``,
``split`` and, for the gender output, ``y_true``, ``y_pred`` (0 female, 1 male) and
``prob`` (P(male)); ``gender_true``/``gender_pred``/``gender_prob`` are accepted too.
Age in years: ``age_true``/``age_pred`` (for ``task: age`` also ``y_true``/``y_pred``).
Adience groups (``task: age_group``): ``y_true``/``y_pred`` (or ``age_group_true``/
``age_group_pred``) in 0..7. Any other column (race, Young, age...) can be a subgroup.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from facetransfer import stats
from facetransfer.errors import FacetransferError
from facetransfer.params import flatten, is_known_key

STATUS_OK = "ok"
AGE_GROUPS = 8
METRIC_COLUMNS = {  # aggregate(): runs column -> label
    "test.accuracy": "Accuracy",
    "test.f1_macro": "F1",
    "test.auc": "AUC",
    "test.mae": "MAE",
    "timing.train_seconds": "Training time (s)",
}
_CI_METRICS = {  # reported metric -> comparison_table columns (point, lo, hi)
    "test.accuracy": ("accuracy", "acc_lo", "acc_hi"),
    "test.f1_macro": ("f1", "f1_lo", "f1_hi"),
    "test.auc": ("auc", "auc_lo", "auc_hi"),
    "test.mae": ("mae", "mae_lo", "mae_hi"),
}
_FRACTION_METRICS = ("accuracy", "f1", "auc", "precision", "recall")


# ---------------------------------------------------------------- loading
def read_study(study_dir) -> dict:
    """``<study_dir>/study.json`` as a dict (``{}`` when the runner has not written it)."""
    path = Path(study_dir) / "study.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FacetransferError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); re-run the study to rewrite it") from None


def _cell(value):
    """Lists become tuples so that param columns can be grouped and compared."""
    if isinstance(value, list):
        return tuple(_cell(v) for v in value)
    return value


def _read_metrics(path: Path) -> tuple[dict | None, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable metrics.json: {type(exc).__name__}: {exc}".splitlines()[0]


def _run_row(run_id: str, run_dir: Path, listed: Mapping | None) -> dict:
    metrics_path = run_dir / "metrics.json"
    row = {"run_id": run_id, "run_dir": str(run_dir), "error": None}
    params = dict((listed or {}).get("params") or {})
    if not metrics_path.is_file():
        row["status"] = "missing"
        row["error"] = "no metrics.json (not run yet, or interrupted)"
        metrics = {}
    else:
        metrics, error = _read_metrics(metrics_path)
        if metrics is None:
            row["status"], row["error"], metrics = "unreadable", error, {}
        else:
            row["status"] = str(metrics.get("status", "missing status"))
            row["error"] = metrics.get("error")
            params = metrics.get("params") or params
    row["name"] = params.get("name") or (listed or {}).get("name") or run_id
    for key, value in flatten(params).items():
        if key != "name":
            row[key] = _cell(value)
    for section in ("test", "val", "timing"):
        if isinstance(metrics.get(section), Mapping):
            for key, value in flatten(metrics[section], section).items():
                row[key] = _cell(value)
    cm = row.get("test.confusion_matrix")
    row["n_test"] = int(np.sum(cm)) if isinstance(cm, tuple) and len(cm) else None
    return row


def load_runs(study_dir) -> pd.DataFrame:
    """One row per run of the study: every ``runs/<id>/`` folder plus every run that
    ``study.json`` lists but that has no folder yet.

    Columns: ``run_id, name, label`` (name, made unique with the run id where names
    repeat), ``status`` (``ok`` | ``failed`` | ``missing`` | ``unreadable``), ``error``,
    ``run_dir``, ``n_test``, the flattened resolved params (``task``, ``seed``,
    ``model.backbone``, ... ; lists as tuples), and the flattened ``test.*``, ``val.*``
    and ``timing.*`` values of ``metrics.json``. Rows follow ``study.json``'s order, then
    run id. ``attrs``: ``study``, ``study_dir``, ``reported`` (from ``study.json``).
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FacetransferError(f"study folder {study_dir} does not exist; run `facetransfer run params/<study>.yaml` first")
    study = read_study(study_dir)
    listed = {str(r["run_id"]): r for r in study.get("runs", []) if isinstance(r, Mapping) and "run_id" in r}
    runs_dir = study_dir / "runs"
    folders = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    order = list(listed) + [f for f in folders if f not in listed]
    rows = [_run_row(run_id, runs_dir / run_id, listed.get(run_id)) for run_id in order]
    base = ["run_id", "name", "label", "status", "error", "run_dir", "n_test"]
    runs = pd.DataFrame(rows) if rows else pd.DataFrame(columns=[c for c in base if c != "label"])
    duplicated = runs["name"].duplicated(keep=False)
    runs["label"] = [f"{n} [{r[:6]}]" if d else n for n, r, d in zip(runs["name"], runs["run_id"], duplicated, strict=True)]
    runs = runs[base + [c for c in runs.columns if c not in base]]
    runs.attrs.update({"study": study.get("study", study_dir.name), "study_dir": str(study_dir), "reported": study.get("reported", [])})
    return runs


load_study_runs = load_runs  # the name docs/ARCHITECTURE.md first gave


def param_columns(runs: pd.DataFrame) -> list[str]:
    """The columns of ``runs`` that are run params (schema keys)."""
    return [c for c in runs.columns if c not in ("name", "run_id") and is_known_key(c)]


def _run_dir(run) -> Path:
    if isinstance(run, pd.Series):
        return Path(run["run_dir"])
    return Path(run)


def read_predictions(run, split: str = "test") -> pd.DataFrame | None:
    """The ``split`` rows of a run's ``predictions.csv`` (``run``: a row of
    :func:`load_runs` or a run folder); ``None`` when the run wrote no predictions."""
    path = _run_dir(run) / "predictions.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if "split" not in frame.columns:
        raise FacetransferError(f"{path} has no 'split' column; columns: {', '.join(frame.columns)}")
    part = frame[frame["split"] == split].reset_index(drop=True)
    if "path" in part.columns and part["path"].duplicated().any():
        dup = part.loc[part["path"].duplicated(), "path"].iloc[0]
        raise FacetransferError(f"{path}: image {dup} appears twice in the {split} split")
    return part


def _first_present(frame: pd.DataFrame, candidates: Sequence[tuple]) -> tuple | None:
    for names in candidates:
        if all(n in frame.columns for n in names):
            return names
    return None


def prediction_columns(pred: pd.DataFrame, task: str) -> dict:
    """Which columns of ``pred`` hold which prediction, for ``task``.

    Returns a dict with ``kind`` (``"gender"``, ``"age_group"`` or ``None``), and the
    column names ``y_true``, ``y_pred``, ``prob`` (``None`` when absent), ``age_true``,
    ``age_pred`` (``None`` when the task has no age in years). Raises when a column the
    task needs is missing.
    """
    cols = {"kind": None, "y_true": None, "y_pred": None, "prob": None, "age_true": None, "age_pred": None}
    have = ", ".join(map(str, pred.columns))
    if task in ("gender", "age_gender"):
        found = _first_present(pred, [("y_true", "y_pred"), ("gender_true", "gender_pred")])
        if found is None:
            raise FacetransferError(f"predictions for task {task} need y_true and y_pred (or gender_true, gender_pred); columns: {have}")
        cols.update(kind="gender", y_true=found[0], y_pred=found[1])
        prob = "prob" if found[0] == "y_true" else "gender_prob"
        cols["prob"] = prob if prob in pred.columns else None
    elif task == "age_group":
        found = _first_present(pred, [("y_true", "y_pred"), ("age_group_true", "age_group_pred")])
        if found is None:
            raise FacetransferError(f"predictions for task age_group need y_true and y_pred (or age_group_true, age_group_pred); columns: {have}")
        cols.update(kind="age_group", y_true=found[0], y_pred=found[1])
    if task in ("age", "age_gender"):
        options = [("age_true", "age_pred")] + ([("y_true", "y_pred")] if task == "age" else [])
        found = _first_present(pred, options)
        if found is None:
            raise FacetransferError(f"predictions for task {task} need age_true and age_pred; columns: {have}")
        cols.update(age_true=found[0], age_pred=found[1])
    if task not in ("gender", "age_gender", "age_group", "age"):
        raise FacetransferError(f"task {task!r} is not known; allowed: gender, age, age_group, age_gender")
    return cols


# ---------------------------------------------------------------- the comparison table
def _bootstrap_note(name: str, ci: stats.BootstrapCI) -> str | None:
    if ci.n_boot and ci.n_used < ci.n_boot:
        return f"{name} CI from {ci.n_used}/{ci.n_boot} resamples (others undefined)"
    return None


def _metrics_from_predictions(pred: pd.DataFrame, task: str, n_boot: int, conf: float, seed: int) -> dict:
    cols = prediction_columns(pred, task)
    out, notes = {"n_test": len(pred)}, []
    if cols["kind"] is not None:
        y_true = pred[cols["y_true"]].to_numpy()
        y_pred = pred[cols["y_pred"]].to_numpy()
        # the classes present in the test set's truth or predictions (as metrics.json),
        # fixed for every resample: a resample missing one of them is skipped
        labels = np.union1d(y_true, y_pred).tolist()
        k = int(np.sum(y_true == y_pred))
        out["accuracy"] = k / len(pred)
        out["acc_lo"], out["acc_hi"] = stats.wilson_ci(k, len(pred), conf)
        out["precision"], out["recall"] = stats.macro_precision_recall(y_true, y_pred, labels, zero_division=0.0)
        f1 = stats.bootstrap_ci(lambda t, p: stats.f1_macro(t, p, labels), y_true, y_pred, n_boot=n_boot, conf=conf, seed=seed)
        out["f1"], out["f1_lo"], out["f1_hi"] = f1
        notes.append(_bootstrap_note("F1", f1))
        if cols["prob"] is not None:
            prob = pred[cols["prob"]].to_numpy(dtype=float)
            auc = stats.bootstrap_ci(stats.roc_auc, y_true, prob, n_boot=n_boot, conf=conf, seed=seed)
            out["auc"], out["auc_lo"], out["auc_hi"] = auc
            notes.append(_bootstrap_note("AUC", auc))
        out["degenerate"] = bool(len(np.unique(y_pred)) < 2)
    if cols["age_true"] is not None:
        age_true = pred[cols["age_true"]].to_numpy(dtype=float)
        age_pred = pred[cols["age_pred"]].to_numpy(dtype=float)
        err = stats.bootstrap_ci(stats.mae, age_true, age_pred, n_boot=n_boot, conf=conf, seed=seed)
        out["mae"], out["mae_lo"], out["mae_hi"] = err
        notes.append(_bootstrap_note("MAE", err))
        collapsed = bool(np.ptp(age_pred) < 1.0) if len(age_pred) else False
        out["degenerate"] = out.get("degenerate", False) or collapsed
    out["note"] = "; ".join(n for n in notes if n)
    return out


def _metrics_from_json(row: pd.Series, conf: float) -> dict:
    out, notes = {}, ["no predictions.csv: no bootstrap CIs"]
    cm = row.get("test.confusion_matrix")
    if isinstance(cm, tuple) and len(cm):
        cm = np.asarray(cm, dtype=np.int64)
        n, k = int(cm.sum()), int(np.trace(cm))
        out["n_test"] = n
        if n:
            out["accuracy"] = k / n
            out["acc_lo"], out["acc_hi"] = stats.wilson_ci(k, n, conf)
        present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(cm.sum(axis=0) > 0, np.diag(cm) / cm.sum(axis=0), 0.0)
            recall = np.where(cm.sum(axis=1) > 0, np.diag(cm) / cm.sum(axis=1), 0.0)
        out["precision"], out["recall"] = float(precision[present].mean()), float(recall[present].mean())
        out["degenerate"] = bool(np.count_nonzero(cm.sum(axis=0)) < 2)
    for src, dst in (("test.f1_macro", "f1"), ("test.auc", "auc"), ("test.mae", "mae")):
        if _present(row.get(src)):
            out[dst] = float(row[src])
    out["note"] = "; ".join(notes)
    return out


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def comparison_table(runs: pd.DataFrame, *, n_boot: int | None = None, conf: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per run: accuracy with its Wilson interval, macro precision and recall,
    macro F1, AUC (P(male)) and MAE (age, years) with paired-bootstrap intervals from
    ``predictions.csv``, training time, and the degenerate flag.

    Macro averages run over the classes present in the test set's truth or predictions;
    an undefined per-class precision (a class never predicted) counts as 0, as in
    ``metrics.json`` and scikit-learn. ``n_boot=None`` uses each run's ``eval.bootstrap``
    (0 = no bootstrap). Numeric
    columns: run_id, Run, status, task, n_test, accuracy, acc_lo, acc_hi, precision,
    recall, f1, f1_lo, f1_hi, auc, auc_lo, auc_hi, mae, mae_lo, mae_hi, train_seconds,
    degenerate, note. Runs that did not end ``ok`` keep their row (metrics NaN, the
    reason in ``note``). Degenerate: the metrics.json flag where present; otherwise a
    classifier that predicts fewer than 2 classes on the test set, or an age regressor
    whose predictions span less than 1 year. Points and intervals come from the same
    predictions, so an interval always belongs to the point shown.
    """
    columns = ["run_id", "Run", "status", "task", "n_test", "accuracy", "acc_lo", "acc_hi", "precision", "recall",
               "f1", "f1_lo", "f1_hi", "auc", "auc_lo", "auc_hi", "mae", "mae_lo", "mae_hi", "train_seconds", "degenerate", "note"]
    rows = []
    for _, run in runs.iterrows():
        row = {"run_id": run["run_id"], "Run": run.get("label", run.get("name")), "status": run["status"], "task": run.get("task")}
        if run["status"] != STATUS_OK:
            row["note"] = f"{run['status']}: {run.get('error') or 'no reason recorded'}"
            row["degenerate"] = False
            rows.append(row)
            continue
        boots = n_boot if n_boot is not None else int(run.get("eval.bootstrap", 1000))
        pred = read_predictions(run)
        if pred is not None:
            row.update(_metrics_from_predictions(pred, run["task"], boots, conf, seed))
        else:
            row.update(_metrics_from_json(run, conf))
        if isinstance(run.get("test.degenerate"), (bool, np.bool_)):
            row["degenerate"] = bool(run["test.degenerate"])
        row["train_seconds"] = run.get("timing.train_seconds")
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    table["degenerate"] = table["degenerate"].fillna(False).astype(bool)
    for col in columns[4:-2]:
        table[col] = pd.to_numeric(table[col], errors="coerce")
    table.attrs["conf"] = conf
    return table


def _fmt_ci(point: float, lo: float, hi: float, digits: int) -> str:
    if not _present(point):
        return "n/a"
    if not (_present(lo) and _present(hi)):
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def format_seconds(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``1 h 02 min``; ``n/a`` for a missing value."""
    if not _present(seconds):
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def format_comparison(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The comparison table as display strings: Run, Accuracy (95 % CI), Precision,
    Recall, F1 (95 % CI), AUC (95 % CI), MAE (95 % CI), Training time, Degenerate,
    Status, Note. Metric columns that are n/a for every run are left out."""
    pct = round(100 * table.attrs.get("conf", 0.95))
    out = pd.DataFrame({"Run": table["Run"]})
    out[f"Accuracy ({pct} % CI)"] = [_fmt_ci(r.accuracy, r.acc_lo, r.acc_hi, digits) for r in table.itertuples()]
    out["Precision"] = [_fmt_ci(v, None, None, digits) for v in table["precision"]]
    out["Recall"] = [_fmt_ci(v, None, None, digits) for v in table["recall"]]
    out[f"F1 ({pct} % CI)"] = [_fmt_ci(r.f1, r.f1_lo, r.f1_hi, digits) for r in table.itertuples()]
    out[f"AUC ({pct} % CI)"] = [_fmt_ci(r.auc, r.auc_lo, r.auc_hi, digits) for r in table.itertuples()]
    out[f"MAE, years ({pct} % CI)"] = [_fmt_ci(r.mae, r.mae_lo, r.mae_hi, 2) for r in table.itertuples()]
    out = out[[c for c in out.columns if c == "Run" or (out[c] != "n/a").any()]]
    out["Training time"] = [format_seconds(v) for v in table["train_seconds"]]
    out["Degenerate"] = np.where(table["degenerate"], "yes", "")
    out["Status"] = table["status"].to_numpy()
    out["Note"] = table["note"].fillna("").to_numpy()
    return out


def style_comparison(table: pd.DataFrame, digits: int = 3):
    """A pandas Styler of :func:`format_comparison` for the notebook / HTML report:
    degenerate runs in red, runs that did not end ok in grey italics."""
    shown = format_comparison(table, digits)

    def colour(row: pd.Series) -> list[str]:
        if row["Degenerate"] == "yes":
            css = "background-color: #f8d7da; color: #842029"
        elif row["Status"] != STATUS_OK:
            css = "color: #6c757d; font-style: italic"
        else:
            css = ""
        return [css] * len(row)

    return shown.style.apply(colour, axis=1).hide(axis="index")


# ---------------------------------------------------------------- reported vs reproduced
def _check_reported(reported) -> list[dict]:
    if not isinstance(reported, Sequence) or isinstance(reported, (str, bytes)):
        raise FacetransferError("reported must be a list of {match, metrics, source} entries")
    for i, entry in enumerate(reported):
        where = f"reported[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("match"), Mapping) or not isinstance(entry.get("metrics"), Mapping):
            raise FacetransferError(f"{where} must be a mapping with 'match' (dotted param → value) and 'metrics' (dotted metric → value)")
        for key in entry["match"]:
            if key not in ("name", "run_id") and not is_known_key(key):
                raise FacetransferError(f"{where}.match: {key!r} is not a run param; use a dotted key such as model.backbone, or name / run_id")
        for metric, value in entry["metrics"].items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise FacetransferError(f"{where}.metrics.{metric}: {value!r} is not a number")
            if metric in ("test.accuracy", "test.f1_macro", "test.auc") and not 0 <= value <= 1:
                raise FacetransferError(f"{where}.metrics.{metric}: {value!r} is not a fraction in [0, 1] (give 0.9397, not 93.97)")
    return list(reported)


def _matches(runs: pd.DataFrame, match: Mapping) -> pd.Series:
    """Runs whose params equal every ``match`` item. ``name`` matches the run name, or
    the runs of the study group of that name (run names are the group name followed by
    the grid values and seed)."""
    keep = pd.Series(True, index=runs.index)
    for key, value in match.items():
        if key not in runs.columns:
            return pd.Series(False, index=runs.index)
        target = _cell(value)
        if key == "name":
            keep &= runs["name"].map(lambda v, t=str(target): v == t or str(v).startswith(t + " "))
        else:
            keep &= runs[key].map(lambda v, t=target: v == t)
    return keep


def reported_vs_reproduced(runs: pd.DataFrame, reported=None, *, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Figures reported elsewhere next to the figures this study reproduced.

    ``reported`` (default: ``runs.attrs["reported"]``, i.e. ``study.json``): a list of
    ``{"match": {dotted.param: value}, "metrics": {"test.accuracy": 0.9397}, "source":
    "..."}``; ``match: {name: x}`` matches the run named x or the runs of study group x.
    Every ``ok`` run matching all ``match`` items gives a row per metric
    (repeats give several rows); an entry that matches no ok run gives a row saying so.
    Columns: config, source, run_id, Run, metric, reported, reproduced, ci_lo, ci_hi,
    CI, inside_ci (True / False; None where no interval exists), difference.
    ``table``: a :func:`comparison_table` of ``runs`` to reuse (computed when omitted).
    """
    reported = _check_reported(runs.attrs.get("reported", []) if reported is None else reported)
    columns = ["config", "source", "run_id", "Run", "metric", "reported", "reproduced", "ci_lo", "ci_hi", "CI", "inside_ci", "difference"]
    if not reported:
        return pd.DataFrame(columns=columns)
    ok = runs[runs["status"] == STATUS_OK]
    table = comparison_table(ok) if table is None else table
    by_id = table.set_index("run_id")
    rows = []
    for entry in reported:
        config = ", ".join(f"{k}={v}" for k, v in entry["match"].items())
        source = entry.get("source", "")
        matched = ok[_matches(ok, entry["match"])]
        for metric, value in entry["metrics"].items():
            if matched.empty:
                rows.append({"config": config, "source": source, "metric": metric, "reported": float(value), "CI": "no matching ok run"})
                continue
            for _, run in matched.iterrows():
                row = {"config": config, "source": source, "run_id": run["run_id"], "Run": run["label"], "metric": metric, "reported": float(value)}
                if metric in _CI_METRICS and run["run_id"] in by_id.index:
                    point, lo, hi = (by_id.loc[run["run_id"], c] for c in _CI_METRICS[metric])
                else:
                    point, lo, hi = run.get(metric, math.nan), math.nan, math.nan
                point = float(point) if _present(point) else math.nan
                row.update(reproduced=point, ci_lo=lo, ci_hi=hi, difference=point - float(value))
                has_ci = _present(lo) and _present(hi)
                row["CI"] = f"[{lo:.4f}, {hi:.4f}]" if has_ci else "no interval"
                row["inside_ci"] = bool(lo <= value <= hi) if has_ci else None
                rows.append(row)
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- paired tests
def pairwise_mcnemar(study_dir, runs: pd.DataFrame | None = None, *, alpha: float = 0.05) -> pd.DataFrame:
    """McNemar's test for every pair of ``ok`` classification runs evaluated on the same
    test set (the same set of test image paths), Holm-corrected over all pairs.

    Columns: test_set (1, 2, ... one per distinct test set), run_a, run_b, a, b (labels),
    n, acc_a, acc_b, b_count (a right, b wrong), c_count, statistic, method, p_value,
    p_holm, verdict. ``attrs["excluded"]``: ``[{"run_id", "reason"}]`` for runs that
    could not be paired (no predictions, no classification output, unique test set).
    """
    runs = load_runs(study_dir) if runs is None else runs
    excluded, sets = [], {}
    for _, run in runs.iterrows():
        if run["status"] != STATUS_OK:
            excluded.append({"run_id": run["run_id"], "reason": f"status {run['status']}"})
            continue
        pred = read_predictions(run)
        if pred is None or "path" not in pred.columns:
            excluded.append({"run_id": run["run_id"], "reason": "no predictions.csv with a path column"})
            continue
        cols = prediction_columns(pred, run["task"])
        if cols["kind"] is None:
            excluded.append({"run_id": run["run_id"], "reason": f"task {run['task']} has no class output"})
            continue
        part = pred.set_index("path").sort_index()
        key = (cols["kind"], tuple(part.index))
        sets.setdefault(key, []).append((run, part[cols["y_true"]], part[cols["y_pred"]]))
    rows = []
    for number, members in enumerate(sets.values(), start=1):
        if len(members) < 2:
            excluded.append({"run_id": members[0][0]["run_id"], "reason": "no other run has the same test set"})
            continue
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                (ra, ta, pa), (rb, tb, pb) = members[i], members[j]
                if not np.array_equal(ta.to_numpy(), tb.to_numpy()):
                    raise FacetransferError(f"runs {ra['run_id']} and {rb['run_id']} give different labels to the same test images; their data differ")
                ca, cb = (ta == pa).to_numpy(), (tb == pb).to_numpy()
                test = stats.mcnemar(ca, cb)
                rows.append({"test_set": number, "run_a": ra["run_id"], "run_b": rb["run_id"], "a": ra["label"], "b": rb["label"],
                             "n": test["n"], "acc_a": float(ca.mean()), "acc_b": float(cb.mean()), "b_count": test["b"],
                             "c_count": test["c"], "statistic": test["statistic"], "method": test["method"], "p_value": test["p_value"]})
    columns = ["test_set", "run_a", "run_b", "a", "b", "n", "acc_a", "acc_b", "b_count", "c_count", "statistic", "method", "p_value", "p_holm", "verdict"]
    table = pd.DataFrame(rows, columns=columns)
    if rows:
        table["p_holm"] = stats.holm(table["p_value"].to_numpy(dtype=float))
        table["verdict"] = [stats.verdict(r.p_holm, r.acc_a, r.acc_b, str(r.a), str(r.b), alpha) for r in table.itertuples()]
    table.attrs["excluded"] = excluded
    table.attrs["alpha"] = alpha
    return table


# ---------------------------------------------------------------- repeats and folds
def _key(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        value = None
    return json.dumps(value, sort_keys=True, default=str)


def aggregate(runs: pd.DataFrame, over: str = "seed") -> pd.DataFrame:
    """Mean ± sample std of each configuration's metrics over repeats (``over="seed"``)
    or folds (``over="data.split.test_fold"``).

    A configuration is the run params minus ``over`` and ``name``. Only ``ok`` runs are
    averaged; ``n_not_ok`` counts the others. Columns: config (the params that differ
    between configurations, ``k=v, ...``), n, ``over`` (the values averaged), n_not_ok,
    then per metric (test.accuracy, test.f1_macro, test.auc, test.mae,
    timing.train_seconds, where present) ``<label> mean``, ``<label> std`` and the text
    ``<label>`` = "0.912 ± 0.010 (n=3)", and note (runs without a value).
    """
    if over != "seed" and not is_known_key(over):
        raise FacetransferError(f"over={over!r} is not a run param; use seed or data.split.test_fold (or another dotted param key)")
    if over not in runs.columns:
        raise FacetransferError(f"over={over!r}: the runs have no {over} column (no run has params yet)")
    keys = [c for c in param_columns(runs) if c != over]
    frame = runs.copy()
    frame["_config"] = frame[keys].apply(lambda r: "|".join(_key(v) for v in r), axis=1) if keys else ""
    varying = [k for k in keys if frame[k].map(_key).nunique() > 1]
    metrics = [m for m in METRIC_COLUMNS if m in frame.columns]
    rows = []
    for _, group in frame.groupby("_config", sort=False):
        ok = group[group["status"] == STATUS_OK]
        first = group.iloc[0]
        row = {
            "config": ", ".join(f"{k}={first[k]}" for k in varying) or "(one configuration)",
            "n": len(ok),
            over: sorted(ok[over].tolist(), key=_key),
            "n_not_ok": len(group) - len(ok),
        }
        notes = []
        for metric in metrics:
            values = pd.to_numeric(ok[metric], errors="coerce")
            finite = values[np.isfinite(values)]
            if finite.empty:
                continue
            label = METRIC_COLUMNS[metric]
            row[f"{label} mean"], row[f"{label} std"], _ = stats.mean_std(finite)
            row[label] = stats.format_mean_std(finite, 2 if metric in ("test.mae", "timing.train_seconds") else 3)
            if len(finite) < len(values):
                notes.append(f"{label}: {len(values) - len(finite)} run(s) without a value")
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- calibration, subgroups
def _ok_predictions(run) -> tuple[pd.DataFrame, dict, str]:
    run_id = run["run_id"] if isinstance(run, pd.Series) else Path(run).name
    task = run.get("task") if isinstance(run, pd.Series) else None
    if task is None:
        metrics, error = _read_metrics(_run_dir(run) / "metrics.json")
        if metrics is None:
            raise FacetransferError(f"run {run_id}: {error}")
        task = (metrics.get("params") or {}).get("task", "gender")
    pred = read_predictions(run)
    if pred is None:
        raise FacetransferError(f"run {run_id} has no predictions.csv in {_run_dir(run)}")
    return pred, prediction_columns(pred, task), run_id


def calibration_table(run, *, n_bins: int = 10) -> pd.DataFrame:
    """Reliability table of a run's test predictions (``run``: a row of :func:`load_runs`
    or a run folder): on P(male) for gender, on the top probability for age groups (from
    the ``prob_0`` .. ``prob_7`` columns). ``attrs["ece"]``: the expected calibration error."""
    pred, cols, run_id = _ok_predictions(run)
    if cols["kind"] == "gender" and cols["prob"] is not None:
        prob = pred[cols["prob"]].to_numpy(dtype=float)
    elif cols["kind"] == "age_group" and all(f"prob_{k}" in pred.columns for k in range(AGE_GROUPS)):
        prob = pred[[f"prob_{k}" for k in range(AGE_GROUPS)]].to_numpy(dtype=float)
    else:
        raise FacetransferError(f"run {run_id}: calibration needs a prob (P(male)) column, or prob_0..prob_{AGE_GROUPS - 1} for age groups")
    y_true = pred[cols["y_true"]].to_numpy()
    table = stats.reliability_table(y_true, prob, n_bins)
    table.attrs["ece"] = stats.expected_calibration_error(y_true, prob, n_bins)
    table.attrs["run_id"] = run_id
    return table


AGE_BAND = "age_band"


def subgroup_table(run, column: str, *, min_n: int = 1, conf: float = 0.95) -> pd.DataFrame:
    """Per-subgroup metrics of one run's test predictions (see
    :func:`facetransfer.stats.subgroup_metrics`; the gap is in ``attrs["gap"]``).

    ``column``: any column of ``predictions.csv`` (race, Young, Eyeglasses, ...), or
    ``"age_band"``: bands of 10 years derived from the ``age`` column (or ``age_true``).
    """
    pred, cols, _ = _ok_predictions(run)
    if column == AGE_BAND:
        source = "age" if "age" in pred.columns else cols["age_true"]
        if source is None:
            raise FacetransferError("age_band needs an age (years) column in predictions.csv; none found")
        pred = pred.assign(age_band=stats.age_band(pred[source]))
    labels = np.union1d(pred[cols["y_true"]], pred[cols["y_pred"]]).tolist() if cols["kind"] else ()
    return stats.subgroup_metrics(pred, column, y_true=cols["y_true"], y_pred=cols["y_pred"], prob=cols["prob"],
                                  age_true=cols["age_true"], age_pred=cols["age_pred"], labels=labels, conf=conf, min_n=min_n)


def subgroup_gaps(runs: pd.DataFrame, columns: Sequence[str] | None = None, *, min_n: int = 1) -> pd.DataFrame:
    """For every ok run and subgroup column (default: each run's ``eval.subgroups``): the
    best and worst group and the best − worst gap per metric. Columns: run_id, Run,
    attribute, groups, best, worst, then ``gap <metric>``."""
    rows = []
    for _, run in runs[runs["status"] == STATUS_OK].iterrows():
        wanted = list(columns) if columns is not None else list(run.get("eval.subgroups") or ())
        for column in wanted:
            table = subgroup_table(run, column, min_n=min_n)
            row = {"run_id": run["run_id"], "Run": run["label"], "attribute": column, "groups": len(table),
                   "best": table.attrs["best"], "worst": table.attrs["worst"]}
            row.update({f"gap {k}": v for k, v in table.attrs["gap"].items()})
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- data efficiency (issue 15)
# Kept apart from the statistics above: the paired test is called through
# `_paired_test` only, so switching it (McNemar today) is a one-line change.
EFFICIENCY_COLUMNS = ["line", "train_size", "n_train", "run_id", "Run", "n", "accuracy", "acc_lo", "acc_hi",
                      "vs", "difference", "p_value", "p_holm", "test", "verdict"]


def _paired_test(correct: np.ndarray, correct_baseline: np.ndarray) -> dict:
    """The paired test of two runs on the same test images (McNemar's; the statistics
    work's paired test replaces it here)."""
    result = stats.mcnemar(correct, correct_baseline)
    return {"p_value": result["p_value"], "test": f"McNemar ({result['method']})"}


def _n_train(run) -> int | None:
    """Training images the run used (``metrics.json`` data.split_counts.train)."""
    metrics, _ = _read_metrics(Path(run["run_dir"]) / "metrics.json")
    counts = ((metrics or {}).get("data") or {}).get("split_counts") or {}
    return int(counts["train"]) if "train" in counts else None


def _curve_runs(study_dir, runs: pd.DataFrame) -> pd.DataFrame:
    """The ok classification runs of the groups that vary ``data.train_size``, with their
    group as ``line`` and the number of training images they used as ``n_train``."""
    group_of = {str(r["run_id"]): r.get("group") for r in read_study(study_dir).get("runs", []) if isinstance(r, Mapping) and "run_id" in r}
    if "data.train_size" not in runs.columns:
        return pd.DataFrame(columns=[*runs.columns, "line", "n_train"])
    runs = runs.assign(line=runs["run_id"].map(group_of))
    sizes = runs.groupby("line", dropna=True)["data.train_size"].agg(lambda s: s.map(_key).nunique())
    curve = runs[runs["line"].isin(sizes[sizes > 1].index) & (runs["status"] == STATUS_OK)].copy()
    curve["n_train"] = [_n_train(run) for _, run in curve.iterrows()]
    return curve[curve["n_train"].notna()]


def _correct(run) -> pd.Series | None:
    """Per test image (indexed by path, sorted): was the run's class prediction right?"""
    pred = read_predictions(run)
    if pred is None or "path" not in pred.columns:
        return None
    cols = prediction_columns(pred, run["task"])
    if cols["kind"] is None:
        return None
    part = pred.set_index("path").sort_index()
    return (part[cols["y_true"]] == part[cols["y_pred"]]).rename(run["run_id"])


def data_efficiency(study_dir, runs: pd.DataFrame | None = None, *, baseline: str = "scratch", alpha: float = 0.05,
                    conf: float = 0.95) -> pd.DataFrame:
    """Test accuracy against the number of training images, one line per run group that
    varies ``data.train_size`` (the group's name is the line), and at each size each line
    against the ``baseline`` line: a paired test on the same test images, Holm-corrected over
    the curve's comparisons.

    Columns: line, train_size (the param; None = all), n_train (images used), run_id, Run,
    n (test images), accuracy, acc_lo, acc_hi (Wilson), vs (the baseline's run at that size,
    empty on the baseline's own rows), difference (accuracy minus the baseline's), p_value,
    p_holm, test, verdict. Empty when no group varies ``data.train_size``.
    ``attrs``: baseline, alpha, excluded ``[{"run_id", "reason"}]``.
    """
    runs = load_runs(study_dir) if runs is None else runs
    curve = _curve_runs(study_dir, runs)
    rows, excluded, correct = [], [], {}
    for _, run in curve.sort_values(["line", "n_train"], kind="stable").iterrows():
        hits = _correct(run)
        if hits is None:
            excluded.append({"run_id": run["run_id"], "reason": "no class predictions in predictions.csv"})
            continue
        correct[run["run_id"]] = hits
        lo, hi = stats.wilson_ci(int(hits.sum()), len(hits), conf)
        size = run["data.train_size"]
        rows.append({"line": run["line"], "train_size": None if _key(size) == "null" else int(size), "n_train": int(run["n_train"]),
                     "run_id": run["run_id"], "Run": run["label"], "n": len(hits), "accuracy": float(hits.mean()), "acc_lo": lo, "acc_hi": hi})
    table = pd.DataFrame(rows, columns=EFFICIENCY_COLUMNS).astype({"train_size": "Int64", "vs": object, "test": object, "verdict": object})
    base = {r.n_train: r for r in table.itertuples() if r.line == baseline}
    for i, row in table.iterrows():
        ref = base.get(row["n_train"])
        if row["line"] == baseline or ref is None:
            continue
        a, b = correct[row["run_id"]], correct[ref.run_id]
        if not a.index.equals(b.index):
            excluded.append({"run_id": row["run_id"], "reason": f"test images differ from {ref.Run}'s"})
            continue
        test = _paired_test(a.to_numpy(), b.to_numpy())
        table.loc[i, ["vs", "difference", "p_value", "test"]] = [ref.Run, row["accuracy"] - ref.accuracy, test["p_value"], test["test"]]
    tested = table["p_value"].notna()
    if tested.any():
        table.loc[tested, "p_holm"] = stats.holm(table.loc[tested, "p_value"].to_numpy(dtype=float))
        table.loc[tested, "verdict"] = [stats.verdict(r.p_holm, r.accuracy, r.accuracy - r.difference, str(r.line), baseline, alpha)
                                        for r in table[tested].itertuples()]
    table.attrs.update({"baseline": baseline, "alpha": alpha, "excluded": excluded})
    return table


def format_data_efficiency(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The table as the notebook and the report show it: one row per line and size."""
    out = pd.DataFrame({
        "Strategy": table["line"],
        "Training images": [f"{n:,}" + ("" if size is not None and not pd.isna(size) else " (all)") for n, size in zip(table["n_train"], table["train_size"], strict=True)],
        "Test accuracy (95% CI)": [_fmt_ci(a, lo, hi, digits) for a, lo, hi in zip(table["accuracy"], table["acc_lo"], table["acc_hi"], strict=True)],
        f"vs {table.attrs.get('baseline', 'baseline')}": [("" if pd.isna(d) else f"{d:+.{digits}f}") for d in table["difference"]],
        "p (Holm)": [("" if pd.isna(p) else f"{p:.3g}") for p in table["p_holm"]],
        "Verdict": [("baseline" if pd.isna(v) and line == table.attrs.get("baseline") else ("" if pd.isna(v) else v)) for v, line in zip(table["verdict"], table["line"], strict=True)],
    })
    return out


def best_and_equivalent(study_dir, runs: pd.DataFrame | None = None, *, alpha: float = 0.05) -> dict:
    """The study's answer at a glance (the report's index page opens with it).

    ``task``: the classification task most ok runs share; ``table``: its ok runs'
    ``comparison_table`` rows (accuracy with its Wilson interval, no bootstrap), best first;
    ``best``: the most accurate run that is not degenerate (None when there is none);
    ``equivalent``: the other runs whose accuracy is not significantly lower than the best's
    (:func:`pairwise_mcnemar`, Holm-corrected; label, accuracy, p_holm); ``untested``: runs
    that could not be paired with the best (another test set), which are in neither list.
    """
    runs = load_runs(study_dir) if runs is None else runs
    columns = ["run_id", "Run", "accuracy", "acc_lo", "acc_hi", "p_holm"]
    empty = {"task": None, "table": comparison_table(runs.iloc[:0], n_boot=0), "best": None, "equivalent": pd.DataFrame(columns=columns), "untested": []}
    if "task" not in runs.columns:
        return empty
    ok = runs[(runs["status"] == STATUS_OK) & runs["task"].isin(["gender", "age_group", "age_gender"])]
    if ok.empty:
        return empty
    task = ok["task"].value_counts().index[0]
    table = comparison_table(ok[ok["task"] == task], n_boot=0).sort_values("accuracy", ascending=False, kind="stable").reset_index(drop=True)
    usable = table[~table["degenerate"] & table["accuracy"].notna()]
    if usable.empty:
        return {**empty, "task": task, "table": table}
    best = usable.iloc[0]
    pairs = pairwise_mcnemar(study_dir, ok[ok["task"] == task], alpha=alpha)
    with_best = pairs[(pairs["run_a"] == best["run_id"]) | (pairs["run_b"] == best["run_id"])]
    p_of = {(r.run_b if r.run_a == best["run_id"] else r.run_a): r.p_holm for r in with_best.itertuples()}
    others = table[table["run_id"] != best["run_id"]]
    equivalent = others[[p_of.get(rid, 0.0) >= alpha for rid in others["run_id"]]].assign(p_holm=lambda f: f["run_id"].map(p_of))
    untested = [str(r.Run) for r in others.itertuples() if r.run_id not in p_of]
    return {"task": task, "table": table, "best": best, "equivalent": equivalent[columns].reset_index(drop=True), "untested": untested}
