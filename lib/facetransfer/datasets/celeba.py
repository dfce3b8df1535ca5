"""CelebA (Liu et al., 2015) in its original TXT layout and the Kaggle CSV layout.

original-txt::

    img_align_celeba/000001.jpg ...
    Anno/list_attr_celeba.txt        line 1 the count, line 2 the 40 names, then
                                     "000001.jpg -1  1  1 ..." (runs of spaces vary)
    Eval/list_eval_partition.txt     "000001.jpg 0"   (0 train, 1 val, 2 test)
    Anno/identity_CelebA.txt         "000001.jpg 2880"

kaggle-csv::

    img_align_celeba/img_align_celeba/000001.jpg ...   (nested twice; once is accepted)
    list_attr_celeba.csv             header image_id,5_o_Clock_Shadow,...,Young (the first
                                     cell may be empty)
    list_eval_partition.csv          header image_id,partition
    identity_CelebA.txt              optional (Kaggle ships none; facetransfer.synthetic
                                     writes one here)

The attribute and partition files may also lie at the top folder in the TXT layout.
``gender`` = ``Male`` (1 male, 0 female); all attributes are kept as 0/1 int8 columns
with their original names (values -1/1 or 0/1, detected per file); ``subject`` = the
identity (NA without an identity file); ``source_split`` = the partition (NA for an
image the partition file does not list). Loading reads labels and checks files only;
no image is decoded or cropped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from facetransfer.datasets import common
from facetransfer.errors import DataError

ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
]  # fmt: skip
IMAGE_FOLDERS = ("img_align_celeba/img_align_celeba", "img_align_celeba")
LAYOUTS = {
    "original-txt": {
        "attributes": ("Anno/list_attr_celeba.txt", "list_attr_celeba.txt"),
        "partition": ("Eval/list_eval_partition.txt", "list_eval_partition.txt"),
        "identity": ("Anno/identity_CelebA.txt", "identity_CelebA.txt"),
    },
    "kaggle-csv": {
        "attributes": ("list_attr_celeba.csv",),
        "partition": ("list_eval_partition.csv",),
        "identity": ("identity_CelebA.txt", "Anno/identity_CelebA.txt"),
    },
}
LOOKED_FOR = (
    "Anno/list_attr_celeba.txt or list_attr_celeba.txt (original-txt) or list_attr_celeba.csv "
    "(kaggle-csv), beside an image folder img_align_celeba/"
)
PARTITIONS = {"0": "train", "1": "val", "2": "test"}


def probe(folder: Path) -> str | None:
    if not common.first_existing(folder, IMAGE_FOLDERS, want_dir=True):
        return None
    for layout, spec in LAYOUTS.items():
        if common.first_existing(folder, spec["attributes"]):
            return layout
    return None


def _attribute_rows(path: Path, layout: str):
    """(header with the file-name column first, row iterator) of the attribute file."""
    if layout == "original-txt":
        rows = common.text_rows(path, delimiter=None)
        _, count = next(rows, (1, [""]))
        if len(count) != 1 or not count[0].isdigit():
            raise DataError(f"{path}: line 1 should be the image count, found {' '.join(count)[:40]!r}")
        _, names = next(rows, (2, []))
        return ["image_id", *names], rows
    rows = common.text_rows(path, delimiter=",")
    _, header = next(rows, (1, []))
    if not header or header[0] not in ("image_id", ""):
        first = header[0] if header else ""
        raise DataError(f"{path}: first header cell is {first!r}; expected image_id (or empty) followed by the 40 attribute names")
    return header, rows


def _side_column(frame: pd.DataFrame, ids: pd.Series, path: Path | None, *, header: bool) -> pd.Series:
    """Map image ids to the value in a partition/identity file; problems → ``_reason``."""
    if path is None:
        return pd.Series(pd.NA, index=frame.index, dtype=object)
    values, problems = common.read_pairs(path, header=header)
    common.add_reason(frame, ids.isin(problems.keys()), ids.map(problems))
    return ids.map(values)


def load(given_root, root: Path, layout: str, *, progress: bool = True) -> common.Dataset:
    spec = LAYOUTS[layout]
    attributes = common.first_existing(root, spec["attributes"])
    partition = common.first_existing(root, spec["partition"])
    identity = common.first_existing(root, spec["identity"])
    images = common.first_existing(root, IMAGE_FOLDERS, want_dir=True)
    header, rows = _attribute_rows(attributes, layout)
    if "Male" not in header:
        raise DataError(f"{attributes}: no Male column; expected the file-name column and the 40 CelebA attributes ({', '.join(ATTRIBUTES[:3])}, ..., Young)")
    names = header[1:]
    skipped: list[dict] = []
    frame, encoding = common.binary_table(
        rows, header=header, id_index=0, labels=names, source=attributes, skipped=skipped,
        folder=images,
    )  # fmt: skip
    ids = frame["_id"]
    split = _side_column(frame, ids, partition, header=layout == "kaggle-csv")
    bad_split = split.notna() & ~split.isin(PARTITIONS.keys())
    common.add_reason(frame, bad_split, split.map(lambda v: f"{common.BAD_LABEL}: partition={v!r} (allowed 0, 1, 2)"))
    frame["source_split"] = split.map(PARTITIONS)
    frame["subject"] = _side_column(frame, ids, identity, header=False)
    frame["gender"] = frame["Male"]
    info = {
        "attributes": str(attributes),
        "partition": None if partition is None else str(partition),
        "identity": None if identity is None else str(identity),
        "images": str(images),
        "label_encoding": encoding,
    }
    return common.finish(
        "celeba", given_root, root, layout, frame, skipped, image_dirs=[images], extra=names,
        info=info, progress=progress,
    )  # fmt: skip
