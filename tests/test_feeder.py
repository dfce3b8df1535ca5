"""BatchFeeder: shapes, alignment, seeded per-epoch shuffle, augmentation, sample weights, fit."""

import ast
from pathlib import Path

import keras
import numpy as np
import pytest

from facetransfer import feeder as feeder_module
from facetransfer.feeder import BatchFeeder, augmentation_layers


def _coded_images(n=300, side=8):
    """Images whose pixel (0, 0) encodes their row number: row = 256 * x[0,0,0] + x[0,0,1]."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) // 256
    images[:, 0, 0, 1] = np.arange(n) % 256
    return images


def _decode_rows(x):
    return (x[:, 0, 0, 0] * 256 + x[:, 0, 0, 1]).astype(int)


def test_batches_have_shapes_dtypes_and_aligned_targets():
    images = _coded_images()
    rows = np.arange(250, 10, -3)  # any order, any subset
    gender = (rows % 2).astype(np.float32)
    feeder = BatchFeeder(images, rows, {"gender": gender, "age": rows * 1.0}, batch_size=32)
    assert len(feeder) == int(np.ceil(len(rows) / 32))
    seen = []
    for i in range(len(feeder)):
        x, y = feeder[i]
        assert x.dtype == np.float32 and x.shape[1:] == (8, 8, 3) and set(y) == {"gender", "age"}
        got = _decode_rows(x)
        np.testing.assert_array_equal(y["age"], got)
        np.testing.assert_array_equal(y["gender"], got % 2)
        np.testing.assert_array_equal(x, images[got].astype(np.float32))
        seen.extend(got)
    assert seen == rows.tolist()  # unshuffled: the given order, last batch partial
    assert feeder[len(feeder) - 1][0].shape[0] == len(rows) - 32 * (len(feeder) - 1)
    with pytest.raises(IndexError):
        feeder[len(feeder)]


def test_shuffle_is_seeded_per_epoch():
    images = _coded_images()
    rows = np.arange(200)

    def epoch_orders(seed, epochs=3):
        f = BatchFeeder(images, rows, {"y": rows}, batch_size=50, shuffle=True, seed=seed)
        orders = []
        for _ in range(epochs):
            orders.append(np.concatenate([f[i][1]["y"] for i in range(len(f))]))
            f.on_epoch_end()
        return orders

    a, b = epoch_orders(7), epoch_orders(7)
    for ea, eb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ea, eb)
        assert sorted(ea) == rows.tolist()
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
    assert not np.array_equal(a[0], epoch_orders(8, 1)[0])
    assert not np.array_equal(a[0], rows)


def test_sample_weight_and_prediction_batches():
    images = _coded_images(40)
    rows = np.arange(40)
    weights = np.linspace(0.5, 2.0, 40)
    x, y, w = BatchFeeder(images, rows, {"g": rows % 2}, batch_size=16, shuffle=True, sample_weight=weights)[1]
    np.testing.assert_allclose(w, weights[_decode_rows(x)])
    assert w.dtype == np.float32
    only_x = BatchFeeder(images, rows, None, batch_size=16)[0]
    assert isinstance(only_x, np.ndarray) and only_x.shape == (16, 8, 8, 3)


def test_augmentation_is_seeded_and_flips_whole_images():
    images = _coded_images(64, side=16)
    images[:, 1:] = np.random.default_rng(1).integers(0, 256, (64, 15, 16, 3))
    rows = np.arange(64)
    plain = BatchFeeder(images, rows, None, batch_size=64)[0]
    aug = BatchFeeder(images, rows, None, batch_size=64, augment={"flip": True, "rotation": 0.0, "zoom": 0.0}, seed=5)
    x = aug[0]
    assert np.array_equal(x, aug[0])  # same (seed, epoch, batch) → same batch
    flipped = np.array([np.array_equal(x[i], plain[i, :, ::-1]) for i in range(64)])
    kept = np.array([np.array_equal(x[i], plain[i]) for i in range(64)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54
    aug.on_epoch_end()
    assert not np.array_equal(aug[0], x)  # a new epoch draws new flips
    rotated = BatchFeeder(images, rows, None, batch_size=64, augment={"flip": False, "rotation": 0.1, "zoom": 0.2}, seed=5)[0]
    assert rotated.shape == plain.shape and rotated.dtype == np.float32 and not np.allclose(rotated, plain)


def test_augmentation_layers_follow_the_params_section():
    assert augmentation_layers(None) == [] and augmentation_layers({"flip": False, "rotation": 0.0, "zoom": 0.0}) == []
    names = [type(layer).__name__ for layer in augmentation_layers({"flip": True, "rotation": 0.05, "zoom": 0.1})]
    assert names == ["RandomFlip", "RandomRotation", "RandomZoom"]
    with pytest.raises(ValueError, match="unknown key 'shear'"):
        augmentation_layers({"shear": 0.1})


def test_misaligned_inputs_are_rejected():
    images = _coded_images(10)
    with pytest.raises(ValueError, match="gender has 3 values for 10 rows"):
        BatchFeeder(images, np.arange(10), {"gender": [0, 1, 0]}, batch_size=4)
    with pytest.raises(ValueError, match="rows must be in 0..9"):
        BatchFeeder(images, [0, 10], None, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        BatchFeeder(images, [0, 1], None, batch_size=0)


def test_model_fit_calls_on_epoch_end():
    images = _coded_images(96)
    rows = np.arange(96)
    feeder = BatchFeeder(images, rows, {"gender": (rows % 2).astype(np.float32)}, batch_size=32, shuffle=True, seed=0)
    inputs = keras.Input((8, 8, 3))
    out = keras.layers.Dense(1, activation="sigmoid", name="gender")(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs)))
    model = keras.Model(inputs, {"gender": out})
    model.compile(optimizer="adam", loss={"gender": "binary_crossentropy"})
    history = model.fit(feeder, epochs=2, verbose=0)
    # Keras also calls on_epoch_end once while setting up fit, so count at least one per epoch
    assert len(history.history["loss"]) == 2 and feeder.epoch >= 2


def test_feeder_imports_no_tensorflow():
    tree = ast.parse(Path(feeder_module.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "tensorflow" not in imported
