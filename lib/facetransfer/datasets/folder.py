"""The ``folder`` dataset: any image collection described by one CSV.

The spec (params ``data.folder`` or ``--folder key=value``) names the CSV (relative to the
root), its image path column and its label columns::

    csv: labels.csv          path_column: path
    gender_column: sex       male_value: M        female_value: F
    age_column: age          age_group_column: null     subject_column: person

Image paths are relative to the CSV's folder (absolute paths are used as they are).
Values are compared as strings (``male_value: 1`` matches the cell ``1``, not ``1.0``).
An empty label cell gives NA (the record is kept; ``facetransfer.data.prepare``
quarantines it for the tasks that need that label); any other value that is not
``male_value``/``female_value``, not an age in 0-120 years, or not an age group (0-7 or
an Adience group such as ``(25, 32)``) is skipped as ``bad label value``. Other CSV
columns are kept as text columns under their own names (e.g. for subgroup metrics); a
column whose name facetransfer uses itself (:data:`RESERVED`, e.g. ``split`` or ``row``)
and that the spec does not name is refused in one line, and so is a header that names a
column twice (which of the two was meant cannot be known). Image files in the folders
the CSV points into that no row lists are skipped as ``image file without label row``.
Loading checks files only; no image is decoded or cropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from facetransfer.datasets import common
from facetransfer.datasets.adience import AGE_GROUPS
from facetransfer.errors import DataError, ParamError
from facetransfer.params import did_you_mean

DEFAULTS = {
    "csv": "labels.csv",
    "path_column": "path",
    "gender_column": None,
    "male_value": 1,
    "female_value": 0,
    "age_column": None,
    "age_group_column": None,
    "subject_column": None,
}
MAX_AGE = 120
# Columns facetransfer adds to the records or predictions itself: a CSV column of that name
# would be overwritten or would overwrite them.
RESERVED = (*common.RECORD_COLUMNS, "row", "split", "y_true", "y_pred", "prob", "correct")
_GROUP_TEXT = {**{f"({lo}, {hi})": i for i, (lo, hi) in enumerate(AGE_GROUPS)}, **{str(i): i for i in range(8)}}


def spec_of(folder: dict | None) -> dict:
    """The spec with defaults filled; ParamError on an unknown key or no label column."""
    if not folder:
        raise ParamError("data.folder", "is required with dataset folder (csv, path_column and at least one of gender_column, age_column, age_group_column)")
    unknown = [k for k in folder if k not in DEFAULTS]
    if unknown:
        hint = did_you_mean(unknown[0], DEFAULTS)
        raise ParamError(f"data.folder.{unknown[0]}", f"unknown key{hint}; allowed keys: {', '.join(DEFAULTS)}")
    spec = {**DEFAULTS, **{k: v for k, v in folder.items() if v is not None}}
    if not any(spec[k] for k in ("gender_column", "age_column", "age_group_column")):
        raise ParamError("data.folder", "names no label column; set gender_column, age_column or age_group_column")
    return spec


def looked_for(spec: dict) -> str:
    return f"{spec['csv']} (data.folder.csv)"


def make_probe(spec: dict):
    def probe(folder: Path) -> str | None:
        return "folder-csv" if (folder / spec["csv"]).is_file() else None

    return probe


def _gender(text: str, spec: dict):
    if text == "":
        return pd.NA, None
    if text == str(spec["male_value"]):
        return 1, None
    if text == str(spec["female_value"]):
        return 0, None
    return pd.NA, f"{common.BAD_LABEL}: {spec['gender_column']}={text!r} (male_value {spec['male_value']!r}, female_value {spec['female_value']!r})"


def _age(text: str, spec: dict):
    if text == "":
        return float("nan"), None
    try:
        age = float(text)
    except ValueError:
        age = float("nan")
    if not 0 <= age <= MAX_AGE:  # NaN fails too
        return float("nan"), f"{common.BAD_LABEL}: {spec['age_column']}={text!r} (allowed ages 0-{MAX_AGE})"
    return age, None


def _age_group(text: str, spec: dict):
    if text == "":
        return pd.NA, None
    if text in _GROUP_TEXT:
        return _GROUP_TEXT[text], None
    return pd.NA, f"{common.BAD_LABEL}: {spec['age_group_column']}={text!r} (allowed 0-7 or an Adience group such as (25, 32))"


LABEL_PARSERS = {"gender": ("gender_column", _gender), "age": ("age_column", _age), "age_group": ("age_group_column", _age_group)}


def _check_header(path: Path, header: list[str], named: dict) -> None:
    """DataError for a column named twice, or a reserved name the spec does not map."""
    seen = set()
    for number, column in enumerate(header, start=1):
        if column and column in seen:
            raise DataError(f"{path}: line 1 names column {column!r} twice (columns {header.index(column) + 1} and {number}); expected unique column names")
        seen.add(column)
    for column in header:
        if column not in named.values() and (column in RESERVED or column.startswith("_")):
            raise DataError(
                f"{path}: column {column!r} has a name facetransfer uses itself ({', '.join(RESERVED)}, _*); "
                "rename it in the CSV, or name it in data.folder if it is that label"
            )


def load(given_root, root: Path, layout: str, *, spec: dict, progress: bool = True) -> common.Dataset:
    path = root / spec["csv"]
    rows = common.text_rows(path, delimiter=",")
    _, header = next(rows, (1, []))
    named = {k: spec[k] for k in ("path_column", "gender_column", "age_column", "age_group_column", "subject_column") if spec[k]}
    for key, column in named.items():
        if column not in header:
            raise DataError(f"{path}: no column {column!r} (data.folder.{key}); columns: {', '.join(header)}")
    _check_header(path, header, named)
    labels = tuple(name for name, (key, _) in LABEL_PARSERS.items() if spec[key])
    extra = [c for c in header if c and c not in named.values()]
    base = path.parent
    skipped: list[dict] = []
    records = []
    for number, fields in rows:
        cell = dict(zip(header, fields, strict=False))
        image = cell.get(spec["path_column"], "")
        if not image:
            skipped.append({"path": f"{path}:{number}", "reason": f"{common.MALFORMED_ROW}: line {number} has no {spec['path_column']}"})
            continue
        row = {"path": os.path.abspath(base / image), "_reason": None}
        if len(fields) != len(header):
            row["_reason"] = f"{common.MALFORMED_ROW}: {path.name} line {number} has {len(fields)} fields, expected {len(header)}"
        for name in labels:
            key, parse = LABEL_PARSERS[name]
            row[name], reason = parse(cell.get(spec[key], ""), spec)
            row["_reason"] = row["_reason"] or reason
        if spec["subject_column"]:
            row["subject"] = cell.get(spec["subject_column"]) or pd.NA
        row.update({c: cell.get(c, "") for c in extra})
        records.append(row)
    frame = pd.DataFrame(records, columns=["path", "_reason", *labels, *(["subject"] if spec["subject_column"] else []), *extra])
    frame["_reason"] = frame["_reason"].astype(object)
    image_dirs = sorted(d for d in {Path(p).parent for p in frame["path"]} if d.is_dir())
    info = {"labels_csv": str(path), "spec": {k: spec[k] for k in DEFAULTS}}
    return common.finish(
        "folder", given_root, root, layout, frame, skipped, image_dirs=image_dirs, extra=extra,
        info=info, labels=labels, progress=progress,
    )  # fmt: skip
