"""Frozen-prefix feature cache: training on cached features = training the whole model."""

import keras
import numpy as np
import pytest

from facetransfer import features, models
from facetransfer.errors import ParamError
from facetransfer.params import resolve_run

N, SIZE, BATCH, EPOCHS = 48, 32, 16, 2


def make_cfg(strategy="last_block"):
    cfg = resolve_run({"data": {"dataset": "celeba", "synthetic": {"n": 10}, "image_size": SIZE}, "model": {"backbone": "compact", "weights": "none", "strategy": "full", "head": {"dense": [16], "batch_norm": True}}})
    cfg["model"]["strategy"] = strategy  # random "pretrained" weights are fine here
    return cfg


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N + 8, SIZE, SIZE, 3), dtype=np.uint8)
    rows = rng.permutation(N + 8)[:N]  # a split: some rows of the image cache, in any order
    y = (images[rows].mean(axis=(1, 2, 3)) > 127.5).astype("float32")
    return images, rows, y


def compile_(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss={"gender": "binary_crossentropy"}, metrics={"gender": ["accuracy"]})


def test_remainder_on_cached_features_trains_like_the_whole_model(tmp_path, data):
    images, rows, y = data
    keras.utils.set_random_seed(0)
    cfg = make_cfg()
    model = models.build_model(cfg)
    start = model.get_weights()

    compile_(model)
    whole = model.fit(images[rows].astype("float32"), {"gender": y}, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    trained_whole = model.get_weights()

    model.set_weights(start)
    prefix, remainder = models.split_frozen_prefix(model)
    assert prefix.layers[-1].name == "block3_pool"
    parts = features.key_parts(cfg, prefix, image_key="imgs-test", rows=rows)
    feats = features.prefix_features(prefix, images, rows, cache_dir=tmp_path, key_parts=parts, batch_size=10, progress=False)
    assert feats.shape == (N, 4, 4, 128) and feats.dtype == np.float32
    compile_(remainder)
    cached = remainder.fit(feats, {"gender": y}, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)

    trained_cached = model.get_weights()  # the remainder trained the model's own layers
    assert any(not np.allclose(a, b) for a, b in zip(start, trained_cached, strict=True))
    for a, b in zip(trained_whole, trained_cached, strict=True):
        # same steps and data; float32 rounding differs between the two graphs' CPU kernels and Adam's
        # normalised steps amplify it on weights near 0 (up to 4e-3 seen on this CPU), so weights match to 1e-2
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-2)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(cached.history[key], whole.history[key], rtol=1e-3, atol=1e-5)
    frozen = model.get_layer("block1_conv").get_weights()[0]
    np.testing.assert_array_equal(frozen, start[0])


def test_cache_hit_read_only_and_interrupted_rebuild(tmp_path, data):
    images, rows, _ = data
    keras.utils.set_random_seed(1)
    cfg = make_cfg("frozen")
    model = models.build_model(cfg)
    prefix, _ = models.split_frozen_prefix(model)
    assert prefix.layers[-1].name == "head_gap"
    parts = features.key_parts(cfg, prefix, image_key="imgs-test", rows=rows)
    assert not features.is_cached(tmp_path, parts)
    first = features.prefix_features(prefix, images, rows, cache_dir=tmp_path, key_parts=parts, progress=False)
    npy, sidecar = features.cache_files(tmp_path, parts)
    assert npy.is_file() and sidecar.is_file() and features.is_cached(tmp_path, parts)
    assert isinstance(first, np.memmap) and not first.flags.writeable
    expected = keras.ops.convert_to_numpy(prefix(images[rows].astype("float32"), training=False))
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)

    # a hit does not run the prefix: a different model under the same key is not called
    zeros = keras.Model(prefix.input, keras.layers.Lambda(lambda t: t * 0.0)(prefix.output))
    again = features.prefix_features(zeros, images, rows, cache_dir=tmp_path, key_parts=parts, progress=False)
    np.testing.assert_array_equal(again, first)

    # the sidecar is written last: without it the .npy is an interrupted run, rebuilt
    sidecar.unlink()
    rebuilt = features.prefix_features(zeros, images, rows, cache_dir=tmp_path, key_parts=parts, progress=False)
    assert np.all(rebuilt == 0) and features.is_cached(tmp_path, parts)


def test_key_changes_with_what_the_features_depend_on(data):
    images, rows, _ = data
    cfg = make_cfg("frozen")
    model = models.build_model(cfg)
    prefix, _ = models.split_frozen_prefix(model)
    base = features.key_parts(cfg, prefix, image_key="imgs-a", rows=rows)
    key = features.feature_key(base)
    assert key == features.feature_key(features.key_parts(cfg, prefix, image_key="imgs-a", rows=rows))
    assert key != features.feature_key(features.key_parts(cfg, prefix, image_key="imgs-b", rows=rows))
    assert key != features.feature_key(features.key_parts(cfg, prefix, image_key="imgs-a", rows=rows[::-1]))
    layer = prefix.get_layer("block2_conv")
    layer.set_weights([w + 1.0 for w in layer.get_weights()])
    assert key != features.feature_key(features.key_parts(cfg, prefix, image_key="imgs-a", rows=rows))
    assert set(base) >= {"image_cache", "backbone", "weights", "weights_sha1", "cut", "image_size", "rows_sha1", "precision"}
    cfg["train"]["feature_precision"] = "bfloat16"
    assert key != features.feature_key(features.key_parts(cfg, prefix, image_key="imgs-a", rows=rows))


@pytest.mark.parametrize(("backbone", "strategy"), [("compact", "frozen"), ("hassner", "last_block"), ("vgg16", "frozen"), ("mobilenetv2", "last_block")])
def test_bfloat16_features_stay_close_to_float32_and_leave_the_model_alone(tmp_path, data, backbone, strategy):
    images, rows, _ = data
    keras.utils.set_random_seed(2)
    cfg = resolve_run({"data": {"dataset": "celeba", "synthetic": {"n": 10}, "image_size": SIZE}, "model": {"backbone": backbone, "weights": "none", "strategy": "full"}})
    cfg["model"]["strategy"] = strategy
    model = models.build_model(cfg)
    prefix, _ = models.split_frozen_prefix(model)
    before = [w.copy() for w in prefix.get_weights()]
    parts = {}
    for precision in features.PRECISIONS:
        cfg["train"]["feature_precision"] = precision
        parts[precision] = features.key_parts(cfg, prefix, image_key="imgs-test", rows=rows)
    f32 = features.prefix_features(prefix, images, rows, cache_dir=tmp_path, key_parts=parts["float32"], progress=False)
    bf16 = features.prefix_features(prefix, images, rows, cache_dir=tmp_path, key_parts=parts["bfloat16"], progress=False)
    assert bf16.dtype == np.float32 and bf16.shape == f32.shape
    assert features.cache_files(tmp_path, parts["float32"]) != features.cache_files(tmp_path, parts["bfloat16"])
    relative = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
    assert 0 < relative < 0.03, relative  # really computed in bfloat16, and close
    assert all(np.array_equal(a, b) for a, b in zip(before, prefix.get_weights(), strict=True))
    assert prefix.layers[-1].compute_dtype == "float32"  # the model itself is untouched


def test_feature_precision_is_validated():
    with pytest.raises(ParamError, match="train.feature_precision.*allowed: float32, bfloat16"):
        features.at_precision(None, "float16")
    with pytest.raises(ParamError, match="train.feature_precision"):
        resolve_run({"data": {"dataset": "celeba", "synthetic": {"n": 10}}, "train": {"feature_precision": "half"}})
