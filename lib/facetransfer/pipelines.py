"""The pipelines ``facetransfer bench`` times facetransfer against, and the physical limit.

- :func:`run_baseline`, **seed style**: what the studies we reproduce wrote — Keras' legacy
  ``ImageDataGenerator().flow_from_dataframe`` (Pillow decode + nearest resize of every
  JPEG, every epoch) feeding ``model.fit`` on the WHOLE model.
- :func:`run_keras_guide`, **keras-guide**: what a competent Keras user writes today after
  the Keras transfer-learning guide (keras.io/guides/transfer_learning): a tf.data pipeline
  that decodes and resizes each JPEG once (``.cache()``) and prefetches
  (``.prefetch(tf.data.AUTOTUNE)``), feeding ``model.fit`` on the WHOLE model (frozen
  backbone + head): the frozen layers still run forward every epoch.
- :func:`run_limit`, **the limit** of a run with a frozen prefix: the prefix's forward pass
  once per image (decoded images already in memory) plus the epochs of the trainable rest
  on the prefix outputs held in memory. It is the same algorithm as facetransfer's
  ``train.fit`` with the feature cache (:mod:`facetransfer.features`), for ``frozen`` and
  ``last_block`` alike, without its decode, cache files, hashing and feeder: the time
  facetransfer could reach with zero overhead.

Each is built with ``models.build_model`` + ``train.compile_model`` from the same resolved
params as the facetransfer run (same seed, so the same initial weights; same batch size,
epochs, image size and optimiser) and validates every epoch; each returns wall and CPU
seconds (:class:`Clock`), the epoch seconds and the last validation accuracy.
"""

from __future__ import annotations

import os
import time

import numpy as np

from facetransfer.errors import FacetransferError


class Clock:
    """Wall time and CPU time (this process + its waited-for children) since creation."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def read(self) -> dict:
        return {"seconds": time.perf_counter() - self.wall, "cpu_seconds": self._cpu() - self.cpu}


def final_val_accuracy(rows: list[dict]) -> float | None:
    """The last epoch's validation accuracy (``val_accuracy`` or ``val_gender_accuracy``)."""
    if not rows:
        return None
    keys = [k for k in rows[-1] if k.startswith("val_") and k.endswith("accuracy")]
    return float(rows[-1][keys[0]]) if keys else None


def labelled_frame(records):
    """``records``' path, gender (float32) and split columns: what the pipelines read."""
    return records[["path", "gender", "split"]].assign(gender=lambda f: f["gender"].astype(np.float32))


def fit_whole_model(cfg: dict, records, make_input, **fit_options) -> dict:
    """Build, compile and ``model.fit(**fit_options)`` the whole model on
    ``make_input(rows, cfg, shuffle=...)`` of the train (shuffled) and val rows of
    ``records``; timed from before the build, as a user's script would be."""
    from facetransfer import models, train

    frame = labelled_frame(records)
    clock = Clock()
    train.configure(cfg)
    model = models.build_model(cfg)
    train.compile_model(model, cfg, cfg["train"]["learning_rate"])
    train_inputs = make_input(frame[frame["split"] == "train"], cfg, shuffle=True)
    val_inputs = make_input(frame[frame["split"] == "val"], cfg, shuffle=False)
    recorder = train.EpochLog("final")
    model.fit(train_inputs, validation_data=val_inputs, epochs=cfg["train"]["epochs"], callbacks=[recorder], verbose=0, **fit_options)
    return {**clock.read(), "epoch_seconds": [r["seconds"] for r in recorder.rows], "val_accuracy": final_val_accuracy(recorder.rows)}


# ---------------------------------------------------------------- seed style


def legacy_image_data_generator():
    """Keras' legacy ``ImageDataGenerator`` class (Keras 3 keeps it, numpy + Pillow only).

    It is public as ``tf.keras.preprocessing.image.ImageDataGenerator`` and lives in
    ``keras.src.legacy.preprocessing.image``; a FacetransferError if this Keras has neither.
    """
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    except ImportError:
        try:
            from keras._tf_keras.keras.preprocessing.image import ImageDataGenerator
        except ImportError as exc:
            raise FacetransferError(f"bench: this Keras has no legacy ImageDataGenerator ({exc}); the seed-style baseline cannot run") from exc
    return ImageDataGenerator


def baseline_unavailable() -> str | None:
    """Why the seed-style baseline cannot run here (None when it can)."""
    try:
        legacy_image_data_generator()
    except FacetransferError as exc:
        return str(exc)
    return None


