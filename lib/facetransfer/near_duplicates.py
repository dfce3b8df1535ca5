"""Near-duplicate images: perceptual hashes, clusters, and the clusters a split cuts.

Web-scraped face sets hold exact and near copies of one photo (re-encoded, resized;
Schlett et al., ICPRAM 2024). Where a split is image-level (the dataset has no
identities), two copies on two sides of the split let the test set see training images.
:func:`find` finds them for a list of image files:

1. the files are decoded once at :data:`HASH_PX` px by :func:`facetransfer.images.build_cache`
   (the run's own decoded cache when the run uses that size; otherwise a cache of that
   size, built once), and each image gets a 256-bit perceptual hash (``imagehash.phash``
   with ``hash_size=16``: the signs of the 16x16 lowest DCT frequencies of the 64x64 grey
   image). A fixed size, so every run of a study, whatever its input size, finds the same
   clusters and gets the same split;
2. every pair whose hashes differ in at most :data:`MAX_DISTANCE` bits is a near duplicate
   (:func:`find_pairs`), and clusters are the connected components of those pairs
   (``scipy.sparse.csgraph``);
3. hashes and pairs are stored beside that cache (``<key>.phash16-d<MAX_DISTANCE>-<imagehash version>.npz``),
   keyed by its content key (files, sizes, mtimes), so a study pays once.

:func:`crossing` lists the clusters a split puts on more than one side.
``data.split.near_duplicates: group`` hands the cluster keys to
:func:`facetransfer.splits.make_splits` as groups (the machinery subjects use), so each
cluster stays on one side.
"""

from __future__ import annotations

import time
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from facetransfer.images import build_cache
from facetransfer.io import atomic_path

HASH_BITS = 16  # imagehash's hash_size: 16 x 16 = 256 bits, computed on a 64 x 64 grey image
HASH_PX = 4 * HASH_BITS  # images are hashed at phash's own working size (hash_size x highfreq_factor 4)
# Planted copies (JPEG quality 50-60, 85-90 % resizes) moved a 256-bit phash by at most 22 bits; 3 of 12.5 M distinct-face pairs came within 24 (benchmarks/near_duplicates.py).
MAX_DISTANCE = 24
METHOD = f"perceptual hash (imagehash {imagehash.__version__} phash, {HASH_BITS * HASH_BITS} bits at {HASH_PX} px), Hamming distance <= {MAX_DISTANCE}"
BLOCK_ELEMENTS = 2**18  # hash pairs compared at once: 2 MiB temporaries stay in cache (4x faster than 128 MiB)
_WEIGHTS = 1 << np.arange(63, -1, -1, dtype=np.uint64)


def phash(image: np.ndarray) -> np.ndarray:
    """The 256-bit perceptual hash of one uint8 RGB image as four uint64 words."""
    bits = imagehash.phash(Image.fromarray(image), hash_size=HASH_BITS).hash.reshape(4, 64)
    return np.array([np.bitwise_or.reduce(_WEIGHTS[row]) for row in bits], dtype=np.uint64)


