"""Metric functions against scikit-learn, the degenerate flag, and evaluate_run."""

from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from facetransfer import evaluate as E
from facetransfer import params
from facetransfer.data import PreparedData
from facetransfer.errors import ParamError
from facetransfer.images import ImageCache

RNG = np.random.default_rng(7)


def _binary(n=200, noise=0.3):
    y = RNG.integers(0, 2, n)
    prob = np.clip(y * 0.6 + 0.2 + RNG.normal(0, noise, n), 0, 1)
    return y, prob


def test_binary_metrics_match_sklearn():
    y, prob = _binary()
    pred = (prob >= 0.5).astype(int)
    assert E.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    np.testing.assert_array_equal(E.confusion_matrix(y, pred, 2), skm.confusion_matrix(y, pred, labels=[0, 1]))
    prf = E.precision_recall_f1(y, pred, 2)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    np.testing.assert_allclose(prf["precision"], p)
    np.testing.assert_allclose(prf["recall"], r)
    np.testing.assert_allclose(prf["f1"], f)
    np.testing.assert_array_equal(prf["support"], s)
    assert E.f1_macro(y, pred, 2) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert E.roc_auc(y, prob) == pytest.approx(skm.roc_auc_score(y, prob))


def test_roc_auc_with_ties_and_one_class():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    score = np.array([0.1, 0.5, 0.5, 0.9, 0.5, 0.1, 0.7, 0.3])
    assert E.roc_auc(y, score) == pytest.approx(skm.roc_auc_score(y, score))
    assert E.roc_auc(np.ones(5), np.linspace(0, 1, 5)) is None


def test_multiclass_metrics_match_sklearn():
    y = RNG.integers(0, 8, 300)
    pred = np.where(RNG.random(300) < 0.6, y, RNG.integers(0, 8, 300))
    labels = list(range(8))
    np.testing.assert_array_equal(E.confusion_matrix(y, pred, 8), skm.confusion_matrix(y, pred, labels=labels))
    assert E.f1_macro(y, pred, 8) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    m = E.classification_metrics(y, pred, E.AGE_GROUPS)
    assert m["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert m["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0))
    assert E.one_off_accuracy(y, pred) == pytest.approx(np.mean(np.abs(y - pred) <= 1))
    assert E.one_off_accuracy([0, 3, 7], [1, 5, 7]) == pytest.approx(2 / 3)


def test_mae_rmse_and_majority():
    a, b = RNG.normal(40, 10, 100), RNG.normal(40, 10, 100)
    assert E.mae(a, b) == pytest.approx(skm.mean_absolute_error(a, b))
    assert E.rmse(a, b) == pytest.approx(np.sqrt(skm.mean_squared_error(a, b)))
    assert E.majority_rate([0, 1, 1, 1]) == pytest.approx(0.75)


def test_age_to_group_boundaries():
    groups = E.age_to_group([0, 2.9, 3, 3.1, 5, 10, 13.5, 14, 18, 28, 35, 36, 40, 50, 70, 116])
    assert groups.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 7]


def test_gender_metrics_confusion_order_female_male():
    y = np.array([0, 0, 0, 1, 1])  # 3 female, 2 male
    prob = np.array([0.1, 0.2, 0.9, 0.8, 0.3])
    m = E.gender_metrics(y, prob)
    # rows = true (female, male); cols = predicted (female, male)
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]
    assert m["classes"] == ["female", "male"]
    assert m["support"] == {"female": 3, "male": 2}
    assert m["accuracy"] == pytest.approx(0.6)


def test_degenerate_flag_on_constant_predictor():
    y = np.array([0] * 60 + [1] * 40)
    m = E.gender_metrics(y, np.full(100, 0.2))
    assert m["degenerate"] is True
    assert "class 0" in m["degenerate_reason"]
    good = E.gender_metrics(y, np.where(y == 1, 0.9, 0.1))
    assert good["degenerate"] is False and good["degenerate_reason"] is None
    assert good["accuracy"] == 1.0 and good["auc"] == 1.0


def test_degenerate_when_not_beating_majority():
    y = np.array([0] * 70 + [1] * 30)
    pred = np.concatenate([np.zeros(40), np.ones(30), np.zeros(30)])  # accuracy 0.4
    flag, reason = E.degenerate(y, pred, 2)
    assert flag and "majority rate" in reason


def test_skewed_truth_is_not_degenerate_when_predicted_right():
    y = np.array([0] * 97 + [1] * 3)
    flag, _ = E.degenerate(y, y, 2)
    assert not flag


def test_age_metrics_and_baseline():
    y = RNG.uniform(1, 90, 200)
    m = E.age_metrics(y, y + RNG.normal(0, 2, 200))
    assert m["mae"] < m["baseline_mae"] and not m["degenerate"]
    assert len(m["confusion_matrix"]) == 8 and 0 <= m["accuracy"] <= 1
    flat = E.age_metrics(y, np.full(200, 45.0))
    assert flat["degenerate"] is True


def test_task_metrics_age_gender_layout():
    yg, prob = _binary(50)
    ya = RNG.uniform(1, 80, 50)
    m = E.task_metrics("age_gender", {"gender": yg, "age": ya}, {"gender": prob[:, None], "age": (ya + 3)[:, None]})
    assert m["accuracy"] == m["outputs"]["gender"]["accuracy"]
    assert m["mae"] == pytest.approx(3.0)
    assert m["outputs"]["age"]["mae"] == pytest.approx(3.0)
    with pytest.raises(ParamError, match="task"):
        E.task_metrics("height", {}, {})


def test_non_finite_outputs_are_degenerate():
    y = np.array([0, 1, 0, 1])
    m = E.task_metrics("gender", {"gender": y}, {"gender": np.array([0.1, np.nan, 0.2, 0.9])})
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
    assert list(pred.columns[:7]) == ["path", "split", "row", "y_true", "prob", "y_pred", "correct"]
    assert "race" in pred and list(pred["split"].unique()) == ["val", "test"]
    expected = 1 / (1 + np.exp(-(6.0 * _mean_red(data, pred["path"]) - 3.0)))
    np.testing.assert_allclose(pred["prob"], expected, rtol=1e-4)
    truth = data.records.set_index("path").loc[pred["path"]]
    np.testing.assert_array_equal(pred["y_true"], truth["gender"])
    np.testing.assert_array_equal(pred["race"], truth["race"])
    test = pred[pred["split"] == "test"]
    assert ev.metrics["test"] == E.gender_metrics(test["y_true"], test["prob"])
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
