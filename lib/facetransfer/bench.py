"""``facetransfer bench``: facetransfer against the seed-style and keras-guide pipelines and the limit.

The studies we reproduce fed Keras from ``ImageDataGenerator().flow_from_dataframe``:
every epoch re-decoded every JPEG and pushed every image through the frozen layers.
facetransfer decodes once into a uint8 cache (:mod:`facetransfer.images`), runs a frozen
prefix once and caches its outputs (:mod:`facetransfer.features`) and feeds batches from
the caches (:mod:`facetransfer.feeder`); :func:`facetransfer.train.fit` picks the path.

Each case times both pipelines in one process, on the same SYNTHETIC CelebA-layout JPEGs
(178x218), the same model (same seed, so the same initial weights), the same train/val
split (CelebA's own partition), batch size and number of epochs:

- ``baseline``: ``models.build_model`` + ``train.compile_model`` + ``model.fit`` on the
  WHOLE model, fed by Keras' legacy ``ImageDataGenerator().flow_from_dataframe``
  (Pillow decode + nearest resize of every image, every epoch; validation likewise).
  It is given the records table ready-made (its label loading is not timed).
- ``facetransfer``: ``data.prepare`` with a cold image cache (loading the labels,
  decoding every JPEG once) + ``models.build_model`` + ``train.fit`` with a cold feature
  cache. The one-time caching is inside facetransfer's time.

Cases with a frozen prefix ((a), (b)) also time, in the same process, the pipeline a
competent Keras user writes today after the Keras transfer-learning guide (``keras-guide``:
tf.data decoding each JPEG once with ``.cache().prefetch()``, the whole model in
``model.fit``) and the physical limit of the run (the frozen prefix forward once per image
plus the trainable rest's epochs, all in memory): facetransfer's speed-up against both
pipelines and its efficiency, limit time / facetransfer time (:mod:`facetransfer.pipelines`).

Both wall time and CPU time (this process and its finished children, e.g. the decoder
workers) are recorded: on a machine shared with other work the CPU-time ratio is the
steadier figure; the targets are judged on wall time.

Cases: (a) ``vgg16_frozen``, (b) ``vgg16_last_block``, (c) ``mobilenetv2_full`` (full
run) or ``compact_full`` (the small custom CNN; ``--quick``, where MobileNetV2's training
graph alone would take a large part of the 3-minute budget to trace). VGG16 gets its
weights from a local ``.weights.h5`` written here from a seeded random initialisation (no
internet, so no ImageNet download; the params forbid freezing ``weights: none``; speed does
not depend on the weight values). For (c) the bench also trains the same model twice more,
alternating epoch by epoch: fed by facetransfer's feeder and fed from an in-memory numpy
array ("model only"), so the share of that throughput which facetransfer's input pipeline
delivers can be read off under the same machine conditions. Cases with a frozen prefix run facetransfer twice,
each with cold caches: with the default float32 features and with
``train.feature_precision: bfloat16`` (the one-time extraction in bfloat16 arithmetic, the
trained layers in float32); each pipeline's final validation accuracy is printed next to
its time, so the speed is seen not to cost accuracy. Case (a) is followed by a re-run that changes only
the learning rate and the head's width: it shows the cache-hit lines of ``train.fit`` (no
decoding, no feature extraction).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facetransfer import pipelines
from facetransfer.errors import FacetransferError
from facetransfer.pipelines import Clock, final_val_accuracy


@dataclass(frozen=True)
class Sizes:
    """How big a bench run is."""

    n: int  # synthetic images; CelebA's own partition, about 80 / 10 / 10 (test unused)
    epochs: int
    image_size: int  # model input and cache side in px
    batch_size: int = 32
    jpeg_height: int = 218  # CelebA aligned: 178 x 218
    cases: tuple[str, ...] = ("vgg16_frozen", "vgg16_last_block", "mobilenetv2_full")  # run by default


QUICK = Sizes(n=300, epochs=3, image_size=64, cases=("vgg16_frozen", "vgg16_last_block", "compact_full"))
FULL = Sizes(n=1500, epochs=10, image_size=64)


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    backbone: str
    strategy: str
    weights: str  # "local": a VGG16 weights file written by the bench; or "none"
    target: float  # speed-up asked for over 10 epochs, one-time caching included


CASES = {
    c.name: c
    for c in (
        Case("vgg16_frozen", "(a) VGG16 frozen", "vgg16", "frozen", "local", 20.0),
        Case("vgg16_last_block", "(b) VGG16 last_block", "vgg16", "last_block", "local", 3.0),
        Case("mobilenetv2_full", "(c) MobileNetV2 full", "mobilenetv2", "full", "none", 1.0),
        Case("compact_full", "(c) compact CNN full", "compact", "full", "none", 1.0),
    )
}
TARGET_EPOCHS = 10
PIPELINE_TARGET = 0.90  # (c): pipeline throughput / model-only throughput
DECODE_TARGET = 300.0  # first-time decode + cache, images/s, 218x178 JPEG -> 64 px
RERUN_CHANGES = {"train.learning_rate": 1e-4, "model.head.dense": [128]}


# ---------------------------------------------------------------- set-up


def check_cases(cases, default=FULL.cases) -> list[str]:
    """Case names in run order; a one-line error for an unknown name."""
    if not cases:
        return list(default)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise FacetransferError(f"bench --cases: {unknown[0]!r} is not a case; allowed: {', '.join(CASES)}")
    return [c for c in CASES if c in cases]


def machine() -> dict:
    """CPU count and model, load average, backend and versions."""
    import keras

    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0] if names else model
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
    }


def gpu_note() -> str:
    from facetransfer import runtime

    if runtime.has_gpu():
        return "GPU present: mixed precision automatic (train.mixed_precision: auto); XLA with train.xla: true"
    return "no GPU: CPU float32 figures"


def synthetic_set(workdir: Path, sizes: Sizes, *, progress: bool) -> Path:
    """A SYNTHETIC CelebA-layout set of ``sizes.n`` 178x218 JPEGs (generated once per workdir)."""
    from facetransfer import synthetic

    root = workdir / f"celeba-n{sizes.n}-{sizes.jpeg_height}px"
    if not (root / synthetic.SYNTHETIC_MARKER).is_file():
        synthetic.generate("celeba", root, n=sizes.n, seed=0, size=sizes.jpeg_height, overwrite=root.exists(), progress=progress)
    return root


def vgg16_weights_file(workdir: Path) -> Path:
    """No-top VGG16 weights from a seeded random initialisation, saved as ``.weights.h5``.

    The offline stand-in for ImageNet weights: loaded through ``model.weights: <file>``
    like a downloaded keras.applications file. The weights do not depend on the input size.
    """
    import keras

    path = workdir / "vgg16-notop-random-seed0.weights.h5"
    if not path.is_file():
        keras.utils.set_random_seed(0)
        base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
        base.save_weights(path)
        keras.backend.clear_session()
    return path


def case_params(case: Case, sizes: Sizes, root: Path, weights_file: Path, **changes) -> dict:
    """Resolved run params of ``case`` (``changes``: dotted key -> value)."""
    from facetransfer import params as P

    raw = {
        "name": f"bench-{case.name}",
        "seed": 0,
        "task": "gender",
        "data": {"dataset": "celeba", "root": str(root), "image_size": sizes.image_size, "split": {"source": "dataset"}},
        "model": {
            "backbone": case.backbone,
            "strategy": case.strategy,
            "weights": str(weights_file) if case.weights == "local" else case.weights,
        },
        "train": {"batch_size": sizes.batch_size, "epochs": sizes.epochs},
    }
    for key, value in changes.items():
        P.set_dotted(raw, key, value)
    return P.resolve_run(raw)


# ---------------------------------------------------------------- facetransfer


def run_facetransfer(cfg: dict, results_root: Path, run_dir: Path) -> tuple[dict, object]:
    """facetransfer's own path: prepare (image cache), build, ``train.fit`` (feature cache)."""
    from facetransfer import data, models, train

    clock = Clock()
    prepared = data.prepare(cfg, results_root, progress=False)
    prepare_seconds = clock.read()["seconds"]
    train.configure(cfg)
    model = models.build_model(cfg, results_root=results_root)
    result = train.fit(model, prepared, cfg, run_dir, results_root=results_root, verbose=0)
    out = {
        **clock.read(),
        "prepare_seconds": prepare_seconds,
        "decode_seconds": 0.0 if prepared.cache.hit else prepared.cache.build_seconds,
        "image_cache_hit": prepared.cache.hit,
        "feature_seconds": result.timings["feature_seconds"],
        "used_feature_cache": result.used_feature_cache,
        "epoch_seconds": result.timings["epoch_seconds"],
        "val_accuracy": final_val_accuracy(result.history.to_dict("records")),
        "precision": cfg["train"]["feature_precision"],
        "fit_log": result.log,
    }
    return out, prepared


