"""Frozen-prefix feature cache.

When a strategy freezes the bottom of the model, the frozen part (the *prefix* from
:func:`facetransfer.models.split_frozen_prefix`) computes the same output for an image in
every epoch. :func:`prefix_features` runs it once per image and stores the result; training
then fits only the *remainder* on these features, which trains the same layers with the same
numbers (tests/test_features.py checks it) in a fraction of the time.

Files: ``<cache_dir>/<key>.npy`` (float32, row i = prefix output of ``images[rows[i]]``) and
``<key>.json``, the sidecar, written LAST: a ``.npy`` without its sidecar is an interrupted
computation and is rebuilt (so is a damaged ``.npy`` or sidecar). ``cache_dir`` is normally
``results_root/_cache/features`` (:func:`default_cache_dir`).

The key is the SHA-1 (first 20 hex digits) of the JSON of ``key_parts``; :func:`key_parts`
builds it from the params and the prefix: the image-cache key (which images, decoded how),
the backbone name and ``model.weights`` value, a digest of the prefix's weight values
(whatever their source), a digest of its layer configs, the cut layer, the image size,
a digest of ``rows``, the dtype policy, the feature precision and the Keras version and
backend.

Precision (``train.feature_precision``): ``float32`` (default) runs the prefix as built;
``bfloat16`` runs a copy of it under the ``mixed_bfloat16`` policy (float32 weights, bfloat16
arithmetic; the preprocessing and LRN layers stay float32) and stores float32 features. On a
CPU with native bfloat16 (AVX512-BF16 or AMX) or a GPU that halves the one-time extraction
(``facetransfer bench`` measures it); the features differ from float32 ones by about 1 %
relative (tests/test_features.py bounds it). Only the frozen prefix is affected: the trained
layers, their optimiser and the evaluation of the remainder stay float32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import weakref
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm  # text bars: readable in papermill output and the HTML report

from facetransfer import params as P
from facetransfer import runtime
from facetransfer.errors import ParamError
from facetransfer.io import DamagedFileError, atomic_path, atomic_write_json, read_json

FORMAT = 1
PRECISIONS = P.FEATURE_PRECISIONS
log = logging.getLogger(__name__)


def default_cache_dir(results_root) -> Path:
    return Path(results_root) / "_cache" / "features"


def weights_digest(model: keras.Model) -> str:
    """SHA-1 of every weight of ``model`` (names, shapes, dtypes and values)."""
    h = hashlib.sha1()
    for layer in model.layers:
        for w, value in zip(layer.weights, layer.get_weights(), strict=True):
            value = np.ascontiguousarray(value)
            h.update(f"{layer.name}/{w.name}:{value.dtype}:{value.shape};".encode())
            h.update(value.tobytes())
    return h.hexdigest()


def architecture_digest(model: keras.Model) -> str:
    """SHA-1 of the configs of ``model``'s layers (the input layer's name aside)."""
    configs = [
        [type(layer).__name__, layer.get_config()]
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    return hashlib.sha1(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()


def key_parts(cfg: dict, prefix: keras.Model, *, image_key: str, rows) -> dict:
    """What identifies the prefix features of ``rows`` for resolved params ``cfg``."""
    rows = np.asarray(rows, dtype=np.int64)
    return {
        "format": FORMAT,
        "image_cache": image_key,
        "backbone": cfg["model"]["backbone"],
        "weights": cfg["model"]["weights"],
        "weights_sha1": weights_digest(prefix),
        "architecture_sha1": architecture_digest(prefix),
        "cut": prefix.layers[-1].name,
        "image_size": P.image_size(cfg),
        "rows_sha1": hashlib.sha1(rows.tobytes()).hexdigest(),
        "n_rows": int(len(rows)),
        "dtype_policy": keras.config.dtype_policy().name,
        "precision": cfg["train"]["feature_precision"],
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }


def feature_key(parts: dict) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def cache_files(cache_dir, parts: dict) -> tuple[Path, Path]:
    """``(<key>.npy, <key>.json)`` in ``cache_dir``."""
    key = feature_key(parts)
    return Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}.json"


def is_cached(cache_dir, parts: dict) -> bool:
    """True when complete features for ``parts`` are on disk (sidecar present and matching)."""
    npy, sidecar = cache_files(cache_dir, parts)
    if not (npy.is_file() and sidecar.is_file()):
        return False
    try:
        meta = read_json(sidecar)
        shape = np.load(npy, mmap_mode="r").shape
    except (DamagedFileError, ValueError, EOFError):  # truncated or overwritten: recompute
        log.warning("feature cache %s is damaged; recomputing", npy)
        return False
    if meta.get("key") != feature_key(parts):
        return False
    return tuple(shape) == tuple(meta["shape"])


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # prefix -> (weights sha1, bfloat16 copy)


def at_precision(prefix: keras.Model, precision: str, *, digest: str | None = None) -> keras.Model:
    """``prefix`` itself (``float32``) or a ``mixed_bfloat16`` copy with the same weights.

    The copy is kept for as long as ``prefix`` lives and its weights do not change, so the
    splits of one run share one copy (and one traced predict function). ``digest``: the
    :func:`weights_digest` of ``prefix`` when the caller has it.
    """
    if precision not in PRECISIONS:
        raise ParamError("train.feature_precision", f"{precision!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    if precision == "float32":
        return prefix
    digest = digest or weights_digest(prefix)
    kept = _COPIES.get(prefix)
    if kept is None or kept[0] != digest:
        kept = _COPIES[prefix] = (digest, _bfloat16_copy(prefix))
    return kept[1]


def _bfloat16_copy(prefix: keras.Model) -> keras.Model:
    from facetransfer.models.layers import LocalResponseNormalization, Preprocess

    def recast(layer):
        if isinstance(layer, (keras.layers.InputLayer, Preprocess, LocalResponseNormalization)):
            return layer.__class__.from_config(layer.get_config())
        return layer.__class__.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})

    copy = keras.models.clone_model(prefix, clone_function=recast)
    copy.set_weights(prefix.get_weights())
    return copy


def prefix_features(prefix: keras.Model, images, rows, *, cache_dir, key_parts: dict, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Prefix outputs of ``images[rows]`` (float32, read-only memmap), computed once.

    ``images``: (N, S, S, 3) uint8 (the image cache); ``rows``: indices into it, in the
    order the features are wanted. A cached result for the same ``key_parts`` is returned
    as is; otherwise the prefix runs in inference mode in batches of ``batch_size``, at
    ``key_parts["precision"]`` (:func:`at_precision`).
    """
    rows = np.asarray(rows, dtype=np.int64)
    npy, sidecar = cache_files(cache_dir, key_parts)
    if is_cached(cache_dir, key_parts):
        return np.load(npy, mmap_mode="r")
    shape = (len(rows), *prefix.output.shape[1:])
    if len(rows) == 0:
        return np.empty(shape, dtype=np.float32)
    start = time.perf_counter()
    precision = key_parts.get("precision", "float32")
    if precision != "float32" and not runtime.native_bfloat16():
        log.warning("train.feature_precision: %s: this machine has no native bfloat16 (no GPU, no AVX512-BF16 or AMX); the extraction may be slower than float32", precision)
    prefix = at_precision(prefix, precision, digest=key_parts.get("weights_sha1"))
    with atomic_path(npy, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        batches = range(0, len(rows), batch_size)
        for i in tqdm(batches, desc=f"prefix features ({prefix.layers[-1].name}, {precision})", unit="batch", disable=not progress):
            batch = np.asarray(images[rows[i : i + batch_size]], dtype=np.float32)
            out[i : i + len(batch)] = np.asarray(keras.ops.convert_to_numpy(prefix.predict_on_batch(batch)), dtype=np.float32)
        out.flush()
        del out
    atomic_write_json(sidecar, {
        "key": feature_key(key_parts),
        "key_parts": key_parts,
        "shape": list(shape),
        "dtype": "float32",
        "precision": precision,
        "seconds": round(time.perf_counter() - start, 3),
    })
    return np.load(npy, mmap_mode="r")
