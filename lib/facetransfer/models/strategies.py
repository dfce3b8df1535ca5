"""Fine-tuning strategies, trainable summaries and the frozen-prefix cut.

Strategies (``model.strategy``) say which BACKBONE layers train; head layers always train:

- ``frozen``: none.
- ``last_block``: the backbone's last block, architecture-aware — every backbone layer after
  the block boundary in :data:`~facetransfer.models.backbones.SPECS`: vgg16 after
  ``block4_pool`` (block5), resnet50v2 after ``conv4_block6_out`` (conv5 + post_bn),
  inceptionv3 after ``mixed8`` (mixed9, mixed10), mobilenetv2 after ``block_15_add``
  (block_16 + Conv_1), efficientnetb0 after ``block6d_add`` (block7a + top), hassner after
  ``norm2`` (conv3), compact after ``block3_pool`` (block4).
- ``last_n`` (``model.last_n`` = N): a *weight layer* is a backbone layer that owns weights
  (Conv2D, DepthwiseConv2D, Dense, BatchNormalization, Normalization …). The last N weight
  layers in the model's topological order (``model.layers``) and every backbone layer after
  the first of them train. vgg16 has 13 weight layers, so ``last_n: 3`` = block5's convs.
- ``full``: every backbone layer.

A layer that does not train has ``trainable = False``; in Keras 3 a frozen BatchNormalization
then runs in inference mode (moving statistics fixed) even inside ``fit``, and so does
:class:`~facetransfer.models.layers.FreezableDropout`. Change ``trainable`` only before
``compile`` (compile again after :func:`apply_strategy`).

BatchNorm of the backbone (``model.batchnorm``): ``frozen`` (default) keeps every backbone
BatchNormalization layer frozen — inference mode, moving statistics and gamma/beta fixed —
even inside a block the strategy trains, as the Keras transfer-learning guide advises: with
small fine-tuning batches the batch statistics are noisy and the moving statistics drift away
from the ones the pretrained weights (and a head trained first in ``two_phase``) were fitted
to. ``train`` lets them train with their block (batch statistics in ``fit``). A backbone
trained from scratch (``model.weights: none``) has no statistics to keep: its BatchNorm
trains either way (frozen at mean 0 / variance 1 it would normalise nothing: on the demo's
age source run, test MAE 13.2 years instead of 9.9). The head's own BatchNormalization
(``model.head.batch_norm``) always trains.
"""

from __future__ import annotations

from collections import Counter

import keras
import numpy as np

from facetransfer.errors import FacetransferError, ParamError
from facetransfer.models.backbones import SPECS
from facetransfer.models.heads import is_head_layer
from facetransfer.models.layers import FreezableDropout

PHASES = ("final", "head")
# Layers whose output in training mode differs from inference mode.
_STOCHASTIC = (
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


def backbone_layers(model: keras.Model) -> list:
    """The backbone's layers in graph order (not the input, ``preprocess`` or the head)."""
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and layer.name != "preprocess" and not is_head_layer(layer)
    ]


def weight_layers(model: keras.Model) -> list:
    """Backbone layers that own weights (what ``model.last_n`` counts)."""
    return [layer for layer in backbone_layers(model) if layer.weights]


def trainable_backbone_layers(model: keras.Model, backbone: str, strategy: str, last_n: int | None = None) -> list:
    """The backbone layers that ``strategy`` trains, in graph order."""
    layers = backbone_layers(model)
    if strategy == "frozen":
        return []
    if strategy == "full":
        return layers
    if strategy == "last_block":
        boundary = SPECS[backbone].last_block_after
        names = [layer.name for layer in layers]
        if boundary not in names:
            raise FacetransferError(f"model.strategy: last_block: layer {boundary!r} of {backbone} is not in this model; is it a {backbone} model?")
        return layers[names.index(boundary) + 1 :]
    if strategy == "last_n":
        weighted = weight_layers(model)
        if last_n is None or not 1 <= last_n <= len(weighted):
            raise ParamError("model.last_n", f"{last_n} is not 1..{len(weighted)} (the weight layers of {backbone})")
        return layers[layers.index(weighted[-last_n]) :]
    raise ParamError("model.strategy", f"{strategy!r} is not allowed; allowed: frozen, last_block, last_n, full")


