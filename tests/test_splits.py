"""Splits: seeded, stratified, grouped (subjects, near-duplicate clusters); dataset and folds sources; leakage checks."""

import numpy as np
import pandas as pd
import pytest

from facetransfer.errors import DataError, FacetransferError
from facetransfer.splits import (
    LeakageError,
    check_leakage,
    disjointness,
    make_splits,
    save_splits,
    subsample,
)


def _records(n=3000, *, n_subjects=400, seed=0, male=0.42):
    """Records in the loaders' columns: a third without a subject, subjects of one gender."""
    rng = np.random.default_rng(seed)
    subject = rng.integers(0, n_subjects, n)
    gender = (rng.random(n_subjects) < male).astype(int)[subject]
    no_subject = rng.random(n) < 1 / 3
    gender[no_subject] = (rng.random(no_subject.sum()) < male).astype(int)
    return pd.DataFrame(
        {
            "path": [f"/data/{i:06d}.jpg" for i in range(n)],
            "gender": pd.array(gender, dtype="Int64"),
            "age": rng.gamma(4, 8, n).round(),
            "age_group": pd.array(rng.integers(0, 8, n), dtype="Int64"),
            "subject": pd.array([pd.NA if no else f"id{s}" for s, no in zip(subject, no_subject, strict=True)], dtype="string"),
            "source_split": pd.array(rng.choice(["train", "val", "test"], n, p=[0.8, 0.1, 0.1]), dtype="string"),
            "fold": pd.array(rng.integers(0, 5, n), dtype="Int64"),
        }
    )


def test_random_split_is_seeded_and_covers_every_record():
    records = _records()
    a = make_splits(records, seed=3)
    assert a.index.equals(records.index) and set(a) == {"train", "val", "test"}
    pd.testing.assert_series_equal(a, make_splits(records, seed=3))
    shuffled = records.sample(frac=1, random_state=1)
    pd.testing.assert_series_equal(make_splits(shuffled, seed=3).sort_index(), a)  # row order does not matter
    assert (make_splits(records, seed=4) != a).mean() > 0.1


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.9, 0.0, 0.1)])
def test_fractions_are_met_within_two_points(fractions):
    records = _records()
    split = make_splits(records, fractions=fractions, seed=0)
    achieved = split.value_counts(normalize=True).reindex(["train", "val", "test"], fill_value=0)
    print("target", fractions, "achieved", achieved.round(4).tolist())
    np.testing.assert_allclose(achieved.to_numpy(), fractions, atol=0.02)


def test_random_split_is_stratified_on_gender():
    records = _records(male=0.3)
    split = make_splits(records, seed=1)
    overall = records["gender"].mean()
    for name in ("train", "val", "test"):
        share = records.loc[split == name, "gender"].mean()
        print(name, "male share", round(share, 4), "overall", round(overall, 4))
        assert abs(share - overall) < 0.03


def test_random_split_is_subject_disjoint():
    records = _records()
    split = make_splits(records, seed=2)
    with_subject = records["subject"].notna()
    sides = split[with_subject].groupby(records.loc[with_subject, "subject"]).nunique()
    assert (sides == 1).all()
    check_leakage(records, split)
    # records without a subject are split one by one, not lumped together
    assert split[~with_subject].nunique() == 3


