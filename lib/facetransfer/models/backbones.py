"""Backbones by name, their preprocessing, and where their weights come from.

Every backbone is built INLINE on the model's input: ``image`` (float32 RGB 0..255) →
``preprocess`` (:class:`~facetransfer.models.layers.Preprocess`, the backbone's own mode) →
the backbone's layers, with their ``keras.applications`` names (``block5_conv1``,
``conv4_block6_out``, ``mixed8`` …), so strategies and the frozen-prefix cut address them
by name. Layers that keras.applications leaves auto-named (InceptionV3's ``conv2d_17``…) are
renamed to the names a fresh Keras session gives them, so that names — and weights matched
by name — do not depend on what else was built before in the session.

``model.weights``:

- ``imagenet``: keras.applications' own download and cache (``~/.keras/models``).
- ``none``: random initialisation (seeded by :func:`facetransfer.runtime.configure`).
- ``/path/file.h5`` or ``.weights.h5``: weights of the bare backbone (input → preprocess →
  backbone), loaded as keras.applications loads a weights path. For efficientnetb0 a legacy
  ``.h5`` is taken to be keras.applications' ImageNet file and gets the same input-variance
  correction that keras.applications applies for ``weights="imagenet"``.
- ``/path/model.keras`` or ``run:<run_id>`` (``results_root/*/runs/<run_id>/model.keras``
  of a complete run): every weight-carrying backbone layer is copied from the layer of the
  same name in that model, shape-checked. Missing layers are an error, never random weights.
  (EfficientNet: if that model was built with ``imagenet`` its extra rescaling is folded in
  too, so the copy computes what the source computed.)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from facetransfer import params as P
from facetransfer.errors import FacetransferError
from facetransfer.io import read_json
from facetransfer.models.layers import FreezableDropout, LocalResponseNormalization, Preprocess


@dataclass(frozen=True)
class BackboneSpec:
    preprocess: str  # Preprocess mode: caffe | tf | none
    min_size: int  # smallest input side in px
    last_block_after: str  # the layer whose output feeds the last block (strategy last_block)


SPECS = {
    "vgg16": BackboneSpec("caffe", 32, "block4_pool"),
    "resnet50v2": BackboneSpec("tf", 32, "conv4_block6_out"),
    "inceptionv3": BackboneSpec("tf", 75, "mixed8"),
    "mobilenetv2": BackboneSpec("tf", 32, "block_15_add"),
    "efficientnetb0": BackboneSpec("none", 32, "block6d_add"),
    "hassner": BackboneSpec("tf", 32, "norm2"),
    "compact": BackboneSpec("tf", 32, "block3_pool"),
}

APPLICATIONS = {
    "vgg16": keras.applications.VGG16,
    "resnet50v2": keras.applications.ResNet50V2,
    "inceptionv3": keras.applications.InceptionV3,
    "mobilenetv2": keras.applications.MobileNetV2,
    "efficientnetb0": keras.applications.EfficientNetB0,
}

# keras.applications.efficientnet's IMAGENET_STDDEV_RGB (see the module docstring).
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def default_input_size(backbone: str) -> int:
    """The input side the backbone was designed for (``params.DEFAULT_INPUT_SIZE``)."""
    return P.DEFAULT_INPUT_SIZE[backbone]


# --------------------------------------------------------------------------- weights source


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # imagenet | none | file (.h5 / .weights.h5) | model (.keras, run:)
    label: str  # the params value, for messages
    path: Path | None = None


def weights_source(weights: str, results_root=None) -> WeightsSource:
    """Resolve ``model.weights`` to what to load; a missing file or run is a one-line error."""
    if weights in ("imagenet", "none"):
        return WeightsSource(weights, weights)
    if weights.startswith("run:"):
        return WeightsSource("model", weights, find_run_model(results_root, weights[4:]))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FacetransferError(f"model.weights: file not found: {path}; allowed: imagenet, none, an existing .h5/.weights.h5/.keras file, or run:<run_id>")
    kind = "model" if path.name.endswith(".keras") else "file"
    return WeightsSource(kind, weights, path)


def find_run_model(results_root, run_id: str) -> Path:
    """``results_root/*/runs/<run_id>/model.keras`` of a complete (status ok) run."""
    if not _RUN_ID.match(run_id):
        raise FacetransferError(f"model.weights: run:{run_id}: not a run id (letters, digits, _ . - only)")
    if results_root is None:
        raise FacetransferError(f"model.weights: run:{run_id} needs the results folder; pass results_root")
    pattern = f"*/runs/{run_id}/model.keras"
    hits = sorted(Path(results_root).glob(pattern))
    if not hits:
        raise FacetransferError(f"model.weights: run:{run_id}: no {Path(results_root) / pattern} found; run that study first or give a model file path")
    if len(hits) > 1:
        listed = ", ".join(str(h) for h in hits)
        raise FacetransferError(f"model.weights: run:{run_id} is in several studies ({listed}); set model.weights to one of these paths")
    metrics = hits[0].parent / "metrics.json"
    status = read_json(metrics).get("status") if metrics.is_file() else None
    if status != "ok":
        raise FacetransferError(f"model.weights: run:{run_id} is not complete ({metrics} has status {status!r}, not 'ok')")
    return hits[0]


