"""Metric functions against scikit-learn, the degenerate flag, and evaluate_run."""

from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from facetransfer import evaluate as E
from facetransfer import metrics as M
from facetransfer import params
from facetransfer.data import PreparedData
from facetransfer.errors import ParamError
from facetransfer.images import ImageCache

RNG = np.random.default_rng(7)


def _binary(n=200, noise=0.3):
    y = RNG.integers(0, 2, n)
    prob = np.clip(y * 0.6 + 0.2 + RNG.normal(0, noise, n), 0, 1)
    return y, prob


def test_classification_metrics_match_sklearn():
    y = RNG.integers(0, 8, 300)
    pred = np.where(RNG.random(300) < 0.6, y, RNG.integers(0, 8, 300))
    m = M.classification_metrics(y, pred, M.AGE_GROUPS, train_labels=y)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=list(range(8))).tolist()
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert m["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0))


def test_age_to_group_boundaries():
    groups = E.age_to_group([0, 2.9, 3, 3.1, 5, 10, 13.5, 14, 18, 28, 35, 36, 40, 50, 70, 116])
    assert groups.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 7]


def test_gender_metrics_confusion_order_female_male():
    y = np.array([0, 0, 0, 1, 1])  # 3 female, 2 male
    prob = np.array([0.1, 0.2, 0.9, 0.8, 0.3])
    m = M.gender_metrics(y, prob, train_labels=[0, 1, 1])
    # rows = true (female, male); cols = predicted (female, male)
    assert m["confusion_matrix"] == [[2, 1], [1, 1]] and m["classes"] == ["female", "male"]
    assert m["support"] == {"female": 3, "male": 2} and m["accuracy"] == pytest.approx(0.6)


def test_degenerate_baseline_comes_from_the_training_labels():
    """Test split 60 % female, training split 80 % male: always predicting "male" (the
    training majority) scores 0.40; a model at 0.55 beats that baseline."""
    y = np.array([0] * 60 + [1] * 40)
    pred = np.where(np.arange(100) < 55, y, 1 - y)
    train = np.array([1] * 80 + [0] * 20)
    m = M.classification_metrics(y, pred, M.GENDER_CLASSES, train_labels=train)
    assert m["baseline"]["class"] == "male" and m["baseline"]["accuracy"] == pytest.approx(0.40)
    assert m["baseline"]["train_share"] == pytest.approx(0.8) and not m["degenerate"]
    worse = M.classification_metrics(y, np.tile([0, 1], 50), M.GENDER_CLASSES, train_labels=np.zeros(10))  # 0.50 vs always female 0.60
    assert worse["degenerate"] and "training majority" in worse["degenerate_reason"]
    constant = M.gender_metrics(y, np.full(100, 0.2), train_labels=train)
    assert constant["degenerate"] and "predicts female for 100.0%" in constant["degenerate_reason"]


def test_age_head_degenerate_against_the_median_training_age():
    y = RNG.uniform(1, 90, 200)
    train = RNG.uniform(20, 40, 500)
    good = M.age_metrics(y, y + RNG.normal(0, 2, 200), train_ages=train)
    assert not good["degenerate"] and good["baseline"]["median_age"] == pytest.approx(np.median(train))
    assert good["baseline"]["mae"] == pytest.approx(skm.mean_absolute_error(y, np.full(200, np.median(train))))
    flat = M.age_metrics(y, np.full(200, 45.0), train_ages=train)
    assert flat["degenerate"] and "nearly constant" in flat["degenerate_reason"]


def test_age_gender_run_is_degenerate_when_its_age_head_collapsed():
    yg, prob = _binary(80)
    ya = RNG.uniform(1, 80, 80)
    train = {"gender": yg, "age": ya}
    ok = M.task_metrics("age_gender", {"gender": yg, "age": ya}, {"gender": prob[:, None], "age": (ya + 3)[:, None]}, train)
    assert ok["mae"] == pytest.approx(3.0) and ok["outputs"]["age"]["mae"] == pytest.approx(3.0) and not ok["degenerate"]
    collapsed = M.task_metrics("age_gender", {"gender": yg, "age": ya}, {"gender": prob[:, None], "age": np.full((80, 1), 30.0)}, train)
    assert collapsed["degenerate"] and collapsed["degenerate_reason"].startswith("age head:")
    with pytest.raises(ParamError, match="task"):
        M.task_metrics("height", {}, {}, {})


def test_non_finite_outputs_are_degenerate():
    y = np.array([0, 1, 0, 1])
    m = M.task_metrics("gender", {"gender": y}, {"gender": np.array([0.1, np.nan, 0.2, 0.9])}, {"gender": y})
    assert m["degenerate"] and "1 non-finite" in m["degenerate_reason"]


# ---------------------------------------------------------------- evaluate_run


