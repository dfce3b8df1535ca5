"""Training: compile per task, fit with callbacks, optional two-phase schedule.

:func:`fit` trains a model built by :func:`facetransfer.models.build_model` on a
:class:`facetransfer.data.PreparedData`. When the bottom of the model is frozen and no
augmentation is asked for, the frozen prefix is run once per split and its outputs are
cached on disk (:mod:`facetransfer.features`); the rest of the model is then trained on
those features. The remainder shares its layers with the full model, so the full model
is what gets trained either way.

:func:`run_config` is a whole run without a notebook: prepare, build, fit, evaluate, write.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from facetransfer import runtime
from facetransfer.errors import FacetransferError, ParamError

LOSSES = {
    "gender": "binary_crossentropy",
    "age": "mean_absolute_error",
    "age_group": "sparse_categorical_crossentropy",
}
METRICS = {"gender": ["accuracy"], "age": ["mae"], "age_group": ["accuracy"]}
OUTPUTS = {"gender": ("gender",), "age": ("age",), "age_group": ("age_group",), "age_gender": ("gender", "age")}
N_CLASSES = {"gender": 2, "age_group": 8}  # outputs that class weights apply to


@dataclass
class TrainResult:
    history: pd.DataFrame  # epoch, phase, loss, val_loss, <metrics>, lr, seconds
    timings: dict  # train_seconds, epoch_seconds[], cache_seconds, feature_seconds
    used_feature_cache: bool
    log: list[str] = field(default_factory=list)  # the lines fit printed


# ---------------------------------------------------------------- compile


def make_optimizer(train_cfg: dict, learning_rate: float) -> keras.optimizers.Optimizer:
    name = train_cfg["optimizer"]
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=train_cfg["momentum"])
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate)
    raise ParamError("train.optimizer", f"{name!r} is not allowed; allowed: adam, sgd, rmsprop")


def compile_model(model: keras.Model, cfg: dict, learning_rate: float) -> None:
    """Compile for ``cfg['task']``: losses, metrics and (age_gender) loss weights per output."""
    names = OUTPUTS[cfg["task"]]
    have = list(model.output) if isinstance(model.output, dict) else []
    if sorted(have) != sorted(names):
        raise FacetransferError(f"model: task {cfg['task']!r} needs dict outputs {', '.join(names)}; the model has {', '.join(have) or 'no dict outputs'}")
    loss_weights = None
    if cfg["task"] == "age_gender":
        loss_weights = {n: float(cfg["train"]["loss_weights"][n]) for n in names}
    model.compile(
        optimizer=make_optimizer(cfg["train"], learning_rate),
        loss={n: LOSSES[n] for n in names},
        metrics={n: METRICS[n] for n in names},
        loss_weights=loss_weights,
        jit_compile=runtime.jit_compile(bool(cfg["train"]["xla"])),
    )


# ---------------------------------------------------------------- callbacks


class EpochLog(keras.callbacks.Callback):
    """Keeps one history row per epoch: the logs, the phase, the learning rate, the seconds."""

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase
        self.rows: list[dict] = []
        self._start = 0.0
        self._lr = float("nan")

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._lr = float(self.model.optimizer.learning_rate.numpy())

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        row = {"epoch": epoch + 1, "phase": self.phase}
        row.update({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        row.update({"lr": self._lr, "seconds": seconds})
        self.rows.append(row)


def make_callbacks(train_cfg: dict) -> list[keras.callbacks.Callback]:
    callbacks = []
    es = train_cfg["early_stopping"]
    if es is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=es["monitor"],
                patience=es["patience"],
                min_delta=es["min_delta"],
                restore_best_weights=es["restore_best_weights"],
                verbose=1,
            )
        )
    rl = train_cfg["reduce_lr"]
    if rl is not None:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=rl["monitor"], factor=rl["factor"], patience=rl["patience"], min_lr=rl["min_lr"], verbose=1
            )
        )
    return callbacks


def check_monitors(cfg: dict, has_val: bool) -> None:
    """The early-stopping / reduce-lr monitors must be names this task logs."""
    names = OUTPUTS[cfg["task"]]
    if len(names) == 1:
        logged = ["loss"] + METRICS[names[0]]
    else:
        logged = ["loss"] + [f"{n}_loss" for n in names] + [f"{n}_{m}" for n in names for m in METRICS[n]]
    allowed = logged + ([f"val_{m}" for m in logged] if has_val else [])
    for key in ("early_stopping", "reduce_lr"):
        sec = cfg["train"][key]
        if sec is not None and sec["monitor"] not in allowed:
            why = " (the val split is empty)" if not has_val and sec["monitor"].startswith("val_") else ""
            raise ParamError(f"train.{key}.monitor", f"{sec['monitor']!r} is not logged for task {cfg['task']}{why}; allowed: {', '.join(allowed)}")


# ---------------------------------------------------------------- class weights


def balanced_class_weights(y, n_classes: int) -> np.ndarray:
    """Per-class weights n / (k * count_c) over the k classes present (scikit-learn's 'balanced')."""
    y = np.asarray(y).astype(np.int64).ravel()
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights


def check_train_params(cfg: dict) -> None:
    """ParamError for train params that cannot work with this task, before any work."""
    _phases(cfg)
    if cfg["train"]["class_weight"] is not None and not any(n in N_CLASSES for n in OUTPUTS[cfg["task"]]):
        raise ParamError("train.class_weight", f"'balanced' needs a class output; task {cfg['task']!r} is a regression; allowed here: null")


def sample_weights(cfg: dict, targets: dict) -> np.ndarray | None:
    """Per-sample weights for ``train.class_weight: balanced`` (None when off).

    Models have dict outputs, for which Keras has no ``class_weight``: the class weights
    of the class output (gender or age_group) become one weight per training sample.
    For age_gender they weight the gender output only (see :class:`OutputWeights`).
    """
    if cfg["train"]["class_weight"] is None:
        return None
    check_train_params(cfg)
    classed = [n for n in OUTPUTS[cfg["task"]] if n in N_CLASSES]
    y = np.asarray(targets[classed[0]]).astype(np.int64).ravel()
    return balanced_class_weights(y, N_CLASSES[classed[0]])[y].astype(np.float32)


class OutputWeights(keras.utils.PyDataset):
    """Wraps a feeder of ``(x, y, w)`` batches so ``w`` weights only the ``weighted`` outputs."""

    def __init__(self, feeder, weighted: tuple[str, ...]):
        super().__init__(workers=feeder.workers, use_multiprocessing=feeder.use_multiprocessing, max_queue_size=feeder.max_queue_size)
        self.feeder, self.weighted = feeder, weighted

    def __len__(self) -> int:
        return len(self.feeder)

    def __getitem__(self, i):
        x, y, w = self.feeder[i]
        return x, y, {n: w if n in self.weighted else np.ones_like(w) for n in y}

    def on_epoch_end(self):
        self.feeder.on_epoch_end()


class NoBatchOfOne(keras.utils.PyDataset):
    """Merges a last training batch of ONE sample into the batch before it.

    A batch of one has zero variance: a training-mode BatchNormalization (a BN head, or
    ``model.batchnorm: train``) would normalise it to its beta and learn nothing from it.
    Merging (not dropping) keeps every training sample in every epoch; batches other than
    the last two are the wrapped feeder's own, in its order.
    """

    def __init__(self, feeder):
        super().__init__(workers=feeder.workers, use_multiprocessing=feeder.use_multiprocessing, max_queue_size=feeder.max_queue_size)
        self.feeder = feeder

    def __len__(self) -> int:
        return len(self.feeder) - 1

    def __getitem__(self, i):
        if i < len(self) - 1:
            return self.feeder[i]
        return keras.tree.map_structure(lambda a, b: np.concatenate([a, b]), self.feeder[i], self.feeder[i + 1])

    def on_epoch_end(self):
        self.feeder.on_epoch_end()


def no_batch_of_one(feeder, n_samples: int, batch_size: int):
    """``feeder`` itself, or wrapped in :class:`NoBatchOfOne` when its last batch holds one sample."""
    if batch_size > 1 and n_samples > batch_size and n_samples % batch_size == 1:
        return NoBatchOfOne(feeder)
    return feeder


def _weighted(feeder, cfg: dict):
    names = OUTPUTS[cfg["task"]]
    if cfg["train"]["class_weight"] is None or len(names) == 1:
        return feeder
    return OutputWeights(feeder, tuple(n for n in names if n in N_CLASSES))


# ---------------------------------------------------------------- feature-path batches


class ArrayFeeder(keras.utils.PyDataset):
    """Batches of an in-memory (or memmap) array, like the image feeder: ``(x, {output: y})``,
    ``(x, y, w)`` with ``sample_weight``, or ``x`` alone when ``targets`` is None.

    The order is shuffled per epoch with ``np.random.default_rng((seed, epoch))``, the
    same rule as :class:`facetransfer.feeder.BatchFeeder`, so both paths see the
    training samples in the same order.
    """

    def __init__(self, x, targets: dict | None, *, batch_size: int, shuffle: bool = False, seed: int = 0, sample_weight=None, **kw):
        super().__init__(**kw)
        self.x, self.targets, self.sample_weight = x, targets, sample_weight
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.x))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i):
        take = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        ascending = np.argsort(take, kind="stable")
        x = np.empty((len(take), *self.x.shape[1:]), dtype=np.float32)
        x[ascending] = self.x[take[ascending]]
        if self.targets is None:
            return x
        y = {k: np.asarray(v)[take] for k, v in self.targets.items()}
        if self.sample_weight is None:
            return x, y
        return x, y, self.sample_weight[take]

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()


