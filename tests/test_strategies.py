"""Every backbone: inline layers, outputs per task, strategies, frozen-prefix cut.

Each backbone is built ONCE (weights none, 32 px, InceptionV3 75 px) and re-used: strategies
only flip ``layer.trainable``. Expected trainable sets and parameter counts are derived here
from the architecture (names, channel arithmetic), not from facetransfer's own helpers.
"""

import keras
import numpy as np
import pytest

from facetransfer import models
from facetransfer.models.heads import build_head
from facetransfer.models.layers import FreezableDropout
from facetransfer.params import resolve_run

SIZES = {"vgg16": 32, "resnet50v2": 32, "inceptionv3": 75, "mobilenetv2": 32, "efficientnetb0": 32, "hassner": 32, "compact": 32}
BACKBONES = list(SIZES)
NON_TRAINABLE_VARS = {"moving_mean", "moving_variance", "mean", "variance", "count"}
HEAD = ["head_dense_1", "gender"]


def make_cfg(backbone, *, task="gender", strategy="full", last_n=None, batchnorm="train"):
    """Params for ``backbone``; ``batchnorm="train"`` so that a trained block trains all its layers."""
    dataset = {"gender": "celeba", "age": "utkface", "age_gender": "utkface", "age_group": "adience"}[task]
    data = {"dataset": dataset, "image_size": SIZES[backbone]}
    data.update({"root": "/nowhere"} if dataset == "adience" else {"synthetic": {"n": 10}})
    cfg = resolve_run({"task": task, "data": data, "model": {"backbone": backbone, "weights": "none", "strategy": "full", "head": {"dense": [8]}}})
    cfg["model"].update(strategy=strategy, last_n=last_n, batchnorm=batchnorm)  # frozen random weights are fine for these checks
    return cfg


@pytest.fixture(scope="module")
def built():
    keras.utils.set_random_seed(0)
    return {b: models.build_model(make_cfg(b)) for b in BACKBONES}


def images(backbone, n=2, seed=0):
    s = SIZES[backbone]
    return np.random.default_rng(seed).uniform(0, 255, (n, s, s, 3)).astype("float32")


def n_trainable_vars(layer):
    """Size of the variables a layer trains when trainable (BN: gamma, beta; not stats)."""
    return sum(int(np.prod(v.shape)) for v in layer.weights if v.name not in NON_TRAINABLE_VARS)


def conv_bn_inception(cin):
    """Trainable params of one InceptionV3 mixed9/mixed10 block (conv kernels, no bias; BN beta only)."""
    convs = [
        (1, 1, cin, 320),
        (1, 1, cin, 384), (1, 3, 384, 384), (3, 1, 384, 384),
        (1, 1, cin, 448), (3, 3, 448, 384), (1, 3, 384, 384), (3, 1, 384, 384),
        (1, 1, cin, 192),
    ]  # fmt: skip
    return sum(kh * kw * ci * co + co for kh, kw, ci, co in convs)


LAST_BLOCK = {  # backbone -> predicate on layer names of the last block
    "vgg16": lambda n: n.startswith("block5_"),
    "resnet50v2": lambda n: n.startswith("conv5_") or n == "post_bn",
    "mobilenetv2": lambda n: n.startswith("block_16_") or n in ("Conv_1", "Conv_1_bn"),
    "efficientnetb0": lambda n: n.startswith(("block7a_", "top_")),
    "hassner": lambda n: n == "conv3",
    "compact": lambda n: n.startswith("block4_"),
}
LAST_BLOCK_PARAMS = {  # by channel arithmetic where it is short
    "vgg16": 3 * (3 * 3 * 512 * 512 + 512),
    "inceptionv3": conv_bn_inception(1280) + conv_bn_inception(2048),
    "hassner": 3 * 3 * 256 * 384 + 384,
    "compact": 3 * 3 * 128 * 256 + 2 * 256,
}
LAST_TWO = {
    "vgg16": {"block5_conv2", "block5_conv3"},
    "resnet50v2": {"conv5_block3_3_conv", "post_bn"},
    "mobilenetv2": {"Conv_1", "Conv_1_bn"},
    "efficientnetb0": {"top_conv", "top_bn"},
    "hassner": {"conv2", "conv3"},
    "compact": {"block4_conv", "block4_bn"},
}
CUT = {  # layer whose output is the frozen prefix's output, per strategy
    "frozen": dict.fromkeys(BACKBONES, "head_gap"),
    "last_block": {"vgg16": "block4_pool", "resnet50v2": "conv4_block6_out", "inceptionv3": "mixed8", "mobilenetv2": "block_15_add",
                   "efficientnetb0": "block6d_add", "hassner": "norm2", "compact": "block3_pool"},
    "last_n": {"vgg16": "block5_conv1", "resnet50v2": "conv5_block2_out", "inceptionv3": "mixed9", "mobilenetv2": "block_16_project_BN",
               "efficientnetb0": "block7a_project_bn", "hassner": "norm1", "compact": "block3_pool"},
    "full": dict.fromkeys(BACKBONES),
}  # fmt: skip


