"""Machinery shared by the dataset loaders: the records table, quarantine, root detection.

Loading is bookkeeping of labels and files only. No image is decoded, cropped or resized
here (faces are decoded, cropped and resized once, later, by :mod:`facetransfer.images`,
which also quarantines files that turn out to be truncated). Each labelled image file is
opened and its first 16 bytes read, so a full CelebA (202,599 files) loads in seconds:

* a label row whose image file does not exist  → ``label row without image file``
* an image file (by extension) without a label row → ``image file without label row``
* every row of an id that appears more than once → ``duplicate id``
* a zero-byte file → ``empty file``; a file whose first bytes are no JPEG, PNG, GIF, BMP
  or WebP signature → ``not an image``
* a label value out of range or not a number → ``bad label value: <column>=<value>``

Every excluded input becomes a quarantine entry ``{"path", "reason"}``. A reason is a
fixed category, optionally followed by ``": "`` and details; :func:`reason_category`
gives the category (the summary counts by it).

Only files with an image extension (:data:`IMAGE_EXTENSIONS`, any case) are inputs:
label files, ``SYNTHETIC.txt`` or ``.DS_Store`` beside the images are not reported.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from facetransfer.errors import DataError

RECORD_COLUMNS = ["path", "gender", "age", "age_group", "subject", "source_split", "fold"]
SYNTHETIC_MARKER = "SYNTHETIC.txt"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")

# Quarantine reason categories.
MISSING_IMAGE = "label row without image file"
ORPHAN_IMAGE = "image file without label row"
DUPLICATE = "duplicate id"
BAD_LABEL = "bad label value"
MALFORMED_ROW = "malformed row"
MALFORMED_NAME = "malformed name"
EMPTY_FILE = "empty file"
NOT_IMAGE = "not an image"
UNREADABLE = "unreadable file"

_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
# Label tokens → codes 0, 1, _MINUS (-1); anything else is _BAD.
_MINUS, _BAD = 2, 3
_CODES = {"0": 0, "1": 1, "-1": _MINUS, "0.0": 0, "1.0": 1, "-1.0": _MINUS, "+1": 1}
_PROGRESS_MIN = 1000  # show a progress bar from this many files on
_CHUNK = 512  # files per thread task


@dataclass
class Dataset:
    """One dataset as loaded: usable records plus everything that was skipped."""

    name: str  # celeba | celeba30k | utkface | adience | folder
    root: Path  # the resolved dataset root (after nesting detection)
    records: pd.DataFrame  # RECORD_COLUMNS, then the dataset's attribute columns
    skipped: list[dict]  # [{"path": str, "reason": str}]
    synthetic: bool  # root holds the SYNTHETIC.txt marker
    layout: str  # e.g. "kaggle-csv", "original-txt", "utkface-chip"
    info: dict = field(default_factory=dict)  # label files read, label encoding, ...
    labels: tuple[str, ...] = ("gender",)  # which of gender / age / age_group it provides


def reason_category(reason: str) -> str:
    """``"bad label value: Male='2'"`` → ``"bad label value"``."""
    return reason.split(": ", 1)[0]


# --------------------------------------------------------------------------- root


def subfolders(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        return sorted(Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir())


def find_root(name: str, root, probe: Callable[[Path], str | None], looked_for: str) -> tuple[Path, str]:
    """Find the dataset top folder at ``root``, one level below it, or up to two above.

    ``probe(folder)`` returns the layout name when ``folder`` is a dataset top folder.
    Looking upwards covers a root pointed into the image folder (two levels for the
    Kaggle CelebA folder, which is nested twice); looking into the subfolders covers a
    root that holds the dataset folder.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"{name}: root {root} {state}")
    layout = probe(root)
    if layout:
        return root, layout
    children = subfolders(root)
    hits = [(child, lay) for child in children if (lay := probe(child))]
    if len(hits) > 1:
        names = ", ".join(child.name for child, _ in hits)
        raise DataError(f"{name}: several {name} folders in {root} ({names}); point the root at one of them")
    if hits:
        return hits[0]
    for parent in (root.parent, root.parent.parent):
        if parent != root and (layout := probe(parent)):
            return parent, layout
    raise DataError(
        f"{name}: no known {name} layout in {root}, in its {len(children)} subfolders, "
        f"or in {root.parent} or {root.parent.parent}; looked for {looked_for}"
    )


def first_existing(folder: Path, candidates: Sequence[str], *, want_dir: bool = False) -> Path | None:
    for rel in candidates:
        path = folder / rel
        if (path.is_dir() if want_dir else path.is_file()):
            return path
    return None


def is_synthetic(given_root, root: Path) -> bool:
    """The SYNTHETIC.txt marker in the resolved root, the given root or a folder between."""
    given = Path(os.path.abspath(Path(given_root).expanduser()))
    folders = {root, given}
    for low, high in ((given, root), (root, given)):
        if low.is_relative_to(high):
            folders.update(p for p in low.parents if p.is_relative_to(high))
    return any((f / SYNTHETIC_MARKER).is_file() for f in folders)


