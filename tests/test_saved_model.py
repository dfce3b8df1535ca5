"""The saved model reproduces its run's numbers: model.keras loads in a FRESH process with
keras.models.load_model after `import facetransfer`, without a warning, and predicts the test
split from the image cache as predictions.csv says (within 1e-5), for float32 and bfloat16
feature runs. The README's load-and-apply snippet runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from facetransfer import models, params, train

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys, warnings
import numpy as np, pandas as pd
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import keras
    import facetransfer
    out = {}
    for run_dir, cache in json.loads(sys.argv[1]):
        model = keras.models.load_model(f"{run_dir}/model.keras")
        meta = json.load(open(f"{cache}.json"))
        images = np.memmap(f"{cache}.u8", dtype=np.uint8, mode="r", shape=tuple(meta["shape"]))
        pred = pd.read_csv(f"{run_dir}/predictions.csv")
        test = pred[pred["split"] == "test"]
        prob = model.predict(images[test["row"].to_numpy()].astype("float32"), verbose=0)["gender"][:, 0]
        out[run_dir] = float(np.max(np.abs(prob - test["prob"].to_numpy())))
    exec(compile(sys.argv[2], "README snippet", "exec"))
print("RESULT", json.dumps({"diff": out, "warnings": [str(w.message)[:200] for w in caught if "keras" in str(w.filename) or "facetransfer" in str(w.filename)]}))
"""


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- snippet: load-model .*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "README has no load-model snippet"
    return match.group(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny frozen-compact runs (features cached), float32 and bfloat16 features."""
    root = tmp_path_factory.mktemp("saved")
    base = {
        "data": {"dataset": "celeba", "synthetic": {"n": 120, "seed": 0, "size": 64}, "image_size": 32},
        "model": {"backbone": "compact", "weights": "none", "strategy": "full", "head": {"dense": [8]}},
        "train": {"epochs": 1, "batch_size": 16},
        "eval": {"saliency": 0, "n_misclassified": 0, "bootstrap": 0},
    }
    source = params.resolve_run(base)
    train.configure(source)
    weights = root / "source.keras"
    models.build_model(source).save(weights)
    out = []
    for precision in ("float32", "bfloat16"):
        cfg = params.resolve_run({**base, "model": {**base["model"], "weights": str(weights), "strategy": "frozen"}, "train": {**base["train"], "feature_precision": precision}})
        run_dir = root / precision
        metrics = train.run_config(cfg, run_dir, results_root=root / "results", verbose=0)
        assert metrics["used_feature_cache"] and metrics["identity"]["feature_precision"] == precision
        out.append((str(run_dir), str(root / "results" / "_cache" / "images" / metrics["data"]["cache"]["key"])))
    return out


def test_model_keras_reproduces_predictions_in_a_fresh_process_without_warnings(runs, tmp_path):
    from PIL import Image

    face = tmp_path / "face.jpg"
    Image.new("RGB", (40, 50), (180, 120, 90)).save(face)
    snippet = readme_snippet().replace("results/demo/runs/RUN_ID/model.keras", f"{runs[0][0]}/model.keras").replace('"face.jpg"', repr(str(face)))
    done = subprocess.run([sys.executable, "-c", CHECK, json.dumps(runs), snippet], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "P(male) = " in done.stdout  # the README snippet ran
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["warnings"] == []
    assert "Skipping variable loading" not in done.stderr
    for run_dir, _ in runs:
        assert result["diff"][run_dir] <= 1e-5, (run_dir, result["diff"])
