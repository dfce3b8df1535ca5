"""Classification / regression heads from ``model.head``.

Layer names: ``head_flatten`` or ``head_gap``, then per dense width i = 1, 2, …
``head_dense_i`` → ``head_bn_i`` (batch_norm) → ``head_act_i`` → ``head_dropout_i``
(dropout > 0). The trunk is shared by all outputs; each output is one Dense layer named
after it, computed in float32 (mixed precision keeps the losses in float32):

===========  ==========================  =====================
task         outputs                     activation / units
===========  ==========================  =====================
gender       gender                      sigmoid, 1 (P(male))
age          age                         linear, 1 (years)
age_group    age_group                   softmax, 8 (Adience)
age_gender   gender, age                 as above
===========  ==========================  =====================
"""

from __future__ import annotations

import keras
from keras import layers

OUTPUTS = {
    "gender": ("gender",),
    "age": ("age",),
    "age_group": ("age_group",),
    "age_gender": ("gender", "age"),
}
OUTPUT_NAMES = ("gender", "age", "age_group")
N_AGE_GROUPS = 8
_OUTPUT_LAYER = {
    "gender": dict(units=1, activation="sigmoid"),
    "age": dict(units=1, activation="linear"),
    "age_group": dict(units=N_AGE_GROUPS, activation="softmax"),
}


def output_names(task: str) -> tuple[str, ...]:
    """Names (and dict keys) of the model outputs for ``task``."""
    return OUTPUTS[task]


def build_head(features, cfg: dict) -> dict:
    """Head layers on the backbone's ``features``; returns ``{output_name: tensor}``."""
    head = cfg["model"]["head"]
    l2 = keras.regularizers.L2(head["l2"]) if head["l2"] > 0 else None
    if head["pooling"] == "gap":
        x = layers.GlobalAveragePooling2D(name="head_gap")(features)
    else:
        x = layers.Flatten(name="head_flatten")(features)
    for i, width in enumerate(head["dense"], start=1):
        x = layers.Dense(width, kernel_regularizer=l2, name=f"head_dense_{i}")(x)
        if head["batch_norm"]:
            x = layers.BatchNormalization(momentum=0.9, name=f"head_bn_{i}")(x)
        x = layers.Activation(head["activation"], name=f"head_act_{i}")(x)
        if head["dropout"] > 0:
            x = layers.Dropout(head["dropout"], seed=cfg["seed"] + i, name=f"head_dropout_{i}")(x)
    return {
        name: layers.Dense(kernel_regularizer=l2, dtype="float32", name=name, **_OUTPUT_LAYER[name])(x)
        for name in output_names(cfg["task"])
    }


def is_head_layer(layer) -> bool:
    return layer.name.startswith("head_") or layer.name in OUTPUT_NAMES
