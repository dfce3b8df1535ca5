"""build_model per task, custom layers, weights sources and their errors, params checks,
runtime set-up. Small models only (compact / hassner / vgg16 at 32 px)."""

import keras
import numpy as np
import pytest

from facetransfer import models, runtime
from facetransfer.errors import FacetransferError, ParamError
from facetransfer.io import atomic_write_json
from facetransfer.models.layers import LocalResponseNormalization, Preprocess
from facetransfer.params import resolve_run


def make_cfg(backbone="compact", *, task="gender", size=32, strategy="full", weights="none", **model):
    dataset = {"gender": "celeba", "age": "utkface", "age_gender": "utkface", "age_group": "adience"}[task]
    data = {"dataset": dataset, "image_size": size}
    data.update({"root": "/nowhere"} if dataset == "adience" else {"synthetic": {"n": 10}})
    head = model.pop("head", {"dense": [8]})
    cfg = resolve_run({"task": task, "data": data, "model": {"backbone": backbone, "weights": "none", "strategy": "full", "head": head}})
    cfg["model"].update(strategy=strategy, weights=weights, **model)  # bypasses "none + frozen" on purpose
    return cfg


def run(model, x):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(x, training=False))


def images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def backbone_weights(model):
    return {layer.name: layer.get_weights() for layer in models.backbone_layers(model) if layer.weights}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=name)


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("task, outputs", [("gender", ["gender"]), ("age", ["age"]), ("age_group", ["age_group"]), ("age_gender", ["gender", "age"])])
def test_build_model_outputs_by_task(task, outputs):
    model = models.build_model(make_cfg(task=task, head={"pooling": "flatten", "dense": [16, 8], "activation": "relu", "batch_norm": True, "dropout": 0.5, "l2": 1e-4}))
    assert list(model.output) == outputs == list(models.output_names(task))
    names = [layer.name for layer in model.layers]
    head = [n for n in names if n.startswith("head_")]
    assert head == ["head_flatten", "head_dense_1", "head_bn_1", "head_act_1", "head_dropout_1", "head_dense_2", "head_bn_2", "head_act_2", "head_dropout_2"]
    assert model.get_layer("head_dense_1").kernel_regularizer is not None
    pred = run(model, images())
    widths = {"gender": 1, "age": 1, "age_group": 8}
    assert {k: v.shape for k, v in pred.items()} == {k: (2, widths[k]) for k in outputs}


@pytest.mark.parametrize("backbone", ["resnet50v2", "efficientnetb0"])
def test_summary_cuts_no_layer_name_in_a_notebooks_columns(backbone, capsys, monkeypatch):
    # The longest "Connected to" names ("block2a_expand_activation[0][0]"); a notebook's
    # rich console is 115 columns wide, Keras's own default sized the table to 76.
    monkeypatch.setenv("COLUMNS", str(models.SUMMARY_WIDTH))
    model = models.build_model(make_cfg(backbone, task="age_gender", size=models.SPECS[backbone].min_size))
    models.print_summary(model)
    lines = capsys.readouterr().out.splitlines()
    assert any("Connected to" in line for line in lines) and sum(line.startswith("│ block") or line.startswith("│ conv") for line in lines) > 20
    assert "…" not in "\n".join(lines) and max(map(len, lines)) <= models.SUMMARY_WIDTH


def test_hassner_layout():
    model = models.build_model(make_cfg("hassner", head={"pooling": "flatten", "dense": [512, 512], "dropout": 0.5}, size=227))
    conv = {n: model.get_layer(n) for n in ("conv1", "conv2", "conv3")}
    assert [(c.filters, c.kernel_size, c.strides) for c in conv.values()] == [(96, (7, 7), (4, 4)), (256, (5, 5), (1, 1)), (384, (3, 3), (1, 1))]
    assert isinstance(model.get_layer("norm1"), LocalResponseNormalization)
    assert [model.get_layer(f"head_dense_{i}").units for i in (1, 2)] == [512, 512]
    assert model.get_layer("pool3").output.shape[1:] == (7, 7, 384)


def test_preprocess_modes():
    x = np.array([[[[255.0, 0.0, 10.0]]]], dtype="float32")
    caffe = run(Preprocess("caffe"), x)[0, 0, 0]
    np.testing.assert_allclose(caffe, [10.0 - 103.939, 0.0 - 116.779, 255.0 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(run(Preprocess("tf"), x)[0, 0, 0], [1.0, -1.0, 10 / 127.5 - 1], rtol=1e-6)
    np.testing.assert_array_equal(run(Preprocess("none"), x), x)
    with pytest.raises(ValueError, match="allowed"):
        Preprocess("torch")
    modes = {b: models.SPECS[b].preprocess for b in models.SPECS}
    assert modes["vgg16"] == "caffe" and modes["efficientnetb0"] == "none"
    assert {modes[b] for b in ("resnet50v2", "inceptionv3", "mobilenetv2")} == {"tf"}


def test_lrn_matches_a_numpy_reference():
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 7)).astype("float32") * 10
    r, bias, alpha, beta = 2, 1.0, 1e-3, 0.75
    sq = np.pad(x**2, [(0, 0), (0, 0), (0, 0), (r, r)])
    window = np.stack([sq[..., c : c + 2 * r + 1].sum(-1) for c in range(7)], axis=-1)
    expected = x / (bias + alpha * window) ** beta
    layer = LocalResponseNormalization(depth_radius=r, bias=bias, alpha=alpha, beta=beta)
    np.testing.assert_allclose(run(layer, x), expected, rtol=1e-5)
    assert LocalResponseNormalization.from_config(layer.get_config()).alpha == alpha