def run_pipeline_vs_model_only(cfg: dict, prepared) -> dict:
    """Train epochs of the same model fed two ways, alternating: facetransfer's feeder, then
    in-memory float32 numpy arrays (no input pipeline to wait for); ``{"pipeline",
    "model_only"}`` epoch seconds.

    Alternating epoch by epoch puts both feeds under the same machine conditions: on a
    shared 2-core machine epoch times switch between two levels for minutes at a time,
    which decides a comparison of two runs made one after the other.
    """
    from facetransfer import models, train

    t = cfg["train"]
    epochs, batch = t["epochs"], t["batch_size"]
    fed = {}
    for way in ("pipeline", "model_only"):
        train.configure(cfg)  # same seed: same initial weights
        fed[way] = models.build_model(cfg)
        train.compile_model(fed[way], cfg, t["learning_rate"])
    feeder, _ = train._image_inputs(prepared, cfg, ["train"], None)  # what train.fit trains on
    x = np.asarray(prepared.cache.images[prepared.rows("train")], dtype=np.float32)
    y = prepared.targets("train")
    seconds = {"pipeline": [], "model_only": []}
    for epoch in range(epochs):
        for way, model in fed.items():
            start = time.perf_counter()
            if way == "pipeline":
                model.fit(feeder, epochs=epoch + 1, initial_epoch=epoch, verbose=0)
            else:
                model.fit(x, y, batch_size=batch, epochs=epoch + 1, initial_epoch=epoch, shuffle=True, verbose=0)
            seconds[way].append(time.perf_counter() - start)
    return seconds


