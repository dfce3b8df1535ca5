"""Adience (Eidinger, Enbar, Hassner, 2014): five subject-exclusive folds of aligned faces.

Layout::

    aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>
    fold_0_data.txt ... fold_4_data.txt                    (layout adience-all)
    fold_frontal_0_data.txt ... fold_frontal_4_data.txt    (layout adience-frontal)

``frontal=None`` (the default) reads the frontal folds when any is present (all five are
then required) and the full folds otherwise, and says which in ``Dataset.info["folds_read"]`` (shown by the
summary and kept in each run's provenance); ``frontal=True`` asks for the frontal folds
(missing ones are a one-line DataError); ``frontal=False`` reads ``fold_*_data.txt``.

The fold files are tab separated with the header ``user_id original_image face_id age
gender x y dx dy tilt_ang fiducial_yaw_angle fiducial_score``. ``subject`` = user_id,
``fold`` = the fold number, ``age_raw`` keeps the age text, ``age`` is NaN (Adience gives
ranges) and ``age_group`` is 0..7 by the rule below.

Gender: ``m`` → 1, ``f`` → 0. A row with gender ``u`` or empty is KEPT with gender NA:
it is still a good age-group example, and ``facetransfer.data.prepare`` quarantines it for
the tasks that need gender. ``summary()['n_usable']`` counts the records with a known
gender. Any other gender value is skipped as ``bad label value``.

Age rule (:func:`age_group`), for the 8 groups of :data:`AGE_GROUPS` (bounds inclusive):

* one of the 8 groups, e.g. ``(25, 32)`` → that group;
* another range ``(a, b)`` with a <= b → the group holding its midpoint, e.g. ``(8, 23)``
  → 15.5 → ``(15, 20)``; ``(38, 48)`` → 43 → ``(38, 43)``;
* a single number → the group holding it, e.g. ``5`` → ``(4, 6)``, ``42`` → ``(38, 43)``;
* a value in a gap between two groups → the group whose nearest bound is closest, ties
  to the younger group: ``3`` → ``(0, 2)`` (tie), ``13`` → ``(8, 12)``, ``35`` → ``(25, 32)``
  (tie), ``55`` → ``(48, 53)``; above 100 → ``(60, 100)``;
* ``None``, an empty field or anything unparseable → age_group NA (the row is kept, for
  gender).

With ``frontal=True``, images in ``aligned/`` that only the full fold files list are
skipped as ``not in the frontal folds`` (not as unlabelled). Loading checks files only;
no image is decoded or cropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from facetransfer.datasets import common
from facetransfer.errors import DataError

AGE_GROUPS = ((0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100))
AGE_GROUP_NAMES = tuple(f"{lo}-{hi}" for lo, hi in AGE_GROUPS)
COLUMNS = ("user_id", "original_image", "face_id", "age", "gender")
GENDERS = {"m": 1, "f": 0, "u": pd.NA, "": pd.NA}
NOT_FRONTAL = "not in the frontal folds"
LOOKED_FOR = "fold_frontal_0_data.txt or fold_0_data.txt beside aligned/"
_RANGE = re.compile(r"\(\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def fold_names(frontal: bool) -> list[str]:
    return [f"fold_frontal_{i}_data.txt" if frontal else f"fold_{i}_data.txt" for i in range(5)]


def probe(folder: Path) -> str | None:
    if (folder / fold_names(True)[0]).is_file():
        return "adience-frontal"
    if (folder / fold_names(False)[0]).is_file():
        return "adience-all"
    return None


def group_of(value: float) -> int:
    """Index of the group holding ``value``; in a gap, the nearest bound (ties younger)."""
    distances = [0.0 if lo <= value <= hi else min(abs(value - lo), abs(value - hi)) for lo, hi in AGE_GROUPS]
    return distances.index(min(distances))  # index() returns the first, i.e. younger, on ties


def age_group(text: str) -> int | None:
    """Adience age text → group 0..7 by the documented rule, or None when unparseable."""
    text = text.strip()
    if match := _RANGE.fullmatch(text):
        lo, hi = float(match[1]), float(match[2])
        return group_of((lo + hi) / 2) if lo <= hi else None
    if _NUMBER.fullmatch(text):
        return group_of(float(text))
    return None


def _image_path(root: Path, fields: dict[str, str]) -> str:
    name = f"landmark_aligned_face.{fields['face_id']}.{fields['original_image']}"
    return str(root / "aligned" / fields["user_id"] / name)


def _fold_rows(path: Path):
    """(header index by column, rows) of one fold file; DataError on a wrong header."""
    rows = common.text_rows(path, delimiter="\t")
    _, header = next(rows, (1, []))
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: header lacks {', '.join(missing)}; expected the tab-separated header {' '.join(COLUMNS)} x y dx dy ...")
    return {c: header.index(c) for c in COLUMNS}, rows


def _read_fold(root: Path, path: Path, fold: int, skipped: list[dict]) -> list[dict]:
    index, rows = _fold_rows(path)
    need = max(index.values()) + 1
    records = []
    for number, fields in rows:
        if len(fields) < need or not all(fields[index[c]] for c in ("user_id", "original_image", "face_id")):
            skipped.append({"path": f"{path}:{number}", "reason": f"{common.MALFORMED_ROW}: {path.name} line {number} lacks user_id, original_image or face_id"})
            continue
        row = {c: fields[i] for c, i in index.items()}
        gender = row["gender"].lower()
        reason = None if gender in GENDERS else f"{common.BAD_LABEL}: gender={row['gender']!r} in {path.name} (allowed m, f, u or empty)"
        records.append({
            "path": _image_path(root, row), "_reason": reason, "gender": GENDERS.get(gender, pd.NA),
            "age_group": age_group(row["age"]), "age_raw": row["age"], "subject": row["user_id"],
            "fold": fold, "face_id": row["face_id"],
        })  # fmt: skip
    return records


def _listed_paths(root: Path, paths: list[Path]) -> set[str]:
    listed = set()
    for path in paths:
        index, rows = _fold_rows(path)
        for _, fields in rows:
            if len(fields) > max(index.values()):
                listed.add(_image_path(root, {c: fields[i] for c, i in index.items()}))
    return listed


def _choose_folds(root: Path, frontal: bool | None) -> tuple[bool, str]:
    """(read the frontal folds?, the sentence saying which files were read and why)."""
    have_frontal = any((root / name).is_file() for name in fold_names(True))  # an incomplete set is an error, not a fallback
    if frontal is None:
        if have_frontal:
            return True, "fold_frontal_*_data.txt (present; data.frontal: null)"
        return False, "fold_*_data.txt (no fold_frontal_*_data.txt; data.frontal: null)"
    return frontal, f"{'fold_frontal_*_data.txt' if frontal else 'fold_*_data.txt'} (data.frontal: {str(frontal).lower()})"


def load(given_root, root: Path, layout: str, *, frontal: bool | None = None, progress: bool = True) -> common.Dataset:
    frontal, folds_read = _choose_folds(root, frontal)
    wanted = [root / name for name in fold_names(frontal)]
    missing = [p.name for p in wanted if not p.is_file()]
    if missing:
        hint = " (set data.frontal: null or false / --all-folds to read fold_*_data.txt)" if frontal else ""
        raise DataError(f"adience: missing fold files in {root}: {', '.join(missing)}{hint}")
    aligned = root / "aligned"
    if not aligned.is_dir():
        found = " (found faces/; facetransfer reads the aligned/ variant)" if (root / "faces").is_dir() else ""
        raise DataError(f"adience: no aligned/ image folder in {root}{found}")
    skipped: list[dict] = []
    rows = []
    for fold, path in enumerate(wanted):
        rows += _read_fold(root, path, fold, skipped)
    frame = pd.DataFrame(rows, columns=["path", "_reason", "gender", "age_group", "age_raw", "subject", "fold", "face_id"])
    frame["_reason"] = frame["_reason"].astype(object)
    orphan_reasons = {}
    all_folds = [root / name for name in fold_names(False)]
    if frontal and all(p.is_file() for p in all_folds):
        orphan_reasons = dict.fromkeys(_listed_paths(root, all_folds), NOT_FRONTAL)
    info = {"folds_read": folds_read, "folds": [str(p) for p in wanted], "images": str(aligned)}
    return common.finish(
        "adience", given_root, root, "adience-frontal" if frontal else "adience-all", frame, skipped,
        image_dirs=common.subfolders(aligned), orphan_reasons=orphan_reasons, extra=["age_raw", "face_id"],
        info=info, labels=("gender", "age_group"), progress=progress,
    )  # fmt: skip