def apply_strategy(model: keras.Model, cfg: dict, phase: str = "final") -> dict:
    """Set ``layer.trainable`` for ``cfg``'s strategy; returns :func:`trainable_summary`.

    ``phase="head"`` (first phase of ``train.two_phase``) freezes the whole backbone;
    ``phase="final"`` applies ``model.strategy``. Idempotent: every layer is set each time.
    """
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r}; allowed: {', '.join(PHASES)}")
    m = cfg["model"]
    strategy = "frozen" if phase == "head" else m["strategy"]
    train = {id(layer) for layer in trainable_backbone_layers(model, m["backbone"], strategy, m["last_n"])}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        layer.trainable = is_head_layer(layer) or (id(layer) in train and not _keeps_inference_mode(layer, m))
    return trainable_summary(model)


def _keeps_inference_mode(layer, model_cfg: dict) -> bool:
    """A backbone BatchNormalization keeps its learned statistics (stays frozen) unless
    ``model.batchnorm`` is ``train`` — or the backbone starts from random weights
    (``model.weights: none``), whose BatchNorm has no statistics to keep (mean 0, variance 1)."""
    # https://keras.io/guides/transfer_learning/ : keep BatchNormalization layers in inference mode when fine-tuning.
    pretrained = model_cfg["weights"] != "none"
    return isinstance(layer, keras.layers.BatchNormalization) and model_cfg["batchnorm"] == "frozen" and pretrained


def trainable_summary(model: keras.Model) -> dict:
    """``{total, trainable, non_trainable, trainable_layers}`` (parameter counts; names of
    the layers that have trainable weights, in graph order)."""
    total = int(model.count_params())
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    return {
        "total": total,
        "trainable": trainable,
        "non_trainable": total - trainable,
        "trainable_layers": [layer.name for layer in model.layers if layer.trainable_weights],
    }


# --------------------------------------------------------------------------- frozen prefix


def _is_frozen(layer) -> bool:
    """True when the layer computes the same in training and inference and does not learn."""
    if layer.trainable_weights:
        return False
    if isinstance(layer, FreezableDropout) or isinstance(layer, keras.layers.BatchNormalization):
        return not layer.trainable
    return not isinstance(layer, _STOCHASTIC)


def _tensors(structure) -> list:
    return [t for t in keras.tree.flatten(structure) if isinstance(t, keras.KerasTensor)]


def frozen_cut(model: keras.Model):
    """The deepest tensor that (a) every later layer depends on and (b) is computed only by
    frozen layers, at least one of them with a kernel (a weight of rank >= 2: a convolution
    or dense layer, so the cut saves real work); ``None`` when there is none.

    Walks ``model.layers`` (a topological order) keeping the tensors produced so far that
    later layers still consume; where that set is a single tensor, the graph can be cut.
    This finds block boundaries such as ``conv4_block6_out``, ``mixed8``, ``block_15_add``.
    """
    consumers = Counter()
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            consumers.update(id(t) for t in _tensors(layer.input))
    consumers.update(id(t) for t in _tensors(model.outputs))
    if all(_is_frozen(layer) for layer in model.layers):
        return None
    live: dict[int, object] = {}
    cut, has_weights = None, False
    for layer in model.layers:
        if not _is_frozen(layer):
            break
        if not isinstance(layer, keras.layers.InputLayer):
            for t in _tensors(layer.input):
                consumers[id(t)] -= 1
                if consumers[id(t)] == 0:
                    live.pop(id(t), None)
        live.update({id(t): t for t in _tensors(layer.output) if consumers[id(t)] > 0})
        has_weights = has_weights or any(len(w.shape) >= 2 for w in layer.weights)
        if len(live) == 1 and has_weights:
            cut = next(iter(live.values()))
    return cut


def split_frozen_prefix(model: keras.Model):
    """``(prefix, remainder)`` or ``None`` (nothing frozen to cut off, e.g. ``full``).

    ``prefix``: model input → the output of the frozen part just below the first trainable
    layer (see :func:`frozen_cut`); run it once per image (features.py caches it).
    ``remainder``: a model from that tensor to the model's outputs that REUSES the same layer
    objects, so fitting the remainder on cached features trains ``model`` itself.
    """
    cut = frozen_cut(model)
    if cut is None:
        return None
    prefix = keras.Model(model.input, cut, name="prefix")
    remainder = keras.Model(cut, model.output, name="remainder")
    return prefix, remainder
