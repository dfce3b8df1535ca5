"""Train / val / test splits: seeded, stratified, grouped, checked for leakage.

``make_splits`` returns a Series of ``"train"`` / ``"val"`` / ``"test"`` aligned with the
records' index. Three sources:

- ``random``: seeded and stratified on one column. Records are assigned in whole
  *groups*: all records of one subject (a non-null ``subject``) form one group, and so do
  all records of one near-duplicate cluster when ``clusters`` is given (a cluster that
  touches subjects joins them into one group); any other record is a group of its own, so
  no subject and no such cluster is ever on two sides. Within each stratum the groups are
  shuffled (``np.random.default_rng(seed)``) and laid end to end; a group goes to the split
  in which its midpoint falls, so the fractions are met up to about half a group per
  stratum. A group's stratum is its most common label.
- ``dataset``: the dataset's own partition (CelebA's ``source_split`` column).
- ``folds``: Adience's subject-exclusive folds, the published protocol: test = fold
  ``test_fold``; the other four folds are train and val, val carved from them as a
  ``random`` split (grouped by subject, seeded, stratified) taking
  ``val / (train + val)`` of the ``fractions``.

Stratification column: a categorical column (``gender``, ``age_group``, ...) is used as
is; a float column (``age`` in years) is binned into decades, 80+ pooled. A split that
is empty, or that leaves a class of a categorical stratify column out of train or test,
is a :class:`DataError`. :func:`check_leakage` re-checks any split for a path, a subject
(or a near-duplicate cluster, when given) on two sides. :func:`disjointness` is the one
sentence that says which kind of split a records table gets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from facetransfer.errors import DataError, FacetransferError
from facetransfer.io import atomic_write_csv

SOURCES = ("random", "dataset", "folds")
SPLITS = ("train", "val", "test")
N_FOLDS = 5
AGE_BIN_YEARS = 10
AGE_BIN_LAST = 80  # ages from here up form one stratum ("80+")
NA_LABEL = "<NA>"


class LeakageError(FacetransferError):
    """A path or a subject appears in more than one split."""


def _age_bin(years: float) -> str:
    low = int(min(years // AGE_BIN_YEARS * AGE_BIN_YEARS, AGE_BIN_LAST))
    return f"{low}+" if low == AGE_BIN_LAST else f"{low}-{low + AGE_BIN_YEARS - 1}"


def is_binned(records: pd.DataFrame, column: str | None) -> bool:
    """True when ``column`` is continuous (float) and stratified by decade bins."""
    return column is not None and pd.api.types.is_float_dtype(records[column])


def stratum_labels(records: pd.DataFrame, column: str | None) -> pd.Series:
    """The label each record is stratified on, as strings (``"<NA>"`` for missing)."""
    if column is None:
        return pd.Series("all", index=records.index)
    if column not in records.columns:
        raise DataError(f"split: stratify column {column!r} is not in the records; columns: {', '.join(map(str, records.columns))}")
    values = records[column]
    if is_binned(records, column):
        labels = values.map(lambda v: NA_LABEL if pd.isna(v) else _age_bin(float(v)))
    else:
        labels = values.map(lambda v: NA_LABEL if pd.isna(v) else str(v))
    return labels.astype(str)


def _subjects(records: pd.DataFrame) -> pd.Series:
    return records["subject"] if "subject" in records.columns else pd.Series(pd.NA, index=records.index, dtype="string")


def n_identities(records: pd.DataFrame) -> int:
    """Distinct non-null subjects in ``records`` (0 for a dataset without identities)."""
    return int(_subjects(records).dropna().nunique())


def disjointness(records: pd.DataFrame, *, grouped_clusters: int | None = None) -> str:
    """The one sentence saying what a split of ``records`` keeps apart.

    ``"subject-disjoint (812 identities)"`` or ``"image-level (this dataset has no
    identities)"``; records without a subject among others with one are named;
    ``grouped_clusters``: near-duplicate clusters also kept on one side.
    """
    subjects = _subjects(records)
    n = n_identities(records)
    if n == 0:
        text = "image-level (this dataset has no identities)"
    else:
        lone = int(subjects.isna().sum())
        text = f"subject-disjoint ({n} identities" + (f"; {lone} images without one are split image by image)" if lone else ")")
    if grouped_clusters is not None:
        text += f"; {grouped_clusters} near-duplicate clusters kept on one side"
    return text


def _group_keys(records: pd.DataFrame, clusters: pd.Series | None = None) -> pd.Series:
    """Subject id where there is one, else the near-duplicate cluster, else the record itself.

    A cluster that touches subjects, or two subjects, joins them all into one group
    (connected components), named after the cluster; a group of one subject keeps its name.
    """
    own = pd.Series(["r:" + str(i) for i in records.index], index=records.index)
    subject = _subjects(records)
    keys = own.where(subject.isna(), "s:" + subject.astype(str))
    if clusters is None or clusters.isna().all():
        return keys
    keys = keys.where(clusters.isna(), "d:" + clusters.astype(str)).where(subject.isna(), keys)
    links = pd.DataFrame({"a": keys, "b": "d:" + clusters.astype(str)})[clusters.notna() & subject.notna()]
    if links.empty:
        return keys
    names = pd.Index(sorted(set(keys) | set(links["b"])))
    graph = coo_matrix((np.ones(len(links)), (names.get_indexer(links["a"]), names.get_indexer(links["b"]))), shape=(len(names), len(names)))
    component = pd.Series(connected_components(graph, directed=False)[1], index=names)
    name = pd.Series(names, index=names).groupby(component.to_numpy()).min()  # "d:" < "s:": a subject names it only without a cluster
    return keys.map(component).map(name)


def _random_split(records: pd.DataFrame, fractions, seed: int, stratify: str | None, clusters: pd.Series | None = None) -> pd.Series:
    frame = pd.DataFrame({"group": _group_keys(records, clusters), "label": stratum_labels(records, stratify)})
    counts = frame.groupby(["group", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["group", "n", "label"], ascending=[True, False, True], kind="stable")
    groups = counts.drop_duplicates("group").set_index("group")["label"].rename("stratum").to_frame()
    groups["size"] = frame.groupby("group").size()
    edges = np.cumsum(fractions)[:2]
    rng = np.random.default_rng(seed)
    assigned = {}
    for _, members in groups.groupby("stratum", sort=True):
        members = members.sort_index().iloc[rng.permutation(len(members))]
        sizes = members["size"].to_numpy()
        middle = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        which = np.searchsorted(edges, middle, side="right")
        assigned.update(zip(members.index, np.asarray(SPLITS)[which], strict=True))
    return frame["group"].map(assigned).rename("split")


def _column_split(records: pd.DataFrame, column: str, source: str) -> pd.Series:
    if column not in records.columns or records[column].isna().any():
        missing = records if column not in records.columns else records[records[column].isna()]
        raise DataError(f"split: source {source!r} needs the column {column!r}; {len(missing)} records have none (e.g. {missing['path'].iloc[0]})")
    return records[column]


def _dataset_split(records: pd.DataFrame) -> pd.Series:
    split = _column_split(records, "source_split", "dataset").astype(str)
    bad = split[~split.isin(SPLITS)]
    if len(bad):
        raise DataError(f"split: source_split {bad.iloc[0]!r} is not one of {', '.join(SPLITS)} ({records.loc[bad.index[0], 'path']})")
    return split.rename("split")


def _fold_split(records: pd.DataFrame, test_fold: int, fractions, seed: int, stratify: str | None) -> pd.Series:
    fold = _column_split(records, "fold", "folds").astype(int)
    bad = fold[~fold.between(0, N_FOLDS - 1)]
    if len(bad):
        raise DataError(f"split: fold {bad.iloc[0]} is not in 0..{N_FOLDS - 1} ({records.loc[bad.index[0], 'path']})")
    split = pd.Series("test", index=records.index, name="split")
    rest = records[fold != test_fold]
    if len(rest):
        val = fractions[1] / (fractions[0] + fractions[1])
        split[rest.index] = _random_split(rest, (1 - val, val, 0.0), seed, stratify)
    return split


def _check_args(records, source, fractions, test_fold) -> None:
    if source not in SOURCES:
        raise DataError(f"split: source {source!r} is not allowed; allowed: {', '.join(SOURCES)}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise DataError(f"split: fractions {list(fractions)} must be three numbers train, val, test >= 0 summing to 1 (train > 0)")
    if isinstance(test_fold, bool) or not isinstance(test_fold, int | np.integer) or not 0 <= test_fold < N_FOLDS:
        raise DataError(f"split: test_fold {test_fold!r} must be an integer in 0..{N_FOLDS - 1}")
    if len(records) == 0:
        raise DataError("split: there are no records to split")
    if not records.index.is_unique:
        raise DataError("split: the records' index has duplicates; reset it first")


def _check_split(records, split: pd.Series, stratify, val_expected: bool) -> None:
    counts = split.value_counts()
    for name in SPLITS:
        if counts.get(name, 0) == 0 and (name != "val" or val_expected):
            shown = {str(k): int(v) for k, v in counts.items()}
            raise DataError(f"split: the {name} split is empty ({len(records)} records; split counts {shown}); use more records or other fractions")
    if stratify is None or is_binned(records, stratify):
        return
    labels = stratum_labels(records, stratify)
    classes = sorted(set(labels) - {NA_LABEL})
    for name in ("train", "test"):
        missing = sorted(set(classes) - set(labels[split == name]))
        if missing:
            raise DataError(f"split: the {name} split has no records with {stratify} = {missing[0]} ({counts.get(name, 0)} records in it); use more records, another seed or other fractions")


def make_splits(records: pd.DataFrame, *, source: str = "random", fractions=(0.8, 0.1, 0.1), seed: int = 0, stratify: str | None = "gender", test_fold: int = 0, clusters: pd.Series | None = None) -> pd.Series:
    """``"train"`` / ``"val"`` / ``"test"`` per record (index = ``records.index``).

    ``clusters``: a near-duplicate cluster key per record (NA: none), kept on one side;
    ``random`` source only (the other sources are fixed by the dataset).
    """
    fractions = tuple(float(f) for f in fractions)
    _check_args(records, source, fractions, test_fold)
    if clusters is not None and source != "random":
        raise DataError(f"split: near-duplicate clusters can be kept on one side by the random source only, not {source!r} (its test side is fixed by the dataset)")
    if source == "random":
        split = _random_split(records, fractions, seed, stratify, clusters)
    elif source == "dataset":
        split = _dataset_split(records)
    else:
        split = _fold_split(records, test_fold, fractions, seed, stratify)
    split = split.astype(str).rename("split")
    _check_split(records, split, stratify, val_expected=source == "dataset" or fractions[1] > 0)
    return split


def _first_on_two_sides(keys: pd.Series, split: pd.Series) -> tuple[str, list[str], int] | None:
    frame = pd.DataFrame({"key": keys, "split": split}).dropna()
    sides = frame.groupby("key", sort=True)["split"].unique()
    crossing = sides[sides.map(len) > 1]
    if crossing.empty:
        return None
    return str(crossing.index[0]), sorted(crossing.iloc[0]), len(crossing)


def check_leakage(records: pd.DataFrame, split: pd.Series, clusters: pd.Series | None = None) -> None:
    """Raise :class:`LeakageError` if a path, a subject or (given) a near-duplicate cluster is in more than one split."""
    if not split.index.equals(records.index):
        raise FacetransferError("check_leakage: the split's index differs from the records' index")
    found = _first_on_two_sides(records["path"], split)
    if found:
        key, sides, n = found
        raise LeakageError(f"leakage: path {key} is in {' and '.join(sides)} ({n} paths on more than one side)")
    if "subject" in records.columns:
        found = _first_on_two_sides(records["subject"], split)
        if found:
            key, sides, n = found
            raise LeakageError(f"leakage: subject {key} is in {' and '.join(sides)} ({n} subjects on more than one side)")
    if clusters is not None:
        found = _first_on_two_sides(clusters, split)
        if found:
            key, sides, n = found
            raise LeakageError(f"leakage: the near-duplicate cluster of {key} is in {' and '.join(sides)} ({n} clusters on more than one side)")


def save_splits(path, records: pd.DataFrame, split: pd.Series) -> None:
    """Write ``splits.csv`` (path, subject, split) atomically."""
    subject = records["subject"] if "subject" in records.columns else pd.Series(pd.NA, index=records.index)
    frame = pd.DataFrame({"path": records["path"], "subject": subject, "split": split.reindex(records.index)})
    atomic_write_csv(path, frame)


def subsample(records: pd.DataFrame, n: int, *, seed: int = 0, stratify: str | None = "gender") -> pd.DataFrame:
    """A seeded subset of ``n`` records with the strata in proportion (largest remainder).

    Rows keep their original order. ``n >= len(records)`` returns the records unchanged.
    """
    if n >= len(records):
        return records
    labels = stratum_labels(records, stratify)
    sizes = labels.value_counts().sort_index()
    exact = sizes / sizes.sum() * n
    quota = np.floor(exact).astype(int)
    remainder = (exact - quota).sort_values(ascending=False, kind="stable")
    quota.loc[remainder.index[: n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    positions = np.arange(len(records))
    keep = [rng.choice(positions[(labels == label).to_numpy()], size=k, replace=False) for label, k in quota.items() if k]
    return records.iloc[np.sort(np.concatenate(keep))]
