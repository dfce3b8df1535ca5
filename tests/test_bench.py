"""facetransfer bench machinery at a tiny size (no timing assertions: timings belong in the bench)."""

import json
import math
import sys

import numpy as np
import pytest

from facetransfer import bench, pipelines
from facetransfer.errors import FacetransferError

pytestmark = pytest.mark.slow  # one tiny bench run, about 30 s on 2 cores

TINY = bench.Sizes(n=100, epochs=1, image_size=32, batch_size=16, cases=("vgg16_frozen",))


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """``run_bench(quick=True, as_json=True, ...)`` at TINY sizes, parsed from stdout."""
    workdir = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setattr(bench, "QUICK", TINY)
    try:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = bench.run_bench(quick=True, as_json=True, cases=["compact_full", "vgg16_frozen"], workdir=workdir)
    finally:
        mp.undo()
    assert status == 0
    text = out.getvalue().strip()
    assert len(text.splitlines()) == 1, "stdout must carry exactly one JSON object"
    return json.loads(text), workdir


def test_json_has_machine_sizes_and_cases(result):
    res, _ = result
    assert set(res) >= {"machine", "gpu", "sizes", "data", "weights", "cases", "decode", "seconds"}
    assert {k: res["sizes"][k] for k in ("n", "epochs", "image_size", "batch_size")} == {"n": 100, "epochs": 1, "image_size": 32, "batch_size": 16}
    assert res["machine"]["cpus"] >= 1 and res["machine"]["backend"]
    assert list(res["cases"]) == ["vgg16_frozen", "compact_full"]  # run in the fixed case order
    assert _positive(res["seconds"])


def test_every_case_times_both_pipelines(result):
    res, _ = result
    for name, case in res["cases"].items():
        assert case["n_train"] + case["n_val"] <= 100 and case["n_train"] > 0, name
        for side in ("baseline", "facetransfer"):
            assert _positive(case[side]["seconds"]) and _positive(case[side]["cpu_seconds"]), (name, side)
            assert _positive(case[side]["images_per_s"]), (name, side)
            assert len(case[side]["epoch_seconds"]) == 1
        assert _positive(case["ratio"]) and _positive(case["ratio_cpu"])
        assert case["ratio"] == pytest.approx(case["baseline"]["seconds"] / case["facetransfer"]["seconds"])
        assert case["target_applies"] is False and case["target_met"] is None  # 1 epoch, not 10
        assert case["facetransfer"]["image_cache_hit"] is False  # the one-time caching is in the time


def test_frozen_case_uses_the_feature_cache_and_reruns_from_caches(result):
    res, _ = result
    frozen = res["cases"]["vgg16_frozen"]
    assert frozen["facetransfer"]["used_feature_cache"] is True
    assert _positive(frozen["facetransfer"]["feature_seconds"])
    rerun = frozen["rerun"]
    assert rerun["image_cache_hit"] is True and rerun["feature_extraction"] is False
    assert any("no decoding" in line for line in rerun["fit_log"])
    assert any("loaded from cache" in line for line in rerun["fit_log"])
    assert _positive(frozen["two_runs_ratio"])


def test_frozen_case_also_times_bfloat16_features_from_cold_caches(result):
    res, _ = result
    frozen = res["cases"]["vgg16_frozen"]
    assert frozen["facetransfer"]["precision"] == "float32"
    bf16 = frozen["bfloat16"]
    ft = bf16["facetransfer"]
    assert ft["precision"] == "bfloat16" and ft["used_feature_cache"] is True
    assert ft["image_cache_hit"] is False and _positive(ft["decode_seconds"])  # its own cold caches
    assert any("(bfloat16): computed and cached" in line for line in ft["fit_log"])
    assert bf16["ratio"] == pytest.approx(frozen["baseline"]["seconds"] / ft["seconds"])
    assert _positive(bf16["ratio_cpu"]) and bf16["target_met"] is None and isinstance(bf16["native_bfloat16"], bool)
    for side in (frozen["baseline"], frozen["facetransfer"], ft):
        assert 0.0 <= side["val_accuracy"] <= 1.0
    assert "bfloat16" not in res["cases"]["compact_full"]  # nothing frozen: no feature cache to vary
    text = bench.format_text(res)
    assert "(a) VGG16 frozen bf16" in text and "bf16 features" in text and "validation accuracy" in text