# --------------------------------------------------------------------------- building


def build_backbone(backbone: str, inputs, *, size: int, source: WeightsSource):
    """Preprocess + backbone layers on ``inputs``; returns the backbone's output tensor.

    Weights of kind ``imagenet`` and ``file`` are loaded here; kind ``model`` is copied by
    name after the whole model exists (:func:`copy_weights_by_name`).
    """
    x = Preprocess(SPECS[backbone].preprocess, name="preprocess")(inputs)
    if backbone in APPLICATIONS:
        features = _application(backbone, x, size=size, source=source)
    else:
        features = CUSTOM_CNNS[backbone](x)
        if source.kind == "file":
            _load_weights_file(keras.Model(inputs, features), source, backbone)
        elif source.kind == "imagenet":
            raise FacetransferError(f"model.weights: no ImageNet weights exist for the custom CNN {backbone!r}; allowed: none, a weights file, run:<run_id>")
    canonical_names(keras.Model(inputs, features).layers)
    return features


def _application(backbone: str, x, *, size: int, source: WeightsSource):
    app = APPLICATIONS[backbone]
    weights = {"imagenet": "imagenet", "file": str(source.path)}.get(source.kind)
    shape = (size, size, 3)
    try:
        base = app(include_top=False, weights=weights, input_tensor=x, input_shape=shape)
    except Exception as exc:
        if source.kind == "file" and isinstance(exc, (ValueError, OSError, KeyError)):
            raise FacetransferError(f"model.weights: {source.path} does not fit {backbone} at {size} px: {_first_line(exc)}") from exc
        if source.kind == "imagenet":
            raise FacetransferError(
                f"model.weights: imagenet: could not get the ImageNet weights of {backbone} "
                f"({_first_line(exc)}); without internet, set model.weights: /path/file.h5 "
                "(keras.applications' no-top weights file)"
            ) from exc
        raise
    if backbone == "efficientnetb0":
        if source.kind == "file" and not source.path.name.endswith(".weights.h5"):
            _imagenet_variance_fix(base)
        freezable_dropout(base.layers)
    return base.output


def _load_weights_file(bare: keras.Model, source: WeightsSource, backbone: str) -> None:
    try:
        bare.load_weights(source.path)
    except (ValueError, OSError, KeyError) as exc:
        raise FacetransferError(f"model.weights: {source.path} does not fit {backbone}: {_first_line(exc)}") from exc


def _imagenet_variance_fix(base: keras.Model) -> None:
    """keras.applications adds ``Rescaling(1/sqrt(stddev))`` after EfficientNet's
    Normalization for ``weights="imagenet"`` only; where the ImageNet weights arrive another
    way (a .h5 file, a model built that way), fold the same factor into the variance."""
    norm = next(layer for layer in base.layers if isinstance(layer, layers.Normalization))
    mean, variance, count = norm.get_weights()
    norm.set_weights([mean, variance * np.asarray(_IMAGENET_STDDEV_RGB, dtype=variance.dtype), count])
    norm.finalize_state()