def test_mixed_precision_keeps_outputs_float32():
    try:
        keras.config.set_dtype_policy("mixed_float16")
        model = models.build_model(make_cfg("hassner", task="age_gender"))
        assert model.get_layer("conv1").compute_dtype == "float16"
        assert model.get_layer("norm1").compute_dtype == "float32"
        assert all(model.get_layer(n).compute_dtype == "float32" for n in ("gender", "age"))
        pred = run(model, images())
        assert pred["gender"].dtype == pred["age"].dtype == np.float32
    finally:
        keras.config.set_dtype_policy("float32")


def test_model_file_round_trip_keeps_custom_layers(tmp_path):
    model = models.build_model(make_cfg("hassner"))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = images()
    np.testing.assert_allclose(run(loaded, x)["gender"], run(model, x)["gender"], rtol=1e-6)


# ----------------------------------------------------------------------------- weights


def fake_run(results_root, run_id, model, status="ok", study="study_a"):
    run_dir = results_root / study / "runs" / run_id
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    atomic_write_json(run_dir / "metrics.json", {"run_id": run_id, "status": status})
    return run_dir


@pytest.fixture(scope="module")
def trained_compact():
    """A compact model whose weights differ from any fresh initialisation."""
    keras.utils.set_random_seed(1)
    model = models.build_model(make_cfg("compact", task="age_gender"))
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(size=w.shape).astype("float32") + 0.5 for w in model.get_weights()])
    return model


def test_run_weights_copy_every_backbone_layer_by_name(tmp_path, trained_compact):
    fake_run(tmp_path, "abc123def456", trained_compact)
    keras.utils.set_random_seed(2)
    fresh = models.build_model(make_cfg("compact", weights="run:abc123def456", strategy="last_block"), results_root=tmp_path)
    assert_same(backbone_weights(fresh), backbone_weights(trained_compact))
    assert not np.allclose(fresh.get_layer("head_dense_1").get_weights()[0], trained_compact.get_layer("head_dense_1").get_weights()[0])
    assert models.trainable_summary(fresh)["trainable_layers"][:2] == ["block4_conv", "head_dense_1"]  # block4_bn: model.batchnorm frozen


def test_keras_file_weights_match_by_name(tmp_path, trained_compact):
    trained_compact.save(tmp_path / "source.keras")
    fresh = models.build_model(make_cfg("compact", weights=str(tmp_path / "source.keras")))
    assert_same(backbone_weights(fresh), backbone_weights(trained_compact))


@pytest.mark.parametrize("fmt", ["x.weights.h5", "legacy.h5"])
def test_backbone_weights_file_as_keras_applications_takes_it(tmp_path, fmt):
    bare = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    bare.save_weights(tmp_path / fmt) if fmt.endswith(".weights.h5") else bare.save(tmp_path / fmt)
    model = models.build_model(make_cfg("vgg16", weights=str(tmp_path / fmt)))
    assert_same(backbone_weights(model), {layer.name: layer.get_weights() for layer in bare.layers if layer.weights})


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")  # Keras, before it raises
def test_weights_errors_are_one_line_and_name_the_problem(tmp_path, trained_compact):
    def error(cfg, root=tmp_path):
        with pytest.raises(FacetransferError) as info:
            models.build_model(cfg, results_root=root)
        message = str(info.value)
        assert "\n" not in message and "model.weights" in message
        return message

    assert "/no/such/file.h5" in error(make_cfg(weights="/no/such/file.h5"))
    assert "run:feedfeedfeed" in error(make_cfg(weights="run:feedfeedfeed"))
    assert "results" in error(make_cfg(weights="run:feedfeedfeed"), root=None)
    fake_run(tmp_path, "0badrun0badr", trained_compact, status="failed")
    assert "not complete" in error(make_cfg(weights="run:0badrun0badr"))
    fake_run(tmp_path, "twice0twice0", trained_compact, study="a")
    fake_run(tmp_path, "twice0twice0", trained_compact, study="b")
    assert "several" in error(make_cfg(weights="run:twice0twice0"))
    # a compact model holds none of hassner's layers: never a silent random start
    fake_run(tmp_path, "c0mpact0c0mp", trained_compact)
    assert "none of the 3 weight layers" in error(make_cfg("hassner", weights="run:c0mpact0c0mp"))
    wrong = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    wrong.save_weights(tmp_path / "mobilenet.weights.h5")
    assert "does not fit vgg16" in error(make_cfg("vgg16", weights=str(tmp_path / "mobilenet.weights.h5")))