def head_params(model):
    return sum(n_trainable_vars(model.get_layer(n)) for n in HEAD)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_layers_are_inline_with_their_names(built, backbone):
    model = built[backbone]
    assert model.input.shape == (None, SIZES[backbone], SIZES[backbone], 3)
    assert model.input.dtype == "float32"
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["image", "preprocess"]
    assert CUT["last_block"][backbone] in names
    assert len(names) == len(set(names))


def test_inception_auto_names_do_not_depend_on_the_session(built):
    keras.layers.Conv2D(1, 1)  # bumps Keras' name counter for conv2d
    model = built["inceptionv3"]
    first = [layer.name for layer in models.backbone_layers(model)[:3]]
    assert first == ["conv2d", "batch_normalization", "activation"]
    again = models.build_model(make_cfg("inceptionv3"))
    assert [layer.name for layer in again.layers] == [layer.name for layer in model.layers]


def run(model, x):
    """Eager inference call (no tf.function tracing: quick for one small batch)."""
    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(x, training=False))


@pytest.fixture(scope="module")
def backbone_features(built):
    return {b: run(keras.Model(m.input, m.get_layer("head_gap").input), images(b, n=3)) for b, m in built.items()}


@pytest.mark.parametrize("task", ["gender", "age", "age_group", "age_gender"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_carries_every_task_head(built, backbone_features, backbone, task):
    base = built[backbone]
    features = base.get_layer("head_gap").input
    outputs = build_head(features, make_cfg(backbone, task=task))
    model = keras.Model(base.input, outputs)
    expected = {"gender": ("gender",), "age": ("age",), "age_group": ("age_group",), "age_gender": ("gender", "age")}[task]
    widths = {"gender": 1, "age": 1, "age_group": 8}
    assert {k: tuple(v.shape) for k, v in model.output.items()} == {k: (None, widths[k]) for k in expected}
    pred = run(keras.Model(features, outputs), backbone_features[backbone])
    for name in expected:
        assert pred[name].shape == (3, widths[name])
        assert pred[name].dtype == np.float32
        assert model.get_layer(name).dtype_policy.compute_dtype == "float32"
    if "gender" in pred:
        assert np.all((pred["gender"] >= 0) & (pred["gender"] <= 1))
    if "age_group" in pred:
        np.testing.assert_allclose(pred["age_group"].sum(axis=1), 1.0, rtol=1e-5)


def expected_trainable(model, backbone, strategy):
    """(set of trainable layer names, trainable parameter count), derived independently."""
    layers = [layer for layer in model.layers if n_trainable_vars(layer) and layer.name not in HEAD and layer.name != "preprocess"]
    if strategy == "frozen":
        chosen = []
    elif strategy == "full":
        chosen = layers
    elif strategy == "last_n" and backbone == "inceptionv3":
        chosen = layers[-2:]  # graph order interleaves the branches: the last two BNs
        assert all(isinstance(layer, keras.layers.BatchNormalization) for layer in chosen)
    elif strategy == "last_n":
        chosen = [layer for layer in layers if layer.name in LAST_TWO[backbone]]
    elif backbone == "inceptionv3":
        mixed8 = [layer.name for layer in model.layers].index("mixed8")
        chosen = [layer for layer in model.layers[mixed8 + 1 :] if layer in layers]
        assert len(chosen) == 36  # 18 conv + 18 BN in mixed9 and mixed10
    else:
        chosen = [layer for layer in layers if LAST_BLOCK[backbone](layer.name)]
    names = {layer.name for layer in chosen} | set(HEAD)
    return names, sum(n_trainable_vars(layer) for layer in chosen) + head_params(model)


@pytest.mark.parametrize("strategy", ["frozen", "last_block", "last_n", "full"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_strategy_trains_the_expected_layers(built, backbone, strategy):
    model = built[backbone]
    cfg = make_cfg(backbone, strategy=strategy, last_n=2 if strategy == "last_n" else None)
    summary = models.apply_strategy(model, cfg)
    names, count = expected_trainable(model, backbone, strategy)
    assert set(summary["trainable_layers"]) == names
    assert summary["trainable"] == count
    if backbone in LAST_BLOCK_PARAMS and strategy == "last_block":
        assert summary["trainable"] == LAST_BLOCK_PARAMS[backbone] + head_params(model)
    assert summary["total"] == model.count_params() == summary["trainable"] + summary["non_trainable"]
    frozen_bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization) and layer.name not in names]
    assert all(not layer.trainable for layer in frozen_bn)


def test_head_phase_freezes_the_whole_backbone(built):
    model = built["compact"]
    summary = models.apply_strategy(model, make_cfg("compact", strategy="full"), phase="head")
    assert summary["trainable_layers"] == HEAD
    summary = models.apply_strategy(model, make_cfg("compact", strategy="full"))
    assert "block1_conv" in summary["trainable_layers"]
    with pytest.raises(ValueError, match="phase"):
        models.apply_strategy(model, make_cfg("compact"), phase="warmup")


@pytest.mark.parametrize("strategy", ["frozen", "last_block", "last_n", "full"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_frozen_prefix_cut_and_remainder(built, backbone, strategy):
    model = built[backbone]
    models.apply_strategy(model, make_cfg(backbone, strategy=strategy, last_n=2 if strategy == "last_n" else None))
    split = models.split_frozen_prefix(model)
    if CUT[strategy][backbone] is None:
        assert split is None
        return
    prefix, remainder = split
    assert prefix.layers[-1].name == CUT[strategy][backbone]
    assert all(not layer.trainable_weights for layer in prefix.layers)
    assert remainder.get_layer("gender") is model.get_layer("gender")
    x = images(backbone)
    whole = run(model, x)["gender"]
    parts = run(remainder, run(prefix, x))["gender"]
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)


def test_frozen_efficientnet_is_deterministic_in_training_mode(built):
    model = built["efficientnetb0"]
    models.apply_strategy(model, make_cfg("efficientnetb0", strategy="last_block"))
    drops = [layer for layer in model.layers if "drop" in layer.name]
    assert drops and all(isinstance(layer, FreezableDropout) for layer in drops)
    prefix, _ = models.split_frozen_prefix(model)
    x = images("efficientnetb0")
    train = keras.ops.convert_to_numpy(prefix(x, training=True))
    infer = keras.ops.convert_to_numpy(prefix(x, training=False))
    np.testing.assert_array_equal(train, infer)
    models.apply_strategy(model, make_cfg("efficientnetb0", strategy="full"))
    late = model.get_layer("block6d_drop")
    assert late.trainable
    y = keras.ops.convert_to_numpy(late(np.ones((64, 2, 2, 8), "float32"), training=True))
    assert (y == 0).any()  # a trainable stochastic-depth layer still drops


def _fit_and_compare_bn(model, cfg):
    """Fit one epoch; ``{bn layer name: moving mean changed?}`` for the backbone's BN layers."""
    models.apply_strategy(model, cfg)
    names = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = {n: [w.copy() for w in model.get_layer(n).get_weights()] for n in names}
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss={"gender": "binary_crossentropy"})
    x = images("compact", n=16, seed=1)
    y = (np.arange(16) % 2).astype("float32")
    model.fit(x, {"gender": y}, batch_size=8, epochs=1, verbose=0, shuffle=False)
    moving_mean = 2
    return {n: not np.allclose(model.get_layer(n).get_weights()[moving_mean], before[n][moving_mean]) for n in names}


def test_frozen_batch_norm_keeps_its_statistics_in_fit(built):
    changed = _fit_and_compare_bn(built["compact"], make_cfg("compact", strategy="last_block"))
    assert not changed["block1_bn"]  # outside the trained block: frozen either way
    assert changed["block4_bn"]  # batchnorm: train — the trained block's BN updates its statistics


@pytest.mark.parametrize("strategy", ["last_block", "full"])
def test_backbone_batch_norm_stays_in_inference_mode_by_default(built, strategy):
    cfg = make_cfg("compact", strategy=strategy, batchnorm="frozen")
    cfg["model"]["weights"] = "run:0123456789ab"  # pretrained: its BN statistics are worth keeping
    assert resolve_run({"data": {"synthetic": {"n": 10}}})["model"]["batchnorm"] == "frozen"  # the default
    changed = _fit_and_compare_bn(built["compact"], cfg)
    assert not any(changed.values()), changed
    summary = models.trainable_summary(built["compact"])
    assert "block4_conv" in summary["trainable_layers"] and "block4_bn" not in summary["trainable_layers"]
    changed = _fit_and_compare_bn(built["compact"], make_cfg("compact", strategy=strategy, batchnorm="train"))
    assert changed["block4_bn"] and changed["block1_bn"] == (strategy == "full")


def test_batch_norm_of_a_backbone_trained_from_scratch_trains(built):
    """model.weights: none — no pretrained statistics to keep: BN trains under the default too."""
    cfg = make_cfg("compact", strategy="full", batchnorm="frozen")
    assert cfg["model"]["weights"] == "none"
    changed = _fit_and_compare_bn(built["compact"], cfg)
    assert all(changed.values()), changed
