"""Dataset loaders: one per on-disk format, all giving the same records table.

>>> ds = load("celeba", "~/data/celeba")          # or one level above / below it
>>> ds.records.columns[:7].tolist() == RECORD_COLUMNS
True
>>> print(format_summary(summary(ds)))

Loading is crop-free and decode-free: it reads the label files, maps every label to one
convention (gender 1 = male, 0 = female) and checks that each image file exists and starts
with an image signature. Everything that cannot be used is listed in ``Dataset.skipped``
with a reason (see :mod:`facetransfer.datasets.common`). Faces are decoded, cropped and
resized later, once, by :mod:`facetransfer.images`.

Formats: :mod:`.celeba` (original TXT and Kaggle CSV layouts), :mod:`.celeba30k`,
:mod:`.utkface`, :mod:`.adience` (with the documented age-group rule), :mod:`.folder`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from facetransfer.datasets import adience, celeba, celeba30k, common, utkface
from facetransfer.datasets import folder as folder_set
from facetransfer.datasets.adience import AGE_GROUP_NAMES, AGE_GROUPS
from facetransfer.datasets.celeba import ATTRIBUTES
from facetransfer.datasets.celeba30k import LABELS as CELEBA30K_LABELS
from facetransfer.datasets.common import RECORD_COLUMNS, SYNTHETIC_MARKER, Dataset, reason_category
from facetransfer.datasets.utkface import RACES
from facetransfer.errors import DataError, ParamError
from facetransfer.images import check_images

__all__ = [
    "AGE_GROUPS", "AGE_GROUP_NAMES", "ATTRIBUTES", "CELEBA30K_LABELS", "DATASETS", "RACES",
    "RECORD_COLUMNS", "SYNTHETIC_MARKER", "Dataset", "check_decodes", "format_summary", "load", "reason_category",
    "summary",
]  # fmt: skip

DATASETS = ("celeba", "celeba30k", "utkface", "adience", "folder")
_MODULES = {"celeba": celeba, "celeba30k": celeba30k, "utkface": utkface, "adience": adience}


def load(name: str, root, *, folder: dict | None = None, frontal: bool | None = None, progress: bool = True) -> Dataset:
    """Load dataset ``name`` from ``root`` (its top folder, one level above or below).

    ``folder`` is the spec of the ``folder`` dataset (params ``data.folder``); ``frontal``
    picks Adience's fold files (None: fold_frontal_* when present, else fold_*); ``progress`` shows a bar while checking files.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if root is None:
        raise DataError(f"{name}: no root folder given (data.root / --root)")
    if name == "folder":
        spec = folder_set.spec_of(folder)
        found, layout = common.find_root(name, root, folder_set.make_probe(spec), folder_set.looked_for(spec))
        return folder_set.load(root, found, layout, spec=spec, progress=progress)
    if folder:
        raise ParamError("data.folder", f"is only used with dataset folder, not {name}")
    module = _MODULES[name]
    found, layout = common.find_root(name, root, module.probe, module.LOOKED_FOR)
    if name == "adience":
        return adience.load(root, found, layout, frontal=frontal, progress=progress)
    return module.load(root, found, layout, progress=progress)


def check_decodes(ds: Dataset, *, progress: bool = True, workers: int | None = None) -> Dataset:
    """``ds`` with every record whose image does not decode moved to ``skipped``.

    Loading only checks each file's first bytes; this decodes every image with the image
    cache's own decoder (:func:`facetransfer.images.check_images`), so the usable count
    equals what a run uses.
    """
    bad = check_images(ds.records["path"], workers=workers, progress=progress)
    if not bad:
        return replace(ds, info={**ds.info, "decoded": "every image"})
    undecodable = ds.records["path"].isin(bad)
    skipped = sorted([*ds.skipped, *({"path": p, "reason": r} for p, r in bad.items())], key=lambda s: (s["path"], s["reason"]))
    records = ds.records[~undecodable].reset_index(drop=True)
    return replace(ds, records=records, skipped=skipped, info={**ds.info, "decoded": "every image"})


def _counts(series, names=None) -> dict[str, int]:
    counts = series.dropna().value_counts()
    keys = names if names is not None else sorted(counts.index)
    return {str(k): int(counts.get(k, 0)) for k in keys}


