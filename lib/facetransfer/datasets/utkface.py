"""UTKFace (Zhang, Song, Qi, 2017): labels live in the file names.

A UTKFace folder holds files named ``[age]_[gender]_[race]_[date&time].jpg`` or, in the
aligned-and-cropped set, ``[age]_[gender]_[race]_[date&time].jpg.chip.jpg``. UTKFace's
gender 0 is MALE, so facetransfer's ``gender`` = 1 - UTK gender (1 male, 0 female). ``age``
is kept in years (0-116) and ``race`` as a name (White, Black, Asian, Indian, Others).
A name with a missing field, a non-numeric field, an age outside 0-116, a gender other
than 0/1, a race outside 0-4 or a date&time that is not digits is skipped as
``malformed name: ...`` and never parsed by guesswork. No subject ids exist (``subject``
is NA). The layout is ``utkface-chip`` (all ``.jpg.chip.jpg``), ``utkface-jpg`` (none) or
``utkface-mixed``. Loading checks files only; no image is decoded or cropped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from facetransfer.datasets import common

RACES = ("White", "Black", "Asian", "Indian", "Others")
MAX_AGE = 116
CHIP = ".jpg.chip.jpg"
LOOKED_FOR = "image files named [age]_[gender]_[race]_[date&time].jpg or .jpg.chip.jpg"
_LOOKS_UTK = re.compile(r"\d+_\d+_.*\.jpg", re.IGNORECASE | re.ASCII)
_DIGITS = re.compile(r"[0-9]+")
_EXPECTED = "expected [age]_[gender]_[race]_[date&time].jpg"


def probe(folder: Path) -> str | None:
    with os.scandir(folder) as it:
        if any(_LOOKS_UTK.fullmatch(e.name) for e in it):
            return "utkface"
    return None


def parse_name(name: str) -> tuple[int, int, str] | str:
    """``25_0_2_20170116174525125.jpg.chip.jpg`` → (age 25, gender 1, "Asian"), or a reason."""
    lower = name.lower()
    if lower.endswith(CHIP):
        stem = name[: -len(CHIP)]
    elif lower.endswith(".jpg"):
        stem = name[:-4]
    else:
        return f"{common.MALFORMED_NAME}: not a .jpg file; {_EXPECTED}"
    fields = stem.split("_")
    if len(fields) < 4:
        return f"{common.MALFORMED_NAME}: missing field ({len(fields)} of 4); {_EXPECTED}"
    if len(fields) > 4:
        return f"{common.MALFORMED_NAME}: {len(fields)} fields, not 4; {_EXPECTED}"
    for label, text in zip(("age", "gender", "race", "date&time"), fields, strict=True):
        if not _DIGITS.fullmatch(text):
            return f"{common.MALFORMED_NAME}: {label} {text!r} is not a number; {_EXPECTED}"
    age, gender, race = (int(f) for f in fields[:3])
    if age > MAX_AGE:
        return f"{common.MALFORMED_NAME}: age {age} is outside 0-{MAX_AGE}"
    if gender not in (0, 1):
        return f"{common.MALFORMED_NAME}: gender {gender} is not 0 (male) or 1 (female)"
    if race >= len(RACES):
        return f"{common.MALFORMED_NAME}: race {race} is outside 0-4"
    return age, 1 - gender, RACES[race]


def load(given_root, root: Path, layout: str, *, progress: bool = True) -> common.Dataset:
    rows = []
    for path in common.list_images(root):
        parsed = parse_name(Path(path).name)
        if isinstance(parsed, str):
            rows.append((path, parsed, None, None, None))
        else:
            rows.append((path, None, *parsed))
    frame = pd.DataFrame(rows, columns=["path", "_reason", "age", "gender", "race"])
    frame["_reason"] = frame["_reason"].astype(object)
    frame["age"] = frame["age"].astype("float64")
    lower = frame["path"].str.lower()
    chips = int(lower.str.endswith(CHIP).sum())
    plain = int(lower.str.endswith(".jpg").sum()) - chips
    layout = "utkface-mixed" if chips and plain else "utkface-chip" if chips else "utkface-jpg"
    info = {"images": str(root), "chip_files": chips, "jpg_files": plain}
    return common.finish(
        "utkface", given_root, root, layout, frame, [], extra=["race"], info=info,
        labels=("gender", "age"), progress=progress,
    )  # fmt: skip