def test_age_is_stratified_by_decade_without_empty_class_errors():
    records = _records()
    records["subject"] = pd.NA  # UTKFace, the age dataset, has no subject ids
    records.loc[0, "age"] = 101.0  # a lone centenarian may land anywhere
    split = make_splits(records, stratify="age", seed=0)
    decade = (records["age"] // 10).clip(upper=8)
    table = pd.crosstab(decade, split, normalize="index")
    big = decade.value_counts()[lambda c: c > 200].index
    assert (table.loc[big, "train"] - 0.8).abs().max() < 0.03


def test_age_group_stratification_uses_each_group():
    records = _records()
    split = make_splits(records, stratify="age_group", seed=0)
    counts = pd.crosstab(records["age_group"], split)
    assert (counts > 0).all().all()


def test_dataset_source_uses_source_split():
    records = _records()
    split = make_splits(records, source="dataset")
    assert (split == records["source_split"].astype(str)).all()
    records.loc[5, "source_split"] = pd.NA
    with pytest.raises(DataError, match=r"needs the column 'source_split'; 1 records have none \(e.g. /data/000005.jpg\)"):
        make_splits(records, source="dataset")


def _adience_like(n=3000, n_subjects=400, seed=0):
    """Records whose folds are subject-exclusive, as Adience's are."""
    records = _records(n, n_subjects=n_subjects, seed=seed)
    records["subject"] = pd.array([f"id{i % n_subjects}" for i in range(n)], dtype="string")
    records["fold"] = pd.array([(i % n_subjects) % 5 for i in range(n)], dtype="Int64")
    return records


@pytest.mark.parametrize("test_fold", [0, 2, 4])
def test_folds_source_trains_on_the_other_four_folds(test_fold):
    """The published Adience protocol: test on one fold, train (and validate) on the other four."""
    records = _adience_like()
    split = make_splits(records, source="folds", test_fold=test_fold, fractions=(0.8, 0.1, 0.1), seed=0)
    fold = records["fold"].astype(int)
    assert (split[fold == test_fold] == "test").all()
    assert (split[fold != test_fold] != "test").all()
    for other in set(range(5)) - {test_fold}:  # every other fold trains (the old rule left one out for val)
        assert (split[fold == other] == "train").mean() > 0.8
    val_share = (split == "val").sum() / (fold != test_fold).sum()
    print("test fold", test_fold, "val share of the four training folds", round(val_share, 4))
    assert abs(val_share - 0.1 / 0.9) < 0.02
    check_leakage(records, split)  # val carved by subject: no user on two sides
    pd.testing.assert_series_equal(split, make_splits(records, source="folds", test_fold=test_fold, seed=0))
    assert not split.equals(make_splits(records, source="folds", test_fold=test_fold, seed=1))


def test_folds_without_validation():
    records = _adience_like()
    split = make_splits(records, source="folds", test_fold=1, fractions=(0.9, 0.0, 0.1))
    assert set(split) == {"train", "test"}


def test_a_class_missing_from_test_is_an_error():
    records = _records(n=40, n_subjects=40)
    records["gender"] = pd.array([0] * 39 + [1], dtype="Int64")
    with pytest.raises(DataError, match=r"split: the (train|test) split has no records with gender = [01]"):
        make_splits(records, seed=0)


def test_an_empty_split_is_an_error():
    records = _records(n=4, n_subjects=4)
    with pytest.raises(DataError, match="split: the (val|test) split is empty"):
        make_splits(records, seed=0)
    folds = _records(n=200)
    folds["fold"] = pd.array(folds["fold"].clip(upper=3), dtype="Int64")  # no fold 4
    with pytest.raises(DataError, match="the test split is empty"):
        make_splits(folds, source="folds", test_fold=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "kfold"}, "source 'kfold' is not allowed; allowed: random, dataset, folds"),
        ({"fractions": (0.5, 0.2, 0.2)}, "summing to 1"),
        ({"test_fold": 5}, "test_fold 5 must be an integer in 0..4"),
        ({"stratify": "Smiling"}, "stratify column 'Smiling' is not in the records"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        make_splits(_records(n=50), **kwargs)


def test_check_leakage_names_the_first_path_or_subject():
    records = _records(n=100, n_subjects=100)
    split = make_splits(records, seed=0)
    leaky = split.copy()
    train = leaky.index[(leaky == "train") & records["subject"].notna()]
    other = leaky.index[(leaky == "test") & records["subject"].notna()]
    records.loc[other[0], "subject"] = records.loc[train[0], "subject"]
    with pytest.raises(LeakageError, match=rf"subject {records.loc[train[0], 'subject']} is in test and train \(1 subjects"):
        check_leakage(records, leaky)
    dup = pd.concat([records.iloc[:10], records.iloc[[0]]], ignore_index=True)
    dup_split = pd.Series(["train"] * 10 + ["val"], index=dup.index)
    with pytest.raises(LeakageError, match=r"path /data/000000.jpg is in train and val \(1 paths"):
        check_leakage(dup, dup_split)
    assert issubclass(LeakageError, FacetransferError)


def test_save_splits_writes_path_subject_split(tmp_path):
    records = _records(n=60, n_subjects=20)
    split = make_splits(records, seed=0, fractions=(0.6, 0.2, 0.2))
    save_splits(tmp_path / "run" / "splits.csv", records, split)
    back = pd.read_csv(tmp_path / "run" / "splits.csv", keep_default_na=False, na_values=[""])
    assert list(back.columns) == ["path", "subject", "split"]
    assert back["path"].tolist() == records["path"].tolist() and back["split"].tolist() == split.tolist()
    assert back["subject"].isna().sum() == records["subject"].isna().sum()
    assert not list((tmp_path / "run").glob(".*tmp*"))


def test_subsample_is_seeded_and_stratified():
    records = _records(male=0.3)
    sub = subsample(records, 500, seed=1)
    assert len(sub) == 500 and sub.index.is_monotonic_increasing
    assert abs(sub["gender"].mean() - records["gender"].mean()) < 0.002
    pd.testing.assert_frame_equal(sub, subsample(records, 500, seed=1))
    assert not sub.index.equals(subsample(records, 500, seed=2).index)
    assert subsample(records, 10**6) is records


def _image_level(n=600, seed=0):
    records = _records(n, seed=seed)
    records["subject"] = pd.array([pd.NA] * n, dtype="string")
    return records


def test_near_duplicate_clusters_stay_on_one_side():
    records = _image_level()
    members = [list(range(k, k + 4)) for k in range(0, 120, 4)]  # 30 clusters of 4 images
    clusters = pd.Series(pd.NA, index=records.index, dtype="string")
    for group in members:
        clusters[group] = records.loc[group[0], "path"]
    plain = make_splits(records, seed=0)
    cut = sum(plain[group].nunique() > 1 for group in members)
    grouped = make_splits(records, seed=0, clusters=clusters)
    print("clusters on two sides: plain", cut, "grouped", sum(grouped[g].nunique() > 1 for g in members))
    assert cut > 10 and all(grouped[group].nunique() == 1 for group in members)
    check_leakage(records, grouped, clusters)
    with pytest.raises(LeakageError, match=r"near-duplicate cluster of /data/\d+\.jpg is in .* \(\d+ clusters on more than one side\)"):
        check_leakage(records, plain, clusters)
    no_clusters = pd.Series(pd.NA, index=records.index, dtype="string")
    pd.testing.assert_series_equal(make_splits(records, seed=0, clusters=no_clusters), plain)  # nothing found: the same split


def test_a_cluster_joins_the_subjects_it_touches():
    records = _records(n=400, n_subjects=80)
    with_subject = records.index[records["subject"].notna()]
    a, b = with_subject[0], next(i for i in with_subject if records.loc[i, "subject"] != records.loc[with_subject[0], "subject"])
    lone = records.index[records["subject"].isna()][0]
    clusters = pd.Series(pd.NA, index=records.index, dtype="string")
    clusters[[a, b, lone]] = "c1"  # two subjects and one image without a subject are copies of one photo
    for seed in range(6):
        split = make_splits(records, seed=seed, clusters=clusters)
        joined = records["subject"].isin([records.loc[a, "subject"], records.loc[b, "subject"]]) | (records.index == lone)
        assert split[joined].nunique() == 1
        check_leakage(records, split, clusters)


def test_clusters_need_the_random_source():
    records = _records(n=200)
    clusters = pd.Series(pd.NA, index=records.index, dtype="string")
    with pytest.raises(DataError, match="random source only, not 'dataset'"):
        make_splits(records, source="dataset", clusters=clusters)


def test_disjointness_says_what_the_split_keeps_apart():
    records = _records(n=300, n_subjects=50)
    n = records["subject"].nunique()
    lone = int(records["subject"].isna().sum())
    assert disjointness(records) == f"subject-disjoint ({n} identities; {lone} images without one are split image by image)"
    records["subject"] = records["subject"].fillna("id-extra")
    assert disjointness(records) == f"subject-disjoint ({n + 1} identities)"
    assert disjointness(_image_level()) == "image-level (this dataset has no identities)"
    assert disjointness(_image_level().drop(columns="subject"), grouped_clusters=7) == "image-level (this dataset has no identities); 7 near-duplicate clusters kept on one side"


def test_split_seed_change_moves_the_split_same_seed_same_bytes(tmp_path):
    records = _records(n=500)
    save_splits(tmp_path / "a.csv", records, make_splits(records, seed=0))
    save_splits(tmp_path / "b.csv", records, make_splits(records, seed=0))
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
