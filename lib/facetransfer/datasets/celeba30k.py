"""CelebA30k: the 30,000-image CelebA subset with 10 labels, as an image folder + one CSV.

Accepted copies: the CSV (the one ``*.csv`` in the top folder whose header has a ``Male``
column) has a file-name column named ``image_id`` or ``filename``, or an unnamed (empty)
first column, and the 10 label columns :data:`LABELS`; labels are 0/1 or -1/1, detected
per file by the majority of its rows (rows in the other encoding are quarantined). The image folder is the top folder or a
subfolder (up to two levels deep) where the CSV's file names are found. Anything else
fails with a one-line DataError naming what was expected. ``gender`` = ``Male``; the 10
labels are kept as 0/1 int8 columns; no subject, partition or folds. Loading reads labels
and checks files only; no image is decoded or cropped.
"""

from __future__ import annotations

import os
from pathlib import Path

from facetransfer.datasets import common
from facetransfer.errors import DataError

LABELS = [
    "Male", "Blond_Hair", "Eyeglasses", "Wearing_Earrings", "Bangs", "Young", "Smiling",
    "Heavy_Makeup", "Straight_Hair", "Black_Hair",
]  # fmt: skip
NAME_COLUMNS = ("image_id", "filename")
LOOKED_FOR = "a *.csv file whose header has a Male column, beside the image folder"
_SAMPLE = 200  # file names tried when choosing the image folder


def _label_csvs(folder: Path) -> list[Path]:
    csvs = sorted(p for p in folder.glob("*.csv") if p.is_file())
    return [p for p in csvs if "Male" in common.read_header(p)]


def probe(folder: Path) -> str | None:
    return "csv+images" if _label_csvs(folder) else None


def _name_column(path: Path, header: list[str]) -> int:
    named = [i for i, cell in enumerate(header) if cell in NAME_COLUMNS]
    if len(named) > 1:
        raise DataError(f"{path}: both image_id and filename columns; expected one file-name column")
    if named:
        return named[0]
    if header and header[0] == "":
        return 0
    raise DataError(
        f"{path}: no file-name column; expected a first column named image_id or filename "
        f"(or unnamed), found {', '.join(repr(c) for c in header[:3])}..."
    )


def _image_folder(root: Path, names: list[str]) -> Path:
    """The folder (root or a subfolder ≤ 2 deep) holding the most of the first names."""
    candidates = [root]
    for child in common.subfolders(root):
        candidates += [child, *common.subfolders(child)]
    sample = names[:_SAMPLE]
    scores = [sum(os.path.isfile(folder / name) for name in sample) for folder in candidates]
    best = max(scores, default=0)
    if best == 0:
        example = sample[0] if sample else "?"
        raise DataError(f"celeba30k: none of the CSV's file names (e.g. {example}) is in {root} or its subfolders; expected an image folder beside the CSV")
    winners = [folder for folder, score in zip(candidates, scores, strict=True) if score == best]
    if len(winners) > 1:
        raise DataError(f"celeba30k: the CSV's file names are found in several folders ({', '.join(str(w) for w in winners)}); keep one")
    return winners[0]


def load(given_root, root: Path, layout: str, *, progress: bool = True) -> common.Dataset:
    csvs = _label_csvs(root)
    if len(csvs) > 1:
        raise DataError(f"celeba30k: several label CSVs with a Male column in {root} ({', '.join(p.name for p in csvs)}); keep one")
    path = csvs[0]
    rows = common.text_rows(path, delimiter=",")
    _, header = next(rows, (1, []))
    id_index = _name_column(path, header)
    missing = [name for name in LABELS if name not in header]
    if missing:
        raise DataError(f"{path}: missing label columns {', '.join(missing)}; expected a file-name column and {', '.join(LABELS)}")
    rows = list(rows)
    names = [fields[id_index] for _, fields in rows if len(fields) > id_index and fields[id_index]]
    images = _image_folder(root, names)
    skipped: list[dict] = []
    frame, encoding = common.binary_table(
        rows, header=header, id_index=id_index, labels=LABELS, source=path, skipped=skipped,
        folder=images,
    )  # fmt: skip
    frame["gender"] = frame["Male"]
    info = {"labels_csv": str(path), "images": str(images), "label_encoding": encoding, "name_column": header[id_index]}
    return common.finish(
        "celeba30k", given_root, root, layout, frame, skipped, image_dirs=[images], extra=LABELS,
        info=info, progress=progress,
    )  # fmt: skip
