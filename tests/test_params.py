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

