import pytest

from facetransfer.errors import ParamError
from facetransfer.params import describe, resolve_run, run_id

SYNTH = {"data": {"dataset": "celeba", "synthetic": {"n": 50}}}


def test_defaults_resolve_and_hash_is_stable():
    a = resolve_run(SYNTH)
    b = resolve_run({**SYNTH, "name": "other label"})
    assert a["model"]["backbone"] == "vgg16"
    assert a["train"]["early_stopping"] is None
    assert run_id(a) == run_id(b)  # the name is a label, not part of the id
    c = resolve_run({**SYNTH, "seed": 1})
    assert run_id(c) != run_id(a)


@pytest.mark.parametrize(
    "raw, key, fragment",
    [
        ({**SYNTH, "model": {"backbone": "vgg19"}}, "model.backbone", "vgg16"),
        ({**SYNTH, "model": {"bakbone": "vgg16"}}, "model.bakbone", "allowed keys here"),
        ({**SYNTH, "train": {"learning_rate": -1}}, "train.learning_rate", "> 0.0"),
        ({**SYNTH, "train": {"epochs": "ten"}}, "train.epochs", "an integer"),
        ({**SYNTH, "task": "age"}, "task", "utkface"),
        ({**SYNTH, "model": {"strategy": "last_n"}}, "model.last_n", "required"),
        ({"data": {"dataset": "adience"}}, "data.root", "required"),
        ({**SYNTH, "data": {"dataset": "celeba", "synthetic": {}, "split": {"fractions": [0.5, 0.2]}}}, "data.split.fractions", "three fractions"),
        ({**SYNTH, "model": {"backbone": "compact", "weights": "imagenet"}}, "model.weights", "custom CNN"),
    ],
)
def test_bad_params_name_the_key_and_allowed_values(raw, key, fragment):
    with pytest.raises(ParamError) as err:
        resolve_run(raw)
    assert err.value.key == key
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_style_exponent_strings_are_numbers():
    p = resolve_run({**SYNTH, "train": {"learning_rate": "1e-4"}})
    assert p["train"]["learning_rate"] == pytest.approx(1e-4)


def test_describe_lists_every_leaf():
    keys = {row.key for row in describe()}
    assert {"model.head.dropout", "train.early_stopping.patience", "data.split.source"} <= keys



def _folder_dataset(root):
    (root / "img").mkdir(parents=True)
    for i in range(3):
        (root / "img" / f"{i}.jpg").write_bytes(bytes([i]) * (10 + i))
    (root / "labels.csv").write_text("path,gender\nimg/0.jpg,0\nimg/1.jpg,1\nimg/2.jpg,1\n")
    return root


def _folder_params(root, **over):
    raw = {"data": {"dataset": "folder", "root": str(root), "folder": {"gender_column": "gender"}}, **over}
    return resolve_run(raw)


def test_run_id_follows_the_trained_model_not_eval_or_the_data_path(tmp_path):
    import shutil

    a = _folder_params(_folder_dataset(tmp_path / "a"))
    b = _folder_params(shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b"))
    assert run_id(a) == run_id(b)  # a moved (copied) data folder is recognised
    assert run_id(a) == run_id(_folder_params(tmp_path / "a", eval={"bootstrap": 10, "saliency": 0}))  # eval.* re-evaluates
    assert run_id(a) != run_id(_folder_params(tmp_path / "a", train={"epochs": 3}))
    (tmp_path / "elsewhere" / "b" / "labels.csv").write_text("path,gender\nimg/0.jpg,1\nimg/1.jpg,1\nimg/2.jpg,1\n")
    assert run_id(a) != run_id(b)  # same files, other labels: other data
    (tmp_path / "a" / "img" / "3.jpg").write_bytes(b"x")
    assert run_id(a) != run_id(_folder_params(_folder_dataset(tmp_path / "c")))  # an image more


def test_run_id_includes_the_backend_and_the_resolved_precision(monkeypatch):
    import keras

    from facetransfer import params, runtime

    cfg = resolve_run(SYNTH)
    identity = params.identity(cfg)
    assert identity["backend"] == keras.backend.backend() and identity["precision"] == "float32"
    assert identity["data_fingerprint"].startswith("synthetic:")
    cpu = run_id(cfg)
    assert run_id(resolve_run({**SYNTH, "train": {"mixed_precision": "off"}})) == cpu  # both float32 here
    assert "cpu_threads" not in identity["params"]["train"]  # null (the default): ids stay as before
    assert run_id(resolve_run({**SYNTH, "train": {"cpu_threads": 1}})) != cpu  # a set count changes the float sums
    monkeypatch.setattr(runtime, "has_gpu", lambda found=None: True)
    assert params.identity(cfg)["precision"] == "mixed_float16"
    assert run_id(cfg) != cpu  # auto: float16 on a GPU, float32 on a CPU — not the same model
    monkeypatch.setattr(runtime, "has_gpu", lambda found=None: False)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert run_id(cfg) != cpu