def split_features(prefix: keras.Model, data, cfg: dict, split: str, results_root, *, precision: str | None = None) -> tuple[np.ndarray, bool]:
    """Prefix features of ``split`` from the on-disk cache (computed on a miss); ``(array, hit)``.

    Keyed by the image-cache key, backbone, weights (and their digest), cut layer and rows
    (:func:`facetransfer.features.key_parts`). ``precision``: the arithmetic of the extraction,
    default ``train.feature_precision`` (training); evaluation asks for ``float32``, what the
    saved model computes.
    """
    from facetransfer import features

    if precision is not None:
        cfg = {**cfg, "train": {**cfg["train"], "feature_precision": precision}}

    rows = data.rows(split)
    cache_dir = features.default_cache_dir(results_root)
    parts = features.key_parts(cfg, prefix, image_key=data.cache.key, rows=rows)
    hit = features.is_cached(cache_dir, parts)
    array = features.prefix_features(prefix, data.cache.images, rows, cache_dir=cache_dir, key_parts=parts)
    return array, hit


# ---------------------------------------------------------------- fit


def _say(log: list[str], line: str) -> None:
    print(f"[fit] {line}", flush=True)
    log.append(line)


def init_age_output(model: keras.Model, targets: dict, log: list[str]) -> None:
    """Start the ``age`` output at the median training age (the best constant under MAE).

    Ages are regressed in years. From a zero bias, Adam moves the output by about one
    learning rate per step, so a fresh model would spend hundreds of epochs just reaching
    the typical age; starting at the median lets training spend its steps on faces.
    """
    if "age" not in targets or "age" not in [layer.name for layer in model.layers]:
        return
    layer = model.get_layer("age")
    median = float(np.median(targets["age"]))
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, np.full_like(bias, median)])
    _say(log, f"age output starts at the median training age, {median:.1f} years")