def steady_epoch_seconds(epoch_seconds: list[float]) -> float:
    """Median epoch time without the first epoch (which traces and compiles), when there are more."""
    tail = epoch_seconds[1:] or epoch_seconds
    return float(statistics.median(tail))


# ---------------------------------------------------------------- one case


def run_case(case: Case, sizes: Sizes, root: Path, weights_file: Path, scratch: Path, say) -> dict:
    import keras

    cfg = case_params(case, sizes, root, weights_file)
    results_root = scratch / case.name
    say(f"{case.label}: facetransfer (cold image cache, cold feature cache) …")
    ft, prepared = run_facetransfer(cfg, results_root, results_root / "run")
    keras.backend.clear_session()
    n_train, n_val = len(prepared.rows("train")), len(prepared.rows("val"))
    images = (n_train + n_val) * sizes.epochs  # train + validation images the fit goes through
    ft["images_per_s"] = images / ft["seconds"]
    base = whole_model_pipeline(case, "seed-style baseline", "ImageDataGenerator.flow_from_dataframe, whole model",
                                pipelines.baseline_unavailable(), pipelines.run_baseline, cfg, prepared, images, say)
    out = {
        "label": case.label,
        "backbone": case.backbone,
        "strategy": case.strategy,
        "weights": "local random-init file" if case.weights == "local" else case.weights,
        "n_train": n_train,
        "n_val": n_val,
        "epochs": sizes.epochs,
        "baseline": base,
        "facetransfer": ft,
        **ratios(base, ft, case, sizes),
        "target": case.target,
        "target_epochs": TARGET_EPOCHS,
        "target_applies": sizes.epochs == TARGET_EPOCHS,
    }
    if ft["used_feature_cache"]:
        out["bfloat16"] = bfloat16_variant(case, sizes, root, weights_file, scratch, base, images, say)
        out.update(guide_and_limit(case, cfg, prepared, ft, images, say))
    if case.strategy == "full":
        say(f"{case.label}: input pipeline vs model only (in-memory numpy array), alternating epochs …")
        seconds = run_pipeline_vs_model_only(cfg, prepared)
        keras.backend.clear_session()
        out.update(pipeline_figures(seconds, n_train))
    if case.strategy == "frozen":
        out["rerun"] = rerun(case, sizes, root, weights_file, results_root, say)
        if out["ratio"] is not None:
            # a second run of the study: the baseline has no cache, so it repeats its work
            out["two_runs_ratio"] = 2 * base["seconds"] / (ft["seconds"] + out["rerun"]["seconds"])
    out["decode"] = decode_figures(prepared, sizes)
    return out