def test_full_case_measures_model_only_throughput(result):
    res, _ = result
    full = res["cases"]["compact_full"]
    assert full["facetransfer"]["used_feature_cache"] is False
    assert _positive(full["model_only"]["images_per_s"]) and _positive(full["pipeline"]["images_per_s"])
    pipe, only = full["pipeline"]["epoch_seconds"], full["model_only"]["epoch_seconds"]
    assert len(pipe) == len(only) == 1 and all(map(_positive, pipe + only))  # one alternating pair per epoch
    assert full["pipeline_fraction"] == pytest.approx(only[0] / pipe[0])
    assert full["pipeline"]["images_per_s"] == pytest.approx(full["n_train"] / pipe[0])
    assert "rerun" not in full


def test_pipeline_fraction_pairs_epochs_of_the_same_number():
    seconds = {"pipeline": [9.0, 6.0, 10.0, 6.0, 10.0], "model_only": [9.0, 5.4, 10.0, 6.6, 11.0]}  # conditions shift together
    figures = bench.pipeline_figures(seconds, images_per_epoch=100)
    assert figures["pipeline_fraction"] == pytest.approx(1.05)  # median of 0.9, 1.0, 1.1, 1.1
    assert figures["pipeline"]["steady_epoch_seconds"] == pytest.approx(8.0) and figures["model_only"]["images_per_s"] == pytest.approx(100 / 8.3)  # medians of epochs 2..
    assert figures["pipeline_target_met"] is True
    slow = bench.pipeline_figures({"pipeline": [9.0, 10.0, 10.0], "model_only": [9.0, 8.0, 8.0]}, images_per_epoch=100)
    assert slow["pipeline_fraction"] == pytest.approx(0.8) and slow["pipeline_target_met"] is False


def test_decode_figures_and_text_report(result):
    res, workdir = result
    d = res["decode"]
    assert d["images"] == 100 and d["to_px"] == 32 and _positive(d["images_per_s"])
    text = bench.format_text(res)
    assert "(a) VGG16 frozen" in text and "(c) compact CNN full" in text
    assert "model only" in text and "[fit]" in text
    # the workdir keeps the synthetic set and the weights file, not the cold caches
    assert (workdir / "vgg16-notop-random-seed0.weights.h5").is_file()
    assert [p.name for p in workdir.iterdir() if p.name.startswith("run-")] == []


def test_unknown_case_is_a_one_line_error():
    with pytest.raises(FacetransferError, match=r"'vgg99'.*allowed: vgg16_frozen, vgg16_last_block"):
        bench.run_bench(quick=True, cases=["vgg99"])


def test_a_missing_baseline_is_reported_not_a_crash(result):
    res, _ = result
    assert pipelines.baseline_unavailable() is None  # this Keras ships the legacy ImageDataGenerator
    case = dict(res["cases"]["compact_full"], baseline={"unavailable": "no legacy ImageDataGenerator"}, ratio=None, ratio_cpu=None, target_met=None)
    text = bench.format_text(dict(res, cases={"compact_full": case}))
    assert "baseline not run: no legacy ImageDataGenerator" in text


def test_frozen_case_times_keras_guide_and_the_limit(result):
    res, _ = result
    frozen, ft = res["cases"]["vgg16_frozen"], res["cases"]["vgg16_frozen"]["facetransfer"]
    guide, limit = frozen["keras_guide"], frozen["limit"]
    assert _positive(guide["seconds"]) and len(guide["epoch_seconds"]) == 1 and 0.0 <= guide["val_accuracy"] <= 1.0
    assert frozen["vs_keras_guide"]["ratio"] == pytest.approx(guide["seconds"] / ft["seconds"])
    assert frozen["vs_keras_guide"]["ratio_cpu"] == pytest.approx(guide["cpu_seconds"] / ft["cpu_seconds"])
    assert limit["images"] == frozen["n_train"] + frozen["n_val"]
    assert limit["seconds"] == pytest.approx(limit["forward_seconds"] + limit["head_seconds"])
    assert _positive(limit["forward_seconds"]) and _positive(limit["head_seconds"]) and 0.0 <= limit["val_accuracy"] <= 1.0
    assert frozen["efficiency"] == pytest.approx(limit["seconds"] / ft["seconds"])
    assert frozen["efficiency_cpu"] == pytest.approx(limit["cpu_seconds"] / ft["cpu_seconds"])
    assert "limit" not in res["cases"]["compact_full"] and "keras_guide" not in res["cases"]["compact_full"]  # nothing frozen
    text = bench.format_text(res)
    assert "vs keras-guide" in text and "efficiency" in text and "limit " in text


