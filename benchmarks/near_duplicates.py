"""Near-duplicate search on synthetic CelebA-size faces (a benchmark, not a test).

Writes N SYNTHETIC CelebA-layout faces (178x218 JPEGs, ``facetransfer synth``) plus
``--planted`` altered copies (re-encoded at JPEG quality 60, resized to 90 %, or both at
85 % and quality 50), then times :func:`facetransfer.near_duplicates.find` cold (decode at
64 px, hash, compare every pair) and warm (hashes and pairs read back), and prints images/s,
seconds per 10,000 images, how many planted copies were found, and the Hamming distances
of the copies and of distinct faces that the threshold sits between.

    PYTHONPATH=lib .venv/bin/python benchmarks/near_duplicates.py --n 2000 --planted 100
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from facetransfer import near_duplicates, synthetic


def plant(files: list[Path], n: int) -> dict[str, str]:
    """``n`` altered copies beside the first ``n`` files: {copy: original}."""
    pairs = {}
    for k, original in enumerate(files[:n]):
        image = Image.open(original).convert("RGB")
        if k % 3 == 1:
            image = image.resize((round(image.width * 0.9), round(image.height * 0.9)), Image.Resampling.BILINEAR)
        else:
            buffer = io.BytesIO()
            (image if k % 3 == 0 else image.resize((round(image.width * 0.85), round(image.height * 0.85)))).save(buffer, "JPEG", quality=60 if k % 3 == 0 else 50)
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        copy = original.with_name(f"copy{k:06d}.jpg")
        image.save(copy, quality=95)
        pairs[str(copy)] = str(original)
    return pairs


def distances(paths: list[str], pairs: dict[str, str], cache_dir: Path) -> dict:
    """Hamming distances of the planted copies to their originals and between all other images."""
    from facetransfer.images import build_cache

    cache = build_cache(paths, size=near_duplicates.HASH_PX, cache_dir=cache_dir, progress=False)
    hashes = {p: near_duplicates.phash(image) for p, image in zip(cache.paths, cache.images, strict=True)}
    copies = [int(np.bitwise_count(hashes[c] ^ hashes[o]).sum()) for c, o in pairs.items()]
    distinct = near_duplicates.find_pairs(np.stack([hashes[p] for p in cache.paths if p not in pairs]), max_distance=256)[:, 2]
    return {"copies_max": max(copies), "copies_median": float(np.median(copies)), "distinct_min": int(distinct.min()),
            "distinct_0.01%": float(np.percentile(distinct, 0.01)), "distinct_pairs": len(distinct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic faces")
    parser.add_argument("--planted", type=int, default=100, help="altered copies of the first faces")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="generate the set here (reused when present) instead of a temporary folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ft-neardup-"))
    try:
        root = args.keep or work / "celeba"
        if not (root / synthetic.SYNTHETIC_MARKER).is_file():
            synthetic.generate("celeba", root, n=args.n, seed=0, size=218, workers=args.workers, progress=False)
        files = sorted(root.rglob("[0-9]*.jpg"))
        for old in root.rglob("copy*.jpg"):
            old.unlink()
        pairs = plant(files, args.planted)
        paths = pd.Series([str(p) for p in files] + list(pairs))
        cache_dir = work / "cache"
        start = time.perf_counter()
        keys, cold = near_duplicates.find(paths, crop="center", cache_dir=cache_dir, progress=False)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        _, warm = near_duplicates.find(paths, crop="center", cache_dir=cache_dir, progress=False)
        warm_s = time.perf_counter() - start
        by_path = dict(zip(paths, keys, strict=True))
        found = sum(pd.notna(by_path[c]) and by_path[c] == by_path[o] for c, o in pairs.items())
        n = len(paths)
        result = {
            "images": n,
            "planted": len(pairs),
            "planted_found": found,
            "clusters": cold["n_clusters"],
            "images_in_clusters": cold["n_images"],
            "cold_seconds": round(cold_s, 2),
            "cold_images_per_s": round(n / cold_s, 1),
            "cold_seconds_per_10000": round(cold_s / n * 10_000, 1),
            "decode_64px_seconds": cold["decode_seconds"],
            "hash_seconds": cold["hash_seconds"],
            "hash_images_per_s": round(n / cold["hash_seconds"], 1),
            "pair_seconds": cold["pair_seconds"],
            "pair_seconds_at_10000": round(cold["pair_seconds"] * (10_000 / n) ** 2, 2),
            "warm_seconds": round(warm_s, 3),
            "warm_hash_cache_hit": warm["hash_cache_hit"],
            "distances": distances(list(paths), pairs, cache_dir),
            "method": cold["method"],
        }
        print(json.dumps(result, indent=2))
        print(f"{n / cold_s:.0f} images/s cold ({cold_s / n * 10_000:.1f} s per 10,000 images: decode at 64 px, hash, all pairs); "
              f"hash alone {n / cold['hash_seconds']:.0f} images/s; {found} of {len(pairs)} planted copies found")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