def whole_model_pipeline(case: Case, name: str, how: str, missing: str | None, run, cfg: dict, prepared, images: int, say) -> dict:
    """One compared pipeline (``run(cfg, records)``) with its images per second, or
    ``{"unavailable": missing}`` when it cannot run here."""
    import keras

    if missing is not None:
        say(f"{case.label}: NO {name}: {missing}")
        return {"unavailable": missing}
    say(f"{case.label}: {name} ({how}) …")
    result = run(cfg, prepared.records)
    result["images_per_s"] = images / result["seconds"]
    keras.backend.clear_session()
    return result


def bfloat16_variant(case: Case, sizes: Sizes, root: Path, weights_file: Path, scratch: Path, base: dict, images: int, say) -> dict:
    """facetransfer again, cold caches, with ``train.feature_precision: bfloat16``; its ratios."""
    import keras

    from facetransfer import runtime

    cfg = case_params(case, sizes, root, weights_file, **{"train.feature_precision": "bfloat16"})
    say(f"{case.label}: facetransfer with bfloat16 features (cold image cache, cold feature cache) …")
    results_root = scratch / f"{case.name}-bfloat16"
    ft, _ = run_facetransfer(cfg, results_root, results_root / "run")
    keras.backend.clear_session()
    ft["images_per_s"] = images / ft["seconds"]
    return {"facetransfer": ft, "native_bfloat16": runtime.native_bfloat16(), **ratios(base, ft, case, sizes)}


def guide_and_limit(case: Case, cfg: dict, prepared, ft: dict, images: int, say) -> dict:
    """The keras-guide pipeline and the limit of a case with a frozen prefix: facetransfer's
    speed-up against the first (``vs_keras_guide``), its ``efficiency`` (limit / facetransfer
    wall seconds; ``efficiency_cpu`` in CPU seconds) against the second."""
    import keras

    guide = whole_model_pipeline(case, "keras-guide pipeline", "tf.data .cache().prefetch(), whole model",
                                 pipelines.keras_guide_unavailable(), pipelines.run_keras_guide, cfg, prepared, images, say)
    say(f"{case.label}: the limit (frozen prefix once per image + the trainable rest's epochs, in memory) …")
    limit = pipelines.run_limit(cfg, prepared)
    keras.backend.clear_session()
    return {
        "keras_guide": guide,
        "vs_keras_guide": speedup(guide, ft),
        "limit": limit,
        "efficiency": limit["seconds"] / ft["seconds"],
        "efficiency_cpu": limit["cpu_seconds"] / ft["cpu_seconds"],
    }


def speedup(other: dict, ft: dict) -> dict:
    """``{ratio, ratio_cpu}``: ``other``'s wall and CPU seconds over facetransfer's; None
    each when ``other`` did not run (``{"unavailable": why}``)."""
    if "unavailable" in other:
        return {"ratio": None, "ratio_cpu": None}
    return {"ratio": other["seconds"] / ft["seconds"], "ratio_cpu": other["cpu_seconds"] / ft["cpu_seconds"]}


def ratios(base: dict, ft: dict, case: Case, sizes: Sizes) -> dict:
    """``{ratio, ratio_cpu, target_met}`` of a facetransfer run against the baseline: None
    without a baseline; ``target_met`` None unless the run has the target's epochs."""
    out = speedup(base, ft)
    met = None if out["ratio"] is None or sizes.epochs != TARGET_EPOCHS else bool(out["ratio"] >= case.target)
    return {**out, "target_met": met}


def pipeline_figures(seconds: dict, images_per_epoch: int) -> dict:
    """Share of the model-only throughput that facetransfer's input pipeline delivers.

    The median, over epochs 2.. (epoch 1 traces), of model-only seconds / pipeline seconds
    of the same epoch number (adjacent in time); images/s from the median epoch times.
    """
    pipe, only = seconds["pipeline"], seconds["model_only"]
    pairs = list(zip(pipe[1:], only[1:], strict=True)) or list(zip(pipe, only, strict=True))
    fraction = float(statistics.median(o / p for p, o in pairs))
    pipe_s, only_s = steady_epoch_seconds(pipe), steady_epoch_seconds(only)
    return {
        "model_only": {"epoch_seconds": only, "images_per_s": images_per_epoch / only_s, "steady_epoch_seconds": only_s},
        "pipeline": {"epoch_seconds": pipe, "images_per_s": images_per_epoch / pipe_s, "steady_epoch_seconds": pipe_s},
        "pipeline_fraction": fraction,
        "pipeline_target": PIPELINE_TARGET,
        "pipeline_target_met": bool(fraction >= PIPELINE_TARGET),
    }