def configure(cfg: dict) -> dict:
    """Seed, determinism, CPU threads and dtype policy for ``cfg`` (:func:`facetransfer.runtime.configure`)."""
    t = cfg["train"]
    return runtime.configure(cfg["seed"], mixed_precision=t["mixed_precision"], xla=t["xla"], cpu_threads=t["cpu_threads"])


def _phases(cfg: dict) -> list[tuple[str, int, int, float]]:
    """(phase, initial_epoch, epochs, learning_rate) for each training phase."""
    t = cfg["train"]
    tp = t["two_phase"]
    if tp is None:
        return [("final", 0, t["epochs"], t["learning_rate"])]
    if tp["head_epochs"] >= t["epochs"]:
        raise ParamError("train.two_phase.head_epochs", f"{tp['head_epochs']} must be < train.epochs ({t['epochs']}), which counts both phases")
    return [("head", 0, tp["head_epochs"], t["learning_rate"]), ("final", tp["head_epochs"], t["epochs"], tp["learning_rate"])]


def feature_split(model: keras.Model, cfg: dict):
    """``(prefix, remainder)`` when training may use cached prefix features, else None."""
    from facetransfer import models

    t = cfg["train"]
    if not t["feature_cache"] or t["augment"] is not None:
        return None
    return models.split_frozen_prefix(model)