def test_imagenet_download_failure_is_one_clear_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(FacetransferError, match=r"model.weights: imagenet: .*vgg16.*model.weights: /path/file.h5"):
        models.build_model(make_cfg("vgg16", weights="imagenet", strategy="frozen"))


# ----------------------------------------------------------------------------- params checks


@pytest.mark.parametrize(
    "cfg, key, fragment",
    [
        (make_cfg("vgg16", strategy="last_n", last_n=500), "model.last_n", "500 > 13 weight layers of vgg16"),
        (make_cfg("compact", strategy="last_n", last_n=9), "model.last_n", "9 > 8 weight layers of compact"),
        (make_cfg("inceptionv3", size=60), "data.image_size", "minimum for inceptionv3"),
        (make_cfg("compact", weights="/no/such.keras"), "model.weights", "/no/such.keras"),
        (make_cfg("hassner", weights="imagenet"), "model.weights", "custom CNN"),
    ],
)
def test_check_model_params(cfg, key, fragment):
    with pytest.raises(ParamError) as info:
        models.check_model_params(cfg)
    assert info.value.key == key
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_check_model_params_accepts_good_params_and_finds_runs(tmp_path):
    models.check_model_params(make_cfg("vgg16", strategy="last_n", last_n=13))
    models.check_model_params(make_cfg("inceptionv3", size=75))
    models.check_model_params(make_cfg(weights="run:notyetthere"))  # no results_root: checked at build
    with pytest.raises(ParamError, match="run:notyetthere"):
        models.check_model_params(make_cfg(weights="run:notyetthere"), results_root=tmp_path)
    assert models.default_input_size("inceptionv3") == 299


# ----------------------------------------------------------------------------- runtime


def test_runtime_configure_and_devices():
    try:
        info = runtime.configure(3, mixed_precision="auto")
        assert info["backend"] == keras.backend.backend()
        assert info["devices"] and info["devices"] == runtime.devices()
        assert info["mixed_precision"] == ("mixed_float16" if runtime.has_gpu() else "float32")
        assert keras.config.dtype_policy().name == info["mixed_precision"]
        a = np.random.random(3)
        runtime.configure(3, mixed_precision="off")
        np.testing.assert_array_equal(np.random.random(3), a)
        assert runtime.configure(0, mixed_precision="on", xla=True)["mixed_precision"] == "mixed_float16"
        with pytest.raises(ParamError, match="train.mixed_precision"):
            runtime.configure(0, mixed_precision="yes")
        assert info["cpu_threads"] >= 1  # the count in use; null left the backend's default
        for bad in (0, True, "2"):
            with pytest.raises(ParamError, match="train.cpu_threads"):
                runtime.configure(0, cpu_threads=bad)
    finally:
        keras.config.set_dtype_policy("float32")


def test_xla_flag_per_backend(monkeypatch):
    assert runtime.jit_compile(True) is True
    assert runtime.configure(0, xla=False)["xla"] is (keras.backend.backend() == "jax")
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    assert runtime.jit_compile(False) is False  # TensorFlow: a graph without XLA
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert runtime.jit_compile(False) == "auto"  # JAX: jax.jit, not one op at a time


def test_efficientnet_imagenet_file_and_run_compute_the_same(tmp_path, monkeypatch):
    """keras.applications adds a per-channel rescaling to EfficientNet for "imagenet" only;
    the same weights given as a .h5 file or copied from such a run must compute the same."""
    from keras.src.utils import file_utils

    bare = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(3)
    norm = next(layer for layer in bare.layers if isinstance(layer, keras.layers.Normalization))
    norm.set_weights([rng.uniform(50, 200, 3).astype("float32"), rng.uniform(1e3, 4e3, 3).astype("float32"), np.array(1000)])
    norm.finalize_state()
    bare.save(tmp_path / "efficientnetb0_notop.h5")  # stands in for the ImageNet file
    monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: str(tmp_path / "efficientnetb0_notop.h5"))

    def features(model):
        return run(keras.Model(model.input, model.get_layer("stem_conv").output), images(seed=5))

    from_imagenet = models.build_model(make_cfg("efficientnetb0", weights="imagenet", strategy="frozen"))
    from_h5 = models.build_model(make_cfg("efficientnetb0", weights=str(tmp_path / "efficientnetb0_notop.h5"), strategy="frozen"))
    fake_run(tmp_path, "eff0eff0eff0", from_imagenet)
    from_run = models.build_model(make_cfg("efficientnetb0", weights="run:eff0eff0eff0", strategy="frozen"), results_root=tmp_path)
    reference = features(from_imagenet)
    np.testing.assert_allclose(features(from_h5), reference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features(from_run), reference, rtol=1e-4, atol=1e-5)