def rerun(case: Case, sizes: Sizes, root: Path, weights_file: Path, results_root: Path, say) -> dict:
    """The same study again with another learning rate and head width: caches hit."""
    import keras

    cfg = case_params(case, sizes, root, weights_file, **RERUN_CHANGES)
    say(f"{case.label}: re-run changing only {', '.join(f'{k}={v}' for k, v in RERUN_CHANGES.items())} …")
    ft, _ = run_facetransfer(cfg, results_root, results_root / "rerun")
    keras.backend.clear_session()
    feature_lines = [line for line in ft["fit_log"] if line.startswith("features ")]
    return {
        "changes": RERUN_CHANGES,
        "seconds": ft["seconds"],
        "cpu_seconds": ft["cpu_seconds"],
        "image_cache_hit": ft["image_cache_hit"],
        "feature_extraction": not feature_lines or not all("loaded from cache" in line for line in feature_lines),
        "fit_log": ft["fit_log"],
    }


def decode_figures(prepared, sizes: Sizes) -> dict:
    cache = prepared.cache
    n = len(cache.paths) + len(cache.skipped)
    return {
        "images": n,
        "from": f"{round(sizes.jpeg_height * 178 / 218)}x{sizes.jpeg_height} JPEG",
        "to_px": cache.size,
        "seconds": cache.build_seconds,
        "images_per_s": n / cache.build_seconds if cache.build_seconds else None,
        "target": DECODE_TARGET,
    }


# ---------------------------------------------------------------- the whole bench


def run(sizes: Sizes, *, cases=None, workdir=None, progress: bool = True, say=None) -> dict:
    """Run the bench; returns the JSON-ready result (see :func:`format_text`).

    ``workdir`` keeps the synthetic set and the VGG16 weights file between runs (default:
    a temporary folder, removed); the cold caches of a run are always removed at its end.
    """
    say = say or (lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True))
    names = check_cases(cases, sizes.cases)
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="facetransfer-bench-")) if own else Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    clock = Clock()
    try:
        info = machine()
        say(f"{info['cpus']} CPUs ({info['cpu_model']}), load average {info['load_average']}, backend {info['backend']}")
        say(f"{sizes.n} synthetic 178x{sizes.jpeg_height} JPEGs (written once per workdir; not timed) …")
        root = synthetic_set(workdir, sizes, progress=progress)
        weights_file = vgg16_weights_file(workdir)
        results = {name: run_case(CASES[name], sizes, root, weights_file, scratch, say) for name in names}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return {
        "machine": info,
        "gpu": gpu_note(),
        "sizes": asdict(sizes),
        "data": f"SYNTHETIC CelebA-layout JPEGs, {round(sizes.jpeg_height * 178 / 218)}x{sizes.jpeg_height}",
        "weights": "VGG16: a local .weights.h5 from a seeded random init (no internet, no ImageNet download; timing does not depend on weight values); others: none",
        "cases": results,
        "decode": next(iter(results.values()))["decode"],
        **clock.read(),
    }


# ---------------------------------------------------------------- output


def _verdict(met, text: str) -> str:
    if met is None:
        return f"{text}: n/a (judged over {TARGET_EPOCHS} epochs)"
    return f"{text}: {'met' if met else 'MISSED'}"


def _case_rows(c: dict) -> list[str]:
    """The table rows of one case: facetransfer as configured, then with bfloat16 features."""
    b = c["baseline"]
    variants = [(c["label"], c)] + ([(f"{c['label']} bf16", c["bfloat16"])] if "bfloat16" in c else [])
    rows = []
    for label, v in variants:
        f = v["facetransfer"]
        if v["ratio"] is None:
            rows.append(f"{label:<28}{'n/a':>10}{'':>7}{f['seconds']:>10.1f}{f['images_per_s']:>7.0f}{'n/a':>8}{'':>8}  baseline not run: {b['unavailable']}")
            continue
        target = _verdict(v["target_met"], ">= " + format(c["target"], "g") + "x")
        rows.append(
            f"{label:<28}{b['seconds']:>10.1f}{b['images_per_s']:>7.0f}{f['seconds']:>10.1f}{f['images_per_s']:>7.0f}"
            f"{v['ratio']:>7.1f}x{v['ratio_cpu']:>7.1f}x  {target}"
        )
    return rows