def _data(task, *, n=30, with_val=True):
    """A PreparedData over an in-memory image array (no decoding), with a race column."""
    rng = np.random.default_rng(1)
    cfg = params.resolve_run({
        "task": task,
        "data": {"dataset": "folder", "root": "/tiny", "folder": {"gender_column": "g", "age_column": "a"}},
        "model": {"backbone": "compact", "weights": "none", "strategy": "full"},
        "train": {"batch_size": 7},
        "eval": {"subgroups": ["race"]},
    })
    images = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
    age = rng.uniform(1, 90, n).round()
    split = (["train"] * 10 + ["val"] * 10 + ["test"] * 10) if with_val else (["train"] * 20 + ["test"] * 10)
    order = rng.permutation(n)  # records not in cache-row order
    records = pd.DataFrame({
        "path": [f"/tiny/{i}.png" for i in order], "gender": rng.integers(0, 2, n), "age": age,
        "age_group": E.age_to_group(age), "race": rng.choice(["a", "b"], n), "split": split, "row": order,
        "subject": [f"person{i % 12}" for i in range(n)],
    })
    cache = ImageCache(key="t", images=images, paths=[f"/tiny/{i}.png" for i in range(n)], skipped=[], hit=True, seconds=0.0, size=8, crop="center")
    ds = SimpleNamespace(name="folder", root=Path("/tiny"), synthetic=True, layout="test", records=records, skipped=[])
    data = PreparedData(cfg=cfg, dataset=ds, cache=cache, records=records, quarantine=pd.DataFrame(columns=["path", "reason", "stage"]), image_size=8)
    return cfg, data


def _known_model(task):
    """Outputs that are simple functions of the mean colour, so predictions can be checked."""
    inp = keras.Input((8, 8, 3))
    mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inp))
    outputs = {}
    if task in ("gender", "age_gender"):
        outputs["gender"] = keras.layers.Dense(1, activation="sigmoid", name="gender")(mean)
    if task in ("age", "age_gender"):
        outputs["age"] = keras.layers.Dense(1, name="age")(mean)
    if task == "age_group":
        outputs["age_group"] = keras.layers.Dense(8, activation="softmax", name="age_group")(mean)
    model = keras.Model(inp, outputs)
    for name in outputs:
        layer = model.get_layer(name)
        kernel = np.zeros(layer.kernel.shape, dtype="float32")
        kernel[0] = 6.0 if name != "age" else 100.0  # red channel drives every output
        kernel[1, 1:] = -np.arange(1, kernel.shape[1])  # spreads the age-group logits
        layer.set_weights([kernel, np.array([-3.0] * kernel.shape[1], dtype="float32") if name == "gender" else np.zeros(kernel.shape[1], "float32")])
    return model


def _mean_red(data, paths):
    rows = [data.cache.paths.index(p) for p in paths]
    return data.cache.images[rows][..., 0].astype(np.float64).mean(axis=(1, 2)) / 255


def test_evaluate_run_gender_predictions_line_up_with_records():
    cfg, data = _data("gender")
    ev = E.evaluate_run(_known_model("gender"), data, cfg, verbose=0)
    pred = ev.predictions
    assert list(pred.columns[:8]) == ["path", "split", "row", "subject", "y_true", "prob", "y_pred", "correct"]
    assert "race" in pred and list(pred["split"].unique()) == ["val", "test"]
    expected = 1 / (1 + np.exp(-(6.0 * _mean_red(data, pred["path"]) - 3.0)))
    np.testing.assert_allclose(pred["prob"], expected, rtol=1e-4)
    truth = data.records.set_index("path").loc[pred["path"]]
    np.testing.assert_array_equal(pred["y_true"], truth["gender"])
    np.testing.assert_array_equal(pred["race"], truth["race"])
    np.testing.assert_array_equal(pred["subject"], truth["subject"])  # the unit of the person-level intervals
    test = pred[pred["split"] == "test"]
    assert ev.metrics["test"] == M.gender_metrics(test["y_true"], test["prob"], data.targets("train")["gender"])
    assert ev.metrics["val"]["n"] == 10


def test_evaluate_run_age_gender_and_age_group_layouts():
    cfg, data = _data("age_gender")
    ev = E.evaluate_run(_known_model("age_gender"), data, cfg, verbose=0)
    pred = ev.predictions
    assert {"y_true", "prob", "y_pred", "age_true", "age_pred", "abs_error"} <= set(pred.columns)
    np.testing.assert_allclose(pred["age_pred"], 100 * _mean_red(data, pred["path"]), rtol=1e-4)
    test = ev.metrics["test"]
    assert test["mae"] == pytest.approx(pred.loc[pred["split"] == "test", "abs_error"].mean(), rel=1e-5)
    assert test["accuracy"] == test["outputs"]["gender"]["accuracy"] and "mae" in test["outputs"]["age"]

    cfg, data = _data("age_group")
    ev = E.evaluate_run(_known_model("age_group"), data, cfg, verbose=0)
    pred = ev.predictions
    probs = pred[[f"prob_{k}" for k in range(8)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(pred["y_pred"], probs.argmax(axis=1))
    assert np.array(ev.metrics["test"]["confusion_matrix"]).shape == (8, 8)
    assert "one_off_accuracy" in ev.metrics["test"]


def test_evaluate_run_without_val_and_bad_subgroup():
    cfg, data = _data("age", with_val=False)
    ev = E.evaluate_run(_known_model("age"), data, cfg, verbose=0)
    assert ev.metrics["val"] is None and set(ev.predictions["split"]) == {"test"}
    assert ev.metrics["test"]["mae"] == pytest.approx(ev.predictions["abs_error"].mean(), rel=1e-5)
    bad = {**cfg, "eval": {**cfg["eval"], "subgroups": ["Smiling"]}}
    with pytest.raises(ParamError, match="eval.subgroups.*'Smiling'"):
        E.evaluate_run(_known_model("age"), data, bad, verbose=0)