def freezable_dropout(model_layers) -> None:
    """Turn plain Dropout layers (EfficientNet's stochastic depth) into FreezableDropout,
    in place: same config and graph, but inference mode while frozen, like BatchNorm."""
    for layer in model_layers:
        if type(layer) is layers.Dropout:
            layer.__class__ = FreezableDropout


def _snake(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def canonical_names(model_layers) -> None:
    """Rename auto-named layers (``conv2d_93``) to the names a fresh session gives them,
    in graph order, so they are the same whatever was built before."""
    seen = Counter()
    for layer in model_layers:
        base = _snake(type(layer).__name__)
        if re.fullmatch(rf"{re.escape(base)}(_\d+)?", layer.name):
            layer.name = base if seen[base] == 0 else f"{base}_{seen[base]}"
            seen[base] += 1


# --------------------------------------------------------------------------- custom CNNs


def hassner(x):
    """Levi & Hassner (2015): three conv layers with max pooling and LRN.

    Pooling uses ``padding="same"`` (Caffe rounds pooled sizes up) so small inputs work.
    The two 512-wide dense layers of the paper come from ``model.head``.
    """
    x = layers.Conv2D(96, 7, strides=4, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = LocalResponseNormalization(name="norm1")(x)
    x = layers.Conv2D(256, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    x = LocalResponseNormalization(name="norm2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    return layers.MaxPooling2D(3, strides=2, padding="same", name="pool3")(x)


def compact(x, filters=(32, 64, 128, 256)):
    """Four blocks conv 3x3 → BatchNorm → ReLU → 2x2 max pooling."""
    for i, width in enumerate(filters, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        # momentum 0.9: the moving statistics settle within the few hundred steps a small
        # study trains for (Keras's 0.99 leaves validation metrics lagging for epochs)
        x = layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return x


CUSTOM_CNNS = {"hassner": hassner, "compact": compact}


# --------------------------------------------------------------------------- weights by name


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def load_source_model(path: Path, label: str) -> keras.Model:
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise FacetransferError(f"model.weights: {label}: cannot load {path}: {_first_line(exc)}") from exc


def copy_weights_by_name(model: keras.Model, source: WeightsSource, layer_names, *, backbone: str) -> int:
    """Copy every weight-carrying layer in ``layer_names`` from the model file ``source``.

    Returns the number of layers copied. Zero or partial matches and shape mismatches are
    one-line errors naming the layer; nothing is left at random initialisation silently.
    """
    source_model = load_source_model(source.path, source.label)
    found = {layer.name: layer for layer in _all_layers(source_model)}
    targets = [model.get_layer(name) for name in layer_names if model.get_layer(name).weights]
    missing = [layer.name for layer in targets if layer.name not in found]
    if len(missing) == len(targets):
        raise FacetransferError(f"model.weights: {source.label}: none of the {len(targets)} weight layers of {backbone} is in {source.path} (another backbone?)")
    if missing:
        raise FacetransferError(f"model.weights: {source.label}: {len(missing)} of {len(targets)} weight layers of {backbone} are not in {source.path}, e.g. {', '.join(missing[:3])}")
    for layer in targets:
        values = found[layer.name].get_weights()
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            raise FacetransferError(f"model.weights: {source.label}: layer {layer.name} has shapes {got} in {source.path}, {backbone} needs {want}")
        layer.set_weights(values)
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()
    if _has_imagenet_rescaling(source_model) and not _has_imagenet_rescaling(model):
        _imagenet_variance_fix(model)  # same input normalisation as the source EfficientNet
    return len(targets)


def _has_imagenet_rescaling(model: keras.Model) -> bool:
    """EfficientNet built with ``weights="imagenet"`` has a per-channel Rescaling layer."""
    return any(isinstance(layer, layers.Rescaling) and isinstance(layer.scale, (list, tuple)) for layer in _all_layers(model))


def _first_line(exc: BaseException) -> str:
    """The error's text on one line, at most 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