def _accuracy_line(c: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    parts = [f"baseline {fmt(c['baseline'].get('val_accuracy'))}", f"facetransfer {fmt(c['facetransfer']['val_accuracy'])}"]
    if "bfloat16" in c:
        parts.append(f"bf16 features {fmt(c['bfloat16']['facetransfer']['val_accuracy'])}")
    if "limit" in c:
        parts += [f"keras-guide {fmt(c['keras_guide'].get('val_accuracy'))}", f"limit {fmt(c['limit']['val_accuracy'])}"]
    return f"  {c['label']} ({c['n_val']} val images): " + ", ".join(parts)


def _times(value: dict | None, spec: str = ".1f") -> str:
    """``"11.8x (9.0x)"``: a wall ratio and, in brackets, the CPU ratio; ``"n/a"`` for None."""
    if value is None or value["ratio"] is None:
        return "n/a"
    return f"{value['ratio']:{spec}}x ({value['ratio_cpu']:{spec}}x)"


def _percent(c: dict) -> str:
    """``"75% (80%)"``: the efficiency in wall and, in brackets, CPU seconds."""
    return f"{100 * c['efficiency']:.0f}% ({100 * c['efficiency_cpu']:.0f}%)"


def format_against_limit(cases: dict) -> list[str]:
    """facetransfer against the seed-style and keras-guide pipelines and against the limit,
    one row per case with a frozen prefix (none: no lines)."""
    rows = [c for c in cases.values() if "limit" in c]
    if not rows:
        return []

    def wall(side: dict) -> str:
        return "n/a" if "unavailable" in side else f"{side['seconds']:.1f}"

    lines = [
        "",
        "facetransfer against what a Keras user writes today and against the limit (wall seconds; speed-ups and efficiency: wall (cpu)):",
        f"{'case':<28}{'seed-style':>11}{'keras-guide':>12}{'facetransfer':>13}{'limit':>8}{'vs seed-style':>16}{'vs keras-guide':>16}{'efficiency':>14}",
    ]
    for c in rows:
        lines.append(
            f"{c['label']:<28}{wall(c['baseline']):>11}{wall(c['keras_guide']):>12}{c['facetransfer']['seconds']:>13.1f}"
            f"{c['limit']['seconds']:>8.1f}{_times(c):>16}{_times(c['vs_keras_guide']):>16}{_percent(c):>14}"
        )
    lines += [
        "keras-guide = tf.data from the file list: decode_image + bilinear resize (what image_dataset_from_directory does), .cache(),"
        " per-epoch .shuffle, .batch, .prefetch(AUTOTUNE); the whole model in model.fit (the frozen layers run forward every epoch).",
        "limit = the frozen prefix forward once per train + val image (decoded images in memory, predict) + the trainable rest's epochs"
        " on its in-memory outputs: facetransfer's algorithm without its decode, cache files and feeder. efficiency = limit / facetransfer:",
    ]
    for c in rows:
        lim, f = c["limit"], c["facetransfer"]
        lines.append(
            f"  {c['label']}: limit {lim['seconds']:.1f} s = forward {lim['forward_seconds']:.1f} s ({lim['images']} images, "
            f"{lim['images'] / lim['forward_seconds']:.0f} img/s) + trainable rest {lim['head_seconds']:.1f} s; "
            f"facetransfer {f['seconds']:.1f} s = decode {f['decode_seconds']:.1f} s + features {f['feature_seconds']:.1f} s + the rest"
        )
        if "unavailable" in c["keras_guide"]:
            lines.append(f"  {c['label']}: keras-guide not run: {c['keras_guide']['unavailable']}")
    return lines


def format_text(result: dict) -> str:
    """The human-readable report of :func:`run`'s result."""
    m, s = result["machine"], result["sizes"]
    lines = [
        "facetransfer bench: seed-style pipeline vs facetransfer (and, frozen prefixes, keras-guide and the limit), side by side in one run",
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}; load average {m['load_average']} → {m['load_average_end']}; "
        f"backend {m['backend']}, keras {m['keras']}; {result['gpu']}",
        f"data: {s['n']} {result['data']} → {s['image_size']} px; batch {s['batch_size']}; {s['epochs']} epochs",
        f"weights: {result['weights']}",
        "",
        f"{'':<28}{'baseline':>17}{'facetransfer':>17}{'ratio':>15}",
        f"{'case':<28}{'wall s':>10}{'img/s':>7}{'wall s':>10}{'img/s':>7}{'wall':>8}{'cpu':>8}  target (wall)",
    ]
    lines += [row for c in result["cases"].values() for row in _case_rows(c)]
    lines += [
        "",
        "img/s = (train + val images) x epochs / wall seconds; cpu = CPU-seconds ratio (steadier on a shared machine).",
        "bf16 = the same facetransfer run with train.feature_precision: bfloat16 (one-time extraction in bfloat16, trained layers float32)"
        + ("" if all(c.get("bfloat16", {}).get("native_bfloat16", True) for c in result["cases"].values()) else "; NO native bfloat16 on this machine"),
    ]
    lines += format_against_limit(result["cases"])
    lines += [
        f"validation accuracy after {s['epochs']} epochs (same model, seed and split; SYNTHETIC faces, random-init weights;"
        " the baseline and keras-guide squash each JPEG to a square, facetransfer and the limit crop its centre):",
    ]
    lines += [_accuracy_line(c) for c in result["cases"].values()]
    lines += [
        "facetransfer's time includes loading the labels, the one-time decode and the one-time feature extraction:",
    ]
    for c in result["cases"].values():
        f = c["facetransfer"]
        features = f"features {f['feature_seconds']:.1f} s"
        if f["used_feature_cache"] and c["ratio"] is not None:
            epoch = steady_epoch_seconds(c["baseline"]["epoch_seconds"])
            features += f" (= {f['feature_seconds'] / epoch:.1f} baseline epochs of {epoch:.1f} s)"
        if "bfloat16" in c:
            features += f"; bf16 features {c['bfloat16']['facetransfer']['feature_seconds']:.1f} s"
        lines.append(
            f"  {c['label']}: decode {f['decode_seconds']:.1f} s, {features}, "
            f"{'trains on cached features' if f['used_feature_cache'] else 'trains on cached images'}; "
            f"n_train {c['n_train']}, n_val {c['n_val']}"
        )
    for c in result["cases"].values():
        if "pipeline_fraction" in c:
            target = _verdict(c["pipeline_target_met"], ">= " + format(100 * c["pipeline_target"], ".0f") + " %")
            lines.append(
                f"{c['label']} input pipeline: {c['pipeline']['images_per_s']:.0f} img/s vs model only (in-memory array) "
                f"{c['model_only']['images_per_s']:.0f} img/s (train epochs, alternating); pipeline/model-only "
                f"{100 * c['pipeline_fraction']:.0f} % (median over epochs 2.. of same-epoch ratios) — {target}"
            )
    d = result["decode"]
    rate = d["images_per_s"] or 0.0
    target = _verdict(rate >= d["target"], ">= " + format(d["target"], ".0f") + " img/s")
    lines.append(f"first-time decode + cache: {d['images']} {d['from']} → {d['to_px']} px in {d['seconds']:.2f} s = {rate:.0f} img/s — {target}")
    for c in result["cases"].values():
        if "rerun" in c:
            r = c["rerun"]
            changes = ", ".join(f"{k}={v}" for k, v in r["changes"].items())
            lines.append(f"{c['label']} re-run changing only {changes}: {r['seconds']:.1f} s; train.fit said:")
            lines.extend(f"  [fit] {line}" for line in r["fit_log"])
            if "two_runs_ratio" in c:
                lines.append(f"  both runs of the study (the baseline repeats all its work): {c['two_runs_ratio']:.1f}x")
    lines.append(f"bench wall time {result['seconds']:.0f} s")
    return "\n".join(lines)