# --------------------------------------------------------------------------- text files


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def text_rows(path: Path, *, delimiter: str | None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line.

    ``delimiter`` None splits on runs of whitespace, "," reads CSV (quotes honoured),
    anything else splits on that character exactly (empty fields kept).
    """
    text = read_text(path)
    if delimiter == ",":
        reader = csv.reader(io.StringIO(text, newline=""))
        for fields in reader:
            if any(f.strip() for f in fields):
                yield reader.line_num, [f.strip() for f in fields]
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if delimiter is None:
            yield number, line.split()
        else:
            yield number, [f.strip() for f in line.split(delimiter)]


def read_header(path: Path) -> list[str]:
    """First line of a CSV file as its cells (cheap: reads one line; used to probe)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            line = fh.readline()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    return [cell.strip() for cell in next(csv.reader([line]), [])]


def read_pairs(path: Path, *, header: bool) -> tuple[dict[str, str], dict[str, str]]:
    """A two-column id → value file (partition, identity): (values, problems by id).

    A malformed line or an id listed more than once gives that id a problem reason
    instead of a value (never guess which of two values is right).
    """
    delimiter = "," if path.suffix.lower() == ".csv" else None
    values: dict[str, str] = {}
    problems: dict[str, str] = {}
    seen: dict[str, int] = {}
    rows = text_rows(path, delimiter=delimiter)
    if header:
        next(rows, None)
    for number, fields in rows:
        key = fields[0]
        seen[key] = seen.get(key, 0) + 1
        if len(fields) != 2:
            problems[key] = f"{MALFORMED_ROW}: {path.name} line {number} has {len(fields)} fields, expected 2"
        values[key] = fields[-1]
    for key, count in seen.items():
        if count > 1:
            problems[key] = f"{DUPLICATE}: listed {count} times in {path.name}"
    return {k: v for k, v in values.items() if k not in problems}, problems


def binary_table(
    rows: Iterable[tuple[int, list[str]]],
    *,
    header: list[str],
    id_index: int,
    labels: Sequence[str],
    source: Path,
    skipped: list[dict],
    folder: Path,
) -> tuple[pd.DataFrame, str]:
    """Binary label rows (values -1/1 or 0/1, detected per file) → 0/1 int8 columns.

    Returns (frame with ``path`` (``folder``/id), ``_id``, ``_reason`` and the ``labels``
    columns, encoding).
    A row with the wrong number of fields or a value other than -1, 0, 1 keeps its path
    and gets a reason. A file that uses both -1 and 0 cannot be read without guessing
    and raises DataError. Rows without an id go straight to ``skipped``.
    """
    k = len(labels)
    pick = itemgetter(*(header.index(name) for name in labels))
    code = defaultdict(lambda: _BAD, _CODES).__getitem__
    ids: list[str] = []
    reasons: list[str | None] = []
    rows_codes: list[bytes] = []  # one byte per label: compact for CelebA's 8 million cells
    for number, fields in rows:
        key = fields[id_index] if len(fields) > id_index else ""
        if not key:
            skipped.append({"path": f"{source}:{number}", "reason": f"{MALFORMED_ROW}: line {number} has no file name"})
            continue
        ids.append(key)
        if len(fields) != len(header):
            reasons.append(f"{MALFORMED_ROW}: {source.name} line {number} has {len(fields)} fields, expected {len(header)}")
            rows_codes.append(bytes(k))
            continue
        row = bytes(map(code, pick(fields) if k > 1 else (pick(fields),)))
        reason = None
        if _BAD in row:
            col = row.index(_BAD)
            reason = f"{BAD_LABEL}: {labels[col]}={fields[header.index(labels[col])]!r} in {source.name} (allowed -1/1 or 0/1)"
        reasons.append(reason)
        rows_codes.append(row)
    values = np.frombuffer(b"".join(rows_codes), dtype=np.uint8).reshape(len(rows_codes), k)
    good = values[np.array([r is None for r in reasons], dtype=bool)]
    has_minus, has_zero = bool((good == _MINUS).any()), bool((good == 0).any())
    if has_minus and has_zero:
        raise DataError(
            f"{source}: label values mix the -1/1 and 0/1 encodings (both -1 and 0 occur); "
            "expected one encoding per file"
        )
    prefix = os.path.join(folder, "")
    frame = pd.DataFrame((values == 1).astype(np.int8), columns=list(labels))
    frame.insert(0, "_reason", pd.Series(reasons, dtype=object))
    frame.insert(0, "_id", ids)
    frame.insert(0, "path", [prefix + key for key in ids])
    return frame, "-1/1" if has_minus else "0/1"


def add_reason(frame: pd.DataFrame, mask, reasons) -> None:
    """Set ``_reason`` where ``mask`` holds and no earlier reason is set."""
    mask = pd.Series(mask, index=frame.index).fillna(False).astype(bool) & frame["_reason"].isna()
    if isinstance(reasons, pd.Series):
        frame.loc[mask, "_reason"] = reasons[mask]
    else:
        frame.loc[mask, "_reason"] = reasons


# --------------------------------------------------------------------------- files


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path) -> list[str]:
    """Absolute paths of the image files directly in ``folder`` (by extension), sorted."""
    with os.scandir(folder) as it:
        return sorted(e.path for e in it if is_image_name(e.name) and e.is_file())


