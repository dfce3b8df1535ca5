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
* a label value out of range or not a number → ``bad label value: <file> line <n> column
  <column>=<value> ...``; in a binary label file where both -1 and 0 occur, every row of the
  minority encoding likewise (the majority decides; a tie is a DataError)
* names are compared after Unicode NFC normalisation on both sides (:func:`disk_names`)

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
import unicodedata
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
    and gets a reason naming the file, line, column and value. A file where both -1 and 0
    occur is read in the encoding of the majority of its rows; every row using the other
    encoding is quarantined with its line and column (see :func:`_minority_reasons`).
    Rows without an id go straight to ``skipped``.
    """
    k = len(labels)
    pick = itemgetter(*(header.index(name) for name in labels))
    code = defaultdict(lambda: _BAD, _CODES).__getitem__
    ids: list[str] = []
    numbers: list[int] = []
    reasons: list[str | None] = []
    rows_codes: list[bytes] = []  # one byte per label: compact for CelebA's 8 million cells
    for number, fields in rows:
        key = fields[id_index] if len(fields) > id_index else ""
        if not key:
            skipped.append({"path": f"{source}:{number}", "reason": f"{MALFORMED_ROW}: line {number} has no file name"})
            continue
        ids.append(key)
        numbers.append(number)
        if len(fields) != len(header):
            reasons.append(f"{MALFORMED_ROW}: {source.name} line {number} has {len(fields)} fields, expected {len(header)}")
            rows_codes.append(bytes(k))
            continue
        row = bytes(map(code, pick(fields) if k > 1 else (pick(fields),)))
        reason = None
        if _BAD in row:
            col = row.index(_BAD)
            value = fields[header.index(labels[col])]
            reason = f"{BAD_LABEL}: {source.name} line {number} column {labels[col]}={value!r} (allowed -1/1 or 0/1)"
        reasons.append(reason)
        rows_codes.append(row)
    values = np.frombuffer(b"".join(rows_codes), dtype=np.uint8).reshape(len(rows_codes), k)
    ok = np.array([r is None for r in reasons], dtype=bool)
    encoding = _majority_encoding(values, ok, numbers, labels, source)
    for i, reason in _minority_reasons(values, ok, numbers, labels, source, encoding):
        reasons[i] = reason
    prefix = os.path.join(folder, "")
    frame = pd.DataFrame((values == 1).astype(np.int8), columns=list(labels))
    frame.insert(0, "_reason", pd.Series(reasons, dtype=object))
    frame.insert(0, "_id", ids)
    frame.insert(0, "path", [prefix + key for key in ids])
    return frame, encoding


def _majority_encoding(values: np.ndarray, ok: np.ndarray, numbers: list[int], labels: Sequence[str], source: Path) -> str:
    """"-1/1" or "0/1": the encoding most rows of the file use (rows with only 1s fit both).

    The majority decides because one mistyped row must not reject 30,000 good ones; the
    minority rows are quarantined, never re-read in the other encoding (a ``0`` in a -1/1
    file may be a typo for ``-1`` or for ``1``). A tie cannot be decided: DataError
    naming the first line of each encoding.
    """
    minus_rows = ok & (values == _MINUS).any(axis=1)
    zero_rows = ok & (values == 0).any(axis=1)
    n_minus, n_zero = int((minus_rows & ~zero_rows).sum()), int((zero_rows & ~minus_rows).sum())
    if n_minus and n_zero and n_minus == n_zero:
        first_minus, first_zero = numbers[int(np.argmax(minus_rows))], numbers[int(np.argmax(zero_rows))]
        raise DataError(
            f"{source}: as many rows use -1/1 ({n_minus}, first line {first_minus}) as 0/1 ({n_zero}, first line "
            f"{first_zero}); expected one encoding per file"
        )
    return "-1/1" if n_minus > n_zero or (n_minus == n_zero and minus_rows.any()) else "0/1"


def _minority_reasons(values, ok, numbers, labels, source: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(row index, quarantine reason) of every row holding the value the encoding lacks."""
    foreign = 0 if encoding == "-1/1" else _MINUS
    for i in np.flatnonzero(ok & (values == foreign).any(axis=1)):
        col = int(np.argmax(values[i] == foreign))
        text = "0" if foreign == 0 else "-1"
        yield int(i), f"{BAD_LABEL}: {source.name} line {numbers[i]} column {labels[col]}={text!r} (this file uses {encoding})"


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


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def disk_names(paths: Sequence[str]) -> list[str]:
    """Each path as spelled on disk when its name differs only in Unicode normalisation.

    A label file written on one system and images copied from another (macOS stores
    names decomposed, NFD) spell the same name with different code points. Names are
    compared after NFC normalisation on both sides; a path that exists as given, or has
    no match, is kept as given (and is then reported as missing).
    """
    listings: dict[str, dict[str, str] | None] = {}
    out = []
    for path in paths:
        folder, name = os.path.split(path)
        if name.isascii() or os.path.exists(path):  # ASCII: NFC is the identity
            out.append(path)
            continue
        if folder not in listings:
            try:
                with os.scandir(folder or ".") as it:
                    listings[folder] = {_nfc(e.name): e.name for e in it}
            except OSError:
                listings[folder] = None
        on_disk = (listings[folder] or {}).get(_nfc(name))
        out.append(os.path.join(folder, on_disk) if on_disk else path)
    return out


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
    frame["path"] = disk_names(frame["path"].tolist())
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
