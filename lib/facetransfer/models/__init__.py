"""Models: a backbone by name, a head from params, a fine-tuning strategy.

``build_model(cfg)`` returns one functional Keras model::

    image (S, S, 3) float32 RGB 0..255
      → preprocess (the backbone's own: caffe | tf | none)
      → backbone layers, inline, keras.applications names kept (block5_conv1, mixed8 …)
      → head_* layers (pooling, dense, batch norm, activation, dropout)
      → dict outputs {gender, age, age_group} by task (float32)

with ``model.strategy`` applied. Seed the run first (:func:`facetransfer.runtime.configure`)
so that random initialisation is reproducible.
"""

from __future__ import annotations

from functools import cache

import keras

from facetransfer import params as P
from facetransfer.errors import FacetransferError, ParamError
from facetransfer.models import backbones, heads, strategies
from facetransfer.models.backbones import SPECS, default_input_size, find_run_model, weights_source
from facetransfer.models.heads import OUTPUTS, output_names
from facetransfer.models.strategies import (
    apply_strategy,
    backbone_layers,
    split_frozen_prefix,
    trainable_summary,
    weight_layers,
)

__all__ = [
    "OUTPUTS",
    "SPECS",
    "apply_strategy",
    "backbone_layers",
    "build_model",
    "check_model_params",
    "default_input_size",
    "find_run_model",
    "n_weight_layers",
    "output_names",
    "print_summary",
    "split_frozen_prefix",
    "trainable_summary",
    "weight_layers",
]


def check_model_params(cfg: dict, *, results_root=None) -> None:
    """One-line :class:`ParamError` for model params that cannot work, before any work:
    an image size below the backbone's minimum, ``last_n`` above its weight-layer count,
    a weights file that does not exist, a ``run:`` that cannot be found (when
    ``results_root`` is given)."""
    m = cfg["model"]
    backbone = m["backbone"]
    if backbone not in SPECS:
        raise ParamError("model.backbone", f"{backbone!r} is not allowed; allowed: {', '.join(SPECS)}")
    size, low = P.image_size(cfg), SPECS[backbone].min_size
    if size < low:
        raise ParamError("data.image_size", f"{size} is below {low} px, the minimum for {backbone}; allowed: an integer >= {low}, or null for {default_input_size(backbone)}")
    if m["strategy"] == "last_n":
        count = n_weight_layers(backbone)
        if m["last_n"] is None or m["last_n"] > count:
            raise ParamError("model.last_n", f"{m['last_n']} > {count} weight layers of {backbone}; allowed: 1..{count}")
    weights = m["weights"]
    if backbone in backbones.CUSTOM_CNNS and weights == "imagenet":
        raise ParamError("model.weights", f"no ImageNet weights exist for the custom CNN {backbone!r}; allowed: none, a weights file, run:<run_id>")
    if weights.startswith("run:"):
        if results_root is not None:
            _as_param_error(lambda: find_run_model(results_root, weights[4:]))
    elif weights not in ("imagenet", "none"):
        _as_param_error(lambda: weights_source(weights))


def _as_param_error(check) -> None:
    try:
        check()
    except ParamError:
        raise
    except FacetransferError as exc:
        message = str(exc).removeprefix("model.weights: ")
        raise ParamError("model.weights", message) from exc


@cache
def n_weight_layers(backbone: str) -> int:
    """How many weight layers ``backbone`` has (``model.last_n``'s upper bound).

    Built once per backbone and process, without weights, at its minimum size."""
    inputs = keras.Input((SPECS[backbone].min_size,) * 2 + (3,))
    source = backbones.WeightsSource("none", "none")
    features = backbones.build_backbone(backbone, inputs, size=SPECS[backbone].min_size, source=source)
    return len(weight_layers(keras.Model(inputs, features)))


def build_model(cfg: dict, *, results_root=None) -> keras.Model:
    """The model for resolved params ``cfg`` (see the module docstring), strategy applied.

    ``results_root`` is needed for ``model.weights: run:<run_id>``.
    """
    check_model_params(cfg, results_root=results_root)
    m = cfg["model"]
    backbone, size = m["backbone"], P.image_size(cfg)
    source = weights_source(m["weights"], results_root)
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    features = backbones.build_backbone(backbone, inputs, size=size, source=source)
    outputs = heads.build_head(features, cfg)
    model = keras.Model(inputs, outputs, name=f"{backbone}_{cfg['task']}")
    if source.kind == "model":
        names = [layer.name for layer in backbone_layers(model)]
        backbones.copy_weights_by_name(model, source, names, backbone=backbone)
    strategies.apply_strategy(model, cfg)
    return model


# Keras sizes its summary table to the terminal, 80 columns in a notebook kernel, and cut
# names there ("conv2_block1_preact_relu[0…", "BatchNormalizatio…"); these widths fit every
# backbone's names in the 115 columns a notebook shows (measured for all SPECS).
SUMMARY_WIDTH = 115
SUMMARY_POSITIONS = (0.29, 0.50, 0.62, 1.0)  # layer (type) | output shape | params | connected to


def print_summary(model: keras.Model) -> None:
    """``model.summary()`` at :data:`SUMMARY_WIDTH` columns, no layer name or type cut."""
    model.summary(line_length=SUMMARY_WIDTH, positions=list(SUMMARY_POSITIONS))
