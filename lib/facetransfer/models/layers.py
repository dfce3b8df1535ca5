"""Custom layers of facetransfer models (Keras 3, ``keras.ops`` only, serialisable).

- :class:`Preprocess` — a backbone's own input preprocessing, inside the model, so a saved
  ``model.keras`` takes raw 0..255 RGB images like the one that was trained.
- :class:`LocalResponseNormalization` — the LRN of Krizhevsky et al. used by Levi & Hassner.
- :class:`FreezableDropout` — dropout that runs in inference mode while its layer is frozen
  (``trainable=False``), the way Keras 3 BatchNormalization does; EfficientNet's
  stochastic-depth layers are rebuilt with it so that a frozen block is deterministic.
"""

from __future__ import annotations

import keras
from keras import ops

# ImageNet channel means in BGR order, the ones the "caffe" models were trained with.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESS_MODES = ("caffe", "tf", "none")


@keras.saving.register_keras_serializable(package="facetransfer")
class Preprocess(keras.layers.Layer):
    """Map float RGB images in 0..255 to what a backbone expects.

    ``caffe``: RGB → BGR, then subtract the ImageNet mean per channel (VGG16).
    ``tf``: ``x / 127.5 - 1`` (ResNet50V2, InceptionV3, MobileNetV2, the custom CNNs).
    ``none``: unchanged (EfficientNetB0 rescales and normalises inside itself).
    Runs in float32 under mixed precision (the next layer casts to float16).
    """

    def __init__(self, mode: str, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"Preprocess mode {mode!r}; allowed: {', '.join(PREPROCESS_MODES)}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="facetransfer")
class LocalResponseNormalization(keras.layers.Layer):
    """Across-channel LRN: ``x / (bias + alpha * sum_{|k - c| <= r} x_k**2) ** beta``.

    Same definition as ``tf.nn.local_response_normalization`` (``depth_radius`` r; Caffe's
    ``local_size`` is ``2 r + 1`` and its alpha is divided by the window size). Computed in
    float32 under mixed precision, since squared activations overflow float16.
    """

    def __init__(self, depth_radius: int = 2, bias: float = 1.0, alpha: float = 1e-4, beta: float = 0.75, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        r = self.depth_radius
        channels = x.shape[-1]
        squared = ops.pad(ops.square(x), [[0, 0], [0, 0], [0, 0], [r, r]])
        window_sum = sum(squared[..., k : k + channels] for k in range(2 * r + 1))
        return x / ops.power(self.bias + self.alpha * window_sum, self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "depth_radius": self.depth_radius,
            "bias": self.bias,
            "alpha": self.alpha,
            "beta": self.beta,
        }


@keras.saving.register_keras_serializable(package="facetransfer")
class FreezableDropout(keras.layers.Dropout):
    """Dropout that is the identity while the layer is frozen (``trainable=False``)."""

    def call(self, inputs, training=False):
        return super().call(inputs, training=bool(training) and self.trainable)