def _image_inputs(data, cfg: dict, splits: list[str], weights):
    t = cfg["train"]
    train = data.feeder("train", batch_size=t["batch_size"], shuffle=True, augment=t["augment"], seed=cfg["seed"], sample_weight=weights)
    val = data.feeder("val", batch_size=t["batch_size"]) if "val" in splits else None
    return no_batch_of_one(_weighted(train, cfg), len(data.rows("train")), t["batch_size"]), val


def _feature_inputs(prefix, data, cfg: dict, splits: list[str], weights, results_root, log: list[str]):
    t = cfg["train"]
    feats, computed = {}, False
    for split in splits:
        start = time.perf_counter()
        feats[split], hit = split_features(prefix, data, cfg, split, results_root)
        computed |= not hit
        what = "loaded from cache (no feature extraction)" if hit else "computed and cached"
        _say(log, f"features {split} at {prefix.layers[-1].name} ({t['feature_precision']}): {what}, {tuple(feats[split].shape)} in {time.perf_counter() - start:.1f} s")
    train = ArrayFeeder(feats["train"], data.targets("train"), batch_size=t["batch_size"], shuffle=True, seed=cfg["seed"], sample_weight=weights)
    val = ArrayFeeder(feats["val"], data.targets("val"), batch_size=t["batch_size"]) if "val" in feats else None
    return no_batch_of_one(_weighted(train, cfg), len(feats["train"]), t["batch_size"]), val, computed


def reuse_trained(model: keras.Model, cfg: dict, run_dir) -> TrainResult:
    """Load the trained weights of ``run_dir`` (a finished run with the same training params)
    into ``model`` instead of training: the run's ``eval.*`` changed, its model did not.

    History and timings are those of the training that made the model (history.csv and
    metrics.json). FacetransferError when the run folder does not hold such a run.
    """
    from facetransfer.io import read_json

    run_dir = Path(run_dir)
    for name in ("model.keras", "history.csv", "metrics.json"):
        if not (run_dir / name).is_file():
            raise FacetransferError(f"cannot re-evaluate {run_dir}: {name} is missing; train it again (facetransfer run --force)")
    trained = read_json(run_dir / "metrics.json")
    same = {k: v for k, v in cfg.items() if k not in ("name", "eval")}
    had = {k: v for k, v in (trained.get("params") or {}).items() if k not in ("name", "eval")}
    same["data"], had["data"] = ({k: v for k, v in d.get("data", {}).items() if k != "root"} for d in (same, had))
    if trained.get("status") != "ok" or same != had:
        raise FacetransferError(f"cannot re-evaluate {run_dir}: its model was not trained (ok) with these training params; train it again (facetransfer run --force)")
    configure(cfg)
    model.load_weights(run_dir / "model.keras")
    log: list[str] = []
    _say(log, f"re-evaluating the trained model of run {trained['run_id']} ({run_dir / 'model.keras'}): only eval.* changed, no retraining")
    timing = trained["timing"]
    timings = {k: timing[k] for k in ("train_seconds", "epoch_seconds", "cache_seconds", "feature_seconds")}
    return TrainResult(history=pd.read_csv(run_dir / "history.csv"), timings=timings, used_feature_cache=bool(trained["used_feature_cache"]), log=log)


