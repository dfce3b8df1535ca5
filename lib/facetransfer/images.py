"""Decode every image once into a uint8 cache on disk.

:func:`build_cache` turns a list of image files into one array of shape
``(N, size, size, 3)``, stored raw in ``<cache_dir>/<key>.u8`` and opened as a read-only
``np.memmap``. Training then reads rows of that array instead of JPEG files.

Decoding rule (one image, :func:`decode_image`):

1. Open with Pillow. A JPEG is decoded at a reduced DCT scale (``Image.draft``, 1/2, 1/4
   or 1/8) when the target is at least twice smaller than the face crop, never below
   the target size (a large speed-up, same look).
2. Apply the EXIF orientation tag, so the face is upright as an image viewer shows it.
3. Convert to RGB uint8: grayscale and 1-bit are replicated into three channels;
   16-bit samples (``I;16*``, ``I``) are scaled 0..65535 → 0..255; CMYK, YCbCr and
   other modes through Pillow's ``convert("RGB")``; images with an alpha channel
   (RGBA, LA, PA, palette or RGB/L with a transparency key) are **composited on black**
   (colour × alpha), the same black that ``pad`` uses. Floating-point images (mode ``F``)
   are not converted: they are quarantined. Multi-frame files use their first frame.
4. Crop rule ``center``: the central square whose side is the shorter side (CelebA
   178x218 → rows 20..197, all 178 columns); ``pad``: letterbox the whole image onto a
   black square whose side is the longer side. Then resize to ``size`` x ``size`` with
   Lanczos (``reducing_gap=3.0``): sharper than bilinear when shrinking, and still
   above 800 images/s per core at 224 px (see benchmarks/decode_cache.py).

A file that cannot be decoded (zero bytes, truncated, not an image, unreadable, an
unsupported pixel mode) is not an error: it becomes ``{"path", "reason"}`` in
``ImageCache.skipped`` and has no row. A reason is a category, ``": "`` and details
(``"truncated image: image file is truncated (174 bytes not processed)"``), as in the
loaders' quarantine. Truncated files are never padded with grey
(``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off).

The cache key is a hash of the sorted file list with each file's size and mtime, the
target size, the crop rule, the decoder settings and the cache format version. The
``<key>.json`` sidecar (row order, skipped files, shape, timing) is written last and
atomically: it marks the cache complete. A data file without its sidecar, or whose
size disagrees with it, is an interrupted build and is rebuilt (so is a damaged sidecar).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError
from tqdm import tqdm  # text bars: readable in papermill output and the HTML report

from facetransfer.errors import DataError
from facetransfer.io import DamagedFileError, atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CROPS = ("center", "pad")
RESAMPLE = Image.Resampling.LANCZOS
REDUCING_GAP = 3.0
DEFAULT_WORKERS = 2
PARALLEL_MIN_IMAGES = 512  # with workers=None, fewer images are decoded in this process
CHUNK_BYTES = 16 * 2**20  # at most this much decoded data per worker chunk
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
EXIF_ORIENTATION = 0x0112
CHECK_SIZE = 8  # check_images decodes to this side: the smallest JPEG draft, the same decoder
# What Pillow raises on files it cannot decode (UnidentifiedImageError and "image file is
# truncated" are OSErrors; broken PNG chunks raise SyntaxError; bad headers struct.error).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class Unusable(Exception):
    """An image file that cannot be decoded; ``reason`` goes to the quarantine."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class ImageCache:
    """Decoded images: row ``i`` of ``images`` is ``paths[i]``."""

    key: str
    images: np.ndarray  # read-only memmap, uint8 (N, size, size, 3)
    paths: list[str]
    skipped: list[dict]  # [{"path", "reason"}]
    hit: bool
    seconds: float  # wall time of this call
    size: int
    crop: str
    build_seconds: float = 0.0  # wall time of the build that wrote the cache
    file: Path | None = None
    _index: dict[str, int] | None = field(default=None, repr=False)

    def rows(self, paths: Iterable) -> np.ndarray:
        """Row numbers of ``paths`` in :attr:`images` (DataError for a path not cached)."""
        if self._index is None:
            self._index = {p: i for i, p in enumerate(self.paths)}
        out = []
        for p in paths:
            row = self._index.get(os.fspath(p))
            if row is None:
                raise DataError(f"{os.fspath(p)} has no row in image cache {self.key} (it was skipped or never cached)")
            out.append(row)
        return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------------------- decoding


