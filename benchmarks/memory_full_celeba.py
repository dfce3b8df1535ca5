"""Resident memory and throughput of caching the full CelebA size (202,599 images) at 64 px.

Writes ``--unique`` (default 2,000) SYNTHETIC 178x218 JPEGs once with facetransfer.synthetic,
hard-links them to ``--n`` (default 202,599) distinct CelebA file names (000001.jpg …), so
the cache sees the real file count, then builds the decoded-image cache with
``facetransfer.images.build_cache`` (default workers: 2 decoder processes) in a CHILD
process. While it runs, the resident memory of the child and its decoder workers is sampled
with psutil; at the end the child reports its own and its workers' peak RSS
(``getrusage``). Target: the whole tree stays below 2 GB.

Every file is opened, read and decoded as it would be for CelebA; the hard links share
2,000 inodes, so the reads come from the page cache (as CelebA's 1.4 GB do on a second
pass on a machine with enough memory). Decoding dominates the time either way.

    .venv/bin/python benchmarks/memory_full_celeba.py [--n 202599] [--unique 2000] [--size 64]
                                                      [--workers N] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

CELEBA_IMAGES = 202_599
LIMIT_MIB = round(2e9 / 2**20)  # "< 2 GB" = 1907 MiB


def make_files(work: Path, *, n: int, unique: int) -> Path:
    """``n`` CelebA-named hard links to ``unique`` synthetic 178x218 JPEGs; returns their folder."""
    from facetransfer import synthetic

    source = work / f"synthetic-{unique}"
    if not (source / synthetic.SYNTHETIC_MARKER).is_file():
        synthetic.generate("celeba", source, n=unique, seed=0, size=218, overwrite=source.exists())
    originals = sorted((source / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))
    folder = work / f"links-{n}"
    if folder.is_dir() and len(os.listdir(folder)) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(n):
        os.link(originals[i % len(originals)], folder / f"{i + 1:06d}.jpg")
    return folder


def _peak_mib(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def build_in_child(folder: str, size: int, cache_dir: str, workers, out: str) -> None:
    """Child process: list the files, build the cache, write timings and peak RSS to ``out``."""
    from facetransfer.images import build_cache

    start = time.perf_counter()
    paths = sorted(str(p) for p in Path(folder).iterdir())
    listed = time.perf_counter() - start
    cache = build_cache(paths, size=size, cache_dir=cache_dir, workers=workers, progress=True)
    result = {
        "n": len(paths),
        "decoded": len(cache.paths),
        "skipped": len(cache.skipped),
        "list_seconds": round(listed, 2),
        "build_seconds": round(cache.build_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "cache_mib": round(cache.file.stat().st_size / 2**20, 1),
        "peak_rss_child_mib": round(_peak_mib(resource.RUSAGE_SELF), 1),
        "peak_rss_largest_worker_mib": round(_peak_mib(resource.RUSAGE_CHILDREN), 1),
    }
    Path(out).write_text(json.dumps(result))


def tree_rss_mib(proc: psutil.Process) -> tuple[float, int]:
    """Summed RSS of ``proc`` and its descendants (MiB), and how many processes that is."""
    procs = [proc]
    try:
        procs += proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20, len(procs)


def measure(folder: Path, *, size: int, cache_dir: Path, workers) -> dict:
    """Build the cache in a spawned child, sampling the process tree's RSS every 0.2 s."""
    out = cache_dir / "result.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    child = multiprocessing.get_context("spawn").Process(target=build_in_child, args=(str(folder), size, str(cache_dir), workers, str(out)))
    start = time.perf_counter()
    child.start()
    watched = psutil.Process(child.pid)
    peak, peak_procs = 0.0, 0
    while child.is_alive():
        rss, count = tree_rss_mib(watched)
        if rss > peak:
            peak, peak_procs = rss, count
        time.sleep(0.2)
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"memory_full_celeba: the cache-building child failed with exit code {child.exitcode}")
    result = json.loads(out.read_text())
    result.update({
        "wall_seconds": round(time.perf_counter() - start, 2),
        "images_per_s": round(result["n"] / result["build_seconds"], 1),
        "peak_tree_rss_mib": round(peak, 1),
        "processes_at_peak": peak_procs,
        "limit_mib": LIMIT_MIB,
    })
    result["under_limit"] = result["peak_tree_rss_mib"] < LIMIT_MIB
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=CELEBA_IMAGES, help="file names to cache (default: CelebA's 202,599)")
    parser.add_argument("--unique", type=int, default=2000, help="distinct synthetic JPEGs behind the links")
    parser.add_argument("--size", type=int, default=64, help="cache side in px")
    parser.add_argument("--workers", type=int, default=None, help="decoder processes (default: build_cache's, 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the JPEGs and links here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    own = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="ft-memory-")) if own else args.workdir.expanduser().absolute()
    try:
        t = time.perf_counter()
        folder = make_files(work, n=args.n, unique=args.unique)
        print(f"{args.n} file names → {args.unique} synthetic 178x218 JPEGs, ready in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        cache_dir = work / f"cache-{args.size}px-{os.getpid()}"
        try:
            r = measure(folder, size=args.size, cache_dir=cache_dir, workers=args.workers)
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        r.update({"unique_jpegs": args.unique, "size": args.size, "cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]})
        if args.json:
            print(json.dumps(r))
            return
        print(
            f"cached {r['decoded']} of {r['n']} images (218x178 JPEG → {args.size} px) in {r['build_seconds']} s = {r['images_per_s']:.0f} images/s "
            f"(listing {r['list_seconds']} s); cache file {r['cache_mib']:.0f} MiB\n"
            f"peak RSS: process tree {r['peak_tree_rss_mib']:.0f} MiB ({r['processes_at_peak']} processes, sampled every 0.2 s), "
            f"builder {r['peak_rss_child_mib']:.0f} MiB, largest decoder worker {r['peak_rss_largest_worker_mib']:.0f} MiB "
            f"— {'under' if r['under_limit'] else 'OVER'} {LIMIT_MIB} MiB; load average {r['load_average']}"
        )
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
