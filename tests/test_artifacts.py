"""A whole tiny run without a notebook: its files, metrics.json, atomicity, determinism."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facetransfer import artifacts, params, train
from facetransfer.errors import ParamError

N = 40


def write_folder_dataset(root, n=N, seed=0):
    """PNG faces-by-colour in the `folder` layout: labels.csv with path, sex, age, race."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        male = int(i % 2)
        pixels = rng.integers(0, 80, (40, 40, 3)).astype(np.uint8)
        pixels[:, :20, 0] += np.uint8(140 * male)
        Image.fromarray(pixels).save(root / "img" / f"{i:03d}.png")
        rows.append({"path": f"img/{i:03d}.png", "sex": "M" if male else "F", "age": int(rng.integers(1, 80)), "race": str(i % 3)})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)


def run_cfg(root):
    return params.resolve_run({
        "seed": 0,
        "task": "gender",
        "data": {
            "dataset": "folder",
            "root": str(root),
            "image_size": 32,
            "folder": {"gender_column": "sex", "male_value": "M", "female_value": "F", "age_column": "age"},
        },
        "model": {"backbone": "compact", "weights": "none", "strategy": "full", "head": {"dense": [8]}},
        "train": {"epochs": 1, "batch_size": 16},
        "eval": {"subgroups": ["race"]},
    })


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same tiny run twice (same seed), in two results folders."""
    data_root = tmp_path_factory.mktemp("faces")
    write_folder_dataset(data_root)
    cfg = run_cfg(data_root)
    out = []
    for name in ("a", "b"):
        results = tmp_path_factory.mktemp(f"results_{name}")
        run_dir = results / "study" / "runs" / params.run_id(cfg)
        metrics = train.run_config(cfg, run_dir, results_root=results, verbose=0)
        out.append((run_dir, metrics))
    return cfg, out


def test_run_folder_has_every_artifact_and_no_temp_files(two_runs):
    _, [(run_dir, _), _] = two_runs
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["history.csv", "metrics.json", "model.keras", "predictions.csv", "splits.csv"]
    assert not [p for p in run_dir.rglob(".*")], "temporary files left behind"
    hist = pd.read_csv(run_dir / "history.csv")
    assert {"epoch", "phase", "loss", "val_loss", "accuracy", "val_accuracy", "lr", "seconds"} <= set(hist.columns)
    pred = pd.read_csv(run_dir / "predictions.csv")
    assert {"path", "split", "y_true", "prob", "y_pred", "race"} <= set(pred.columns)
    assert set(pred["split"]) == {"val", "test"}
    splits = pd.read_csv(run_dir / "splits.csv")
    assert len(splits) == N and set(splits["split"]) == {"train", "val", "test"}
    model = keras.saving.load_model(run_dir / "model.keras")
    assert set(model.output) == {"gender"}


def test_metrics_json_contract(two_runs):
    cfg, [(run_dir, metrics), _] = two_runs
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["run_id"] == params.run_id(cfg) == run_dir.name
    assert saved["status"] == "ok"
    assert saved["params"] == cfg
    test = saved["test"]
    assert 0 <= test["accuracy"] <= 1 and 0 <= test["f1_macro"] <= 1
    cm = np.array(test["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == test["n"]
    pred = pd.read_csv(run_dir / "predictions.csv")
    test_pred = pred[pred["split"] == "test"]
    # rows = true (female, male), cols = predicted (female, male)
    assert cm[1].sum() == int((test_pred["y_true"] == 1).sum())
    assert cm[:, 1].sum() == int((test_pred["y_pred"] == 1).sum())
    assert test["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert saved["val"]["n"] == saved["data"]["split_counts"]["val"]
    timing = saved["timing"]
    assert timing["train_seconds"] > 0 and len(timing["epoch_seconds"]) == 1
    assert {"cache_seconds", "feature_seconds"} <= set(timing)
    counts = saved["params_count"]
    assert counts["total"] == counts["trainable"] + counts["non_trainable"] > 0
    env = saved["environment"]
    assert env["backend"] == keras.backend.backend() and env["keras"] == keras.__version__
    assert env["devices"] and env["cpu_count"] >= 1 and env["numpy"] == np.__version__
    assert saved["data"]["n_usable"] == N and saved["used_feature_cache"] is False


def test_same_seed_same_numbers(two_runs):
    _, [(dir_a, a), (dir_b, b)] = two_runs
    assert a["test"] == b["test"] and a["val"] == b["val"]
    hist_a, hist_b = (pd.read_csv(d / "history.csv") for d in (dir_a, dir_b))
    pd.testing.assert_frame_equal(hist_a.drop(columns="seconds"), hist_b.drop(columns="seconds"))
    pred_a, pred_b = (pd.read_csv(d / "predictions.csv") for d in (dir_a, dir_b))
    pd.testing.assert_frame_equal(pred_a.drop(columns="path"), pred_b.drop(columns="path"))


def test_failed_metrics():
    cfg = params.resolve_run({"data": {"synthetic": {"n": 10}}})
    out = artifacts.failed_metrics(params=cfg, run_id="abc123", error=ValueError("bad\nthing"))
    assert out["status"] == "failed" and out["run_id"] == "abc123" and out["params"] == cfg
    assert out["error"] == "ValueError: bad thing"
    assert artifacts.failed_metrics(cfg, "abc123", "boom")["error"] == "boom"
    json.dumps(out)


def test_run_config_checks_params_before_work(tmp_path):
    cfg = params.resolve_run({"task": "age", "data": {"dataset": "utkface", "root": str(tmp_path / "nowhere")}, "train": {"class_weight": "balanced"}})
    with pytest.raises(ParamError, match="train.class_weight"):
        train.run_config(cfg, tmp_path / "run", results_root=tmp_path)
    assert not (tmp_path / "run").exists()
