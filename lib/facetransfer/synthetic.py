"""SYNTHETIC cartoon faces written in the real CelebA (Kaggle CSV) and UTKFace layouts.

The set lets every study, test and notebook run offline. It is procedurally drawn with numpy
and Pillow, never a photograph of anyone, and every set carries a ``SYNTHETIC.txt`` marker
so loaders and reports can label it.

The images hold real, learnable and imperfect signal. Each synthetic person has latent
traits; gender shifts *overlapping* distributions of jaw shape, face width, brow thickness,
hair length, facial hair and lip colour; age adds wrinkles, grey hair, eye bags and changes
proportions (children have rounder faces, bigger and lower eyes). The CelebA attributes
(Eyeglasses, Smiling, Bangs, hair colours, Heavy_Makeup, Wearing_Hat, Bald, Goatee, ...) are
drawn and correlate with gender roughly as in CelebA. Pose, lighting, skin tone, background,
blur and noise vary so that no single trivial statistic gives a label away.

Every image is drawn from its own random streams, derived from ``(seed, index)``, so the
bytes do not depend on the number of worker processes: the same seed gives the same files.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facetransfer.errors import FacetransferError
from facetransfer.io import pid_alive

SYNTHETIC_MARKER = "SYNTHETIC.txt"
GENERATOR_VERSION = 1
LAYOUTS = ("celeba", "utkface")
MIN_SIZE, MAX_SIZE = 32, 512
JPEG_QUALITY = 90

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald",
    "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
UTK_RACES = ("white", "black", "asian", "indian", "others")  # UTKFace codes 0..4

# Stream tags: every random stream is np.random.default_rng([seed, TAG, index]).
_PLAN, _PERSON, _LOOK, _RENDER = 0, 1, 2, 3

_SKIN = {
    "white": (236, 198, 172), "black": (118, 80, 60), "asian": (230, 196, 160),
    "indian": (184, 136, 102), "others": (206, 160, 124),
}  # fmt: skip
_HAIR = {
    "black": (28, 22, 22), "brown": (96, 62, 38), "blond": (218, 184, 112),
    "gray": (180, 178, 176), "red": (146, 66, 34), "dark_blond": (148, 114, 72),
}  # fmt: skip
_IRIS = ((70, 45, 25), (110, 70, 40), (60, 100, 150), (80, 120, 80), (120, 100, 60))
_LIPSTICK = ((190, 20, 40), (200, 60, 90), (150, 30, 60), (215, 90, 100), (170, 40, 30))


# ----------------------------------------------------------------------------------------
# public API


def generate(
    layout: str,
    out,
    *,
    n: int,
    seed: int,
    size: int = 128,
    overwrite: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Write ``n`` SYNTHETIC faces in the real ``layout`` to the folder ``out``.

    The set is built in a temporary sibling folder and renamed into place, so ``out`` never
    holds a partial set. A non-empty ``out`` is an error unless ``overwrite`` is set; then
    it is replaced (only when it is itself a synthetic set, i.e. holds ``SYNTHETIC.txt``).
    Returns ``{"root", "layout", "n", "seed", "size", "seconds"}``.
    """
    start = time.perf_counter()
    _check_args(layout, n=n, seed=seed, size=size, workers=workers)
    out = Path(out).expanduser().absolute()
    _check_target(out, overwrite=overwrite)
    tmp, created = _make_temp_sibling(out)
    try:
        _build(layout, tmp, n=n, seed=seed, size=size, workers=workers, progress=progress)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:
            _rmdir_if_empty(folder)
        raise
    seconds = round(time.perf_counter() - start, 3)
    return {"root": str(out), "layout": layout, "n": n, "seed": seed, "size": size, "seconds": seconds}


def ensure(results_root, layout: str, *, n: int, seed: int, size: int, workers: int = 2, progress: bool = True) -> Path:
    """Generate a synthetic set once, under ``results_root/_synthetic/<layout>-n<N>-s<seed>-<size>px``.

    A second call returns the existing folder at once. The set is built in a temporary
    sibling and renamed, so a killed generation is never mistaken for a complete one; the
    leftovers of killed generations are removed on the next call.
    """
    _check_args(layout, n=n, seed=seed, size=size, workers=workers)
    final = Path(results_root).expanduser().absolute() / "_synthetic" / f"{layout}-n{n}-s{seed}-{size}px"
    if (final / SYNTHETIC_MARKER).is_file():
        return final
    if final.exists():
        raise FacetransferError(f"{final} exists but holds no {SYNTHETIC_MARKER}: it is not a complete synthetic set; remove it and run again")
    _remove_dead_temps(final)
    tmp, _ = _make_temp_sibling(final)
    try:
        _build(layout, tmp, n=n, seed=seed, size=size, workers=workers, progress=progress)
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (final / SYNTHETIC_MARKER).is_file():
            return final  # another process finished the same set first
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ----------------------------------------------------------------------------------------
# validation and atomic folder handling


def _check_args(layout, *, n, seed, size, workers) -> None:
    if layout not in LAYOUTS:
        raise FacetransferError(f"synthetic layout {layout!r} is not known; allowed: {', '.join(LAYOUTS)}")
    if not _is_int(n) or n < 1:
        raise FacetransferError(f"synthetic n must be an integer >= 1, got {n!r}")
    if layout == "celeba" and n > 999_999:
        raise FacetransferError(f"synthetic n must be <= 999999 for the celeba layout (6-digit file names), got {n}")
    if not _is_int(seed) or seed < 0:
        raise FacetransferError(f"synthetic seed must be an integer >= 0, got {seed!r}")
    if not _is_int(size) or not MIN_SIZE <= size <= MAX_SIZE:
        raise FacetransferError(f"synthetic size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    if not _is_int(workers) or workers < 1:
        raise FacetransferError(f"synthetic workers must be an integer >= 1, got {workers!r}")


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_target(out: Path, *, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise FacetransferError(f"synthetic output {out} exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise FacetransferError(f"synthetic output folder {out} is not empty; pass --overwrite to replace it or choose another --out")
    if not (out / SYNTHETIC_MARKER).is_file():
        raise FacetransferError(f"refusing to overwrite {out}: it is not a synthetic set (no {SYNTHETIC_MARKER}); remove it yourself or choose another --out")


def _make_temp_sibling(out: Path) -> tuple[Path, list[Path]]:
    """Create ``out``'s parents and an empty temporary folder beside ``out``."""
    created = [p for p in reversed(out.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        for folder in reversed(created):
            _rmdir_if_empty(folder)
        raise FacetransferError(f"cannot write the synthetic set to {out}: {exc.strerror or exc}") from None
    return tmp, list(reversed(created))


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        return  # not empty or already gone: leave it


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "set")
    os.rename(tmp, out)
    shutil.rmtree(old)


def _remove_dead_temps(final: Path) -> None:
    """Remove temporary siblings left by generations whose process is gone."""
    if not final.parent.is_dir():
        return
    for path in final.parent.glob(f".{final.name}.tmp-*"):
        pid = path.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# building a set


def _build(layout: str, root: Path, *, n: int, seed: int, size: int, workers: int, progress: bool) -> None:
    if layout == "celeba":
        specs, names = _plan_celeba(n, seed)
        image_dir = root / "img_align_celeba" / "img_align_celeba"
        width = round(size * 178 / 218)
    else:
        specs, names = _plan_utkface(n, seed)
        image_dir = root
        width = size
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(image_dir / name), spec, (seed, _RENDER, i), width, size) for i, (name, spec) in enumerate(zip(names, specs, strict=True))]
    _render_all(jobs, workers=workers, progress=progress, desc=f"synth {layout}")
    if layout == "celeba":
        _write_celeba_tables(root, names, specs)
    (root / SYNTHETIC_MARKER).write_text(_marker_text(layout, n=n, seed=seed, size=size, width=width), encoding="utf-8")


def _render_all(jobs: list, *, workers: int, progress: bool, desc: str) -> None:
    from tqdm import tqdm  # text bars: readable in papermill output and the HTML report

    chunks = [jobs[i : i + 32] for i in range(0, len(jobs), 32)]
    with tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress) as bar:
        if workers == 1 or len(chunks) == 1:
            for chunk in chunks:
                bar.update(_render_chunk(chunk))
            return
        # spawn: safe even when the caller has already started threads (TensorFlow)
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_render_chunk, chunk) for chunk in chunks]):
                bar.update(future.result())