def run_bench(quick: bool = False, as_json: bool = False, cases: list[str] | None = None, workdir: Path | None = None) -> int:
    """``facetransfer bench [--quick] [--json] [--cases ...] [--workdir DIR]``; returns the exit status."""
    sizes = QUICK if quick else FULL
    check_cases(cases, sizes.cases)
    # Progress and train.fit's lines go to stderr; stdout carries the report (or the JSON) only.
    with contextlib.redirect_stdout(sys.stderr):
        result = run(sizes, cases=cases, workdir=workdir, progress=True)
    print(json.dumps(result, default=str) if as_json else format_text(result), flush=True)
    return 0


# ---------------------------------------------------------------- a study, serially and on Dask workers


def parse_workers(text: str) -> list[int]:
    """``"1,2"`` → ``[1, 2]`` (``--workers`` of ``facetransfer bench --study``)."""
    try:
        counts = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise FacetransferError(f"--workers {text!r}: expected worker counts such as 1,2") from None
    if not counts or any(n < 1 for n in counts):
        raise FacetransferError(f"--workers {text!r}: every worker count must be >= 1")
    return counts


def _span(outcomes, stage: str) -> float | None:
    """Wall seconds from the first to the last execution of ``stage`` (skipped ones not counted)."""
    times = [(o.started, o.ended) for o in outcomes if o.stage == stage and o.status != "skipped" and o.started is not None]
    return max(end for _, end in times) - min(start for start, _ in times) if times else None