def _jpegs(folder, colours):
    from PIL import Image

    paths = []
    for i, colour in enumerate(colours):
        paths.append(folder / f"{i}.jpg")
        Image.new("RGB", (12, 10), colour).save(paths[-1], quality=95)
    return paths


def test_keras_guide_dataset_decodes_once_and_reshuffles_each_epoch(tmp_path):
    import pandas as pd

    greys = [(10 * i, 10 * i, 10 * i) for i in range(8)]
    frame = pd.DataFrame({"path": _jpegs(tmp_path, greys), "gender": np.arange(8, dtype=np.float32)})
    cfg = {"seed": 0, "data": {"image_size": 4}, "train": {"batch_size": 3}}
    batches = list(pipelines.keras_guide_dataset(frame, cfg, shuffle=False))
    assert [tuple(x.shape) for x, _ in batches] == [(3, 4, 4, 3), (3, 4, 4, 3), (2, 4, 4, 3)]
    labels = np.concatenate([y["gender"].numpy() for _, y in batches])
    pixels = np.concatenate([x.numpy()[:, 0, 0, 0] for x, _ in batches])
    assert labels.tolist() == list(range(8)) and np.allclose(pixels, [g[0] for g in greys], atol=3)  # 0..255, resized whole
    shuffled = pipelines.keras_guide_dataset(frame, cfg, shuffle=True)
    first = np.concatenate([y["gender"].numpy() for _, y in shuffled])
    for path in frame["path"]:
        path.unlink()  # .cache(): the second epoch reads no file
    second = np.concatenate([y["gender"].numpy() for _, y in shuffled])
    assert sorted(first) == sorted(second) == list(range(8)) and first.tolist() != second.tolist()


def test_keras_guide_without_tensorflow_is_one_line(monkeypatch):
    assert pipelines.keras_guide_unavailable() is None
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow now raises ImportError
    assert pipelines.keras_guide_unavailable() == "unavailable: needs TensorFlow (tf.data), which is not installed"


def _side(seconds, cpu):
    return {"seconds": seconds, "cpu_seconds": cpu}


def test_against_limit_table():
    ft = {**_side(10.0, 12.0), "decode_seconds": 0.5, "feature_seconds": 6.0}
    limit = {**_side(7.5, 8.0), "forward_seconds": 5.0, "head_seconds": 2.5, "images": 1000}
    frozen = {
        "label": "(a) VGG16 frozen", "baseline": _side(120.0, 108.0), "facetransfer": ft, "ratio": 12.0, "ratio_cpu": 9.0,
        "keras_guide": _side(40.0, 36.0), "vs_keras_guide": bench.speedup(_side(40.0, 36.0), ft), "limit": limit, "efficiency": 0.75, "efficiency_cpu": 8.0 / 12.0,
    }
    no_tf = dict(frozen, label="(b) VGG16 last_block", keras_guide={"unavailable": "unavailable: needs TensorFlow"}, vs_keras_guide=bench.speedup({"unavailable": "x"}, ft))
    lines = bench.format_against_limit({"a": frozen, "b": no_tf, "c": {"label": "(c) compact CNN full"}})
    rows = [line.split() for line in lines if line.startswith("(")]  # (c) has no frozen prefix: no row
    assert rows == [
        ["(a)", "VGG16", "frozen", "120.0", "40.0", "10.0", "7.5", "12.0x", "(9.0x)", "4.0x", "(3.0x)", "75%", "(67%)"],
        ["(b)", "VGG16", "last_block", "120.0", "n/a", "10.0", "7.5", "12.0x", "(9.0x)", "n/a", "75%", "(67%)"],
    ]
    assert "  (a) VGG16 frozen: limit 7.5 s = forward 5.0 s (1000 images, 200 img/s) + trainable rest 2.5 s; facetransfer 10.0 s" in "\n".join(lines)
    assert "  (b) VGG16 last_block: keras-guide not run: unavailable: needs TensorFlow" in lines
    assert bench.format_against_limit({"c": {"label": "(c)"}}) == []