def _render_chunk(chunk: list) -> int:
    for path, spec, entropy, width, height in chunk:
        image = render_face(spec, width, height, np.random.default_rng(list(entropy)))
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    return len(chunk)


def _write_celeba_tables(root: Path, names: list[str], specs: list[dict]) -> None:
    attr_lines = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
    part_lines = ["image_id,partition"]
    id_lines = []
    for name, spec in zip(names, specs, strict=True):
        values = [("1" if spec["labels"][a] else "-1") for a in CELEBA_ATTRIBUTES]
        attr_lines.append(name + "," + ",".join(values))
        part_lines.append(f"{name},{spec['partition']}")
        id_lines.append(f"{name} {spec['identity']}")
    (root / "list_attr_celeba.csv").write_text("\n".join(attr_lines) + "\n", encoding="utf-8")
    (root / "list_eval_partition.csv").write_text("\n".join(part_lines) + "\n", encoding="utf-8")
    (root / "identity_CelebA.txt").write_text("\n".join(id_lines) + "\n", encoding="utf-8")


def _marker_text(layout: str, *, n: int, seed: int, size: int, width: int) -> str:
    return (
        "SYNTHETIC DATA: procedurally generated cartoon faces, NOT photographs of real people.\n"
        "Written by facetransfer.synthetic (numpy + Pillow drawing) in the real "
        f"{'CelebA Kaggle-CSV' if layout == 'celeba' else 'UTKFace aligned-and-cropped'} layout so the\n"
        "loaders can be exercised offline. Labels are the generator's own drawing parameters.\n"
        "Results on this set say nothing about real faces.\n"
        "\n"
        f"generator_version: {GENERATOR_VERSION}\n"
        f"layout: {layout}\n"
        f"n: {n}\n"
        f"seed: {seed}\n"
        f"size: {width}x{size} px (width x height), JPEG quality {JPEG_QUALITY}\n"
    )


# ----------------------------------------------------------------------------------------
# planning: who is in the set and what each image shows


def _plan_celeba(n: int, seed: int) -> tuple[list[dict], list[str]]:
    """Identities of 2-8 images, partitions by identity (80/10/10), CelebA-like numbering."""
    rng = np.random.default_rng([seed, _PLAN, 0])
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(2, 9)))
    sizes[-1] -= sum(sizes) - n
    identity_ids = rng.permutation(len(sizes)) + 1
    partitions: dict[int, list[tuple[int, int]]] = {0: [], 1: [], 2: []}
    members: dict[int, list[int]] = {0: [], 1: [], 2: []}
    done = 0
    for k, count in enumerate(sizes):
        part = 0 if done < 0.8 * n else (1 if done < 0.9 * n else 2)
        partitions[part].extend((k, j) for j in range(count))
        members[part].append(k)
        done += count
    male = np.zeros(len(sizes), bool)  # 42 % of the identities of each partition are male
    for ids in members.values():
        male[rng.permutation(np.array(ids, dtype=int))[: round(0.42 * len(ids))]] = True
    specs = []
    for part in (0, 1, 2):
        for k, j in (partitions[part][i] for i in rng.permutation(len(partitions[part]))):
            person = _sample_person(np.random.default_rng([seed, _PERSON, k]), layout="celeba", male=bool(male[k]))
            look_rng = np.random.default_rng([seed, _LOOK, k, j])
            spec = _sample_look(look_rng, person)
            spec["labels"] = _celeba_labels(spec, look_rng)
            spec["identity"] = int(identity_ids[k])
            spec["partition"] = part
            specs.append(spec)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    return specs, names


def _plan_utkface(n: int, seed: int) -> tuple[list[dict], list[str]]:
    """One person per image; names ``age_gender_race_datetime.jpg.chip.jpg``, gender 0 = male."""
    rng = np.random.default_rng([seed, _PLAN, 1])
    start = datetime(2016, 12, 19, 9, 0, 0)
    male = np.zeros(n, bool)  # 52 % male, as in UTKFace
    male[rng.permutation(n)[: round(0.52 * n)]] = True
    specs, names = [], []
    for i in range(n):
        person = _sample_person(np.random.default_rng([seed, _PERSON, i]), layout="utkface", male=bool(male[i]))
        spec = _sample_look(np.random.default_rng([seed, _LOOK, i, 0]), person)
        stamp = start + timedelta(milliseconds=i * 1931 + int(rng.integers(0, 1900)))
        code = stamp.strftime("%Y%m%d%H%M%S") + f"{stamp.microsecond // 1000:03d}"
        gender_code = 0 if spec["male"] else 1  # UTKFace's own code: 0 = male, 1 = female
        names.append(f"{spec['age']}_{gender_code}_{UTK_RACES.index(spec['race'])}_{code}.jpg.chip.jpg")
        specs.append(spec)
    return specs, names


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _utk_age(rng) -> int:
    """UTKFace-like ages: a bump of babies, a young-adult peak, a long tail to 90."""
    part = rng.choice(4, p=[0.10, 0.08, 0.56, 0.26])
    if part == 0:
        age = rng.integers(1, 6)
    elif part == 1:
        age = rng.integers(6, 18)
    elif part == 2:
        age = 18 + rng.gamma(3.0, 4.0)
    else:
        age = 40 + rng.exponential(15.0)
    return int(np.clip(round(age), 1, 90))


