"""fit: every task, callbacks, class weights, two phases, the frozen-prefix feature cache."""

from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.utils.class_weight import compute_class_weight

from facetransfer import evaluate, models, params, train
from facetransfer.data import PreparedData
from facetransfer.errors import FacetransferError, ParamError
from facetransfer.images import ImageCache

SIZE = 16


def tiny_cfg(task="gender", **train_over):
    raw = {
        "task": task,
        "seed": 0,
        "data": {"dataset": "folder", "root": "/tiny", "folder": {"gender_column": "gender", "age_column": "age"}},
        "model": {"backbone": "compact", "weights": "none", "strategy": "full"},
        "train": {"epochs": 1, "batch_size": 8, "feature_cache": False, **train_over},
    }
    return params.resolve_run(raw)


def tiny_data(cfg, *, n=48, female_share=0.5, seed=0, size=SIZE):
    """A PreparedData over an in-memory image array whose labels show in the pixels."""
    rng = np.random.default_rng(seed)
    gender = (rng.random(n) >= female_share).astype(int)
    age = rng.uniform(1, 80, n).round()
    images = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    images[:, :, : size // 2, 0] += (gender * 150).astype(np.uint8)[:, None, None]
    images[:, size // 2 :, :, 1] += (age * 2).astype(np.uint8)[:, None, None]
    paths = [f"/tiny/{i:03d}.png" for i in range(n)]
    n_train, n_val = int(n * 2 / 3), n // 6
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    records = pd.DataFrame({
        "path": paths, "gender": gender, "age": age, "age_group": evaluate.age_to_group(age),
        "subject": [f"s{i}" for i in range(n)], "race": rng.choice(["0", "1"], n), "split": split, "row": np.arange(n),
    })
    cache = ImageCache(key="tiny", images=images, paths=paths, skipped=[], hit=True, seconds=0.0, size=size, crop="center")
    dataset = SimpleNamespace(name="folder", root=Path("/tiny"), synthetic=True, layout="test", records=records, skipped=[])
    quarantine = pd.DataFrame(columns=["path", "reason", "stage"])
    return PreparedData(cfg=cfg, dataset=dataset, cache=cache, records=records, quarantine=quarantine, image_size=size)


def tiny_model(task, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = {}
    if task in ("gender", "age_gender"):
        outputs["gender"] = keras.layers.Dense(1, activation="sigmoid", name="gender")(x)
    if task in ("age", "age_gender"):
        outputs["age"] = keras.layers.Dense(1, name="age")(x)
    if task == "age_group":
        outputs["age_group"] = keras.layers.Dense(8, activation="softmax", name="age_group")(x)
    return keras.Model(inp, outputs)


def _weights(model):
    return [w.copy() for w in model.get_weights()]


@pytest.mark.parametrize("task", ["gender", "age", "age_group", "age_gender"])
def test_fit_every_task(task, tmp_path):
    cfg = tiny_cfg(task)
    data = tiny_data(cfg)
    model = tiny_model(task)
    before = _weights(model)
    result = train.fit(model, data, cfg, tmp_path / "run", results_root=tmp_path, verbose=0)
    hist = result.history
    assert list(hist["epoch"]) == [1] and list(hist["phase"]) == ["final"]
    for col in ("loss", "val_loss", "lr", "seconds"):
        assert col in hist and np.isfinite(hist[col]).all()
    assert hist["lr"].iloc[0] == pytest.approx(cfg["train"]["learning_rate"])
    metric = {"gender": "accuracy", "age": "mae", "age_group": "accuracy", "age_gender": "gender_accuracy"}[task]
    assert f"val_{metric}" in hist
    assert set(result.timings) == {"train_seconds", "epoch_seconds", "cache_seconds", "feature_seconds"}
    assert len(result.timings["epoch_seconds"]) == 1
    assert result.used_feature_cache is False
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert any("no decoding" in line for line in result.log)
    if task == "age_gender":  # loss = gender_loss + loss_weights.age * age_loss
        w = cfg["train"]["loss_weights"]["age"]
        assert hist["val_loss"].iloc[0] == pytest.approx(hist["val_gender_loss"].iloc[0] + w * hist["val_age_loss"].iloc[0], rel=1e-4)


@pytest.mark.parametrize("name, cls", [("adam", "Adam"), ("sgd", "SGD"), ("rmsprop", "RMSprop")])
def test_optimizers(name, cls):
    cfg = tiny_cfg(optimizer=name, momentum=0.5)
    opt = train.make_optimizer(cfg["train"], 0.01)
    assert type(opt).__name__ == cls
    assert float(opt.learning_rate) == pytest.approx(0.01)
    if name == "sgd":
        assert opt.momentum == pytest.approx(0.5)


def test_model_outputs_must_match_task():
    cfg = tiny_cfg("age_gender")
    with pytest.raises(Exception, match="needs dict outputs gender, age"):
        train.compile_model(tiny_model("gender"), cfg, 1e-3)


def test_early_stopping_restores_best_weights(tmp_path):
    es = {"monitor": "val_loss", "patience": 2, "restore_best_weights": True}
    cfg = tiny_cfg("gender", epochs=20, optimizer="sgd", learning_rate=0.5, momentum=0.9, early_stopping=es)
    data = tiny_data(cfg)
    val_rows = data.records["split"] == "val"  # val labels contradict train: val_loss rises as train fits (any backend)
    data.records.loc[val_rows, "gender"] = 1 - data.records.loc[val_rows, "gender"]
    model = tiny_model("gender")
    result = train.fit(model, data, cfg, tmp_path / "run", results_root=tmp_path, verbose=0)
    val = result.history["val_loss"].to_numpy()
    assert len(val) < 20, "early stopping did not stop"
    assert val[-1] > val.min(), "precondition: the last epoch is not the best one"
    x = data.cache.images[data.rows("val")].astype("float32")
    now = model.evaluate(x, data.targets("val"), verbose=0, return_dict=True)["loss"]
    assert now == pytest.approx(val.min(), rel=1e-4)


def test_reduce_lr_logged(tmp_path):
    rl = {"monitor": "loss", "factor": 0.5, "patience": 0, "min_lr": 0.0}
    cfg = tiny_cfg("gender", epochs=3, optimizer="sgd", learning_rate=1e-9, reduce_lr=rl)  # the loss plateaus on any backend
    result = train.fit(tiny_model("gender"), tiny_data(cfg), cfg, tmp_path / "run", results_root=tmp_path, verbose=0)
    lr = result.history["lr"].to_numpy()
    assert lr[0] == pytest.approx(1e-9) and lr.min() < 1e-9


def test_monitor_must_be_logged(tmp_path):
    cfg = tiny_cfg("age_gender", early_stopping={"monitor": "val_accuracy"})
    with pytest.raises(ParamError, match="train.early_stopping.monitor.*val_gender_accuracy"):
        train.fit(tiny_model("age_gender"), tiny_data(cfg), cfg, tmp_path / "run", results_root=tmp_path, verbose=0)


def test_balanced_class_weights_match_sklearn():
    y = np.array([0] * 30 + [1] * 10)
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
    np.testing.assert_allclose(train.balanced_class_weights(y, 2), expected)
    w = train.sample_weights(tiny_cfg(class_weight="balanced"), {"gender": y})
    assert w[0] == pytest.approx(expected[0]) and w[-1] == pytest.approx(expected[1])
    assert w.mean() == pytest.approx(1.0)
    with pytest.raises(ParamError, match="train.class_weight"):
        train.sample_weights(tiny_cfg("age", class_weight="balanced"), {"age": np.ones(3)})


def test_class_weights_change_the_loss(tmp_path):
    losses = {}
    for cw in (None, "balanced"):
        cfg = tiny_cfg("gender", class_weight=cw)
        data = tiny_data(cfg, female_share=0.8)
        result = train.fit(tiny_model("gender"), data, cfg, tmp_path / str(cw), results_root=tmp_path, verbose=0)
        losses[cw] = result.history["loss"].iloc[0]
    assert losses[None] != pytest.approx(losses["balanced"], rel=1e-3)


def test_class_weights_weight_only_gender_for_age_gender(tmp_path):
    cfg = tiny_cfg("age_gender", class_weight="balanced")
    data = tiny_data(cfg, female_share=0.8)
    w = train.sample_weights(cfg, data.targets("train"))
    feeder = train._weighted(data.feeder("train", batch_size=8, sample_weight=w), cfg)
    x, y, sw = feeder[0]
    assert set(sw) == {"gender", "age"}
    np.testing.assert_allclose(sw["age"], 1.0)
    assert not np.allclose(sw["gender"], 1.0)


def test_two_phase_needs_fewer_head_epochs():
    cfg = tiny_cfg(epochs=2, two_phase={"head_epochs": 2})
    with pytest.raises(ParamError, match="train.two_phase.head_epochs"):
        train._phases(cfg)


def test_array_feeder_shuffles_like_batch_feeder():
    cfg = tiny_cfg()
    data = tiny_data(cfg)
    images = data.feeder("train", batch_size=8, shuffle=True, seed=3)
    flat = data.cache.images[data.rows("train")].reshape(len(data.rows("train")), -1)
    arrays = train.ArrayFeeder(flat, data.targets("train"), batch_size=8, shuffle=True, seed=3)
    for _ in range(2):
        for i in range(len(images)):
            xi, yi = images[i]
            xa, ya = arrays[i]
            np.testing.assert_array_equal(xi.reshape(len(xi), -1), xa)
            np.testing.assert_array_equal(yi["gender"], ya["gender"])
        images.on_epoch_end()
        arrays.on_epoch_end()


# ---------------------------------------------------------------- with models.build_model


def compact_cfg(**over):
    raw = {
        "task": "gender",
        "seed": 0,
        "data": {"dataset": "folder", "root": "/tiny", "image_size": 32, "folder": {"gender_column": "gender"}},
        "model": {"backbone": "compact", "weights": "none", "strategy": "full", "head": {"dense": [8]}},
        "train": {"epochs": 1, "batch_size": 16},
    }
    for key, value in over.items():
        params.set_dotted(raw, key, value)
    return params.resolve_run(raw)


def test_two_phase_tags_phases(tmp_path):
    cfg = compact_cfg(**{"train.epochs": 2, "train.two_phase": {"head_epochs": 1, "learning_rate": 1e-4}})
    data = tiny_data(cfg, size=32)
    train.configure(cfg)
    model = models.build_model(cfg)
    conv = model.get_layer("block1_conv").get_weights()[0].copy()
    result = train.fit(model, data, cfg, tmp_path / "run", results_root=tmp_path, verbose=0)
    hist = result.history
    assert list(hist["phase"]) == ["head", "final"]
    assert list(hist["epoch"]) == [1, 2]
    np.testing.assert_allclose(hist["lr"], [1e-3, 1e-4])
    # head phase: backbone frozen → trained on cached prefix features; final (full): on images
    assert result.used_feature_cache is True
    assert any("phase final: training the whole model on images" in line for line in result.log)
    assert not np.array_equal(conv, model.get_layer("block1_conv").get_weights()[0])
    assert model.get_layer("block1_conv").trainable  # the final strategy (full) is in place


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A compact-CNN model file to start frozen runs from."""
    cfg = compact_cfg()
    train.configure(cfg)
    path = tmp_path_factory.mktemp("source") / "source.keras"
    models.build_model(cfg).save(path)
    return str(path)


def test_feature_cache_trains_the_full_model_and_is_reused(tmp_path, capsys, pretrained):
    cfg = compact_cfg(**{"model.weights": pretrained, "model.strategy": "frozen", "train.epochs": 2})
    data = tiny_data(cfg, size=32)
    train.configure(cfg)
    model = models.build_model(cfg)
    frozen = model.get_layer("block4_conv").get_weights()[0].copy()
    head = model.get_layer("gender").get_weights()[0].copy()
    result = train.fit(model, data, cfg, tmp_path / "run1", results_root=tmp_path, verbose=0)
    assert result.used_feature_cache and result.timings["feature_seconds"] > 0
    assert any("features train" in line and "computed" in line for line in result.log)
    np.testing.assert_array_equal(frozen, model.get_layer("block4_conv").get_weights()[0])
    assert not np.array_equal(head, model.get_layer("gender").get_weights()[0])  # shared layers trained
    assert len(list((tmp_path / "_cache" / "features").glob("*.npy"))) == 2  # train, val

    # predictions from cached features = predictions from images
    via_features = evaluate.predict_split(model, data, cfg, "test", results_root=tmp_path, verbose=0)
    via_images = evaluate.predict_split(model, data, cfg, "test", verbose=0)
    np.testing.assert_allclose(via_features["gender"], via_images["gender"], atol=1e-5)

    # a re-run that changes only the learning rate: no decoding, no feature extraction
    capsys.readouterr()
    cfg2 = compact_cfg(**{"model.weights": cfg["model"]["weights"], "model.strategy": "frozen", "train.learning_rate": 0.01})
    train.configure(cfg2)
    again = train.fit(models.build_model(cfg2), data, cfg2, tmp_path / "run2", results_root=tmp_path, verbose=0)
    out = capsys.readouterr().out
    assert "no decoding, no feature extraction" in out
    assert "loaded from cache (no feature extraction)" in out
    assert again.used_feature_cache


def test_augmentation_turns_the_feature_cache_off(tmp_path, pretrained):
    cfg = compact_cfg(**{"model.weights": pretrained, "model.strategy": "frozen", "train.augment": {"flip": True}})
    train.configure(cfg)
    model = models.build_model(cfg)
    assert train.feature_split(model, cfg) is None
    cfg_off = compact_cfg(**{"model.weights": cfg["model"]["weights"], "model.strategy": "frozen", "train.feature_cache": False})
    assert train.feature_split(model, cfg_off) is None
    cfg_on = compact_cfg(**{"model.weights": cfg["model"]["weights"], "model.strategy": "frozen"})
    prefix, rest = train.feature_split(model, cfg_on)
    assert not prefix.trainable_weights
    assert sorted(w.path for w in rest.trainable_weights) == sorted(w.path for w in model.trainable_weights)


def test_age_output_starts_at_the_median_training_age():
    import keras
    import numpy as np

    from facetransfer.train import init_age_output

    inputs = keras.Input((4,))
    model = keras.Model(inputs, {"age": keras.layers.Dense(1, name="age")(inputs)})
    log: list[str] = []
    init_age_output(model, {"age": np.array([20.0, 30.0, 61.0])}, log)
    assert model.get_layer("age").get_weights()[1][0] == 30.0
    assert "30.0 years" in log[0]
    gender_only = keras.Model(inputs, {"gender": keras.layers.Dense(1, name="gender")(inputs)})
    init_age_output(gender_only, {"gender": np.array([0, 1])}, log)
    assert len(log) == 1  # nothing to do without an age output


def test_batch_size_one_into_a_batch_norm_head_is_refused():
    with pytest.raises(ParamError) as err:
        params.resolve_run({**_raw(), "model": {**_raw()["model"], "head": {"batch_norm": True}}, "train": {"batch_size": 1}})
    assert err.value.key == "train.batch_size" and "model.head.batch_norm" in str(err.value)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, params.CannotLearn)
    params.resolve_run({**_raw(), "train": {"batch_size": 1}})  # without a BN head batch 1 is fine


def _raw():
    return {"data": {"dataset": "folder", "root": "/tiny", "folder": {"gender_column": "gender"}}, "model": {"backbone": "compact", "weights": "none", "strategy": "full"}}


@pytest.mark.parametrize("feature_path", [False, True])
def test_a_last_training_batch_of_one_is_merged_into_the_one_before(feature_path, tmp_path):
    """17 training images at batch size 8: batches of 8 and 9, never a batch of one (a BN head
    would normalise it to its beta); every image once per epoch."""
    cfg = tiny_cfg(batch_size=8)
    data = tiny_data(cfg, n=26)  # 17 train, 4 val, 5 test
    assert len(data.rows("train")) == 17
    if feature_path:
        inp = keras.Input((SIZE, SIZE, 3))
        prefix = keras.Model(inp, keras.layers.Rescaling(1.0)(inp))
        train_in, _, _ = train._feature_inputs(prefix, data, cfg, ["train", "val"], None, tmp_path, [])
    else:
        train_in, _ = train._image_inputs(data, cfg, ["train", "val"], None)
    for _epoch in range(2):
        sizes = [len(train_in[i][1]["gender"]) for i in range(len(train_in))]
        assert sizes == [8, 9]
        train_in.on_epoch_end()
    assert train.no_batch_of_one(train_in, 16, 8) is train_in  # nothing to merge


def test_reuse_loads_the_trained_model_instead_of_training(tmp_path, capsys):
    """eval.* changed only: fit(reuse=True) loads model.keras, trains nothing, and says so."""
    from facetransfer import artifacts
    from facetransfer.io import atomic_write_json

    cfg = tiny_cfg()
    data = tiny_data(cfg)
    model = tiny_model("gender")
    result = train.fit(model, data, cfg, tmp_path, results_root=tmp_path, verbose=0)
    artifacts.save_model(model, tmp_path / "model.keras")
    result.history.to_csv(tmp_path / "history.csv", index=False)
    metrics = {"run_id": "0123456789ab", "status": "ok", "params": cfg, "used_feature_cache": False, "timing": {**result.timings, "epochs": 1}}
    atomic_write_json(tmp_path / "metrics.json", metrics)
    capsys.readouterr()
    again = tiny_model("gender", seed=5)
    changed = params.resolve_run({**cfg, "eval": {**cfg["eval"], "bootstrap": 10}})
    reused = train.fit(again, data, changed, tmp_path, results_root=tmp_path, verbose=0, reuse=True)
    for a, b in zip(again.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert "only eval.* changed, no retraining" in capsys.readouterr().out
    assert "Epoch" not in "".join(reused.log) and reused.timings["train_seconds"] == result.timings["train_seconds"]
    pd.testing.assert_frame_equal(reused.history, pd.read_csv(tmp_path / "history.csv"))
    other = params.resolve_run({**cfg, "train": {**cfg["train"], "epochs": 2}})
    with pytest.raises(FacetransferError, match="not trained .* with these training params"):
        train.fit(tiny_model("gender"), data, other, tmp_path, results_root=tmp_path, verbose=0, reuse=True)


def test_initial_weights_ignore_other_draws_from_pythons_global_random(tmp_path):
    """A Dask worker's threads draw from Python's global ``random`` while a trial builds its
    model there: the model's initial weights must come from the seed alone."""
    import random

    cfg = tiny_cfg()

    def initial_weights(other_draws: int) -> list[np.ndarray]:
        train.configure(cfg)
        for _ in range(other_draws):  # another thread of the process
            random.random()
        return models.build_model(cfg, results_root=tmp_path).get_weights()

    undisturbed, disturbed = initial_weights(0), initial_weights(3)
    assert len(undisturbed) == len(disturbed)
    for a, b in zip(undisturbed, disturbed, strict=True):
        np.testing.assert_array_equal(a, b)