def _draft_request(width: int, height: int, size: int, crop: str) -> tuple[int, int]:
    """Smallest decoded size whose crop square is still at least ``size`` px."""
    side = min(width, height) if crop == "center" else max(width, height)
    return math.ceil(width * size / side), math.ceil(height * size / side)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB uint8 (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "F":
        raise Unusable("unsupported pixel mode: F (floating point)")
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise Unusable(f"unsupported pixel mode: {mode} with values outside 0..65535")
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    try:
        if mode in ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(black, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as exc:
        raise Unusable(f"unsupported pixel mode: {mode} ({exc})") from None


def _crop_resize(rgb: Image.Image, size: int, crop: str) -> Image.Image:
    w, h = rgb.size
    if crop == "center":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        square = rgb.crop((left, top, left + side, top + side))  # not resize(box=): that samples outside the box
        return square.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    side = max(w, h)
    square = Image.new("RGB", (side, side))
    square.paste(rgb, ((side - w) // 2, (side - h) // 2))
    return square.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)


def _reason(exc: BaseException) -> str:
    """Quarantine reason: a fixed category, then ": " and the details."""
    msg = " ".join(str(exc).split())
    if isinstance(exc, FileNotFoundError):
        return "missing file: no such file"
    if isinstance(exc, PermissionError):
        return "unreadable file: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "unreadable file: a directory"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image: Pillow cannot identify it"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large: {msg}"
    if "truncated" in msg:
        return f"truncated image: {msg}"
    return f"corrupt image: {type(exc).__name__}: {msg}"


def decode_image(path, *, size: int, crop: str = "center") -> np.ndarray:
    """One image file → uint8 array (size, size, 3); raises :class:`Unusable`."""
    try:
        if os.stat(path).st_size == 0:
            raise Unusable("empty file: 0 bytes")
        with Image.open(path) as img:
            if isinstance(img, JpegImagePlugin.JpegImageFile):  # also MPO
                img.draft("RGB", _draft_request(*img.size, size, crop))
            img.load()
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            out = _crop_resize(_to_rgb(img), size, crop)
    except DECODE_ERRORS as exc:
        raise Unusable(_reason(exc)) from None
    return np.asarray(out, dtype=np.uint8)


def _decode_chunk(paths: Sequence[str], size: int, crop: str) -> tuple[np.ndarray, list[str], list[dict]]:
    """Decode a chunk: (stacked arrays of the good files, their paths, skipped entries)."""
    stack = np.empty((len(paths), size, size, 3), np.uint8)
    ok, skipped = [], []
    for path in paths:
        try:
            stack[len(ok)] = decode_image(path, size=size, crop=crop)
        except Unusable as bad:
            skipped.append({"path": path, "reason": bad.reason})
            continue
        ok.append(path)
    return stack[: len(ok)], ok, skipped


def _decoded_chunks(chunks: list[list[str]], size: int, crop: str, workers: int) -> Iterator[tuple]:
    """Chunks decoded in order; with workers > 1 by a process pool, at most 2 per worker in flight."""
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield _decode_chunk(chunk, size, crop)
        return
    # spawn, not fork: the caller may be a notebook with TensorFlow's threads running
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    try:
        todo = iter(chunks)
        pending = deque(pool.submit(_decode_chunk, c, size, crop) for c in islice(todo, 2 * workers))
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_decode_chunk, nxt, size, crop))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_images(paths: Sequence, *, workers: int | None = None, progress: bool = True) -> dict[str, str]:
    """{path: quarantine reason} of the files :func:`decode_image` cannot decode.

    The same decoder as :func:`build_cache` (same chunks, same workers rule), at the
    smallest target (JPEGs at 1/8 DCT scale: every byte of the file is still read and
    entropy-decoded, so truncated or corrupt files fail as they do in a run), so a data
    summary counts as usable exactly the images a run can use.
    """
    paths = [os.fspath(p) for p in paths]
    if workers is None:
        workers = DEFAULT_WORKERS if len(paths) >= PARALLEL_MIN_IMAGES else 1
    chunk_size = max(16, min(1024, math.ceil(len(paths) / (4 * max(workers, 1)))))
    chunks = [paths[i : i + chunk_size] for i in range(0, len(paths), chunk_size)]
    bad: dict[str, str] = {}
    with tqdm(total=len(paths), desc="decoding every image", unit="img", disable=not progress) as bar:
        for _, good, skipped in _decoded_chunks(chunks, CHECK_SIZE, "center", workers):
            bad.update((item["path"], item["reason"]) for item in skipped)
            bar.update(len(good) + len(skipped))
    return bad


# ---------------------------------------------------------------------------- the cache


def cache_key(paths: Iterable, *, size: int, crop: str) -> str:
    """Content hash of (sorted files with size and mtime, size, crop, decoder, format)."""
    h = hashlib.sha256()
    h.update(f"facetransfer-images v{CACHE_FORMAT} pillow {PIL.__version__} {RESAMPLE.name} gap {REDUCING_GAP} size {size} crop {crop}\n".encode())
    for p in sorted(os.fspath(p) for p in paths):
        try:
            st = os.stat(p)
            stamp = f"{st.st_size} {st.st_mtime_ns}"
        except OSError as exc:  # quarantined at decode time; still part of the key
            stamp = f"unstatable {type(exc).__name__}"
        h.update(f"{p}\0{stamp}\n".encode())
    return h.hexdigest()[:24]


def _check_args(paths: list[str], size, crop, workers) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DataError(f"build_cache: size must be a positive integer, not {size!r}")
    if crop not in CROPS:
        raise DataError(f"build_cache: crop {crop!r} is not allowed; allowed: {', '.join(CROPS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise DataError(f"build_cache: workers must be an integer >= 0 or None, not {workers!r}")
    if not paths:
        raise DataError("build_cache: no image paths given")
    if len(set(paths)) != len(paths):
        seen, dup = set(), None
        for p in paths:
            if p in seen:
                dup = p
                break
            seen.add(p)
        raise DataError(f"build_cache: {len(paths) - len(set(paths))} duplicate paths, e.g. {dup}")


def _open_memmap(file: Path, shape: tuple) -> np.ndarray:
    if shape[0] == 0:  # np.memmap cannot map an empty file
        empty = np.zeros(shape, np.uint8)
        empty.flags.writeable = False
        return empty
    return np.memmap(file, dtype=np.uint8, mode="r", shape=shape)


def _load_complete(cache_dir: Path, key: str) -> dict | None:
    """The sidecar of a complete cache, or None (missing, or interrupted → rebuild)."""
    sidecar, file = cache_dir / f"{key}.json", cache_dir / f"{key}.u8"
    if not sidecar.exists():
        if file.exists():
            log.warning("image cache %s has no sidecar (an interrupted build); rebuilding", file)
        return None
    try:
        meta = read_json(sidecar)
    except DamagedFileError:
        log.warning("image cache %s has a damaged sidecar %s; rebuilding", file, sidecar.name)
        return None
    expected = math.prod(meta["shape"])
    actual = file.stat().st_size if file.exists() else -1
    if meta.get("format") != CACHE_FORMAT or meta.get("key") != key or actual != expected:
        log.warning("image cache %s is %d bytes, its sidecar says %d (format %s); rebuilding", file, actual, expected, meta.get("format"))
        return None
    return meta


def build_cache(paths, *, size: int, crop: str = "center", cache_dir, workers: int | None = None, progress: bool = True, chunk_size: int | None = None) -> ImageCache:
    """Decode ``paths`` once to ``size`` x ``size`` RGB uint8 and cache them on disk.

    Same inputs (same files, sizes, mtimes, ``size``, ``crop``) → the cached array is
    reused and nothing is decoded (``hit=True``). ``workers``: decoder processes
    (None: 2 when there are at least 512 images, else this process; 0 or 1: this
    process). Decoded chunks are written at their offset with plain file writes, so
    memory stays bounded whatever the number of images. ``chunk_size``: images per
    worker task (default: about 16 MiB of pixels, at most a quarter of the set per worker).
    """
    start = time.perf_counter()
    paths = [os.fspath(p) for p in paths]
    _check_args(paths, size, crop, workers)
    cache_dir = Path(cache_dir)
    key = cache_key(paths, size=size, crop=crop)
    file = cache_dir / f"{key}.u8"
    meta = _load_complete(cache_dir, key)
    hit = meta is not None
    if not hit:
        meta = _build(paths, key, file, size=size, crop=crop, workers=workers, progress=progress, chunk_size=chunk_size)
    return ImageCache(
        key=key,
        images=_open_memmap(file, tuple(meta["shape"])),
        paths=meta["paths"],
        skipped=meta["skipped"],
        hit=hit,
        seconds=time.perf_counter() - start,
        size=size,
        crop=crop,
        build_seconds=meta["seconds"],
        file=file,
    )


def _build(paths: list[str], key: str, file: Path, *, size, crop, workers, progress, chunk_size) -> dict:
    start = time.perf_counter()
    if workers is None:
        workers = DEFAULT_WORKERS if len(paths) >= PARALLEL_MIN_IMAGES else 1
    if chunk_size is None:
        per_worker = math.ceil(len(paths) / (4 * max(workers, 1)))
        chunk_size = max(16, min(CHUNK_BYTES // (size * size * 3), per_worker))
    chunks = [paths[i : i + chunk_size] for i in range(0, len(paths), chunk_size)]
    ok, skipped = [], []
    bar = tqdm(total=len(paths), desc=f"decode → {size}px", unit="img", disable=not progress)
    with atomic_path(file) as tmp, open(tmp, "wb") as fh, bar:
        for stack, good, bad in _decoded_chunks(chunks, size, crop, workers):
            fh.write(np.ascontiguousarray(stack).data)
            ok.extend(good)
            skipped.extend(bad)
            bar.update(len(good) + len(bad))
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "size": size,
        "crop": crop,
        "shape": [len(ok), size, size, 3],
        "dtype": "uint8",
        "resample": f"{RESAMPLE.name} reducing_gap={REDUCING_GAP}",
        "pillow": PIL.__version__,
        "n_inputs": len(paths),
        "workers": workers,
        "seconds": round(time.perf_counter() - start, 3),
        "paths": ok,
        "skipped": skipped,
    }
    atomic_write_json(file.with_suffix(".json"), meta)  # LAST: marks the cache complete
    return meta