def _sample_person(rng, *, layout: str, male: bool) -> dict:
    """Latent traits of one synthetic person (shared by all of their images)."""
    if layout == "celeba":
        age = int(np.clip(round(rng.normal(34, 12) if male else rng.normal(29, 9.5)), 16, 80))
        race = str(rng.choice(UTK_RACES, p=[0.72, 0.09, 0.10, 0.05, 0.04]))
    else:
        age = _utk_age(rng)
        race = str(rng.choice(UTK_RACES, p=[0.42, 0.19, 0.15, 0.17, 0.07]))
    adult = float(np.clip((age - 8) / 10, 0.15, 1.0))  # how far gender shapes the face
    m = (rng.normal(0.75, 0.7) if male else rng.normal(-0.75, 0.7)) * adult
    child = float(np.clip((14 - age) / 12, 0.0, 1.0))
    old = float(np.clip((age - 25) / 45 * rng.uniform(0.75, 1.25), 0.0, 1.0))  # some age better
    f = not male
    p = {"male": male, "age": age, "race": race, "m": m, "child": child, "old": old}

    # shape attributes
    p["chubby"] = rng.random() < (0.10 if male else 0.03) + 0.05 * old
    p["oval"] = rng.random() < (0.18 if male else 0.35)
    p["double_chin"] = rng.random() < 0.03 + 0.35 * p["chubby"] + 0.15 * old
    p["narrow_eyes"] = rng.random() < 0.10 + 0.15 * (race == "asian")
    p["big_nose"] = rng.random() < (0.38 if male else 0.10) + 0.15 * old - 0.3 * child
    p["pointy_nose"] = not p["big_nose"] and rng.random() < (0.16 if male else 0.45)
    p["big_lips"] = rng.random() < (0.18 if male else 0.28) + 0.3 * (race == "black")
    p["arched"] = rng.random() < (0.06 if male else 0.45) * (1 - child)
    p["bushy"] = rng.random() < (0.24 if male else 0.07) * (1 - child)
    p["high_cheekbones"] = rng.random() < (0.22 if male else 0.35)
    p["bags"] = rng.random() < 0.04 + 0.1 * male + 0.5 * _sigmoid((age - 45) / 7)
    p["pale"] = race == "white" and rng.random() < (0.015 if male else 0.06)
    p["rosy"] = rng.random() < (0.01 if male else 0.11) + 0.15 * child

    # geometry, in units of the face's half height; gender shifts overlapping distributions
    p["a"] = 0.72 + 0.03 * m + rng.normal(0, 0.03) + 0.07 * p["chubby"] - 0.04 * p["oval"] + 0.1 * child
    p["jaw_k"] = float(np.clip(2.0 + 0.1 * rng.normal() if p["oval"] else 2.2 + 0.4 * m + rng.normal(0, 0.2), 1.6, 3.4))
    p["jaw_k"] = p["jaw_k"] * (1 - child) + 2.0 * child
    p["jaw_w"] = 0.93 + 0.035 * m + rng.normal(0, 0.03) + 0.05 * old
    p["brow_th"] = max(0.025, 0.05 + 0.014 * m + rng.normal(0, 0.007)) * (1.5 if p["bushy"] else 1.0) * (1 - 0.45 * child - 0.2 * old)
    p["brow_gap"] = 0.16 - 0.025 * m + rng.normal(0, 0.015)
    p["arch"] = 0.07 if p["arched"] else 0.025 + rng.normal(0, 0.008)
    p["eye_rx"] = (0.12 + rng.normal(0, 0.01)) * (1 + 0.25 * child)
    p["eye_ry"] = (0.056 + 0.004 * f + rng.normal(0, 0.006)) * (0.6 if p["narrow_eyes"] else 1.0) * (1 + 0.5 * child - 0.2 * old)
    p["eye_dx"] = 0.30 + rng.normal(0, 0.015)
    p["eye_y"] = -0.2 + 0.15 * child + rng.normal(0, 0.015)
    p["iris"] = _IRIS[int(rng.integers(0, 2))] if race != "white" else _IRIS[int(rng.integers(0, len(_IRIS)))]
    p["nose_y"] = 0.28 + rng.normal(0, 0.025) + 0.03 * old - 0.02 * child
    p["nose_w"] = (0.085 + 0.01 * m + 0.035 * p["big_nose"]) * (0.8 if p["pointy_nose"] else 1.0) * (1 - 0.4 * child)
    p["mouth_y"] = 0.57 + rng.normal(0, 0.02) + 0.02 * old
    p["mouth_w"] = 0.22 + 0.01 * m + rng.normal(0, 0.015) - 0.06 * child
    p["lip_th"] = (0.046 + 0.006 * f + rng.normal(0, 0.005)) * (1.45 if p["big_lips"] else 1.0) * (1 - 0.35 * old)
    p["ear_ry"] = 0.19 * (1 + 0.15 * old)

    # colours
    base = np.array(_SKIN[race], float)
    skin = base * (1 + rng.normal(0, 0.07)) + rng.normal(0, 4, 3)
    skin = skin * (1 - 0.12 * old) + skin.mean() * 0.12 * old  # older skin: a little less colour
    if p["pale"]:
        skin = 0.5 * skin + 0.5 * np.array([250, 232, 224])
    p["skin"] = _rgb(skin)
    lip_mix = float(np.clip(0.33 - 0.09 * m + rng.normal(0, 0.07), 0.1, 0.65))
    p["lip"] = _rgb(np.array(p["skin"]) * (1 - lip_mix) * 0.9 + np.array([185, 70, 80]) * lip_mix)

    # hair
    if race == "white":
        weights = [0.30, 0.22, 0.03, 0.0, 0.05, 0.40] if male else [0.20, 0.27, 0.26, 0.0, 0.07, 0.20]
    else:
        weights = [0.82, 0.15, 0.0, 0.0, 0.0, 0.03]
    kind = str(rng.choice(["black", "brown", "blond", "gray", "red", "dark_blond"], p=weights))
    grey = float(np.clip((age - 32) / 30 + rng.normal(0, 0.12), 0, 1)) * (1.0 if male else 0.7)  # dye
    if rng.random() < _sigmoid((age - 60) / 5):
        kind, grey = "gray", max(grey, 0.8)
    hair = np.array(_HAIR[kind], float) * (1 + rng.normal(0, 0.08))
    if kind == "gray":
        hair = np.array(_HAIR["gray"], float) * (1 + 0.12 * grey)
    else:
        hair = hair * (1 - grey) + np.array([205, 203, 200]) * grey
        kind = "gray" if grey >= 0.6 else kind  # the label follows what is drawn
    if age < 3:  # babies: thin, light hair that shows the scalp
        hair = 0.55 * hair + 0.45 * np.array(p["skin"])
    p["hair_kind"], p["hair"] = kind, _rgb(hair)
    if male:
        u = rng.random()
        length = rng.uniform(0.0, 0.45) if u < 0.85 else (rng.uniform(0.5, 1.3) if u < 0.95 else rng.uniform(1.3, 2.8))
    else:
        u = rng.random()
        cut_long, cut_medium = (0.75, 0.90) if child < 0.5 else (0.5, 0.85)  # girls: more bobs
        length = rng.uniform(1.3, 3.2) if u < cut_long else (rng.uniform(0.6, 1.3) if u < cut_medium else rng.uniform(0.15, 0.6))
    if age < 3:
        length = rng.uniform(0.0, 0.2)
    p["hair_len"] = float(length)
    p["hair_vol"] = rng.uniform(0.05, 0.16) + 0.06 * (length > 1.0) if age >= 3 else 0.02
    p["bald"] = male and age >= 17 and rng.random() < 0.01 + 0.3 * _sigmoid((age - 55) / 6)
    p["receding"] = not p["bald"] and rng.random() < (0.05 + 0.35 * _sigmoid((age - 45) / 7) if male else 0.03)
    p["bangs"] = not (p["bald"] or p["receding"]) and age >= 3 and rng.random() < (0.06 if male else 0.22)
    p["wavy"] = length > 0.4 and rng.random() < (0.2 if male else 0.5)
    p["straight"] = not p["wavy"] and length > 0.25 and rng.random() < 0.5
    p["hairline"] = -0.68 + rng.normal(0, 0.04) - 0.2 * (age < 3)

    # facial hair (adult men only)
    p["beard"] = p["goatee"] = p["mustache"] = p["stubble"] = p["sideburns"] = False
    if male and age >= 17:
        u = rng.random()
        p["beard"] = u < 0.14
        p["goatee"] = 0.14 <= u < 0.27
        p["mustache"] = (p["beard"] and rng.random() < 0.5) or (p["goatee"] and rng.random() < 0.6) or 0.27 <= u < 0.30
        p["stubble"] = not (p["beard"] or p["goatee"]) and rng.random() < 0.35
        p["sideburns"] = rng.random() < (0.6 if p["beard"] else 0.12)
    p["beard_len"] = rng.uniform(0.03, 0.12)

    # propensities for per-image accessories
    grown = age >= 14
    p["wears_glasses"] = rng.random() < (0.12 if male else 0.05) + 0.15 * old - 0.04 * child
    p["wears_makeup"] = grown and rng.random() < (0.005 if male else 0.66)
    p["wears_earrings"] = rng.random() < (0.03 if male else 0.33) * (0.4 if not grown else 1.0)
    p["wears_necklace"] = grown and rng.random() < (0.01 if male else 0.2)
    p["wears_necktie"] = grown and rng.random() < (0.16 if male else 0.003)
    p["shirt"] = _rgb(rng.uniform(20, 235, 3))
    return p