def has_image_signature(head: bytes) -> bool:
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def check_file(path: str) -> str | None:
    """None when ``path`` exists and starts like an image, else the quarantine reason."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        return MISSING_IMAGE
    except IsADirectoryError:
        return f"{NOT_IMAGE}: a folder"
    except OSError as exc:
        return f"{UNREADABLE}: {exc.strerror}"
    if not head:
        return EMPTY_FILE
    if not has_image_signature(head):
        return f"{NOT_IMAGE}: no JPEG/PNG/GIF/BMP/WebP signature"
    return None


def check_files(paths: Sequence[str], *, progress: bool = True, desc: str = "checking files") -> list[str | None]:
    """:func:`check_file` for every path (threads, since this waits on the disk)."""
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    bar = tqdm(total=len(paths), desc=desc, unit="file", disable=not progress or len(paths) < _PROGRESS_MIN)
    out: list[str | None] = []
    with ThreadPoolExecutor(max_workers=8) as pool, bar:
        for reasons in pool.map(lambda chunk: [check_file(p) for p in chunk], chunks):
            out += reasons
            bar.update(len(reasons))
    return out


# --------------------------------------------------------------------------- records


def records_frame(frame: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """RECORD_COLUMNS with their dtypes (missing ones filled with NA), then ``extra``."""
    n = len(frame)
    out = pd.DataFrame(index=frame.index)
    out["path"] = frame["path"].astype(str)
    out["gender"] = frame["gender"].astype("Int64") if "gender" in frame else pd.array([pd.NA] * n, dtype="Int64")
    out["age"] = frame["age"].astype("float64") if "age" in frame else np.full(n, np.nan)
    out["age_group"] = frame["age_group"].astype("Int64") if "age_group" in frame else pd.array([pd.NA] * n, dtype="Int64")
    for name in ("subject", "source_split"):
        out[name] = frame[name].astype("string") if name in frame else pd.array([pd.NA] * n, dtype="string")
    out["fold"] = frame["fold"].astype("Int64") if "fold" in frame else pd.array([pd.NA] * n, dtype="Int64")
    for name in extra:
        out[name] = frame[name]
    return out.sort_values("path", kind="stable").reset_index(drop=True)


def finish(
    name: str,
    given_root,
    root: Path,
    layout: str,
    frame: pd.DataFrame,
    skipped: list[dict],
    *,
    image_dirs: Iterable[Path] = (),
    orphan_reasons: dict[str, str] | None = None,
    extra: Sequence[str] = (),
    info: dict | None = None,
    labels: tuple[str, ...] = ("gender",),
    progress: bool = True,
) -> Dataset:
    """Quarantine duplicates, missing/empty/non-image files and unlabelled images.

    ``frame`` has one row per label row: ``path`` (absolute), ``_reason`` (None or a
    reason found while parsing) and the record/attribute columns. ``image_dirs`` are
    the folders whose image files must all have a label row; ``orphan_reasons`` gives
    a more precise reason than "without label row" for some of those files.
    """
    frame = frame.reset_index(drop=True)
    counts = frame["path"].map(frame["path"].value_counts())
    add_reason(frame, counts > 1, counts.map(lambda c: f"{DUPLICATE}: {c} label rows for this file"))
    todo = frame.index[frame["_reason"].isna()]
    found = check_files(frame.loc[todo, "path"].tolist(), progress=progress, desc=f"{name}: checking files")
    frame.loc[todo, "_reason"] = pd.Series(found, index=todo, dtype=object)
    bad = frame["_reason"].notna()
    skipped = skipped + [{"path": p, "reason": r} for p, r in zip(frame.loc[bad, "path"], frame.loc[bad, "_reason"], strict=True)]
    labelled = set(frame["path"])
    orphan_reasons = orphan_reasons or {}
    for folder in image_dirs:
        for path in list_images(folder):
            if path not in labelled:
                skipped.append({"path": path, "reason": orphan_reasons.get(path, ORPHAN_IMAGE)})
    skipped.sort(key=lambda s: (s["path"], s["reason"]))
    records = records_frame(frame[~bad], extra)
    if records.empty:
        by_reason = pd.Series([reason_category(s["reason"]) for s in skipped]).value_counts()
        top = ", ".join(f"{r}: {c}" for r, c in by_reason.head(3).items()) or "no label rows"
        raise DataError(f"{name}: no usable records in {root} ({len(skipped)} inputs skipped; {top})")
    return Dataset(
        name=name,
        root=root,
        records=records,
        skipped=skipped,
        synthetic=is_synthetic(given_root, root),
        layout=layout,
        info=dict(info or {}),
        labels=labels,
    )