def summary(ds: Dataset) -> dict:
    """Counts, label balance and skipped inputs of ``ds`` as a JSON-ready dict.

    ``n_records`` counts every input the loader found: the rows of ``ds.records``
    (``n_loaded``) plus everything in ``skipped``. ``n_usable`` counts the records with a
    known gender (for a ``folder`` set without gender: with any label), so Adience rows of
    unknown gender count in ``n_loaded`` but not in ``n_usable``.
    ``usable_by_label`` gives the count for each label the dataset provides.
    ``skipped_by_reason`` counts ``skipped`` by reason category.
    """
    rec = ds.records
    usable = {name: int(rec[name].notna().sum()) for name in ds.labels}
    if "gender" in ds.labels:
        n_usable = usable["gender"]
    else:
        n_usable = int(rec[list(ds.labels)].notna().any(axis=1).sum())
    ages = rec["age"].dropna()
    age = None
    if len(ages):
        age = {"count": int(len(ages)), "mean": round(float(ages.mean()), 3), "min": float(ages.min()),
               "max": float(ages.max()), "median": float(ages.median())}  # fmt: skip
    age_groups = rec["age_group"].map(lambda g: AGE_GROUP_NAMES[g], na_action="ignore")
    by_reason = Counter(reason_category(s["reason"]) for s in ds.skipped)
    return {
        "dataset": ds.name,
        "root": str(ds.root),
        "layout": ds.layout,
        "synthetic": bool(ds.synthetic),
        "n_records": int(len(rec)) + len(ds.skipped),
        "n_loaded": int(len(rec)),
        "n_usable": n_usable,
        "usable_by_label": usable,
        "gender_counts": {"female": int((rec["gender"] == 0).sum()), "male": int((rec["gender"] == 1).sum())},
        "gender_unknown": int(rec["gender"].isna().sum()),
        "age": age,
        "age_group_counts": _counts(age_groups, AGE_GROUP_NAMES) if "age_group" in ds.labels else None,
        "source_split_counts": _counts(rec["source_split"], ["train", "val", "test"]) if rec["source_split"].notna().any() else None,
        "fold_counts": _counts(rec["fold"]) if rec["fold"].notna().any() else None,
        "n_subjects": int(rec["subject"].nunique()) if rec["subject"].notna().any() else None,
        "n_skipped": len(ds.skipped),
        "skipped_by_reason": dict(by_reason.most_common()),
        "skipped": [dict(s) for s in ds.skipped],
        "info": ds.info,
    }


def _pct(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.1f} %)" if total else str(n)


def format_summary(summary: dict, *, examples: int = 5) -> str:
    """The summary as a few aligned lines for people (``facetransfer data summary``)."""
    s = summary
    title = f"{s['dataset']} ({s['layout']}) at {s['root']}"
    lines = [title + ("   [SYNTHETIC data]" if s["synthetic"] else "")]
    usable = "usable for gender" if "gender" in s["usable_by_label"] else "usable"
    lines.append(f"records     {s['n_records']}   {usable}: {s['n_usable']}")
    g = s["gender_counts"]
    total = g["female"] + g["male"]
    gender = f"gender      female {_pct(g['female'], total)}, male {_pct(g['male'], total)}"
    if s["gender_unknown"] and "gender" in s["usable_by_label"]:
        gender += f", unknown {s['gender_unknown']} (kept for age tasks; not counted as usable)"
    lines.append(gender)
    if s["age"]:
        a = s["age"]
        lines.append(f"age         n {a['count']}, mean {a['mean']:.1f}, median {a['median']:g}, min {a['min']:g}, max {a['max']:g}")
    if s["age_group_counts"]:
        lines.append("age groups  " + ", ".join(f"{k}: {v}" for k, v in s["age_group_counts"].items()))
    if s["source_split_counts"]:
        lines.append("partition   " + ", ".join(f"{k} {v}" for k, v in s["source_split_counts"].items()))
    if s["info"].get("folds_read"):
        lines.append(f"folds read  {s['info']['folds_read']}")
    if s["fold_counts"]:
        lines.append("folds       " + ", ".join(f"{k}: {v}" for k, v in s["fold_counts"].items()))
    if s["n_subjects"] is not None:
        lines.append(f"subjects    {s['n_subjects']}")
    checked = "every image decoded, as a run decodes it" if s["info"].get("decoded") else "each file's first bytes only (--fast)"
    lines.append(f"checked     {checked}")
    lines.append(f"skipped     {s['n_skipped']}")
    width = max((len(r) for r in s["skipped_by_reason"]), default=0)
    lines += [f"  {reason:<{width}}  {count}" for reason, count in s["skipped_by_reason"].items()]
    for item in s["skipped"][:examples]:
        lines.append(f"  e.g. {Path(item['path']).name}: {item['reason']}")
    return "\n".join(lines)
