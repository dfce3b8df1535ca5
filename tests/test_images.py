"""The decoded-image cache: pixel modes, crop geometry, cache hits/keys/rebuilds, quarantine."""

import logging
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from facetransfer import images
from facetransfer.errors import DataError
from facetransfer.images import build_cache, cache_key, decode_image


def _save(path, img, **kw):
    img.save(path, **kw)
    return str(path)


def _png16_rgb(path, rgb16):
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return str(path)


def _faces(folder, n, *, size=(178, 218), seed=0):
    """n small CelebA-like JPEGs with different content."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize(size, Image.Resampling.BILINEAR)
        paths.append(_save(folder / f"{i:06d}.jpg", img, quality=90))
    return paths


def _uniform(value, mode, size=(24, 30)):
    return Image.new(mode, size, value)


# ------------------------------------------------------------------------- pixel modes


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("rgb", lambda p: _save(p / "a.png", _uniform((10, 20, 30), "RGB")), (10, 20, 30)),
        ("gray", lambda p: _save(p / "a.png", _uniform(100, "L")), (100, 100, 100)),
        ("1-bit", lambda p: _save(p / "a.png", _uniform(1, "1")), (255, 255, 255)),
        ("palette", lambda p: _save(p / "a.png", _uniform((200, 40, 10), "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)), (200, 40, 10)),
        # alpha is composited on black: colour x alpha / 255
        ("rgba", lambda p: _save(p / "a.png", _uniform((200, 100, 50, 128), "RGBA")), (100, 50, 25)),
        ("gray+alpha", lambda p: _save(p / "a.png", _uniform((200, 51), "LA")), (40, 40, 40)),
        ("palette+transparency", lambda p: _save(p / "a.png", _uniform((0, 0, 0, 0), "RGBA").convert("P"), transparency=0), (0, 0, 0)),
        # 16-bit samples are scaled 0..65535 -> 0..255 (40000 -> 156), not clipped to 255
        ("gray16", lambda p: _save(p / "a.png", Image.fromarray(np.full((30, 24), 40000, np.uint16))), (156, 156, 156)),
        ("rgb16", lambda p: _png16_rgb(p / "a.png", np.dstack([np.full((30, 24), v, np.uint16) for v in (65535, 40000, 0)])), (255, 156, 0)),
    ],
)
def test_pixel_modes_become_rgb_uint8(tmp_path, name, make, expected):
    path = make(tmp_path)
    out = decode_image(path, size=16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.array(expected)).max() <= 1, name


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = _uniform((200, 60, 30), "RGB", (32, 32))
    path = _save(tmp_path / "c.jpg", rgb.convert("CMYK"), quality=95)
    assert Image.open(path).mode == "CMYK"
    out = decode_image(path, size=16)
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - np.array([200, 60, 30])).max() <= 8


# ------------------------------------------------------------------------- geometry


def test_center_crop_takes_the_central_square_of_the_shorter_side(tmp_path):
    # CelebA-sized 178x218: rows 0..19 and 198..217 fall outside the central square
    arr = np.zeros((218, 178, 3), np.uint8)
    arr[:20] = (255, 0, 0)
    arr[198:] = (0, 0, 255)
    arr[20:198, :89] = (0, 255, 0)
    arr[20:198, 89:] = (255, 255, 0)
    path = _save(tmp_path / "a.png", Image.fromarray(arr))
    same = decode_image(path, size=178)
    np.testing.assert_array_equal(same, arr[20:198])
    small = decode_image(path, size=32, crop="center")  # Lanczos rings within 3 px of an edge
    np.testing.assert_array_equal(small[:, :13], np.broadcast_to([0, 255, 0], (32, 13, 3)))
    np.testing.assert_array_equal(small[:, 19:], np.broadcast_to([255, 255, 0], (32, 13, 3)))


def test_pad_letterboxes_onto_black(tmp_path):
    wide = Image.new("RGB", (100, 50), (255, 255, 255))
    path = _save(tmp_path / "wide.png", wide)
    out = decode_image(path, size=100, crop="pad")
    assert (out[:25] == 0).all() and (out[75:] == 0).all() and (out[25:75] == 255).all()
    tall = _save(tmp_path / "tall.png", Image.new("RGB", (20, 80), (255, 255, 255)))
    out = decode_image(tall, size=40, crop="pad")
    assert (out[:, :12] == 0).all() and (out[:, 28:] == 0).all() and (out[:, 18:22] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 3  # rotate 180
    path = _save(tmp_path / "o.jpg", Image.fromarray(arr), exif=exif, quality=95)
    out = decode_image(path, size=40).astype(int)
    assert out[:, :16, 2].min() > 200 and out[:, 24:, 0].min() > 200  # blue now on the left


def test_large_jpeg_uses_draft_and_matches_full_decode(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    arr = np.asarray(Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).resize((960, 960), Image.Resampling.BICUBIC))
    path = _save(tmp_path / "big.jpg", Image.fromarray(arr), quality=95)
    scales = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = real(self, mode, size)
        scales.append(self.decoderconfig[0])
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fast = decode_image(path, size=64).astype(float)
    assert scales == [8]  # 960 px decoded at 1/8 = 120 px >= 64
    reference = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS), float)
    assert np.abs(fast - reference).mean() < 3


# ------------------------------------------------------------------------- the cache


def test_cache_hit_decodes_nothing(tmp_path, monkeypatch):
    paths = _faces(tmp_path / "img", 12)
    first = build_cache(paths, size=32, cache_dir=tmp_path / "cache", progress=False)
    assert not first.hit and first.images.shape == (12, 32, 32, 3) and first.paths == paths

    def boom(*a, **k):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(images, "decode_image", boom)
    again = build_cache(list(reversed(paths)), size=32, cache_dir=tmp_path / "cache", progress=False)
    assert again.hit and again.key == first.key and again.paths == paths
    np.testing.assert_array_equal(again.images, first.images)
    assert isinstance(again.images, np.memmap) and not again.images.flags.writeable
    np.testing.assert_array_equal(again.rows(paths[3:5]), [3, 4])
    with pytest.raises(AssertionError):  # a different size is a miss, so it decodes
        build_cache(paths, size=16, cache_dir=tmp_path / "cache", progress=False)


def test_cache_matches_decode_image_row_by_row(tmp_path):
    paths = _faces(tmp_path / "img", 5)
    cache = build_cache(paths, size=24, crop="pad", cache_dir=tmp_path / "cache", progress=False)
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(cache.images[i], decode_image(p, size=24, crop="pad"))


def test_cache_key_follows_files_and_settings(tmp_path):
    paths = _faces(tmp_path / "img", 3)
    key = cache_key(paths, size=64, crop="center")
    assert cache_key(list(reversed(paths)), size=64, crop="center") == key
    assert cache_key(paths, size=32, crop="center") != key
    assert cache_key(paths, size=64, crop="pad") != key
    assert cache_key(paths[:2], size=64, crop="center") != key
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = cache_key(paths, size=64, crop="center")
    assert touched != key
    with open(paths[1], "ab") as fh:
        fh.write(b"\0")
    os.utime(paths[1], ns=(os.stat(paths[1]).st_atime_ns, os.stat(paths[1]).st_mtime_ns))
    assert cache_key(paths, size=64, crop="center") not in (key, touched)


@pytest.mark.parametrize("damage", ["no sidecar", "short data file"])
def test_interrupted_cache_is_rebuilt(tmp_path, monkeypatch, caplog, damage):
    paths = _faces(tmp_path / "img", 6)
    first = build_cache(paths, size=16, cache_dir=tmp_path / "cache", progress=False)
    expected = np.array(first.images)
    data, sidecar = first.file, first.file.with_suffix(".json")
    if damage == "no sidecar":
        sidecar.unlink()
    else:
        with open(data, "r+b") as fh:
            fh.truncate(data.stat().st_size - 100)
    calls = []
    real = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger="facetransfer.images"):
        again = build_cache(paths, size=16, cache_dir=tmp_path / "cache", workers=0, progress=False)
    assert not again.hit and len(calls) == 6
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(again.images, expected)
    assert sidecar.exists() and data.stat().st_size == expected.size


def test_parallel_build_equals_serial(tmp_path):
    paths = _faces(tmp_path / "img", 40)
    paths.insert(7, _save(tmp_path / "bad.jpg", Image.new("RGB", (1, 1))))
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    serial = build_cache(paths, size=20, cache_dir=tmp_path / "serial", workers=0, progress=False)
    parallel = build_cache(paths, size=20, cache_dir=tmp_path / "parallel", workers=2, chunk_size=6, progress=False)
    assert parallel.key == serial.key and parallel.paths == serial.paths and len(parallel.paths) == 40
    assert parallel.skipped == serial.skipped == [{"path": paths[7], "reason": "not an image: Pillow cannot identify it"}]
    np.testing.assert_array_equal(parallel.images, serial.images)


# ------------------------------------------------------------------------- quarantine


def test_every_undecodable_input_is_quarantined(tmp_path, monkeypatch):
    good = _faces(tmp_path / "img", 3)
    whole = (tmp_path / "img" / "000000.jpg").read_bytes()
    bad = {}
    bad["empty file"] = tmp_path / "empty.jpg"
    bad["empty file"].write_bytes(b"")
    bad["truncated image"] = tmp_path / "truncated.jpg"
    bad["truncated image"].write_bytes(whole[: len(whole) // 2])
    bad["not an image"] = tmp_path / "text.jpg"
    bad["not an image"].write_text("not a picture at all\n")
    bad["missing file"] = tmp_path / "gone.jpg"
    bad["unreadable file"] = tmp_path / "folder.jpg"
    bad["unreadable file"].mkdir()
    bad["unsupported pixel mode"] = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(bad["unsupported pixel mode"])
    bad["corrupt image"] = tmp_path / "corrupt.png"
    _save(tmp_path / "x.png", Image.new("RGB", (8, 8), (1, 2, 3)))
    png = bytearray((tmp_path / "x.png").read_bytes())
    png[-20] ^= 0xFF  # break the IDAT data / CRC
    bad["corrupt image"].write_bytes(bytes(png))
    denied = str(tmp_path / "denied.jpg")
    (tmp_path / "denied.jpg").write_bytes(whole)
    real_open = Image.open

    def open_denied(fp, *a, **k):  # tests run as root here, where chmod 000 does not deny
        if str(fp) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return real_open(fp, *a, **k)

    monkeypatch.setattr(images.Image, "open", open_denied)
    paths = [good[0], *map(str, bad.values()), good[1], denied, good[2]]
    cache = build_cache(paths, size=16, cache_dir=tmp_path / "cache", progress=False)
    assert cache.paths == good and cache.images.shape == (3, 16, 16, 3)
    reasons = {s["path"]: s["reason"] for s in cache.skipped}
    assert len(reasons) == len(bad) + 1
    for category, path in bad.items():
        assert reasons[str(path)].split(": ")[0] == category, reasons[str(path)]
    assert reasons[denied] == "unreadable file: permission denied"
    with pytest.raises(DataError, match="truncated.jpg has no row"):
        cache.rows([str(bad["truncated image"])])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_file_is_quarantined(tmp_path):
    path = _faces(tmp_path / "img", 1)[0]
    os.chmod(path, 0)
    cache = build_cache([path, *_faces(tmp_path / "ok", 1)], size=8, cache_dir=tmp_path / "c", progress=False)
    assert cache.skipped == [{"path": path, "reason": "unreadable file: permission denied"}]


def test_all_undecodable_gives_an_empty_cache(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    cache = build_cache([tmp_path / "a.jpg"], size=8, cache_dir=tmp_path / "c", progress=False)
    assert cache.images.shape == (0, 8, 8, 3) and cache.paths == [] and len(cache.skipped) == 1
    assert build_cache([tmp_path / "a.jpg"], size=8, cache_dir=tmp_path / "c", progress=False).hit


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"size": 0}, "size must be"), ({"size": 8, "crop": "fill"}, "crop 'fill' is not allowed; allowed: center, pad"), ({"size": 8, "workers": -1}, "workers")],
)
def test_bad_arguments_are_one_line_errors(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        build_cache(["x.jpg"], cache_dir=tmp_path, **kwargs)
    with pytest.raises(DataError, match="duplicate"):
        build_cache(["x.jpg", "x.jpg"], size=8, cache_dir=tmp_path)