def seed_style_flow(frame, cfg: dict, *, shuffle: bool):
    """``ImageDataGenerator().flow_from_dataframe`` over ``frame`` (path, gender), dict targets."""
    import keras

    size = cfg["data"]["image_size"]
    flow = legacy_image_data_generator()().flow_from_dataframe(
        frame,
        x_col="path",
        y_col="gender",
        class_mode="raw",
        target_size=(size, size),
        batch_size=cfg["train"]["batch_size"],
        shuffle=shuffle,
        seed=cfg["seed"],
    )

    class DictTargets(keras.utils.PyDataset):
        """The flow's ``(x, y)`` as ``(x, {"gender": y})`` (facetransfer models have dict outputs)."""

        def __len__(self):
            return len(flow)

        def __getitem__(self, i):
            x, y = flow[i]
            return x, {"gender": np.asarray(y, dtype=np.float32)}

        def on_epoch_end(self):
            flow.on_epoch_end()

    return DictTargets()


def run_baseline(cfg: dict, records) -> dict:
    """Seed style: build, compile and ``model.fit`` the whole model on JPEGs decoded every epoch."""
    return fit_whole_model(cfg, records, seed_style_flow)


# ---------------------------------------------------------------- keras-guide


def keras_guide_unavailable() -> str | None:
    """Why the keras-guide pipeline cannot run here (None when it can): it needs tf.data."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return "unavailable: needs TensorFlow (tf.data), which is not installed"
    return None


def keras_guide_dataset(frame, cfg: dict, *, shuffle: bool):
    """A tf.data pipeline over ``frame`` (path, gender) as the Keras guides write it.

    Our layouts label images in CSV files, not class folders, so the pipeline starts from
    the file list; the per-file work is what ``keras.utils.image_dataset_from_directory``
    does (``decode_image`` with 3 channels, bilinear ``resize`` of the whole image to a
    square), then ``.cache()`` (decoded once, in memory), a per-epoch shuffle after the
    cache (the tf.data guide's order), ``.batch()`` and ``.prefetch(tf.data.AUTOTUNE)``.
    """
    import tensorflow as tf

    size = cfg["data"]["image_size"]

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(image, (size, size)), {"gender": label}

    paths = [str(p) for p in frame["path"]]
    dataset = tf.data.Dataset.from_tensor_slices((paths, frame["gender"].to_numpy(np.float32)))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=cfg["seed"], reshuffle_each_iteration=True)
    return dataset.batch(cfg["train"]["batch_size"]).prefetch(tf.data.AUTOTUNE)


def run_keras_guide(cfg: dict, records) -> dict:
    """keras-guide: the whole model in ``model.fit``, fed by :func:`keras_guide_dataset`."""
    # the dataset shuffles itself; fit's shuffle=True would only warn for a tf.data input
    return fit_whole_model(cfg, records, keras_guide_dataset, shuffle=False)


# ---------------------------------------------------------------- the limit


def run_limit(cfg: dict, prepared) -> dict | None:
    """The physical limit of a run with a frozen prefix (None when nothing is frozen).

    Timed: the frozen prefix's ``predict`` once over the train and val images (``prepared``'s
    decoded uint8 cache, already in memory; batch ``train.batch_size``), then ``fit`` of the
    trainable rest on those outputs as in-memory arrays, ``train.epochs`` epochs with
    validation. Not timed: building the model (facetransfer's time includes it, and the
    decode). The split is :func:`facetransfer.models.split_frozen_prefix`, the one
    facetransfer's feature cache uses.
    """
    from facetransfer import models, train

    t = cfg["train"]
    train.configure(cfg)  # same seed: same initial weights
    split = models.split_frozen_prefix(models.build_model(cfg))
    if split is None:
        return None
    prefix, rest = split
    train.compile_model(rest, cfg, t["learning_rate"])
    rows = {s: prepared.rows(s) for s in ("train", "val") if len(prepared.rows(s))}
    images = np.asarray(prepared.cache.images[np.concatenate(list(rows.values()))], dtype=np.float32)
    targets = {s: prepared.targets(s) for s in rows}
    clock = Clock()
    outputs = prefix.predict(images, batch_size=t["batch_size"], verbose=0)  # one call: one trace, one pass per image
    forward = clock.read()
    train_outputs, val_outputs = outputs[: len(rows["train"])], outputs[len(rows["train"]) :]
    recorder = train.EpochLog("final")
    validation = (val_outputs, targets["val"]) if "val" in rows else None
    rest.fit(train_outputs, targets["train"], validation_data=validation, batch_size=t["batch_size"], epochs=t["epochs"], shuffle=True, callbacks=[recorder], verbose=0)
    total = clock.read()
    return {
        **total,
        "forward_seconds": forward["seconds"],
        "head_seconds": total["seconds"] - forward["seconds"],
        "images": len(images),
        "epoch_seconds": [r["seconds"] for r in recorder.rows],
        "val_accuracy": final_val_accuracy(recorder.rows),
    }