def _sample_look(rng, person: dict) -> dict:
    """One photo of ``person``: expression, accessories, pose, photometry."""
    s = dict(person)
    male = person["male"]
    s["glasses"] = rng.random() < (0.8 if person["wears_glasses"] else 0.01)
    s["sunglasses"] = s["glasses"] and rng.random() < 0.15
    s["makeup"] = rng.random() < (0.85 if person["wears_makeup"] else 0.04 * (not male) * (person["age"] >= 14))
    s["lipstick"] = bool(rng.random() < 0.95) if s["makeup"] else (not male and person["age"] >= 14 and rng.random() < 0.35)
    s["lipstick_colour"] = _LIPSTICK[int(rng.integers(0, len(_LIPSTICK)))]
    s["earrings"] = rng.random() < (0.85 if person["wears_earrings"] else 0.02)
    s["necklace"] = rng.random() < (0.8 if person["wears_necklace"] else 0.01)
    s["necktie"] = rng.random() < (0.7 if person["wears_necktie"] else 0.0)
    s["hat"] = rng.random() < (0.07 if male else 0.035)
    s["hat_kind"] = str(rng.choice(["beanie", "cap", "brim"]))
    s["hat_colour"] = _rgb(rng.uniform(10, 240, 3))
    s["smile"] = rng.random() < (0.42 if male else 0.55)
    s["open"] = rng.random() < (0.65 if s["smile"] else 0.3)
    s["cheekbones"] = person["high_cheekbones"] or (s["smile"] and rng.random() < 0.45)
    s["blurry"] = rng.random() < 0.05
    # pose and camera
    s["rot"] = float(np.clip(rng.normal(0, 5), -12, 12))
    s["shift"] = (float(rng.normal(0, 0.025)), float(rng.normal(0, 0.02)))
    s["zoom"] = float(rng.uniform(0.92, 1.08))
    s["yaw"] = float(np.clip(rng.normal(0, 0.05), -0.12, 0.12))
    return s


def _celeba_labels(s: dict, rng) -> dict:
    """The 40 CelebA attributes of one image as booleans."""
    young = s["age"] + rng.normal(0, 3) < 38
    attractive = rng.normal(0.8 * (not s["male"]) + 0.6 * young - 0.8 * s["chubby"] - 0.4 * s["bags"] + 0.3 * s["makeup"], 0.7) > 0.55
    kind = s["hair_kind"]
    return {
        "5_o_Clock_Shadow": s["stubble"], "Arched_Eyebrows": s["arched"], "Attractive": attractive,
        "Bags_Under_Eyes": s["bags"], "Bald": s["bald"], "Bangs": s["bangs"] and not s["hat"],
        "Big_Lips": s["big_lips"], "Big_Nose": s["big_nose"],
        "Black_Hair": kind == "black" and not s["bald"], "Blond_Hair": kind == "blond" and not s["bald"],
        "Blurry": s["blurry"], "Brown_Hair": kind == "brown" and not s["bald"],
        "Bushy_Eyebrows": s["bushy"], "Chubby": s["chubby"], "Double_Chin": s["double_chin"],
        "Eyeglasses": s["glasses"], "Goatee": s["goatee"], "Gray_Hair": kind == "gray" and not s["bald"],
        "Heavy_Makeup": s["makeup"], "High_Cheekbones": s["cheekbones"], "Male": s["male"],
        "Mouth_Slightly_Open": s["open"], "Mustache": s["mustache"], "Narrow_Eyes": s["narrow_eyes"],
        "No_Beard": not (s["beard"] or s["goatee"]), "Oval_Face": s["oval"], "Pale_Skin": s["pale"],
        "Pointy_Nose": s["pointy_nose"], "Receding_Hairline": s["receding"], "Rosy_Cheeks": s["rosy"],
        "Sideburns": s["sideburns"], "Smiling": s["smile"], "Straight_Hair": s["straight"] and not s["bald"],
        "Wavy_Hair": s["wavy"] and not s["bald"], "Wearing_Earrings": s["earrings"], "Wearing_Hat": s["hat"],
        "Wearing_Lipstick": s["lipstick"], "Wearing_Necklace": s["necklace"],
        "Wearing_Necktie": s["necktie"], "Young": young,
    }  # fmt: skip


def _rgb(values) -> tuple[int, int, int]:
    r, g, b = np.clip(np.round(np.asarray(values, float)), 0, 255).astype(int)
    return int(r), int(g), int(b)


# ----------------------------------------------------------------------------------------
# drawing: everything is drawn at 2x on a canvas with a margin, posed, then downscaled


class _Pen:
    """Draws in face units: origin at the face centre, y down, 1 = half the face height."""

    def __init__(self, image: Image.Image, cx: float, cy: float, scale: float, yaw: float):
        self.draw = ImageDraw.Draw(image, "RGBA")
        self.cx, self.cy, self.s, self.yaw = cx, cy, scale, yaw

    def pts(self, xs, ys, feature: bool = False) -> list[tuple[float, float]]:
        shift = self.yaw if feature else 0.0
        xs = self.cx + self.s * (np.asarray(xs, float) + shift)
        ys = self.cy + self.s * np.asarray(ys, float)
        return list(zip(xs.tolist(), ys.tolist(), strict=True))

    def width(self, units: float) -> int:
        return max(1, round(units * self.s))

    def polygon(self, xs, ys, fill, feature: bool = False) -> None:
        self.draw.polygon(self.pts(xs, ys, feature), fill=fill)

    def line(self, xs, ys, fill, width: float, feature: bool = False) -> None:
        self.draw.line(self.pts(xs, ys, feature), fill=fill, width=self.width(width), joint="curve")

    def ellipse(self, x, y, rx, ry, fill=None, outline=None, width: float = 0.0, feature: bool = False) -> None:
        (x0, y0), (x1, y1) = self.pts([x - rx, x + rx], [y - ry, y + ry], feature)
        self.draw.ellipse([x0, y0, x1, y1], fill=fill, outline=outline, width=self.width(width) if outline else 0)