def study_workers(study: Path, worker_counts: list[int], *, overrides=(), workdir=None, say=None) -> dict:
    """The study run serially, then on a LocalCluster of each worker count, each from an empty
    results folder (cold caches: the synthetic data, image and feature caches are rebuilt)."""
    from facetransfer import runner

    say = say or (lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True))
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="facetransfer-bench-study-")) if own else Path(workdir).expanduser().absolute()
    rows = []
    info = machine()
    try:
        for workers in [None, *worker_counts]:
            label = "serial" if workers is None else f"{workers} worker(s)"
            results = workdir / ("serial" if workers is None else f"workers-{workers}")
            shutil.rmtree(results, ignore_errors=True)
            say(f"study {study} {label} → {results}")
            outcomes: list = []
            start = time.perf_counter()
            code = runner.run_study(study, overrides=overrides, results=results, report=False, workers=workers, outcomes=outcomes)
            rows.append(
                {
                    "how": label,
                    "workers": workers,
                    "exit_status": code,
                    "seconds": time.perf_counter() - start,
                    "finetune_seconds": _span(outcomes, "finetune"),
                    "runs": sum(1 for o in outcomes if o.stage == "finetune"),
                }
            )
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    serial = rows[0]
    for row in rows:
        row["speedup"] = serial["seconds"] / row["seconds"]
        both = serial["finetune_seconds"] and row["finetune_seconds"]
        row["finetune_speedup"] = serial["finetune_seconds"] / row["finetune_seconds"] if both else None
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return {"study": str(study), "overrides": list(overrides), "machine": info, "rows": rows, "target": STUDY_WORKERS_TARGET}


STUDY_WORKERS_TARGET = 1.3  # finetune stage, 2 workers on 2 cores, against serial


def format_study_workers(result: dict) -> str:
    m = result["machine"]

    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    lines = [
        f"facetransfer bench --study {result['study']}: the study serially and on Dask LocalClusters, side by side in one run",
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}; load average {m['load_average']} → {m['load_average_end']}; backend {m['backend']}",
        f"overrides: {' '.join(result['overrides']) or 'none'}; every row starts from an empty results folder (cold caches)",
        "",
        f"{'how':<14}{'exit':>5}{'study s':>10}{'speed-up':>10}{'finetune s':>12}{'speed-up':>10}",
    ]
    for row in result["rows"]:
        lines.append(
            f"{row['how']:<14}{row['exit_status']:>5}{row['seconds']:>10.1f}{row['speedup']:>9.2f}x"
            f"{fmt(row['finetune_seconds'], '.1f'):>12}{fmt(row['finetune_speedup'], '.2f'):>9}x"
        )
    lines.append(
        "finetune s = wall seconds from the first 03_finetune start to the last end (with a search stage, its use_search runs wait for it)."
    )
    two = next((row for row in result["rows"] if row["workers"] == 2), None)
    if two is not None and two["finetune_speedup"] is not None:
        lines.append(_verdict(two["finetune_speedup"] >= result["target"], f"finetune stage on 2 workers >= {result['target']}x"))
    return "\n".join(lines)


def run_study_bench(study: Path, workers: str, *, overrides=(), as_json: bool = False, workdir: Path | None = None) -> int:
    """``facetransfer bench --study STUDY --workers 1,2 [--set K=V] [--json] [--workdir DIR]``."""
    counts = parse_workers(workers)
    with contextlib.redirect_stdout(sys.stderr):  # the runs' console goes to stderr, the table to stdout
        result = study_workers(Path(study), counts, overrides=overrides, workdir=workdir)
    print(json.dumps(result, default=str) if as_json else format_study_workers(result), flush=True)
    return 0
