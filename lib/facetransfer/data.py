"""The notebooks' one data call: :func:`prepare`.

``prepare(cfg, results_root)`` runs the whole data layer for resolved run params:

1. the dataset root: ``data.root``, or a SYNTHETIC set generated once under
   ``results_root/_synthetic`` when ``data.synthetic`` is set;
2. ``datasets.load`` → usable records plus the loader's quarantine (stage ``load``);
3. the task's labels: records without the label the task needs are quarantined
   (stage ``label``, e.g. ``"no age label: task age"``);
4. ``data.limit``: a subset of that many records, stratified on the task label;
5. the decoded-image cache at ``params.image_size(cfg)`` px under
   ``results_root/_cache/images``; undecodable files are quarantined (stage ``decode``);
6. near duplicates (:mod:`facetransfer.near_duplicates`), found where some images have no
   identity (their split is image-level) or ``data.split.near_duplicates`` is ``group``;
7. the split (``data.split``, stratified on the task label; with ``group``, each
   near-duplicate cluster on one side) and a leakage check;
8. ``data.train_size``: only that many of the training records are kept (stratified, drawn
   with the split seed, nested: a smaller size is a subset of a larger one); val and test
   are the split's own, so runs at different sizes are tested on the same images.

Seeds: the subset (4) and the split (7) use ``data.split.seed``, NOT the run's ``seed``
(which drives the initial weights, the batch order and augmentation), so the repeats of a
study (``seed``, ``seed + 1``, ...) train on the same images and are tested on the same
test set, image by image; a grid over ``data.split.seed`` varies the split on purpose.

The result, :class:`PreparedData`, hands out row numbers, targets and batch feeders per
split, and :meth:`PreparedData.provenance` says where every record went and what kind of
split it is (:func:`facetransfer.splits.disjointness`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facetransfer import near_duplicates
from facetransfer import params as P
from facetransfer.errors import DataError, ParamError
from facetransfer.images import ImageCache, build_cache
from facetransfer.splits import (
    SPLITS,
    check_leakage,
    disjointness,
    make_splits,
    n_identities,
    save_splits,
    stratum_labels,
    subsample,
)

# Model outputs per task; each output reads the record column of the same name.
TASK_OUTPUTS = {
    "gender": ("gender",),
    "age": ("age",),
    "age_group": ("age_group",),
    "age_gender": ("gender", "age"),
}
# The label a task's splits and `limit` are stratified on (age: binned by decade).
TASK_STRATIFY = {"gender": "gender", "age": "age", "age_group": "age_group", "age_gender": "gender"}
TARGET_DTYPES = {"gender": np.float32, "age": np.float32, "age_group": np.int32}
GENDER_NAMES = {"0": "female", "1": "male"}
QUARANTINE_COLUMNS = ["path", "reason", "stage"]
NEAR_DUPLICATES_LISTED = 50  # crossing clusters listed in the provenance (all are in near_duplicates_crossing())


def _reason_category(reason: str) -> str:
    return reason.split(": ", 1)[0]


@dataclass
class PreparedData:
    """Records with their split and cache row, the quarantine, and the image cache."""

    cfg: dict
    dataset: object  # facetransfer.datasets.Dataset
    cache: ImageCache
    records: pd.DataFrame  # usable records + "split" and "row" (row in cache.images)
    quarantine: pd.DataFrame  # path, reason, stage ("load" | "label" | "decode")
    image_size: int
    n_selected: int = 0  # records with the task's labels after `limit`, before decoding
    n_train_split: int = 0  # training records the split made, before `train_size`
    seconds: float = 0.0
    near_duplicates: dict | None = None  # what near_duplicates.find found (None: not checked)

    @property
    def task(self) -> str:
        return self.cfg["task"]

    def _split(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        return self.records[self.records["split"] == split]

    def rows(self, split: str) -> np.ndarray:
        """Rows of ``cache.images`` that form ``split``, in records order."""
        return self._split(split)["row"].to_numpy(dtype=np.int64)

    def targets(self, split: str) -> dict[str, np.ndarray]:
        """``{output name: y}`` for ``split``: gender 0/1 float32, age years float32, age_group 0..7 int32."""
        part = self._split(split)
        return {name: part[name].to_numpy(dtype=TARGET_DTYPES[name]) for name in TASK_OUTPUTS[self.task]}

    def feeder(self, split: str, *, batch_size: int, shuffle: bool = False, augment: dict | None = None, seed: int | None = None, sample_weight=None, **kw):
        """A :class:`~facetransfer.feeder.BatchFeeder` over ``split``.

        ``augment`` (the params' ``train.augment``) is applied to the ``train`` split only;
        for val and test it is ignored by design, so one call site can pass it for all.
        ``seed`` defaults to the run's ``seed``. ``**kw`` goes to ``keras.utils.PyDataset``.
        """
        from facetransfer.feeder import BatchFeeder

        return BatchFeeder(
            self.cache.images,
            self.rows(split),
            self.targets(split),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self.cfg["seed"] if seed is None else seed,
            augment=augment if split == "train" else None,
            sample_weight=sample_weight,
            **kw,
        )

    def save_splits(self, path) -> None:
        """Write ``splits.csv`` (path, subject, split) atomically."""
        save_splits(path, self.records, self.records["split"])

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Per split, records per class of the task's stratify label (age: per decade)."""
        from facetransfer.datasets import AGE_GROUP_NAMES

        column = TASK_STRATIFY[self.task]
        labels = stratum_labels(self.records, column)
        if column == "gender":
            labels = labels.map(GENDER_NAMES)
        elif column == "age_group":
            labels = labels.map(lambda g: AGE_GROUP_NAMES[int(g)])
        table = pd.crosstab(self.records["split"], labels)
        return {s: {str(k): int(v) for k, v in table.loc[s].items()} for s in SPLITS if s in table.index}

    def split_kind(self) -> str:
        """What the split keeps apart: ``"subject-disjoint (N identities)"`` or ``"image-level (...)"``."""
        grouped = self.near_duplicates["n_clusters"] if self.cfg["data"]["split"]["near_duplicates"] == "group" else None
        return disjointness(self.records, grouped_clusters=grouped)

    def near_duplicates_crossing(self) -> pd.DataFrame:
        """The near-duplicate clusters with images on more than one side of the split (empty if none or not checked)."""
        if "near_duplicate" not in self.records.columns:
            return near_duplicates.crossing(self.records["path"], self.records["split"], pd.Series(pd.NA, index=self.records.index))
        return near_duplicates.crossing(self.records["path"], self.records["split"], self.records["near_duplicate"])

    def near_duplicates_summary(self) -> str:
        """One line: how many near-duplicate clusters the split cuts, or why they were not checked."""
        found = self.near_duplicates
        if found is None:
            return "near duplicates: not checked (the split is subject-disjoint)"
        if found["n_clusters"] == 0:
            return f"near duplicates: none among the {len(self.records)} images; {found['method']}"
        crossing = self.near_duplicates_crossing()
        where = "kept on one side" if self.cfg["data"]["split"]["near_duplicates"] == "group" else f"{len(crossing)} of them on two sides of the split ({int(crossing['n_images'].sum())} images)"
        return f"near duplicates: {found['n_clusters']} clusters of {found['n_images']} images, {where}; {found['method']}"

    def _near_duplicates_provenance(self) -> dict:
        if self.near_duplicates is None:
            return {"checked": False, "summary": self.near_duplicates_summary()}
        crossing = self.near_duplicates_crossing()
        listed = crossing.head(NEAR_DUPLICATES_LISTED)
        return {
            "checked": True,
            "mode": self.cfg["data"]["split"]["near_duplicates"],
            **self.near_duplicates,
            "n_crossing": len(crossing),
            "crossing": [{"splits": row.splits, "paths": row.paths} for row in listed.itertuples()],
            "summary": self.near_duplicates_summary(),
        }

    def provenance(self) -> dict:
        """Where the data came from and where every record went (JSON-ready)."""
        ds = self.dataset
        d = self.cfg["data"]
        reasons = self.quarantine["reason"].map(_reason_category).value_counts()
        counts = self.records["split"].value_counts()
        return {
            "dataset": ds.name,
            "root": str(ds.root),
            "synthetic": bool(ds.synthetic),
            "layout": ds.layout,
            "dataset_info": ds.info,  # label files read, label encoding, Adience folds read
            "task": self.task,
            "n_records": len(ds.records) + len(ds.skipped),  # every input found, as datasets.summary
            "n_loaded": len(ds.records),
            "limit": d["limit"],
            "n_selected": self.n_selected,
            "n_usable": len(self.records),
            "n_quarantined": len(self.quarantine),
            "quarantine_by_stage": {k: int(v) for k, v in self.quarantine["stage"].value_counts().items()},
            "quarantine_by_reason": {k: int(v) for k, v in reasons.items()},
            "split_kind": self.split_kind(),
            "split": {
                "source": d["split"]["source"],
                "fractions": d["split"]["fractions"],
                "test_fold": d["split"]["test_fold"],
                "seed": d["split"]["seed"],
                "stratify": TASK_STRATIFY[self.task],
                "n_identities": n_identities(self.records),
            },
            "near_duplicates": self._near_duplicates_provenance(),
            "split_counts": {s: int(counts.get(s, 0)) for s in SPLITS},
            "train_size": {"requested": d["train_size"], "used": int(counts.get("train", 0)), "of": self.n_train_split},
            "class_counts": self.class_counts(),
            "image_size": self.image_size,
            "crop": d["crop"],
            "cache": {"key": self.cache.key, "hit": self.cache.hit, "seconds": round(self.cache.seconds, 3), "build_seconds": self.cache.build_seconds, "n_images": len(self.cache.paths)},
            "seconds": round(self.seconds, 3),
        }


def _root(d: dict, results_root, progress: bool) -> Path:
    if d["synthetic"] is None:
        return Path(d["root"]).expanduser()
    from facetransfer import synthetic

    s = d["synthetic"]
    return synthetic.ensure(results_root, d["dataset"], n=s["n"], seed=s["seed"], size=s["size"], progress=progress)


def _check_attributes(records: pd.DataFrame, attributes: list[str], dataset: str) -> None:
    for name in attributes:
        if name not in records.columns:
            raise ParamError("data.attributes", f"{name!r} is not a column of {dataset}; available: {', '.join(map(str, records.columns))}")


def _with_labels(records: pd.DataFrame, task: str) -> tuple[pd.DataFrame, list[dict]]:
    """Records that carry every label ``task`` needs, and quarantine entries for the rest."""
    keep = pd.Series(True, index=records.index)
    skipped = []
    for name in TASK_OUTPUTS[task]:
        lacking = keep & records[name].isna()
        skipped += [{"path": p, "reason": f"no {name} label: task {task}"} for p in records.loc[lacking, "path"]]
        keep &= ~lacking
    return records[keep], skipped


def _quarantine(**stages: list[dict]) -> pd.DataFrame:
    rows = [{"path": q["path"], "reason": q["reason"], "stage": stage} for stage, entries in stages.items() for q in entries]
    return pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)


