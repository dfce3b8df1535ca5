"""Batches from the decoded-image cache for ``model.fit`` / ``predict`` (Keras 3 API only).

:class:`BatchFeeder` is a ``keras.utils.PyDataset``: batch ``i`` reads its rows from the
(memory-mapped) uint8 image array in sorted order, so the read is one forward pass over
the file, and returns float32 pixels in 0..255 (each model applies its own
preprocessing). The order is shuffled per epoch with ``np.random.default_rng((seed,
epoch))``, where ``epoch`` counts the calls to ``on_epoch_end`` (Keras makes one more
while setting up ``fit``, always at the same point, so runs stay reproducible); optional
augmentation (``flip``, ``rotation``, ``zoom`` as in the params'
``train.augment`` section) uses Keras preprocessing layers whose randomness is seeded
per (seed, epoch, batch), so a batch is the same whichever worker thread builds it.
"""

from __future__ import annotations

import math

import keras
import numpy as np

AUGMENT_KEYS = ("flip", "rotation", "zoom")


def augmentation_layers(augment: dict | None, seed: int = 0) -> list:
    """Keras layers for the params' ``train.augment`` section (empty when off).

    ``flip``: horizontal mirror with probability 1/2; ``rotation``: a fraction of a full
    turn (0.05 = up to ±18°); ``zoom``: in or out by up to this fraction. Rotated and
    zoomed borders are filled by reflection.
    """
    if not augment:
        return []
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"augment: unknown key {unknown[0]!r}; allowed: {', '.join(AUGMENT_KEYS)}")
    layers = []
    if augment.get("flip"):
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if augment.get("rotation"):
        layers.append(keras.layers.RandomRotation(augment["rotation"], fill_mode="reflect", seed=seed + 1))
    if augment.get("zoom"):
        z = augment["zoom"]
        layers.append(keras.layers.RandomZoom((-z, z), fill_mode="reflect", seed=seed + 2))
    return layers


class BatchFeeder(keras.utils.PyDataset):
    """``(x, {output: y})`` or ``(x, {output: y}, sample_weight)`` batches; ``x`` only when ``targets`` is None.

    ``images``: uint8 array (N, S, S, 3), usually ``ImageCache.images``; ``rows``: which
    rows of it form this set, in order; ``targets``: arrays aligned with ``rows``, keyed by
    model output name. ``**kw`` goes to ``PyDataset`` (workers, use_multiprocessing,
    max_queue_size).
    """

    def __init__(self, images, rows, targets: dict[str, np.ndarray] | None, *, batch_size: int, shuffle: bool = False, seed: int = 0, augment: dict | None = None, sample_weight=None, **kw):
        super().__init__(**kw)
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        if self.rows.ndim != 1 or len(self.rows) == 0:
            raise ValueError(f"BatchFeeder: rows must be a non-empty 1-D array (got shape {self.rows.shape})")
        if self.rows.min() < 0 or self.rows.max() >= len(images):
            raise ValueError(f"BatchFeeder: rows must be in 0..{len(images) - 1}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"BatchFeeder: batch_size must be an integer >= 1, not {batch_size!r}")
        self.targets = None if targets is None else {k: self._aligned(k, v) for k, v in targets.items()}
        self.sample_weight = None if sample_weight is None else self._aligned("sample_weight", sample_weight).astype(np.float32)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.layers = augmentation_layers(augment, self.seed)
        self.order = self._order(0)

    def _aligned(self, name: str, values) -> np.ndarray:
        values = np.asarray(values)
        if len(values) != len(self.rows):
            raise ValueError(f"BatchFeeder: {name} has {len(values)} values for {len(self.rows)} rows")
        return values

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.rows))

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Image rows as float32, read from ``images`` in ascending row order."""
        ascending = np.argsort(rows, kind="stable")
        x = np.empty((len(rows), *self.images.shape[1:]), dtype=np.float32)
        x[ascending] = self.images[rows[ascending]]
        return x

    def _augment(self, x: np.ndarray, index: int) -> np.ndarray:
        seed = int(np.random.default_rng((self.seed, self.epoch, index)).integers(2**31 - 1))
        for i, layer in enumerate(self.layers):
            transform = layer.get_random_transformation(x, training=True, seed=seed + i)
            x = layer.transform_images(x, transform, training=True)
        return keras.ops.convert_to_numpy(x).astype(np.float32)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} is out of range 0..{len(self) - 1}")
        take = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x = self.read(self.rows[take])
        if self.layers:
            x = self._augment(x, index)
        if self.targets is None:
            return x
        y = {name: values[take] for name, values in self.targets.items()}
        if self.sample_weight is None:
            return x, y
        return x, y, self.sample_weight[take]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order(self.epoch)
