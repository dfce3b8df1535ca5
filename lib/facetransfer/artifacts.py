"""Run artifacts: everything a finished run leaves in its folder.

:func:`write_run` writes ``history.csv``, ``predictions.csv``, ``splits.csv`` and
``model.keras``, each atomically, and ``metrics.json`` LAST: a run is complete exactly
when its ``metrics.json`` exists. ``metrics.json`` holds::

    run_id, name, task, status ("ok"), params (fully resolved),
    test {accuracy, f1_macro, confusion_matrix, mae (age tasks), ...}, val {...} | null,
    timing {train_seconds, cache_seconds, feature_seconds, epoch_seconds[], epochs},
    params_count {total, trainable, non_trainable}, used_feature_cache,
    environment {python, facetransfer, keras, backend, tensorflow, jax, torch, numpy, ...},
    data {provenance of the prepared data},
    identity {data_fingerprint, data_root, backend, precision, feature_precision}: what the run id
    hashed besides the params (the data root is recorded, not hashed)

A run that failed gets :func:`failed_metrics` instead (status "failed" and the error).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from facetransfer.io import atomic_path, atomic_write_csv, atomic_write_json

PACKAGES = ("keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "pandas", "scikit-learn")


def _version(package: str) -> str | None:
    """Installed version of ``package`` without importing it (None when not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Versions, Keras backend, devices and CPU count of this process."""
    import keras

    from facetransfer import __version__, runtime

    env = {
        "python": platform.python_version(),
        "facetransfer": __version__,
        "backend": keras.backend.backend(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "devices": runtime.devices(),
        "executable": sys.executable,
    }
    env.update({pkg: _version(pkg) for pkg in PACKAGES})
    return env


def run_metrics(*, cfg: dict, run_id: str, data, model, result, evaluation) -> dict:
    """The ``metrics.json`` body of a finished run."""
    from facetransfer import models

    summary = models.trainable_summary(model)
    timings = result.timings
    return {
        "run_id": run_id,
        "name": cfg.get("name"),
        "task": cfg["task"],
        "status": "ok",
        "params": cfg,
        "test": evaluation.metrics["test"],
        "val": evaluation.metrics.get("val"),
        "timing": {
            "train_seconds": float(timings["train_seconds"]),
            "cache_seconds": float(timings["cache_seconds"]),
            "feature_seconds": float(timings["feature_seconds"]),
            "epoch_seconds": [float(s) for s in timings["epoch_seconds"]],
            "epochs": len(result.history),
        },
        "params_count": {k: int(summary[k]) for k in ("total", "trainable", "non_trainable")},
        "used_feature_cache": bool(result.used_feature_cache),
        "environment": environment(),
        "data": data.provenance(),
        "identity": run_identity(cfg),
    }


def run_identity(cfg: dict) -> dict:
    """What the run id hashed besides the params (params.identity): the data's fingerprint, the
    Keras backend and the dtype policy; with the data folder it was read from (not hashed)."""
    from facetransfer import params

    ident = params.identity(cfg)
    return {"data_fingerprint": ident["data_fingerprint"], "data_root": cfg["data"]["root"], "backend": ident["backend"], "precision": ident["precision"], "feature_precision": cfg["train"]["feature_precision"]}


def save_model(model, path) -> None:
    """Save architecture and weights WITHOUT compile state: the file is for prediction and for
    ``model.weights: run:<id>``, and loads with ``keras.models.load_model`` without warnings
    (with the remainder trained on cached features, the model's own optimizer never built its
    variables, and loading it warned that they were skipped). An uncompiled functional model
    over the same layers saves them without copying a weight (a clone rebuilt the backbone:
    seconds per run for ResNet50V2)."""
    import keras

    plain = keras.Model(model.input, model.output, name=model.name)
    plain.save(path)


def write_run(run_dir, *, cfg: dict, run_id: str, data, model, result, evaluation) -> dict:
    """Write the run's files (metrics.json last, everything atomically); returns the metrics."""
    from facetransfer.splits import save_splits

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(run_dir / "history.csv", result.history)
    atomic_write_csv(run_dir / "predictions.csv", evaluation.predictions)
    save_splits(run_dir / "splits.csv", data.records, data.records["split"])
    with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        save_model(model, tmp)
    metrics = run_metrics(cfg=cfg, run_id=run_id, data=data, model=model, result=result, evaluation=evaluation)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def failed_metrics(params: dict, run_id: str, error) -> dict:
    """The ``metrics.json`` body of a run that failed.

    ``params``: the run's resolved params; ``error``: an exception or a message (kept on
    one line). Called positionally or as ``failed_metrics(params=..., run_id=..., error=...)``.
    """
    message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return {
        "run_id": run_id,
        "name": params.get("name"),
        "task": params.get("task"),
        "status": "failed",
        "params": params,
        "error": " ".join(message.split()),
        "environment": environment(),
    }