def prepare(cfg: dict, results_root, *, progress: bool = True) -> PreparedData:
    """Load, label-check, subsample, decode, split and leak-check the run's data."""
    from facetransfer import datasets

    start = time.perf_counter()
    cfg = P.resolve_run(cfg)
    d, task = cfg["data"], cfg["task"]
    ds = datasets.load(d["dataset"], _root(d, results_root, progress), folder=d["folder"], frontal=d["frontal"], progress=progress)
    _check_attributes(ds.records, d["attributes"], d["dataset"])
    records, label_skipped = _with_labels(ds.records, task)
    if records.empty:
        raise DataError(f"{d['dataset']}: none of the {len(ds.records)} records in {ds.root} has the labels task {task} needs ({', '.join(TASK_OUTPUTS[task])})")
    split_cfg = d["split"]
    if d["limit"] is not None:
        records = subsample(records, d["limit"], seed=split_cfg["seed"], stratify=TASK_STRATIFY[task])
    size = P.image_size(cfg)
    cache = build_cache(records["path"], size=size, crop=d["crop"], cache_dir=Path(results_root) / "_cache" / "images", progress=progress)
    quarantine = _quarantine(load=ds.skipped, label=label_skipped, decode=cache.skipped)
    decoded = set(cache.paths)
    records = records[records["path"].isin(decoded)].reset_index(drop=True)
    if records.empty:
        first = cache.skipped[0]["reason"] if cache.skipped else "none decoded"
        raise DataError(f"{d['dataset']}: none of the images in {ds.root} could be decoded (e.g. {first})")
    records["row"] = cache.rows(records["path"])
    found = None
    if split_cfg["near_duplicates"] == "group" or records["subject"].isna().any():  # some images are split image by image
        records["near_duplicate"], found = near_duplicates.find(records["path"], crop=d["crop"], cache_dir=Path(results_root) / "_cache" / "images", progress=progress)
    clusters = records["near_duplicate"] if split_cfg["near_duplicates"] == "group" else None
    records["split"] = make_splits(records, source=split_cfg["source"], fractions=split_cfg["fractions"], seed=split_cfg["seed"], stratify=TASK_STRATIFY[task], test_fold=split_cfg["test_fold"], clusters=clusters)
    check_leakage(records, records["split"], clusters)
    n_train_split = int((records["split"] == "train").sum())
    if d["train_size"] is not None:
        records = limit_train(records, d["train_size"], seed=split_cfg["seed"], stratify=TASK_STRATIFY[task])
    return PreparedData(cfg=cfg, dataset=ds, cache=cache, records=records, quarantine=quarantine, image_size=size, n_selected=len(cache.paths) + len(cache.skipped), n_train_split=n_train_split, seconds=time.perf_counter() - start, near_duplicates=found)


