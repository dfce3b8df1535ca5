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

from facetransfer import metrics, stats
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
def test_unit(pred: pd.DataFrame, requested: str = "auto") -> stats.Unit:
    """The resampling unit of a run's test predictions (:func:`facetransfer.stats.unit`
    on its ``subject`` column; none: the dataset has no identities)."""
    subject = pred["subject"] if "subject" in pred.columns else None
    return stats.unit(subject, len(pred), requested=requested)


def _bootstrap_note(name: str, ci: stats.BootstrapCI) -> str | None:
    if ci.n_boot and ci.n_used == 0:
        return f"{name}: no interval ({ci.unit}; fewer than {stats.MIN_UNITS} to resample)"
    if ci.n_boot and ci.n_used < ci.n_boot:
        return f"{name} CI from {ci.n_used}/{ci.n_boot} resamples (others undefined)"
    return None


def _metrics_from_predictions(pred: pd.DataFrame, task: str, unit: stats.Unit, n_boot: int, conf: float, seed: int) -> dict:
    cols = prediction_columns(pred, task)
    out, notes = {"n_test": len(pred), "unit": unit.text}, [unit.note]
    kw = {"unit": unit, "n_boot": n_boot, "conf": conf, "seed": seed}
    if cols["kind"] is not None:
        y_true = pred[cols["y_true"]].to_numpy()
        y_pred = pred[cols["y_pred"]].to_numpy()
        acc = stats.proportion(y_true == y_pred, unit, n_boot=n_boot, conf=conf, seed=seed)
        out["accuracy"], out["acc_lo"], out["acc_hi"] = acc
        out["precision"], out["recall"] = metrics.macro_precision_recall(y_true, y_pred)
        f1 = stats.bootstrap(metrics.f1_macro, y_true, y_pred, resampled=metrics.f1_macro_resampled, **kw)
        out["f1"], out["f1_lo"], out["f1_hi"] = f1
        notes.append(_bootstrap_note("F1", f1))
        if cols["prob"] is not None:
            prob = pred[cols["prob"]].to_numpy(dtype=float)
            auc = stats.bootstrap(metrics.roc_auc, y_true, prob, resampled=metrics.roc_auc_resampled, **kw)
            out["auc"], out["auc_lo"], out["auc_hi"] = auc
            notes.append(_bootstrap_note("AUC", auc))
    if cols["age_true"] is not None:
        error = (pred[cols["age_true"]] - pred[cols["age_pred"]]).abs().to_numpy(dtype=float)
        mae = stats.bootstrap(None, error, **kw)
        out["mae"], out["mae_lo"], out["mae_hi"] = mae
        notes.append(_bootstrap_note("MAE", mae))
    if cols["kind"] is not None:
        notes.append(_bootstrap_note("accuracy", acc) if acc.n_boot else None)
    out["note"] = "; ".join(n for n in notes if n)
    return out


def _metrics_from_json(row: pd.Series, conf: float) -> dict:
    out, notes = {"unit": "per image (no predictions.csv)"}, ["no predictions.csv: no bootstrap CIs"]
    cm = row.get("test.confusion_matrix")
    if isinstance(cm, tuple) and len(cm):
        cm = np.asarray(cm, dtype=np.int64)
        n, k = int(cm.sum()), int(np.trace(cm))
        out["n_test"] = n
        if n:
            out["accuracy"] = k / n
            out["acc_lo"], out["acc_hi"] = stats.wilson_ci(k, n, conf)
    for src, dst in (("test.accuracy", "accuracy"), ("test.precision_macro", "precision"), ("test.recall_macro", "recall"),
                     ("test.f1_macro", "f1"), ("test.auc", "auc"), ("test.mae", "mae")):
        if dst not in out and _present(row.get(src)):
            out[dst] = float(row[src])
    out["note"] = "; ".join(notes)
    return out


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _eval_setting(run: pd.Series, key: str, default):
    value = run.get(f"eval.{key}")
    return default if not _present(value) else value