def fit(model: keras.Model, data, cfg: dict, run_dir, *, results_root, verbose="auto", reuse: bool = False) -> TrainResult:
    """Train ``model`` on ``data`` as ``cfg['train']`` says; returns history and timings.

    Per phase (one, or ``head`` then ``final`` with ``train.two_phase``): apply the
    strategy, compile, and fit either the remainder on cached prefix features or the
    whole model on images. Prints (and returns in ``log``) whether images were decoded
    and whether features were computed or loaded. ``reuse``: the runner found this run
    trained and only its ``eval.*`` changed: :func:`reuse_trained` instead of training.
    """
    from facetransfer import models

    if reuse:
        return reuse_trained(model, cfg, run_dir)
    env = configure(cfg)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    t = cfg["train"]
    log: list[str] = []
    if len(data.rows("train")) == 0:
        raise FacetransferError("data.split.fractions: the train split is empty; give it a fraction > 0")
    splits = ["train"] + (["val"] if len(data.rows("val")) else [])
    check_train_params(cfg)
    check_monitors(cfg, has_val="val" in splits)
    phases = _phases(cfg)
    init_age_output(model, data.targets("train"), log)
    weights = sample_weights(cfg, data.targets("train"))
    cache = data.cache
    _say(log, f"{env['backend']} on {', '.join(env['devices'])}, CPU threads: {env['cpu_threads']}, dtype policy {env['mixed_precision']}, xla {'on' if env['xla'] else 'off'}")
    decoded = "hit: no decoding" if cache.hit else f"built: decoded {len(cache.paths)} images"
    _say(log, f"image cache {decoded} ({cache.seconds:.1f} s, key {cache.key})")

    rows: list[dict] = []
    feature_seconds, used_cache, extracted = 0.0, False, False
    start = time.perf_counter()
    for phase, initial, epochs, lr in phases:
        if len(phases) > 1:
            models.apply_strategy(model, cfg, phase=phase)
        compile_model(model, cfg, lr)
        split = feature_split(model, cfg)
        if split is not None:
            prefix, target = split
            compile_model(target, cfg, lr)
            begin = time.perf_counter()
            train_in, val_in, computed = _feature_inputs(prefix, data, cfg, splits, weights, results_root, log)
            feature_seconds += time.perf_counter() - begin
            used_cache, extracted = True, extracted or computed
        else:
            why = "train.feature_cache is off" if not t["feature_cache"] else "train.augment is on" if t["augment"] is not None else "nothing frozen to cache"
            _say(log, f"phase {phase}: training the whole model on images ({why})")
            train_in, val_in = _image_inputs(data, cfg, splits, weights)
            target = model
        n_trainable = sum(int(np.prod(w.shape)) for w in target.trainable_weights)
        _say(log, f"phase {phase}: epochs {initial + 1}..{epochs}, lr {lr:g}, {n_trainable:,} trainable parameters")
        recorder = EpochLog(phase)
        # shuffle=False: our feeders shuffle the rows per epoch from (seed, epoch); Keras's own
        # shuffle of a PyDataset's batch order draws from Python's global `random`, which a
        # Dask worker's threads draw from too (the numbers then differed run to run there).
        target.fit(train_in, validation_data=val_in, epochs=epochs, initial_epoch=initial, shuffle=False, callbacks=[*make_callbacks(t), recorder], verbose=verbose)
        rows.extend(recorder.rows)
    train_seconds = time.perf_counter() - start
    work = "no decoding" if cache.hit else "decoding"
    work += (", feature extraction" if extracted else ", no feature extraction") if used_cache else ", no feature cache"
    _say(log, f"done in {train_seconds:.1f} s: {work}")
    timings = {
        "train_seconds": train_seconds,
        "epoch_seconds": [r["seconds"] for r in rows],
        "cache_seconds": float(cache.seconds),
        "feature_seconds": feature_seconds,
    }
    return TrainResult(history=pd.DataFrame(rows), timings=timings, used_feature_cache=used_cache, log=log)


# ---------------------------------------------------------------- a whole run


def run_config(cfg: dict, run_dir, *, results_root, run_id: str | None = None, verbose="auto", reuse: bool = False) -> dict:
    """Prepare, build, fit, evaluate and write one run without a notebook; returns metrics."""
    from facetransfer import artifacts, data, evaluate, models, params

    cfg = params.resolve_run(cfg)
    run_id = run_id or params.run_id(cfg)
    models.check_model_params(cfg, results_root=results_root)
    check_train_params(cfg)
    prepared = data.prepare(cfg, results_root)
    evaluate.check_subgroups(cfg, prepared.records)
    configure(cfg)
    model = models.build_model(cfg, results_root=results_root)
    result = fit(model, prepared, cfg, run_dir, results_root=results_root, verbose=verbose, reuse=reuse)
    evaluation = evaluate.evaluate_run(model, prepared, cfg, results_root=results_root, verbose=verbose)
    return artifacts.write_run(run_dir, cfg=cfg, run_id=run_id, data=prepared, model=model, result=result, evaluation=evaluation)