def limit_train(records: pd.DataFrame, train_size: int, *, seed: int, stratify: str) -> pd.DataFrame:
    """``records`` with only ``train_size`` of its ``train`` records left; val and test untouched.

    Stratified and nested: within each stratum the records are ranked by one seeded
    permutation; the first of every stratum comes first, then the rest by rank relative to the
    stratum's size. The first ``train_size`` of that order are kept, so every class is in and a
    smaller size is a subset of a larger one (scikit-learn's stratified samplers are not nested).
    """
    train = records[records["split"] == "train"]
    labels = stratum_labels(train, stratify)
    n_classes = labels.nunique()
    if train_size > len(train) or train_size < n_classes:
        raise ParamError("data.train_size", f"{train_size} is outside the training split's size: allowed {n_classes}..{len(train)} (the {n_classes} classes of {stratify} .. the {len(train)} training images), or null for all")
    rng = np.random.default_rng(seed)
    rank = pd.Series(0.0, index=train.index)
    for _, members in labels.groupby(labels, sort=True):
        order = rng.permutation(len(members))
        rank[members.index] = order / len(members)
    first = rank == 0.0
    order = pd.DataFrame({"later": ~first, "rank": rank}).sort_values(["later", "rank"], kind="stable").index
    keep = set(order[:train_size])
    dropped = (records["split"] == "train") & ~records.index.isin(keep)
    return records[~dropped].reset_index(drop=True)