def render_face(spec: dict, width: int, height: int, rng) -> Image.Image:
    """Draw one face described by ``spec`` (from the planners) as a ``width`` x ``height`` RGB image."""
    w2, h2 = 2 * width, 2 * height
    margin = int(0.25 * h2)
    canvas = _background(rng, w2 + 2 * margin, h2 + 2 * margin)
    square = width == height  # UTKFace chips are tighter crops than CelebA's aligned images
    scale = (0.33 if square else 0.27) * h2
    pen = _Pen(canvas, canvas.width / 2, canvas.height / 2 + (0.05 if square else 0.06) * h2, scale, spec["yaw"])
    colours = _colours(spec, rng)
    _draw_back_hair(pen, spec, colours, rng)
    _draw_body(pen, spec, colours, rng)
    _draw_ears(pen, spec, colours)
    _draw_head(pen, spec, colours)
    _draw_skin_marks(pen, spec, colours)
    _draw_beard(pen, spec, colours)
    _draw_eyes(pen, spec, colours)
    _draw_brows(pen, spec, colours)
    _draw_nose(pen, spec, colours)
    _draw_mouth(pen, spec, colours)
    _draw_mustache(pen, spec, colours)
    _draw_front_hair(pen, spec, colours, rng)
    _draw_earrings(pen, spec, rng)
    _draw_hat(pen, spec, rng)
    _draw_glasses(pen, spec, rng)
    image = _pose(canvas, spec, w2, h2).reduce(2)
    return _photometry(image, spec, rng)


def _background(rng, width: int, height: int) -> Image.Image:
    """Two related colours mixed by smooth random blobs, sometimes with stripes or bokeh."""
    import colorsys

    h, s, v = rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.15, 0.95)
    c1 = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255
    c2 = np.array(colorsys.hsv_to_rgb((h + rng.normal(0, 0.08)) % 1, s * rng.uniform(0.5, 1.2), np.clip(v + rng.normal(0, 0.2), 0.05, 1))) * 255
    gh, gw = (int(k) for k in rng.integers(2, 7, 2))
    t = rng.random((gh, gw, 1))
    small = np.clip(c1 * (1 - t) + c2 * t, 0, 255).astype(np.uint8)
    image = Image.fromarray(small, "RGB").resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image, "RGBA")
    style = rng.random()
    if style < 0.25:  # stripes (shelves, door frames, curtains)
        for _ in range(int(rng.integers(2, 6))):
            x = rng.uniform(0, width)
            draw.rectangle([x, 0, x + rng.uniform(0.02, 0.15) * width, height], fill=(*_rgb(rng.uniform(0, 255, 3)), int(rng.integers(30, 90))))
    elif style < 0.5:  # bokeh lights
        for _ in range(int(rng.integers(3, 9))):
            x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.03, 0.12) * width
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(*_rgb(rng.uniform(120, 255, 3)), int(rng.integers(30, 80))))
    return image


def _colours(spec: dict, rng) -> dict:
    """Per-image colours: the person's colours under a little variation."""
    skin = np.array(spec["skin"], float) * rng.uniform(0.97, 1.03)
    hair = np.array(spec["hair"], float)
    brow = hair * 0.75 if spec["hair_kind"] not in ("blond", "gray") else hair * 0.6
    lip = np.array(spec["lipstick_colour"] if spec["lipstick"] else spec["lip"], float)
    return {
        "skin": _rgb(skin), "skin_dark": _rgb(skin * 0.78), "line": (*_rgb(skin * 0.55), 255),
        "hair": _rgb(hair), "hair_dark": _rgb(hair * 0.7), "hair_light": _rgb(np.minimum(hair * 1.3 + 20, 255)),
        "brow": _rgb(brow), "beard": _rgb(hair * 0.85), "lip": _rgb(lip), "lip_dark": _rgb(lip * 0.7),
    }  # fmt: skip


def _half_width(spec: dict, y):
    """Half-width of the face outline at height ``y`` (-1 forehead top, +1 chin)."""
    y = np.asarray(y, float)
    a = spec["a"]
    top = a * np.clip(1 - np.abs(np.minimum(y, 0)) ** 2.4, 0, 1) ** (1 / 2.4)
    u = np.clip(y, 0, 1)
    k = spec["jaw_k"]
    bottom = a * (1 - (1 - spec["jaw_w"]) * u) * np.clip(1 - u**k, 0, 1) ** (1 / k)
    return np.where(y < 0, top, bottom)


def _outline(spec: dict, n: int = 48):
    ys = np.sin(np.linspace(-np.pi / 2, np.pi / 2, n))
    xs = _half_width(spec, ys)
    return np.concatenate([xs, -xs[::-1]]), np.concatenate([ys, ys[::-1]])