def find_pairs(hashes: np.ndarray, max_distance: int = MAX_DISTANCE) -> np.ndarray:
    """``(k, 3)`` int64 rows ``i, j, distance`` with ``i < j`` for hashes at most ``max_distance`` bits apart.

    Every pair is compared (N²/2 popcounts in blocks, numpy): a 256-bit Hamming ball of radius
    24 is too wide for an exact index to prune much. Distances add up word by word in uint8
    (fast); only a full inversion (256) wraps to 0, so the candidates are re-counted exactly.
    """
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(hashes), -1)
    n = len(hashes)
    words = np.ascontiguousarray(hashes.T)
    found = [np.empty((0, 2), np.int64)]
    rows_per_block = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, rows_per_block):
        block = hashes[start : start + rows_per_block]
        distance = np.bitwise_count(block[:, 0, None] ^ words[0, None, start + 1 :])
        for w in range(1, words.shape[0]):
            distance += np.bitwise_count(block[:, w, None] ^ words[w, None, start + 1 :])
        rows, cols = np.nonzero(distance <= max_distance)
        i, j = start + rows, start + 1 + cols
        found.append(np.stack([i[j > i], j[j > i]], axis=1))
    pairs = np.concatenate(found)
    exact = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]).sum(axis=1, dtype=np.int64)
    keep = exact <= max_distance
    return np.column_stack([pairs[keep], exact[keep]]).astype(np.int64)


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """A cluster number per image (0..n-1): connected components of ``pairs``; a lone image is its own."""
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _hashed(paths: list[str], *, crop: str, cache_dir: Path, progress: bool) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """(paths, hashes, pairs over them, facts) for the files, stored beside their HASH_PX cache."""
    start = time.perf_counter()
    cache = build_cache(paths, size=HASH_PX, crop=crop, cache_dir=cache_dir, progress=progress)
    stored = cache.file.with_name(f"{cache.key}.phash{HASH_BITS}-d{MAX_DISTANCE}-{imagehash.__version__}.npz")
    facts = {"hash_cache_hit": stored.is_file(), "decode_cache_hit": cache.hit}
    if stored.is_file():
        with np.load(stored) as saved:
            return cache.paths, saved["hashes"], saved["pairs"], facts | {"seconds": round(time.perf_counter() - start, 3)}
    decoded = time.perf_counter()
    hashes = np.stack([phash(image) for image in cache.images]) if len(cache.paths) else np.empty((0, 4), np.uint64)
    hashed = time.perf_counter()
    pairs = find_pairs(hashes)
    with atomic_path(stored, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, hashes=hashes, pairs=pairs)
    timing = {"decode_seconds": round(decoded - start, 3), "hash_seconds": round(hashed - decoded, 3), "pair_seconds": round(time.perf_counter() - hashed, 3)}
    return cache.paths, hashes, pairs, facts | timing | {"seconds": round(time.perf_counter() - start, 3)}


def find(paths: pd.Series, *, crop: str, cache_dir, progress: bool = True) -> tuple[pd.Series, dict]:
    """A near-duplicate cluster key per path (index = ``paths.index``) and what was found.

    A key is the first path (sorted) of its cluster, for clusters of two or more images;
    images without a near duplicate get NA (each is a group of its own in a split).
    """
    hashed_paths, _, pairs, facts = _hashed([str(p) for p in paths], crop=crop, cache_dir=Path(cache_dir), progress=progress)
    frame = pd.DataFrame({"path": hashed_paths, "label": clusters(len(hashed_paths), pairs)})
    size = frame.groupby("label")["path"].transform("size")
    first = frame.groupby("label")["path"].transform("min")
    by_path = pd.Series(first.where(size > 1).to_numpy(), index=frame["path"])
    keys = paths.astype(str).map(by_path).astype("string").rename("near_duplicate")
    info = {"method": METHOD, "n_pairs": len(pairs), "n_clusters": int(keys.dropna().nunique()), "n_images": int(keys.notna().sum())} | facts
    return keys, info


def crossing(paths: pd.Series, split: pd.Series, keys: pd.Series) -> pd.DataFrame:
    """One row per cluster with images on more than one side: cluster, n_images, splits, paths (with their side)."""
    frame = pd.DataFrame({"cluster": keys, "split": split, "path": paths.astype(str)}).dropna(subset=["cluster"])
    order = {"train": 0, "val": 1, "test": 2}
    rows = []
    for key, members in frame.groupby("cluster", sort=True):
        sides = sorted(set(members["split"]), key=order.get)
        if len(sides) > 1:
            listed = "; ".join(f"{p} ({s})" for p, s in zip(members["path"], members["split"], strict=True))
            rows.append({"cluster": key, "n_images": len(members), "splits": ", ".join(sides), "paths": listed})
    return pd.DataFrame(rows, columns=["cluster", "n_images", "splits", "paths"])
