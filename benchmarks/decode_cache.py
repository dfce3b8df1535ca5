"""Decode + cache throughput of facetransfer.images.build_cache (a benchmark, not a test).

Writes N CelebA-like 178x218 JPEGs (smooth background, a face-like ellipse, mild noise,
quality 90, about 8 KB each) to a temporary folder, then times ``build_cache`` cold to
64 px and to 224 px, and the cache hit. ``--rss N`` also caches N images at 64 px and
reports the peak resident memory of this process and of the decoder workers.

    .venv/bin/python benchmarks/decode_cache.py --n 2000 --workers 2 --rss 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facetransfer.images import build_cache


def _write_face(args: tuple[Path, int]) -> str:
    path, seed = args
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:218, 0:178]
    base = np.stack([(xx * rng.uniform(0.5, 1.4) + yy * 0.3) % 255, (yy * rng.uniform(0.5, 1.2)) % 255, np.full_like(xx, rng.integers(60, 200))], -1)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse([40, 50, 138, 170], fill=tuple(int(v) for v in rng.integers(100, 240, 3)))
    draw.ellipse([65, 90, 80, 100], fill=(30, 30, 30))
    draw.ellipse([98, 90, 113, 100], fill=(30, 30, 30))
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (218, 178, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7)).save(path, quality=90)
    return str(path)


def make_faces(folder: Path, n: int, workers: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"{i:06d}.jpg", i) for i in range(n)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_write_face, jobs, chunksize=64))


def _peak_mib(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def time_cache(paths: list[str], size: int, cache_dir: Path, workers: int) -> dict:
    cold = build_cache(paths, size=size, cache_dir=cache_dir, workers=workers, progress=False)
    hit = build_cache(paths, size=size, cache_dir=cache_dir, workers=workers, progress=False)
    assert not cold.hit and hit.hit
    return {
        "size": size,
        "n": len(cold.paths),
        "cold_seconds": round(cold.seconds, 3),
        "cold_images_per_s": round(len(paths) / cold.seconds, 1),
        "hit_seconds": round(hit.seconds, 4),
        "cache_mib": round(cold.file.stat().st_size / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images for the throughput runs")
    parser.add_argument("--workers", type=int, default=2, help="decoder processes")
    parser.add_argument("--rss", type=int, default=0, help="also cache this many images at 64 px and report peak RSS")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ft-decode-bench-", dir=args.workdir))
    try:
        t = time.perf_counter()
        paths = make_faces(work / "faces", max(args.n, args.rss), args.workers)
        print(f"wrote {len(paths)} 178x218 JPEGs in {time.perf_counter() - t:.1f} s", flush=True)
        results = [time_cache(paths[: args.n], size, work / f"cache{size}", args.workers) for size in (64, 224)]
        for r in results:
            print(f"→ {r['size']:>3} px: cold {r['cold_images_per_s']:>7.0f} images/s ({r['n']} in {r['cold_seconds']} s), hit {r['hit_seconds'] * 1000:.1f} ms, cache {r['cache_mib']} MiB", flush=True)
        out = {"n": args.n, "workers": args.workers, "results": results}
        if args.rss:
            before, before_children = _peak_mib(resource.RUSAGE_SELF), _peak_mib(resource.RUSAGE_CHILDREN)
            r = time_cache(paths[: args.rss], 64, work / "cache-rss", args.workers)
            out["rss"] = {
                **r,
                "peak_rss_self_mib_before": round(before, 1),
                "peak_rss_self_mib": round(_peak_mib(resource.RUSAGE_SELF), 1),
                "peak_rss_largest_child_mib": round(_peak_mib(resource.RUSAGE_CHILDREN), 1),
                "peak_rss_largest_child_mib_before": round(before_children, 1),  # the JPEG writers
            }
            print(f"{args.rss} images → 64 px: {r['cold_images_per_s']:.0f} images/s, cache {r['cache_mib']} MiB, peak RSS parent {out['rss']['peak_rss_self_mib']} MiB (before: {before:.0f}), largest child {out['rss']['peak_rss_largest_child_mib']} MiB (before: {before_children:.0f}, the JPEG writers)")
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