def comparison_table(runs: pd.DataFrame, *, n_boot: int | None = None, conf: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per run: accuracy, macro precision and recall, macro F1, AUC (P(male))
    and MAE (age, years), each with its interval, from ``predictions.csv``.

    Intervals resample persons wherever the test split has persons with several images
    (cluster bootstrap), else images (Wilson for accuracy, bootstrap for the others);
    ``unit`` says which ("per person, 812 persons" / "per image: no identities").
    ``n_boot=None`` uses each run's ``eval.bootstrap`` (0 = no bootstrap), the unit each
    run's ``eval.unit``. Macro averages as in ``metrics.json`` (:mod:`facetransfer.metrics`).
    Columns: run_id, Run, status, task, n_test, unit, accuracy, acc_lo, acc_hi, precision,
    recall, f1, f1_lo, f1_hi, auc, auc_lo, auc_hi, mae, mae_lo, mae_hi, train_seconds,
    degenerate (the metrics.json flag, one rule for every head), note. Runs that did not
    end ``ok`` keep their row (metrics NaN, the reason in ``note``).
    """
    columns = ["run_id", "Run", "status", "task", "n_test", "unit", "accuracy", "acc_lo", "acc_hi", "precision", "recall",
               "f1", "f1_lo", "f1_hi", "auc", "auc_lo", "auc_hi", "mae", "mae_lo", "mae_hi", "train_seconds", "degenerate", "note"]
    rows = []
    for _, run in runs.iterrows():
        row = {"run_id": run["run_id"], "Run": run.get("label", run.get("name")), "status": run["status"], "task": run.get("task")}
        if run["status"] != STATUS_OK:
            row["note"] = f"{run['status']}: {run.get('error') or 'no reason recorded'}"
            row["degenerate"] = False
            rows.append(row)
            continue
        boots = n_boot if n_boot is not None else int(_eval_setting(run, "bootstrap", 1000))
        pred = read_predictions(run)
        if pred is not None:
            unit = test_unit(pred, _eval_setting(run, "unit", "auto"))
            row.update(_metrics_from_predictions(pred, run["task"], unit, boots, conf, seed))
        else:
            row.update(_metrics_from_json(run, conf))
        row["degenerate"] = bool(run.get("test.degenerate")) if isinstance(run.get("test.degenerate"), (bool, np.bool_)) else False
        row["train_seconds"] = run.get("timing.train_seconds")
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    table["degenerate"] = table["degenerate"].fillna(False).astype(bool)
    numeric = [c for c in columns[4:-2] if c != "unit"]
    table[numeric] = table[numeric].apply(pd.to_numeric, errors="coerce")
    table.attrs["conf"] = conf
    return table


DASH = "—"  # a missing number in a rendered table


def _fmt_ci(point: float, lo: float, hi: float, digits: int) -> str:
    if not _present(point):
        return DASH
    if not (_present(lo) and _present(hi)):
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def format_seconds(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``1 h 02 min``; an em dash for a missing value."""
    if not _present(seconds):
        return DASH
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def format_comparison(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The comparison table as display strings: Run, Accuracy (95 % CI), Precision,
    Recall, F1 (95 % CI), AUC (95 % CI), MAE (95 % CI), Training time, Degenerate,
    Unit (what the intervals resample), Status, Note. Metric columns that are missing
    for every run are left out; a missing value is an em dash."""
    pct = round(100 * table.attrs.get("conf", 0.95))
    out = pd.DataFrame({"Run": table["Run"]})
    out[f"Accuracy ({pct} % CI)"] = [_fmt_ci(r.accuracy, r.acc_lo, r.acc_hi, digits) for r in table.itertuples()]
    out["Precision"] = [_fmt_ci(v, None, None, digits) for v in table["precision"]]
    out["Recall"] = [_fmt_ci(v, None, None, digits) for v in table["recall"]]
    out[f"F1 ({pct} % CI)"] = [_fmt_ci(r.f1, r.f1_lo, r.f1_hi, digits) for r in table.itertuples()]
    out[f"AUC ({pct} % CI)"] = [_fmt_ci(r.auc, r.auc_lo, r.auc_hi, digits) for r in table.itertuples()]
    out[f"MAE, years ({pct} % CI)"] = [_fmt_ci(r.mae, r.mae_lo, r.mae_hi, 2) for r in table.itertuples()]
    out = out[[c for c in out.columns if c == "Run" or (out[c] != DASH).any()]]
    out["Training time"] = [format_seconds(v) for v in table["train_seconds"]]
    out["Degenerate"] = np.where(table["degenerate"], "yes", "")
    out["Unit"] = table["unit"].fillna(DASH).to_numpy() if "unit" in table else DASH
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

    # Styler does not escape by default: run names and notes come from study files others share
    styler = shown.style.format(escape="html").format_index(escape="html", axis=1)
    return styler.apply(colour, axis=1).hide(axis="index")


# ---------------------------------------------------------------- reported vs reproduced
def _check_reported(reported) -> list[dict]:
    if not isinstance(reported, Sequence) or isinstance(reported, (str, bytes)):
        raise FacetransferError("reported must be a list of {match, metrics, source, n_test} entries")
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
            if metric in _FRACTIONS and not 0 <= value <= 1:
                raise FacetransferError(f"{where}.metrics.{metric}: {value!r} is not a fraction in [0, 1] (give 0.9397, not 93.97)")
        n_test = entry.get("n_test")
        if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
            raise FacetransferError(f"{where}.n_test: {n_test!r} must be the published test-set size, an integer >= 1")
    return list(reported)


_FRACTIONS = ("test.accuracy", "test.f1_macro", "test.auc")


def match_reported(runs: pd.DataFrame, match: Mapping) -> pd.Series:
    """Runs a ``reported`` entry's ``match`` selects: :func:`facetransfer.study.matches`
    (the one matching rule) on each run's flattened params."""
    from facetransfer.study import matches

    if runs.empty:
        return pd.Series(False, index=runs.index, dtype=bool)
    return runs.apply(lambda run: matches({k: v for k, v in run.items() if _present(v)}, match), axis=1).astype(bool)


def reported_vs_reproduced(runs: pd.DataFrame, reported=None, *, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Figures published elsewhere next to ours: the difference (ours − published) with
    an interval that holds both our sampling error (per person where the data has
    persons) and the published figure's (from the entry's ``n_test``, the published
    test-set size; without it the row says "published n unknown"), and a verdict in
    words: consistent / higher / lower (:func:`facetransfer.stats.versus_published`).

    ``reported`` (default: ``runs.attrs["reported"]``, i.e. ``study.json``): a list of
    ``{"match": {dotted.param: value}, "metrics": {"test.accuracy": 0.9397}, "source":
    "...", "n_test": 3000}``, matched by :func:`match_reported`. Every ``ok`` run that
    matches gives a row per metric (repeats give several rows); an entry matching no ok
    run gives a row saying so. Columns: config, source, run_id, Run, metric, published,
    published n, ours, ours CI, difference, difference CI, verdict, unit (what our
    interval resampled), note (display strings except the numbers published, ours,
    difference; :func:`dashes` shows them with a dash where missing).
    ``table``: a :func:`comparison_table` of ``runs`` to reuse.
    """
    reported = _check_reported(runs.attrs.get("reported", []) if reported is None else reported)
    columns = ["config", "source", "run_id", "Run", "metric", "published", "published n", "ours", "ours CI",
               "difference", "difference CI", "verdict", "unit", "note"]
    if not reported:
        return pd.DataFrame(columns=columns)
    ok = runs[runs["status"] == STATUS_OK]
    table = comparison_table(ok) if table is None else table
    by_id = table.set_index("run_id")
    pct = round(100 * table.attrs.get("conf", 0.95))
    rows = []
    for entry in reported:
        config = ", ".join(f"{k}={v}" for k, v in entry["match"].items())
        n_pub = entry.get("n_test")
        base = {"config": config, "source": entry.get("source", ""), "published n": str(n_pub) if n_pub else "unknown"}
        matched = ok[match_reported(ok, entry["match"])]
        for metric, value in entry["metrics"].items():
            if matched.empty:
                rows.append({**base, "run_id": DASH, "Run": DASH, "metric": metric, "published": float(value), "verdict": "no matching ok run"})
                continue
            for _, run in matched.iterrows():
                row = {**base, "run_id": run["run_id"], "Run": run["label"], "metric": metric, "published": float(value)}
                if metric in _CI_METRICS and run["run_id"] in by_id.index:
                    ours = stats.BootstrapCI(*(by_id.loc[run["run_id"], c] for c in _CI_METRICS[metric]), n_used=0, n_boot=0, conf=table.attrs.get("conf", 0.95))
                    n_ours = by_id.loc[run["run_id"], "n_test"]
                    row["unit"] = by_id.loc[run["run_id"], "unit"]
                else:
                    ours, n_ours = stats.BootstrapCI(run.get(metric, math.nan), math.nan, math.nan, n_used=0, n_boot=0, conf=0.95), math.nan
                digits = 2 if metric == "test.mae" else 4
                versus = stats.versus_published(ours, float(value), n_pub, n_ours=n_ours, fraction=metric in _FRACTIONS, conf=ours.conf)
                row.update(ours=ours.point, difference=versus["difference"], verdict=versus["verdict"], note=versus["note"])
                row["ours CI"] = _fmt_interval(ours.lo, ours.hi, digits)
                row["difference CI"] = _fmt_interval(versus["lo"], versus["hi"], digits, sign="+")
                rows.append(row)
    out = pd.DataFrame(rows, columns=columns).fillna({c: DASH for c in ("ours CI", "difference CI", "note", "run_id", "Run", "unit")})
    out.attrs["conf"] = pct
    return out


def dashes(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Any table for display: numbers rounded to ``digits``, a missing value as an em dash
    (a rendered table never shows None or NaN)."""
    shown = table.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].round(digits)
    return shown.astype(object).where(shown.notna(), DASH)


def _fmt_interval(lo: float, hi: float, digits: int, sign: str = "") -> str:
    return f"[{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]" if _present(lo) and _present(hi) and math.isfinite(lo) else DASH


# ---------------------------------------------------------------- paired tests
def _test_sets(runs: pd.DataFrame) -> tuple[list[list[tuple]], list[dict]]:
    """Groups of ok runs evaluated on the same test images (same paths, same labels):
    ``[[(run, predictions indexed by path), ...], ...]`` and the runs left out, with why."""
    excluded, sets = [], {}
    for _, run in runs.iterrows():
        if run["status"] != STATUS_OK:
            excluded.append({"run_id": run["run_id"], "reason": f"status {run['status']}"})
            continue
        pred = read_predictions(run)
        if pred is None or "path" not in pred.columns:
            excluded.append({"run_id": run["run_id"], "reason": "no predictions.csv with a path column"})
            continue
        part = pred.set_index("path").sort_index()
        sets.setdefault(tuple(part.index), []).append((run, part))
    groups = []
    for members in sets.values():
        if len(members) < 2:
            excluded.append({"run_id": members[0][0]["run_id"], "reason": "no other run has the same test set"})
        else:
            groups.append(members)
    return groups, excluded


def _paired_metrics(pa: pd.DataFrame, pb: pd.DataFrame, task_a: str, task_b: str) -> dict:
    """{metric: (statistic or None for a mean, arrays of a, arrays of b, its resampled form)}
    for the metrics both runs have."""
    ca, cb = prediction_columns(pa, task_a), prediction_columns(pb, task_b)
    out = {}
    if ca["kind"] is not None and ca["kind"] == cb["kind"]:
        ta, tb = pa[ca["y_true"]].to_numpy(), pb[cb["y_true"]].to_numpy()
        if not np.array_equal(ta, tb):
            raise FacetransferError("two runs give different labels to the same test images; their data differ")
        ya, yb = pa[ca["y_pred"]].to_numpy(), pb[cb["y_pred"]].to_numpy()
        out["accuracy"] = (None, ((ta == ya).astype(float),), ((tb == yb).astype(float),), None)
        out["F1"] = (metrics.f1_macro, (ta, ya), (tb, yb), metrics.f1_macro_resampled)
        if ca["prob"] is not None and cb["prob"] is not None:
            out["AUC"] = (metrics.roc_auc, (ta, pa[ca["prob"]].to_numpy(dtype=float)), (tb, pb[cb["prob"]].to_numpy(dtype=float)),
                          metrics.roc_auc_resampled)
    if ca["age_true"] is not None and cb["age_true"] is not None:
        ea = (pa[ca["age_true"]] - pa[ca["age_pred"]]).abs().to_numpy(dtype=float)
        eb = (pb[cb["age_true"]] - pb[cb["age_pred"]]).abs().to_numpy(dtype=float)
        out["MAE"] = (None, (ea,), (eb,), None)
    return out


def paired_comparisons(runs: pd.DataFrame, *, n_boot: int | None = None, conf: float = 0.95, seed: int = 0,
                       alpha: float = 0.05) -> pd.DataFrame:
    """For every pair of ok runs on the same test images and every metric both have
    (accuracy, F1, AUC, MAE; age runs included): the difference a − b with its paired
    bootstrap interval and p-value, resampling persons where the test split has persons
    with several images, Holm-corrected over all pairs of each metric (statsmodels).

    Columns: test_set, metric, a, b, unit, n, a value, b value, difference, lo, hi,
    p_value, p_holm, verdict. ``attrs["excluded"]``: runs that could not be paired.
    """
    groups, excluded = _test_sets(runs)
    rows = []
    for number, members in enumerate(groups, start=1):
        first = members[0][0]
        boots = n_boot if n_boot is not None else int(_eval_setting(first, "bootstrap", 1000))
        unit = test_unit(members[0][1].reset_index(), _eval_setting(first, "unit", "auto"))
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                (ra, pa), (rb, pb) = members[i], members[j]
                for metric, (statistic, arrays_a, arrays_b, resampled) in _paired_metrics(pa, pb, ra["task"], rb["task"]).items():
                    kw = {"unit": unit, "n_boot": boots, "conf": conf, "seed": seed}
                    if statistic is None:
                        ci = stats.bootstrap(None, arrays_a[0] - arrays_b[0], **kw)
                        value_a, value_b = float(arrays_a[0].mean()), float(arrays_b[0].mean())
                    else:
                        ci = stats.paired(statistic, arrays_a, arrays_b, resampled=resampled, **kw)
                        value_a, value_b = statistic(*arrays_a), statistic(*arrays_b)
                    rows.append({"test_set": number, "metric": metric, "a": ra["label"], "b": rb["label"], "unit": unit.text,
                                 "n": len(pa), "a value": value_a, "b value": value_b, "difference": ci.point, "lo": ci.lo,
                                 "hi": ci.hi, "p_value": ci.p_value})
    columns = ["test_set", "metric", "a", "b", "unit", "n", "a value", "b value", "difference", "lo", "hi", "p_value", "p_holm", "verdict"]
    table = pd.DataFrame(rows, columns=columns)
    for _, part in table.groupby("metric"):
        defined = part["p_value"].notna()
        table.loc[part.index[defined], "p_holm"] = stats.holm(part.loc[defined, "p_value"].to_numpy())
    table["verdict"] = [_paired_verdict(r, alpha) for r in table.itertuples()]
    table.attrs.update(excluded=excluded, alpha=alpha, conf=conf)
    return table


def _paired_verdict(row, alpha: float) -> str:
    if not _present(row.p_holm):
        return f"no test (fewer than {stats.MIN_UNITS} to resample, or no resample defined it)"
    if row.p_holm >= alpha:
        return f"no significant difference (alpha {alpha:g})"
    lower_better = row.metric == "MAE"
    better = row.a if (row.difference < 0) == lower_better else row.b
    return f"{better} is better (alpha {alpha:g})"


def format_paired(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """:func:`paired_comparisons` as display strings (an em dash where a value is missing)."""
    pct = round(100 * table.attrs.get("conf", 0.95))
    out = table[["test_set", "metric", "a", "b", "unit", "n"]].copy()
    out["a − b"] = [_fmt_ci(r.difference, r.lo, r.hi, 2 if r.metric == "MAE" else digits) for r in table.itertuples()]
    out = out.rename(columns={"a − b": f"a − b ({pct} % CI)"})
    out["p"] = [f"{p:.3g}" if _present(p) else DASH for p in table["p_value"]]
    out["p (Holm)"] = [f"{p:.3g}" if _present(p) else DASH for p in table["p_holm"]]
    out["verdict"] = table["verdict"]
    return out


def pairwise_mcnemar(study_dir, runs: pd.DataFrame | None = None, *, alpha: float = 0.05) -> pd.DataFrame:
    """McNemar's test (statsmodels) for every pair of ``ok`` classification runs on the
    same test images, Holm-corrected over all pairs: for IMAGE-level data only. Where the
    test split has persons with several images, McNemar's independence assumption fails
    (its p-values are too small); those pairs are listed in ``attrs["excluded"]`` and
    :func:`paired_comparisons` is the test to read.

    Columns: test_set, run_a, run_b, a, b, n, acc_a, acc_b, b_count (a right, b wrong),
    c_count, statistic, method, p_value, p_holm, verdict.
    """
    runs = load_runs(study_dir) if runs is None else runs
    groups, excluded = _test_sets(runs)
    rows = []
    for number, members in enumerate(groups, start=1):
        unit = test_unit(members[0][1].reset_index(), _eval_setting(members[0][0], "unit", "auto"))
        if unit.per_person:
            excluded += [{"run_id": r["run_id"], "reason": f"McNemar assumes independent images; {unit.text}: see the paired comparisons"} for r, _ in members]
            continue
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                (ra, pa), (rb, pb) = members[i], members[j]
                ca_cols, cb_cols = prediction_columns(pa, ra["task"]), prediction_columns(pb, rb["task"])
                if ca_cols["kind"] is None or ca_cols["kind"] != cb_cols["kind"]:
                    continue
                ta, tb = pa[ca_cols["y_true"]], pb[cb_cols["y_true"]]
                if not np.array_equal(ta.to_numpy(), tb.to_numpy()):
                    raise FacetransferError(f"runs {ra['run_id']} and {rb['run_id']} give different labels to the same test images; their data differ")
                ca, cb = (ta == pa[ca_cols["y_pred"]]).to_numpy(), (tb == pb[cb_cols["y_pred"]]).to_numpy()
                test = stats.mcnemar(ca, cb)
                rows.append({"test_set": number, "run_a": ra["run_id"], "run_b": rb["run_id"], "a": ra["label"], "b": rb["label"],
                             "n": test["n"], "acc_a": float(ca.mean()), "acc_b": float(cb.mean()), "b_count": test["b"],
                             "c_count": test["c"], "statistic": test["statistic"], "method": test["method"], "p_value": test["p_value"]})
    columns = ["test_set", "run_a", "run_b", "a", "b", "n", "acc_a", "acc_b", "b_count", "c_count", "statistic", "method", "p_value", "p_holm", "verdict"]
    table = pd.DataFrame(rows, columns=columns)
    if rows:
        table["p_holm"] = stats.holm(table["p_value"].to_numpy(dtype=float))
        table["verdict"] = [_mcnemar_verdict(r, alpha) for r in table.itertuples()]
    table.attrs["excluded"] = excluded
    table.attrs["alpha"] = alpha
    return table


def _mcnemar_verdict(row, alpha: float) -> str:
    if row.p_holm >= alpha:
        return f"no significant difference (alpha {alpha:g})"
    return f"{row.a if row.acc_a > row.acc_b else row.b} is significantly more accurate (alpha {alpha:g})"


# ---------------------------------------------------------------- repeats and folds
def _key(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        value = None
    return json.dumps(value, sort_keys=True, default=str)


FOLD_KEY = "data.split.test_fold"


def aggregate(runs: pd.DataFrame, over: str = "seed", *, conf: float = 0.95) -> pd.DataFrame:
    """Mean ± sample std of each configuration's metrics over repeats (``over="seed"``)
    or folds (``over="data.split.test_fold"``), with n and a Student-t interval.

    A configuration is the run params minus ``over`` and ``name``. Only ``ok`` runs are
    averaged; ``n_not_ok`` counts the others. Columns: config (the params that differ
    between configurations), n, ``over`` (the values averaged), n_not_ok, then per metric
    (test.accuracy, test.f1_macro, test.auc, test.mae, timing.train_seconds, where
    present) ``<label> mean``, ``<label> std``, ``<label> lo`` / ``hi`` (t-interval) and
    the text ``<label>`` = "0.912 ± 0.010 (n=3)"; over folds also ``<label> weighted``,
    the mean weighted by each fold's test size (the pooled figure), beside the unweighted
    mean. note: runs without a value.
    """
    if over != "seed" and not is_known_key(over):
        raise FacetransferError(f"over={over!r} is not a run param; use seed or data.split.test_fold (or another dotted param key)")
    if over not in runs.columns:
        raise FacetransferError(f"over={over!r}: the runs have no {over} column (no run has params yet)")
    keys = [c for c in param_columns(runs) if c != over]
    frame = runs.copy()
    frame["_config"] = frame[keys].apply(lambda r: "|".join(_key(v) for v in r), axis=1) if keys else ""
    varying = [k for k in keys if frame[k].map(_key).nunique() > 1]
    metric_keys = [m for m in METRIC_COLUMNS if m in frame.columns]
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
        for metric in metric_keys:
            values = pd.to_numeric(ok[metric], errors="coerce")
            finite = np.isfinite(values)
            if not finite.any():
                continue
            label = METRIC_COLUMNS[metric]
            row[f"{label} mean"], row[f"{label} std"], _ = stats.mean_std(values[finite])
            row[f"{label} lo"], row[f"{label} hi"] = stats.t_interval(values[finite], conf)
            row[label] = stats.format_mean_std(values[finite], 2 if metric in ("test.mae", "timing.train_seconds") else 3)
            sizes = pd.to_numeric(ok["n_test"], errors="coerce")[finite]
            if over == FOLD_KEY and metric.startswith("test.") and sizes.notna().all():
                row[f"{label} weighted"] = float(np.average(values[finite], weights=sizes))
            if not finite.all():
                notes.append(f"{label}: {int((~finite).sum())} run(s) without a value")
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- calibration, subgroups
def _ok_predictions(run) -> tuple[pd.DataFrame, str, str, dict]:
    """(test predictions, task, run id, eval params) of a run row or run folder."""
    run_id = run["run_id"] if isinstance(run, pd.Series) else Path(run).name
    if isinstance(run, pd.Series) and _present(run.get("task")):
        task = run["task"]
        evals = {k: _eval_setting(run, k, d) for k, d in (("bootstrap", 1000), ("min_group", 20), ("unit", "auto"))}
    else:
        loaded, error = _read_metrics(_run_dir(run) / "metrics.json")
        if loaded is None:
            raise FacetransferError(f"run {run_id}: {error}")
        params = loaded.get("params") or {}
        task = params.get("task", "gender")
        evals = {"bootstrap": 1000, "min_group": 20, "unit": "auto", **(params.get("eval") or {})}
    pred = read_predictions(run)
    if pred is None:
        raise FacetransferError(f"run {run_id} has no predictions.csv in {_run_dir(run)}")
    return pred, task, run_id, evals


def calibration(pred: pd.DataFrame, task: str, *, n_bins: int = 10, n_boot: int = 1000, conf: float = 0.95,
                seed: int = 0, unit: str = "auto") -> pd.DataFrame:
    """THE reliability table of one run's test predictions (on P(male) for gender, on the
    top probability for age groups; :func:`facetransfer.metrics.calibration_table`) with
    its expected calibration error and the ECE's (cluster) bootstrap interval in
    ``attrs``: ``ece``, ``ece_lo``, ``ece_hi``, ``unit``, ``what``.

    Raises for a task without class probabilities (age in years).
    """
    cols = prediction_columns(pred, task)
    if cols["kind"] == "gender" and cols["prob"] is not None:
        prob, what = pred[cols["prob"]].to_numpy(dtype=float), "P(male)"
    elif cols["kind"] == "age_group" and all(f"prob_{k}" in pred.columns for k in range(AGE_GROUPS)):
        prob, what = pred[[f"prob_{k}" for k in range(AGE_GROUPS)]].to_numpy(dtype=float), "top-class probability"
    else:
        raise FacetransferError(f"calibration needs a prob (P(male)) column, or prob_0..prob_{AGE_GROUPS - 1} for age groups (task {task})")
    y_true = pred[cols["y_true"]].to_numpy()
    table = metrics.calibration_table(y_true, prob, n_bins)
    the_unit = test_unit(pred, unit)
    ece = stats.bootstrap(lambda t, p: metrics.expected_calibration_error(t, p, n_bins), y_true, prob, unit=the_unit,
                          n_boot=n_boot, conf=conf, seed=seed, resampled=lambda t, p, weights: metrics.ece_resampled(t, p, weights, n_bins))
    table.attrs.update(ece=ece.point, ece_lo=ece.lo, ece_hi=ece.hi, unit=the_unit.text, what=what, conf=conf)
    return table


def calibration_table(run, *, n_bins: int = 10) -> pd.DataFrame:
    """:func:`calibration` of a run (a row of :func:`load_runs` or a run folder)."""
    pred, task, run_id, evals = _ok_predictions(run)
    table = calibration(pred, task, n_bins=n_bins, n_boot=int(evals["bootstrap"]), unit=evals["unit"])
    table.attrs["run_id"] = run_id
    return table


AGE_BAND = "age_band"
GAP_COLUMNS = ["attribute", "metric", "groups ranked", "best", "worst", "gap", "lo", "hi", "note"]
ONE_CLASS = "n/a (one class)"


def subgroups(pred: pd.DataFrame, columns: Sequence[str], task: str, *, min_group: int = 20, n_boot: int = 1000,
              conf: float = 0.95, seed: int = 0, unit: str = "auto") -> pd.DataFrame:
    """THE subgroup table: test metrics per value of each column, stacked.

    One row per group: attribute, group, n, persons, status ("ranked", or "too small (n
    < min_group)": listed, not ranked, in no gap), accuracy with its interval (per person
    where the data has persons), f1_macro and auc (NaN with ``one_class`` True: the group
    holds one true class, so F1 and AUC are n/a and never enter a gap), mae with its
    interval for age outputs. Missing group values form the group "<missing>".
    ``attrs["gaps"]`` (records; :func:`gap_table` makes them a table): one row per
    attribute and metric with the gap (best − worst over the eligible groups) and its
    (cluster) bootstrap interval (accuracy, MAE), or why there is none;
    ``attrs["unit"]`` the resampling unit. ``column`` may be ``"age_band"``: bands of 10
    years from the ``age`` (or ``age_true``) column.
    """
    cols = prediction_columns(pred, task)
    pred = pred.reset_index(drop=True)
    the_unit = test_unit(pred, unit)
    kw = {"n_boot": n_boot, "conf": conf, "seed": seed}
    rows, gaps = [], []
    for column in columns:
        values = _group_values(pred, column, cols)
        labels = values.astype(object).where(values.notna(), stats.MISSING_GROUP).astype(str)
        for group in labels.value_counts(sort=True).index:
            mask = (labels == group).to_numpy()
            rows.append(_group_row(pred[mask], column, group, cols, _subset(the_unit, mask), min_group, kw))
        gaps += _gaps(pred, labels, column, cols, the_unit, min_group, rows, kw)
    columns_out = ["attribute", "group", "n", "persons", "status"]
    if cols["kind"] is not None:
        columns_out += ["accuracy", "acc_lo", "acc_hi", "f1_macro", "f1_lo", "f1_hi"] + (["auc", "auc_lo", "auc_hi"] if cols["prob"] is not None else []) + ["one_class"]
    if cols["age_true"] is not None:
        columns_out += ["mae", "mae_lo", "mae_hi"]
    table = pd.DataFrame(rows, columns=columns_out)
    # gaps as records: pandas compares attrs when it combines frames, and a DataFrame there cannot be compared
    gap_rows = pd.DataFrame(gaps, columns=GAP_COLUMNS).to_dict("records")
    table.attrs.update(gaps=gap_rows, unit=the_unit.text, min_group=min_group, conf=conf)
    return table


def _group_values(pred: pd.DataFrame, column: str, cols: dict) -> pd.Series:
    if column == AGE_BAND:
        source = "age" if "age" in pred.columns else cols["age_true"]
        if source is None:
            raise FacetransferError("age_band needs an age (years) column in predictions.csv; none found")
        return stats.age_band(pred[source])
    if column not in pred.columns:
        raise FacetransferError(f"subgroup column {column!r} is not in the predictions; columns: {', '.join(map(str, pred.columns))}")
    return pred[column]


def _subset(unit: stats.Unit, mask: np.ndarray) -> stats.Unit:
    codes = pd.factorize(unit.codes[mask])[0]
    return stats.Unit(codes, int(codes.max()) + 1 if len(codes) else 0, unit.per_person, unit.text)


def _group_row(part: pd.DataFrame, column: str, group: str, cols: dict, unit: stats.Unit, min_group: int, kw: dict) -> dict:
    row = {"attribute": column, "group": group, "n": len(part), "persons": unit.n_units if unit.per_person else np.nan,
           "status": "ranked" if len(part) >= min_group else f"too small (n < {min_group})"}
    if cols["kind"] is not None:
        y_true, y_pred = part[cols["y_true"]].to_numpy(), part[cols["y_pred"]].to_numpy()
        row["accuracy"], row["acc_lo"], row["acc_hi"] = stats.proportion(y_true == y_pred, unit, **kw)
        row["one_class"] = metrics.one_class(y_true)
        if not row["one_class"]:
            row["f1_macro"], row["f1_lo"], row["f1_hi"] = stats.bootstrap(
                metrics.f1_macro, y_true, y_pred, unit=unit, resampled=metrics.f1_macro_resampled, **kw)
            if cols["prob"] is not None:
                row["auc"], row["auc_lo"], row["auc_hi"] = stats.bootstrap(
                    metrics.roc_auc, y_true, part[cols["prob"]].to_numpy(dtype=float), unit=unit, resampled=metrics.roc_auc_resampled, **kw)
    if cols["age_true"] is not None:
        error = (part[cols["age_true"]] - part[cols["age_pred"]]).abs().to_numpy(dtype=float)
        row["mae"], row["mae_lo"], row["mae_hi"] = stats.bootstrap(None, error, unit=unit, **kw)
    return row


def _gaps(pred, labels, column, cols, unit, min_group, rows, kw) -> list[dict]:
    """Best − worst per metric over the eligible groups of ``column``, with intervals."""
    table = pd.DataFrame([r for r in rows if r["attribute"] == column])
    ranked = table[table["status"] == "ranked"]
    out = []
    specs = []
    if cols["kind"] is not None:
        y_true, y_pred = pred[cols["y_true"]].to_numpy(), pred[cols["y_pred"]].to_numpy()
        specs.append(("accuracy", None, ((y_true == y_pred).astype(float),), ranked))
        two = ranked[~ranked["one_class"].astype(bool)]
        specs.append(("f1_macro", metrics.f1_macro_resampled, (y_true, y_pred), two))
        if cols["prob"] is not None:
            specs.append(("auc", metrics.roc_auc_resampled, (y_true, pred[cols["prob"]].to_numpy(dtype=float)), two))
    if cols["age_true"] is not None:
        error = (pred[cols["age_true"]] - pred[cols["age_pred"]]).abs().to_numpy(dtype=float)
        specs.append(("mae", None, (error,), ranked))
    codes = labels.to_numpy()
    for metric, statistic, arrays, eligible in specs:
        row = {"attribute": column, "metric": metric, "groups ranked": len(eligible)}
        if len(eligible) < 2:
            small = int((table["status"] != "ranked").sum())
            row["note"] = (f"fewer than two groups with n >= {min_group} ({small} too small)" if len(ranked) < 2
                           else f"fewer than two ranked groups with both classes ({len(ranked) - len(eligible)} hold one class)")
            out.append(row)
            continue
        best = eligible.sort_values(metric, ascending=metric == "mae", kind="stable")
        names = eligible["group"].tolist()

        def spread(group_codes, *arrs, weights, statistic=statistic, names=names):
            """Best − worst of the groups' scores in every resample (rows of ``weights``); a
            resample where a group lost a class or all its images is undefined (NaN)."""
            scores = []
            for name in names:
                mask = group_codes == name
                truth = arrs[0][mask]
                w = weights[:, mask]
                both = (w @ (truth == truth.max()) > 0) & (w @ (truth != truth.max()) > 0)
                scores.append(np.where(both, statistic(*(a[mask] for a in arrs), weights=w), np.nan))
            scores = np.vstack(scores)
            return scores.max(axis=0) - scores.min(axis=0)

        if statistic is None:
            ci = stats.mean_gap(arrays[0], codes, names, unit=unit, **kw)
        else:
            point = spread(codes, *arrays, weights=np.ones((1, len(codes))))[0]
            ci = stats.bootstrap(lambda *arrs, p=point: p, codes, *arrays, unit=unit, resampled=spread, **kw)
        note = _bootstrap_note("gap", ci) or ""
        row.update(best=best["group"].iloc[0], worst=best["group"].iloc[-1], gap=ci.point, lo=ci.lo, hi=ci.hi, note=note)
        out.append(row)
    return out


def subgroup_table(run, column: str) -> pd.DataFrame:
    """:func:`subgroups` of one run's test predictions for one column (``run``: a row of
    :func:`load_runs` or a run folder), with the run's eval settings."""
    pred, task, _, evals = _ok_predictions(run)
    return subgroups(pred, [column], task, min_group=int(evals["min_group"]), n_boot=int(evals["bootstrap"]), unit=evals["unit"])


def subgroup_gaps(runs: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """For every ok run and subgroup column (default: each run's ``eval.subgroups``): the
    gap rows of :func:`subgroups` (best − worst with its interval, or why there is none).
    Columns: run_id, Run, unit, attribute, metric, groups ranked, best, worst, gap, lo,
    hi, note."""
    frames = []
    for _, run in runs[runs["status"] == STATUS_OK].iterrows():
        wanted = list(columns) if columns is not None else list(run.get("eval.subgroups") or ())
        if not wanted:
            continue
        pred, task, _, evals = _ok_predictions(run)
        table = subgroups(pred, wanted, task, min_group=int(evals["min_group"]), n_boot=int(evals["bootstrap"]), unit=evals["unit"])
        frames.append(gap_table(table).assign(run_id=run["run_id"], Run=run["label"], unit=table.attrs["unit"]))
    columns_out = ["run_id", "Run", "unit", "attribute", "metric", "groups ranked", "best", "worst", "gap", "lo", "hi", "note"]
    return pd.concat(frames, ignore_index=True)[columns_out] if frames else pd.DataFrame(columns=columns_out)


def format_subgroups(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """:func:`subgroups` as display strings: "n/a (one class)" for F1 and AUC of a group
    with one true class, an em dash for a missing value, the unit in the header."""
    pct = round(100 * table.attrs.get("conf", 0.95))
    out = table[["attribute", "group", "n"]].copy()
    if "persons" in table:
        out["persons"] = [DASH if not _present(v) else str(int(v)) for v in table["persons"]]
    out["status"] = table["status"]
    if "accuracy" in table:
        out[f"accuracy ({pct} % CI)"] = [_fmt_ci(r.accuracy, r.acc_lo, r.acc_hi, digits) for r in table.itertuples()]
        for metric in ("f1_macro", "auc"):
            if metric in table:
                short = "f1" if metric == "f1_macro" else metric
                lows, highs = table.get(f"{short}_lo", pd.Series(np.nan, index=table.index)), table.get(f"{short}_hi", pd.Series(np.nan, index=table.index))
                out[f"{metric} ({pct} % CI)"] = [ONE_CLASS if one else _fmt_ci(v, lo, hi, digits)
                                                 for v, lo, hi, one in zip(table[metric], lows, highs, table["one_class"], strict=True)]
    if "mae" in table:
        out[f"MAE ({pct} % CI)"] = [_fmt_ci(r.mae, r.mae_lo, r.mae_hi, 2) for r in table.itertuples()]
    out.attrs.update(table.attrs)
    return out


def gap_table(table: pd.DataFrame) -> pd.DataFrame:
    """The gap rows of a :func:`subgroups` table as a table."""
    return pd.DataFrame(table.attrs.get("gaps", []), columns=GAP_COLUMNS)


def format_gaps(gaps: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Gap rows (:func:`gap_table` or :func:`subgroup_gaps`) as display strings:
    "0.120 [0.050, 0.190]", or an em dash with the reason in note."""
    if "gaps" in gaps.attrs:
        gaps = gap_table(gaps)
    out = gaps.drop(columns=["gap", "lo", "hi", "run_id"], errors="ignore").copy()
    out.insert(out.columns.get_loc("best") if "best" in out else len(out.columns), "gap (95 % CI)",
               [_fmt_ci(r.gap, r.lo, r.hi, 2 if r.metric == "mae" else digits) for r in gaps.itertuples()])
    return out.fillna(DASH).replace("", DASH)


def subgroup_summary(table: pd.DataFrame) -> str:
    """One line when no gap could be formed (every group too small or one-class), else ""."""
    gaps = gap_table(table)
    if gaps.empty or gaps["gap"].notna().any():
        return ""
    return f"No subgroup gap: {'; '.join(f'{r.attribute} {r.metric}: {r.note}' for r in gaps.itertuples())}."


# ---------------------------------------------------------------- data efficiency (issue 15)
EFFICIENCY_COLUMNS = ["line", "train_size", "n_train", "run_id", "Run", "n", "unit", "accuracy", "acc_lo", "acc_hi",
                      "vs", "difference", "diff_lo", "diff_hi", "p_value", "p_holm", "test", "verdict"]


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


def _correct(run) -> pd.DataFrame | None:
    """Per test image (indexed by path, sorted): was the run's class prediction right
    (``correct``), and whose image is it (``subject``, where the dataset has identities)?"""
    pred = read_predictions(run)
    if pred is None or "path" not in pred.columns:
        return None
    cols = prediction_columns(pred, run["task"])
    if cols["kind"] is None:
        return None
    part = pred.set_index("path").sort_index()
    out = pd.DataFrame({"correct": (part[cols["y_true"]] == part[cols["y_pred"]]).to_numpy()}, index=part.index)
    if "subject" in part.columns:
        out["subject"] = part["subject"].to_numpy()
    return out


def data_efficiency(study_dir, runs: pd.DataFrame | None = None, *, baseline: str = "scratch", alpha: float = 0.05,
                    conf: float = 0.95, n_boot: int = 1000) -> pd.DataFrame:
    """Test accuracy against the number of training images, one line per run group that
    varies ``data.train_size`` (the group's name is the line), and at each size each line
    against the ``baseline`` line: a paired test on the same test images, Holm-corrected over
    the curve's comparisons.

    Columns: line, train_size (the param; None = all), n_train (images used), run_id, Run,
    n (test images), unit, accuracy, acc_lo, acc_hi (:func:`facetransfer.stats.proportion`:
    cluster bootstrap per person, Wilson per image), vs (the baseline's run at that size,
    empty on the baseline's own rows), difference, diff_lo, diff_hi (accuracy minus the
    baseline's, paired bootstrap over the same unit), p_value, p_holm, test, verdict. Empty
    when no group varies ``data.train_size``. ``attrs``: baseline, alpha, conf, excluded
    ``[{"run_id", "reason"}]``.
    """
    runs = load_runs(study_dir) if runs is None else runs
    curve = _curve_runs(study_dir, runs)
    rows, excluded, hits_of, units = [], [], {}, {}
    for _, run in curve.sort_values(["line", "n_train"], kind="stable").iterrows():
        hits = _correct(run)
        if hits is None:
            excluded.append({"run_id": run["run_id"], "reason": "no class predictions in predictions.csv"})
            continue
        unit = test_unit(hits, _eval_setting(run, "unit", "auto"))
        hits_of[run["run_id"]], units[run["run_id"]] = hits, unit
        ci = stats.proportion(hits["correct"].to_numpy(), unit, n_boot=n_boot, conf=conf)
        size = run["data.train_size"]
        rows.append({"line": run["line"], "train_size": None if _key(size) == "null" else int(size), "n_train": int(run["n_train"]),
                     "run_id": run["run_id"], "Run": run["label"], "n": len(hits), "unit": unit.text, "accuracy": ci.point,
                     "acc_lo": ci.lo, "acc_hi": ci.hi})
    table = pd.DataFrame(rows, columns=EFFICIENCY_COLUMNS).astype({"train_size": "Int64", "vs": object, "test": object, "verdict": object})
    base = {r.n_train: r for r in table.itertuples() if r.line == baseline}
    for i, row in table.iterrows():
        ref = base.get(row["n_train"])
        if row["line"] == baseline or ref is None:
            continue
        a, b = hits_of[row["run_id"]], hits_of[ref.run_id]
        if not a.index.equals(b.index):
            excluded.append({"run_id": row["run_id"], "reason": f"test images differ from {ref.Run}'s"})
            continue
        unit = units[row["run_id"]]
        # the paired test of the statistics module: a (cluster) bootstrap of the per-image differences
        ci = stats.bootstrap(None, a["correct"].to_numpy(float) - b["correct"].to_numpy(float), unit=unit, n_boot=n_boot, conf=conf)
        table.loc[i, ["vs", "difference", "diff_lo", "diff_hi", "p_value", "test"]] = [
            ref.Run, ci.point, ci.lo, ci.hi, ci.p_value, f"paired bootstrap, {unit.text}"]
    tested = table["p_value"].notna()
    if tested.any():
        table.loc[tested, "p_holm"] = stats.holm(table.loc[tested, "p_value"].to_numpy(dtype=float))
    table["verdict"] = [_efficiency_verdict(r, baseline, alpha) for r in table.itertuples()]
    table.attrs.update({"baseline": baseline, "alpha": alpha, "excluded": excluded, "conf": conf})
    return table


def _efficiency_verdict(row, baseline: str, alpha: float) -> str:
    if row.line == baseline:
        return ""
    if not _present(row.p_holm):
        return f"no test (fewer than {stats.MIN_UNITS} to resample, or no {baseline} run of this size)"
    if row.p_holm >= alpha:
        return f"not significantly different from {baseline} (alpha {alpha:g})"
    return f"{row.line} {'better' if row.difference > 0 else 'worse'} than {baseline} (alpha {alpha:g})"


def format_data_efficiency(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The table as the notebook and the report show it: one row per line and size."""
    pct = round(100 * table.attrs.get("conf", 0.95))
    baseline = table.attrs.get("baseline", "baseline")
    return pd.DataFrame({
        "Strategy": table["line"],
        "Training images": [f"{n:,}" + ("" if size is not None and not pd.isna(size) else " (all)") for n, size in zip(table["n_train"], table["train_size"], strict=True)],
        f"Test accuracy ({pct} % CI)": [_fmt_ci(a, lo, hi, digits) for a, lo, hi in zip(table["accuracy"], table["acc_lo"], table["acc_hi"], strict=True)],
        f"vs {baseline} ({pct} % CI)": [DASH if not _present(d) else _fmt_ci(d, lo, hi, digits) for d, lo, hi in zip(table["difference"], table["diff_lo"], table["diff_hi"], strict=True)],
        "p (Holm)": [DASH if not _present(p) else f"{p:.3g}" for p in table["p_holm"]],
        "Verdict": [v or "baseline" for v in table["verdict"]],
        "Unit": table["unit"],
    })


def best_and_equivalent(study_dir, runs: pd.DataFrame | None = None, *, alpha: float = 0.05) -> dict:
    """The study's answer at a glance (the report's index page opens with it).

    ``task``: the classification task most ok runs share; ``table``: its ok runs'
    ``comparison_table`` rows (accuracy with its interval, per person where it can), best first;
    ``best``: the most accurate run that is not degenerate (None when there is none);
    ``equivalent``: the other runs whose accuracy is not significantly lower than the best's
    (:func:`paired_comparisons`' accuracy rows: person-level where the test split has persons,
    Holm-corrected; label, accuracy, p_holm); ``untested``: runs
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
    table = comparison_table(ok[ok["task"] == task]).sort_values("accuracy", ascending=False, kind="stable").reset_index(drop=True)
    usable = table[~table["degenerate"] & table["accuracy"].notna()]
    if usable.empty:
        return {**empty, "task": task, "table": table}
    best = usable.iloc[0]
    pairs = paired_comparisons(ok[ok["task"] == task], alpha=alpha)
    pairs = pairs[pairs["metric"] == "accuracy"]
    run_of = dict(zip(ok["label"], ok["run_id"], strict=False))
    with_best = pairs[(pairs["a"] == best["Run"]) | (pairs["b"] == best["Run"])]
    p_of = {run_of.get(r.b if r.a == best["Run"] else r.a): r.p_holm for r in with_best.itertuples() if _present(r.p_holm)}
    others = table[table["run_id"] != best["run_id"]]
    equivalent = others[[p_of.get(rid, 0.0) >= alpha for rid in others["run_id"]]].assign(p_holm=lambda f: f["run_id"].map(p_of))
    untested = [str(r.Run) for r in others.itertuples() if r.run_id not in p_of]
    return {"task": task, "table": table, "best": best, "equivalent": equivalent[columns].reset_index(drop=True), "untested": untested}