def _head_top(spec: dict, grow: float, bottom: float, n: int = 32):
    """Outer contour of hair (or a hat) over the skull, from the left side at ``bottom`` to the right."""
    rx, top = spec["a"] + grow, 1.05 + grow
    centre = -0.1
    ys = np.linspace(bottom, -top + centre, n // 2)
    rel = np.clip(np.abs(ys - centre) / top, 0, 1)
    xs = rx * (1 - rel**2.4) ** (1 / 2.4)
    return np.concatenate([-xs, xs[::-1]]), np.concatenate([ys, ys[::-1]])


def _draw_back_hair(pen: _Pen, s: dict, c: dict, rng) -> None:
    length = s["hair_len"]
    if s["bald"] or length < 0.5:
        return
    outer = s["a"] + s["hair_vol"] + 0.06
    ys = np.linspace(-0.3, length, 12)
    wave = 0.045 * np.sin(7 * ys + rng.uniform(0, 6)) if s["wavy"] else 0.0
    xs = outer + 0.14 * np.clip(ys, 0, 1) + wave
    top_x, top_y = _head_top(s, s["hair_vol"] + 0.04, -0.3)
    hem = np.linspace(1, -1, 7)
    hem_y = length + 0.05 * np.cos(hem * np.pi) + (0.05 * rng.standard_normal(7) if s["wavy"] else 0)
    all_x = np.concatenate([top_x, xs, hem * xs[-1], -xs[::-1]])
    all_y = np.concatenate([top_y, ys, hem_y, ys[::-1]])
    pen.polygon(all_x, all_y, c["hair_dark"])
    pen.polygon(all_x * 0.96, all_y * 0.99, c["hair"])
    for k in range(8):  # strands
        x0 = (outer + 0.05) * (1 if k % 2 else -1) * rng.uniform(0.7, 1.05)
        sy = np.linspace(-0.1, length - 0.1, 8)
        sx = x0 + (0.04 * np.sin(7 * sy + k) if s["wavy"] else 0.02 * sy * np.sign(x0))
        pen.line(sx, sy, (*c["hair_dark"], 120), 0.015)


def _draw_body(pen: _Pen, s: dict, c: dict, rng) -> None:
    pen.polygon([-0.32, 0.32, 0.37, -0.37], [0.5, 0.5, 1.5, 1.5], c["skin"])
    pen.ellipse(0, 0.92, 0.36, 0.16, fill=(*c["skin_dark"], 110))
    shirt = s["shirt"]
    xs = [-0.36, -1.0, -1.5, -1.8, -1.9, 1.9, 1.8, 1.5, 1.0, 0.36]
    ys = [1.32, 1.42, 1.6, 2.1, 4.0, 4.0, 2.1, 1.6, 1.42, 1.32]
    pen.polygon(xs, ys, shirt)
    if s["necktie"]:
        pen.polygon([-0.3, 0.3, 0.0], [1.3, 1.3, 2.0], (240, 240, 240))
        tie = _rgb(rng.uniform(20, 200, 3))
        pen.polygon([-0.07, 0.07, 0.05, -0.05], [1.34, 1.34, 1.45, 1.45], tie)
        pen.polygon([-0.05, 0.05, 0.11, 0.0, -0.11], [1.45, 1.45, 2.1, 2.22, 2.1], tie)
        pen.polygon([-0.3, -0.02, -0.16], [1.3, 1.36, 1.5], (225, 225, 225))
        pen.polygon([0.3, 0.02, 0.16], [1.3, 1.36, 1.5], (225, 225, 225))
    elif rng.random() < 0.5:  # V neckline
        pen.polygon([-0.34, 0.34, 0.0], [1.3, 1.3, 1.62 + 0.2 * rng.random()], c["skin"])
    else:  # round neckline
        pen.ellipse(0, 1.32, 0.36, 0.1 + 0.1 * rng.random(), fill=c["skin"])
    if s["necklace"]:
        gold = (212, 175, 55) if rng.random() < 0.6 else (200, 200, 212)
        xs = np.linspace(-0.33, 0.33, 12)
        pen.line(xs, 1.3 + 0.16 * (1 - (xs / 0.33) ** 2), gold, 0.025)
        pen.ellipse(0, 1.5, 0.035, 0.045, fill=gold)


def _draw_ears(pen: _Pen, s: dict, c: dict) -> None:
    x = float(_half_width(s, 0.0))
    for side in (-1, 1):
        pen.ellipse(side * x, 0.0, 0.095, s["ear_ry"], fill=c["skin"], outline=c["line"], width=0.012)
        pen.ellipse(side * (x + 0.025), 0.0, 0.04, s["ear_ry"] * 0.55, fill=(*c["skin_dark"], 150))


def _draw_head(pen: _Pen, s: dict, c: dict) -> None:
    if s["double_chin"]:
        pen.ellipse(0, 0.98, 0.3, 0.12, fill=c["skin"], outline=(*c["skin_dark"], 200), width=0.012)
    xs, ys = _outline(s)
    pen.polygon(xs, ys, c["skin"])
    pen.line(xs[len(xs) // 4 : 3 * len(xs) // 4], ys[len(ys) // 4 : 3 * len(ys) // 4], (*c["skin_dark"], 90), 0.012)


def _draw_skin_marks(pen: _Pen, s: dict, c: dict) -> None:
    """Cheeks, make-up blush and the marks of age."""
    cheek_x = s["eye_dx"] + 0.1
    if s["rosy"]:
        for side in (-1, 1):
            pen.ellipse(side * cheek_x, 0.2, 0.13, 0.09, fill=(225, 95, 110, 70), feature=True)
    if s["makeup"]:
        for side in (-1, 1):
            pen.ellipse(side * cheek_x, 0.12, 0.12, 0.07, fill=(230, 110, 130, 55), feature=True)
    if s["cheekbones"] and s["child"] < 0.3:
        for side in (-1, 1):
            pen.line([side * (s["a"] - 0.04), side * (s["a"] * 0.62)], [-0.02, 0.3], (*c["skin_dark"], 70), 0.03)
            pen.ellipse(side * (cheek_x - 0.02), 0.02, 0.1, 0.05, fill=(255, 255, 255, 40), feature=True)
    if s["bags"]:
        for side in (-1, 1):
            xs = side * s["eye_dx"] + np.linspace(-0.1, 0.1, 6)
            pen.line(xs, s["eye_y"] + s["eye_ry"] + 0.05 + 0.03 * np.sin(np.linspace(0, np.pi, 6)), (*c["skin_dark"], 150), 0.016, feature=True)
    if s["smile"]:  # smile folds at the mouth corners
        for side in (-1, 1):
            mx = side * (s["mouth_w"] * 1.2 + 0.05)
            pen.line([mx - side * 0.02, mx + side * 0.02, mx], [s["mouth_y"] - 0.12, s["mouth_y"] - 0.04, s["mouth_y"] + 0.04], (*c["skin_dark"], 130), 0.018, feature=True)
    _draw_age(pen, s, c)


def _draw_age(pen: _Pen, s: dict, c: dict) -> None:
    """Wrinkles, folds and shadows that deepen with age (``old`` in 0..1)."""
    old = s["old"]
    if old <= 0.05:
        return
    line = (*_rgb(np.array(c["skin_dark"]) * 0.85), int(70 + 185 * old))
    soft = (*_rgb(np.array(c["skin_dark"]) * 0.9), int(150 * old))
    ey, my, ny = s["eye_y"], s["mouth_y"], s["nose_y"]
    for k in range(1 + int(4 * old)):  # forehead
        xs = np.linspace(-0.32, 0.32, 7)
        pen.line(xs, -0.48 - 0.075 * k + 0.03 * (xs / 0.32) ** 2, line, 0.018, feature=True)
    for side in (-1, 1):
        nx, mx = s["nose_w"] + 0.05, s["mouth_w"] + 0.06
        fold_x, fold_y = side * np.array([nx, nx + 0.07, mx]), np.array([ny + 0.0, ny + 0.15, my + 0.07])
        pen.line(fold_x + side * 0.03, fold_y, soft, 0.06, feature=True)
        pen.line(fold_x, fold_y, line, 0.018, feature=True)
        pen.ellipse(side * s["eye_dx"], ey + s["eye_ry"] + 0.06, 0.12, 0.05, fill=soft, feature=True)
        xs = side * s["eye_dx"] + np.linspace(-s["eye_rx"], s["eye_rx"], 7)
        pen.line(xs, ey - s["eye_ry"] - 0.035 - 0.02 * np.sin(np.linspace(0, np.pi, 7)), line, 0.012, feature=True)
        ex = side * (s["eye_dx"] + s["eye_rx"] + 0.02)
        for dy in (-0.04, 0.0, 0.04):
            pen.line([ex, ex + side * 0.09], [ey + dy * 0.5, ey + dy * 1.8], line, 0.012, feature=True)
        if old > 0.35:  # marionette lines and jowls
            mx = side * s["mouth_w"]
            pen.line([mx, mx * 1.08], [my + 0.04, my + 0.24], line, 0.014, feature=True)
            jx = side * float(_half_width(s, 0.7))
            pen.line([jx * 0.92, jx * 0.75], [0.62, 0.86], soft, 0.05)


def _beard_region(s: dict, top: float, bulk: float):
    ys = np.linspace(top, 1.0, 10)
    xs = _half_width(s, ys) * (1 + 0.3 * bulk)
    ys_out = ys + bulk * ((ys - top) / (1 - top)) ** 2
    inner_x = np.array([s["a"] * 0.6, s["mouth_w"] + 0.1, s["mouth_w"] * 0.6, 0.0])
    inner_y = np.array([0.3, s["mouth_y"] - 0.12, s["nose_y"] + 0.1, s["nose_y"] + 0.12])
    all_x = np.concatenate([xs, -xs[::-1], -inner_x, inner_x[::-1]])
    all_y = np.concatenate([ys_out, ys_out[::-1], inner_y, inner_y[::-1]])
    return all_x, all_y


def _draw_beard(pen: _Pen, s: dict, c: dict) -> None:
    if s["stubble"]:
        xs, ys = _beard_region(s, 0.08, 0.0)
        pen.polygon(xs, ys, (*_rgb(np.array(c["beard"]) * 0.6 + 30), 80))
    if s["sideburns"]:
        for side in (-1, 1):
            x = float(_half_width(s, 0.1))
            pen.polygon(side * np.array([x + 0.01, x - 0.09, x - 0.09, x - 0.01]), [-0.4, -0.4, 0.14, 0.18], c["beard"])
    if s["beard"]:
        xs, ys = _beard_region(s, 0.06, s["beard_len"])
        pen.polygon(xs, ys, c["beard"])
        pen.polygon(xs * 0.9, ys * 0.97 + 0.03, (*c["hair_light"], 45))
    if s["goatee"]:
        my, bl = s["mouth_y"], s["beard_len"]
        pen.polygon([-0.17, 0.17, 0.22, 0.1, -0.1, -0.22], [my + 0.07, my + 0.07, 0.85, 1.0 + bl, 1.0 + bl, 0.85], c["beard"], feature=True)
        if s["mustache"]:
            for side in (-1, 1):
                pen.line([side * (s["mouth_w"] + 0.04), side * 0.2], [my - 0.02, 0.86], c["beard"], 0.05, feature=True)


def _eye_curves(s: dict, side: int):
    ex, ey, rx = side * s["eye_dx"], s["eye_y"], s["eye_rx"]
    ry = s["eye_ry"] * (0.75 if s["smile"] else 1.0)
    t = np.linspace(0, 1, 11)
    xs = ex - rx + 2 * rx * t
    upper = ey - ry * np.sin(np.pi * t) ** 0.8 - 0.01 * side * (t - 0.5)
    lower = ey + 0.75 * ry * np.sin(np.pi * t)
    return xs, upper, lower


def _draw_eyes(pen: _Pen, s: dict, c: dict) -> None:
    for side in (-1, 1):
        xs, upper, lower = _eye_curves(s, side)
        if s["makeup"]:
            pen.polygon(np.concatenate([xs, xs[::-1]]), np.concatenate([upper, upper[::-1] - 0.07]), (150, 90, 140, 110), feature=True)
        pen.polygon(np.concatenate([xs, xs[::-1]]), np.concatenate([upper, lower[::-1]]), (244, 242, 236), feature=True)
        ix = side * s["eye_dx"] + 0.02 * (s["yaw"] / 0.12)
        for radius, colour in ((min(0.052, s["eye_ry"] * 1.1), s["iris"]), (0.02, (15, 10, 10))):
            angle = np.linspace(0, 2 * np.pi, 16)
            cx, cy = ix + radius * np.cos(angle), s["eye_y"] + radius * np.sin(angle)
            top = np.interp(cx, xs, upper)
            bottom = np.interp(cx, xs, lower)
            pen.polygon(cx, np.clip(cy, top, bottom), colour, feature=True)
        lid = 0.03 if s["makeup"] else 0.016 + 0.006 * (not s["male"])
        pen.line(xs, upper, (30, 20, 20), lid, feature=True)
        pen.line(xs[2:-1], lower[2:-1], (*c["line"][:3], 110), 0.008, feature=True)
        if s["makeup"]:
            pen.line([xs[-1] if side > 0 else xs[0], (xs[-1] if side > 0 else xs[0]) + side * 0.05], [upper[-1], upper[-1] - 0.04], (30, 20, 20), 0.02, feature=True)


def _draw_brows(pen: _Pen, s: dict, c: dict) -> None:
    t = np.linspace(0, 1, 9)
    base = s["eye_y"] - s["brow_gap"]
    peak = 0.65 if s["arched"] else 0.5
    arch = s["arch"] * np.sin(np.pi * np.clip(t / (2 * peak), 0, 0.5) + np.pi * np.clip((t - peak) / (2 * (1 - peak)), 0, 0.5))
    taper = 1 - (0.55 if not s["male"] else 0.25) * t
    for side in (-1, 1):
        xs = side * (s["eye_dx"] - 0.15 + 0.33 * t)
        mid = base - arch + 0.02 * t
        half = 0.5 * s["brow_th"] * taper
        pen.polygon(np.concatenate([xs, xs[::-1]]), np.concatenate([mid - half, (mid + half)[::-1]]), c["brow"], feature=True)


def _draw_nose(pen: _Pen, s: dict, c: dict) -> None:
    ny, nw = s["nose_y"], s["nose_w"]
    shade = (*c["skin_dark"], 150)
    pen.line([0.07, 0.09, nw * 0.9], [s["eye_y"] + 0.06, ny - 0.12, ny - 0.02], (*c["skin_dark"], 80), 0.014, feature=True)
    for side in (-1, 1):
        pen.line([side * nw, side * (nw + 0.02), side * nw * 0.6], [ny - 0.06, ny, ny + 0.03], shade, 0.016, feature=True)
        pen.ellipse(side * nw * 0.5, ny + 0.02, 0.03, 0.016, fill=(*c["line"][:3], 170), feature=True)
    tip = 0.04 if s["pointy_nose"] else 0.055
    pen.ellipse(0, ny - 0.02, tip, tip * 0.8, fill=(255, 255, 255, 35), feature=True)


def _draw_mouth(pen: _Pen, s: dict, c: dict) -> None:
    t = np.linspace(-1, 1, 13)
    w, my, th = s["mouth_w"] * (1.25 if s["smile"] else 1.0), s["mouth_y"], s["lip_th"]
    xs = w * t
    line = my - (0.09 if s["smile"] else -0.005) * t**2
    gap = (0.06 if s["smile"] else 0.025) * (1 - t**2) ** 0.8 if s["open"] else 0.0 * t
    bow = 1 - 0.35 * np.exp(-((t / 0.18) ** 2))
    top = line - th * (1 - t**2) ** 0.6 * bow
    bottom = line + gap + 1.25 * th * (1 - t**2) ** 0.7
    if s["open"]:
        pen.polygon(np.concatenate([xs, xs[::-1]]), np.concatenate([line - 0.005, (line + gap + 0.005)[::-1]]), (70, 25, 30), feature=True)
        if s["smile"]:
            pen.polygon(np.concatenate([xs * 0.85, xs[::-1] * 0.85]), np.concatenate([line, (line + gap * 0.65)[::-1]]), (238, 236, 226), feature=True)
    pen.polygon(np.concatenate([xs, xs[::-1]]), np.concatenate([top, line[::-1]]), c["lip_dark"], feature=True)
    pen.polygon(np.concatenate([xs, xs[::-1]]), np.concatenate([line + gap, bottom[::-1]]), c["lip"], feature=True)
    pen.line(xs, line + (gap if s["open"] else 0), (*c["lip_dark"], 200), 0.01, feature=True)


def _draw_mustache(pen: _Pen, s: dict, c: dict) -> None:
    if not s["mustache"]:
        return
    w, my, ny = s["mouth_w"], s["mouth_y"], s["nose_y"]
    xs = np.array([-(w + 0.05), -w * 0.7, -0.1, 0.0, 0.1, w * 0.7, w + 0.05, w * 0.5, 0.0, -w * 0.5])
    ys = np.array([my + 0.02, my - 0.09, ny + 0.06, ny + 0.08, ny + 0.06, my - 0.09, my + 0.02, my - 0.045, my - 0.05, my - 0.045])
    pen.polygon(xs, ys, c["beard"], feature=True)


def _draw_front_hair(pen: _Pen, s: dict, c: dict, rng) -> None:
    if s["bald"]:
        ys = np.linspace(-0.6, -0.08, 8)
        edge = _half_width(s, ys)
        for side in (-1, 1):
            pen.polygon(side * np.concatenate([edge + 0.05, (edge - 0.07 + 0.04 * (ys[::-1] < -0.5))[::-1]]), np.concatenate([ys, ys[::-1]]), c["hair"])
        pen.ellipse(-0.2, -0.8, 0.15, 0.06, fill=(255, 255, 255, 50))
        return
    vol, hl = s["hair_vol"], s["hairline"]
    if s["receding"]:
        hl -= 0.12
    temple_y = -0.12
    xt = float(_half_width(s, temple_y)) + 0.01
    outer_x, outer_y = _head_top(s, vol, temple_y)
    r = np.linspace(1, -1, 15)
    if s["bangs"]:
        fringe = s["eye_y"] - s["brow_gap"] - 0.05
        inner_y = fringe + (temple_y - fringe) * np.abs(r) ** 6 + 0.035 * (np.arange(15) % 2) * (np.abs(r) < 0.9)
    else:
        inner_y = hl + (temple_y - hl) * np.abs(r) ** 5
        if s["receding"]:
            inner_y -= 0.16 * np.sin(np.pi * np.abs(r)) ** 2
    inner_x = xt * r
    pen.polygon(np.concatenate([outer_x, inner_x]), np.concatenate([outer_y, inner_y]), c["hair"])
    pen.line(outer_x[4:-4] * 0.8, outer_y[4:-4] * 0.93 - 0.02, (*c["hair_light"], 70), 0.05)
    if s["straight"] or s["wavy"]:
        for k in range(7):
            x0 = rng.uniform(-0.8, 0.8) * xt
            ys = np.linspace(-1.0 - vol * 0.8, min(-0.2, hl - 0.02), 6)
            xs = x0 * (1 + 0.3 * (ys - ys[0])) + (0.03 * np.sin(12 * ys + k) if s["wavy"] else 0.0)
            pen.line(xs, ys, (*c["hair_dark"], 110), 0.012)
    if s["hair_len"] > 0.9 and not s["hat"] and rng.random() < 0.8:
        for side in (-1, 1) if rng.random() < 0.8 else (int(rng.choice([-1, 1])),):
            ys = np.linspace(-0.45, min(s["hair_len"], 2.4), 10)
            inner = np.maximum(_half_width(s, np.minimum(ys, 0.95)) - 0.07, 0.3)
            outer = s["a"] + vol + 0.06 + 0.14 * np.clip(ys, 0, 1)
            wave = 0.04 * np.sin(8 * ys + side) if s["wavy"] else 0.0
            pen.polygon(side * np.concatenate([inner + wave, (outer + wave)[::-1]]), np.concatenate([ys, ys[::-1]]), c["hair"])
            pen.line(side * (inner + outer) / 2 + side * wave, ys, (*c["hair_dark"], 110), 0.015)


def _draw_earrings(pen: _Pen, s: dict, rng) -> None:
    if not s["earrings"]:
        return
    x = float(_half_width(s, 0.12)) + 0.02
    y = -0.03 + s["ear_ry"] - 0.02
    colour = [(212, 175, 55), (205, 205, 215), _rgb(rng.uniform(40, 255, 3))][int(rng.integers(0, 3))]
    kind = rng.random()
    for side in (-1, 1):
        if kind < 0.4:
            pen.ellipse(side * x, y + 0.06, 0.05, 0.06, outline=colour, width=0.018)
        elif kind < 0.7:
            pen.ellipse(side * x, y, 0.03, 0.03, fill=colour)
        else:
            pen.line([side * x, side * x], [y, y + 0.09], colour, 0.012)
            pen.ellipse(side * x, y + 0.11, 0.035, 0.045, fill=colour)


def _draw_hat(pen: _Pen, s: dict, rng) -> None:
    if not s["hat"]:
        return
    colour = s["hat_colour"]
    dark = _rgb(np.array(colour) * 0.7)
    a = s["a"]
    if s["hat_kind"] == "beanie":
        xs, ys = _head_top(s, s["hair_vol"] + 0.07, -0.5)
        pen.polygon(xs, ys, colour)
        pen.polygon([-a - 0.1, a + 0.1, a + 0.12, -a - 0.12], [-0.72, -0.72, -0.5, -0.5], dark)
    elif s["hat_kind"] == "cap":
        xs, ys = _head_top(s, s["hair_vol"] + 0.05, -0.58)
        pen.polygon(xs, ys, colour)
        pen.ellipse(0, -0.58, a * 0.85, 0.1, fill=dark, feature=True)
        pen.ellipse(0, -1.0 - s["hair_vol"], 0.05, 0.03, fill=dark)
    else:
        pen.polygon([-a * 0.78, a * 0.78, a * 0.7, -a * 0.7], [-0.72, -0.72, -1.5, -1.5], colour)
        pen.polygon([-a * 0.78, a * 0.78, a * 0.77, -a * 0.77], [-0.72, -0.72, -0.86, -0.86], dark)
        pen.ellipse(0, -0.72, a + 0.45, 0.13, fill=colour, outline=dark, width=0.02)


def _draw_glasses(pen: _Pen, s: dict, rng) -> None:
    if not s["glasses"]:
        return
    frame = [(20, 20, 25), (90, 55, 30), (170, 170, 180), _rgb(rng.uniform(0, 200, 3))][int(rng.integers(0, 4))]
    rx, ry, ey = s["eye_rx"] + 0.06, min(s["eye_ry"] + 0.08, 0.14), s["eye_y"]
    width = rng.uniform(0.018, 0.035)
    fill = (20, 20, 28, 215) if s["sunglasses"] else (255, 255, 255, 25)
    for side in (-1, 1):
        ex = side * s["eye_dx"]
        pen.ellipse(ex, ey, rx, ry, fill=fill, outline=frame, width=width, feature=True)
        pen.line([ex + side * rx, side * float(_half_width(s, ey)) - side * s["yaw"]], [ey - 0.02, ey], frame, width, feature=True)
    inner = s["eye_dx"] - rx
    pen.line([-inner, 0, inner], [ey - 0.03, ey - 0.06, ey - 0.03], frame, width, feature=True)


def _pose(canvas: Image.Image, spec: dict, width: int, height: int) -> Image.Image:
    """Rotate, zoom and shift the drawing into a ``width`` x ``height`` frame."""
    theta = math.radians(spec["rot"])
    k = spec["zoom"]
    tx, ty = spec["shift"][0] * width, spec["shift"][1] * height
    a, b = math.cos(theta) / k, -math.sin(theta) / k
    d, e = math.sin(theta) / k, math.cos(theta) / k
    ox, oy = width / 2 + tx, height / 2 + ty
    cx, cy = canvas.width / 2, canvas.height / 2
    data = (a, b, cx - a * ox - b * oy, d, e, cy - d * ox - e * oy)
    return canvas.transform((width, height), Image.AFFINE, data, resample=Image.BILINEAR)


def _photometry(image: Image.Image, spec: dict, rng) -> Image.Image:
    """Lighting gradient, exposure, white balance, contrast, sensor noise and blur."""
    arr = np.asarray(image, dtype=np.float32)
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle)) * rng.uniform(0.0, 0.5)
    gain = rng.uniform(0.8, 1.15) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    arr = (arr - 128) * rng.uniform(0.85, 1.15) + 128
    arr = arr * (1 + ramp)[..., None] * gain
    arr += rng.normal(0, rng.uniform(1, 6), arr.shape).astype(np.float32)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    radius = (rng.uniform(1.6, 2.4) if spec["blurry"] else rng.uniform(0.2, 0.7)) * h / 128
    return image.filter(ImageFilter.GaussianBlur(radius))
