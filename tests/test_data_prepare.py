"""data.prepare end to end on tiny sets in the real layouts (synthetic CelebA/UTKFace, hand-made Adience)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facetransfer import data, synthetic
from facetransfer.errors import DataError, ParamError
from facetransfer.params import resolve_run


def _cfg(**data_keys):
    task = data_keys.pop("task", "gender")
    base = {"dataset": "celeba", "image_size": 32}
    base.update(data_keys)
    return {"seed": 0, "task": task, "data": base, "model": {"backbone": "compact", "weights": "none", "strategy": "full"}}


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("celeba") / "set"
    synthetic.generate("celeba", out, n=80, seed=1, size=48, workers=1, progress=False)
    return out


def test_prepare_synthetic_celeba_end_to_end(tmp_path):
    cfg = _cfg(synthetic={"n": 60, "seed": 0, "size": 48}, split={"fractions": [0.6, 0.2, 0.2]})
    prepared = data.prepare(cfg, tmp_path, progress=False)
    recs = prepared.records
    assert prepared.image_size == 32 and prepared.cache.images.shape == (60, 32, 32, 3)
    assert len(recs) == 60 and prepared.quarantine.empty
    assert list(prepared.quarantine.columns) == ["path", "reason", "stage"]
    np.testing.assert_array_equal(prepared.cache.images[recs["row"]].shape, (60, 32, 32, 3))
    assert [prepared.cache.paths[r] for r in recs["row"]] == recs["path"].tolist()
    counts = recs["split"].value_counts()
    assert counts.sum() == 60 and set(counts.index) == {"train", "val", "test"}
    assert abs(counts["train"] - 36) <= 6  # whole identities move together
    subjects = recs.dropna(subset=["subject"]).groupby("subject")["split"].nunique()
    assert (subjects == 1).all()

    y = prepared.targets("test")
    assert set(y) == {"gender"} and y["gender"].dtype == np.float32
    np.testing.assert_array_equal(y["gender"], recs.loc[recs["split"] == "test", "gender"].to_numpy(float))
    x, yb = prepared.feeder("train", batch_size=8, shuffle=True)[0]
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and yb["gender"].shape == (8,)

    prov = prepared.provenance()
    assert prov["synthetic"] is True and prov["dataset"] == "celeba" and prov["n_usable"] == 60
    assert prov["split_counts"] == {s: int(counts[s]) for s in ("train", "val", "test")}
    assert sum(prov["class_counts"]["train"].values()) == counts["train"]
    assert set(prov["class_counts"]["train"]) <= {"female", "male"}
    assert prov["cache"]["hit"] is False and prov["image_size"] == 32 and prov["crop"] == "center"
    assert str(tmp_path / "_synthetic") in prov["root"]

    again = data.prepare(cfg, tmp_path, progress=False)
    assert again.cache.hit and again.cache.key == prepared.cache.key
    pd.testing.assert_frame_equal(again.records, recs)


def test_augmentation_reaches_the_train_split_only(celeba_root, tmp_path):
    prepared = data.prepare(_cfg(root=str(celeba_root)), tmp_path, progress=False)
    augment = {"flip": True, "rotation": 0.1, "zoom": 0.1}
    for split in ("val", "test"):
        plain = prepared.feeder(split, batch_size=16)[0][0]
        np.testing.assert_array_equal(prepared.feeder(split, batch_size=16, augment=augment)[0][0], plain)
    plain = prepared.feeder("train", batch_size=16)[0][0]
    assert not np.array_equal(prepared.feeder("train", batch_size=16, augment=augment)[0][0], plain)


def test_dataset_partition_limit_and_save_splits(celeba_root, tmp_path):
    prepared = data.prepare(_cfg(root=str(celeba_root), split={"source": "dataset"}), tmp_path, progress=False)
    recs = prepared.records
    assert (recs["split"] == recs["source_split"].astype(str)).all()
    prepared.save_splits(tmp_path / "run" / "splits.csv")
    saved = pd.read_csv(tmp_path / "run" / "splits.csv")
    assert saved["split"].tolist() == recs["split"].tolist()

    limited = data.prepare(_cfg(root=str(celeba_root), limit=40), tmp_path, progress=False)
    assert len(limited.records) == 40 and limited.provenance()["n_selected"] == 40
    share = limited.records["gender"].mean()
    assert abs(share - recs["gender"].mean()) < 0.05
    assert data.prepare(_cfg(root=str(celeba_root), limit=40), tmp_path, progress=False).records["path"].tolist() == limited.records["path"].tolist()


def test_quarantine_has_load_and_decode_stages(tmp_path):
    root = tmp_path / "celeba"
    synthetic.generate("celeba", root, n=40, seed=2, size=48, workers=1, progress=False)
    jpgs = sorted(root.rglob("*.jpg"))
    whole = jpgs[3].read_bytes()
    jpgs[3].write_bytes(whole[: len(whole) // 2])  # passes the loader's signature check
    jpgs[5].write_bytes(b"")
    Image.new("RGB", (10, 10)).save(jpgs[0].parent / "stray.jpg")
    prepared = data.prepare(_cfg(root=str(root), split={"fractions": [0.5, 0.25, 0.25]}), tmp_path / "results", progress=False)
    q = prepared.quarantine.set_index("path")
    assert q.loc[str(jpgs[3]), "stage"] == "decode" and q.loc[str(jpgs[3]), "reason"].startswith("truncated image: ")
    assert q.loc[str(jpgs[5]), "stage"] == "load"
    assert q.loc[str(jpgs[0].parent / "stray.jpg"), "stage"] == "load"
    assert len(prepared.records) == 38 and str(jpgs[3]) not in set(prepared.records["path"])
    prov = prepared.provenance()
    assert prov["quarantine_by_stage"] == {"load": 2, "decode": 1}
    assert prov["quarantine_by_reason"]["truncated image"] == 1 and prov["n_quarantined"] == 3


def _adience(root, *, users=20, per_user=4, seed=0):
    """A tiny Adience layout: aligned/<user>/landmark_aligned_face.<id>.<name> + 5 frontal fold files."""
    rng = np.random.default_rng(seed)
    header = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"
    groups = ["(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)"]
    folds = [[header] for _ in range(5)]
    for u in range(users):
        user = f"user{u:02d}"
        (root / "aligned" / user).mkdir(parents=True)
        gender = "mf"[u % 2]
        for k in range(per_user):
            face_id, name = u * 10 + k, f"img{k}.jpg"
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            Image.new("RGB", (40, 50), colour).save(root / "aligned" / user / f"landmark_aligned_face.{face_id}.{name}")
            age = "None" if (u, k) == (0, 0) else groups[(u + k) % 8]
            sex = "u" if (u, k) == (1, 1) else gender
            folds[u % 5].append(f"{user}\t{name}\t{face_id}\t{age}\t{sex}\t0\t0\t40\t50\t0\t0\t0")
    for i, lines in enumerate(folds):
        (root / f"fold_frontal_{i}_data.txt").write_text("\n".join(lines) + "\n")
    return root


def test_adience_folds_and_label_quarantine(tmp_path):
    root = _adience(tmp_path / "adience")
    cfg = _cfg(dataset="adience", root=str(root), task="age_group", split={"source": "folds", "test_fold": 2})
    prepared = data.prepare(cfg, tmp_path / "results", progress=False)
    recs = prepared.records
    assert (recs.loc[recs["split"] == "test", "fold"] == 2).all() and (recs.loc[recs["split"] != "test", "fold"] != 2).all()
    assert set(recs.loc[recs["split"] == "train", "fold"]) == {0, 1, 3, 4}  # four folds train, val carved from them
    assert recs.groupby("subject")["split"].nunique().max() == 1
    assert prepared.split_kind() == "subject-disjoint (20 identities)" and prepared.near_duplicates is None
    q = prepared.quarantine
    assert q["reason"].tolist() == ["no age_group label: task age_group"] and q["stage"].tolist() == ["label"]
    y = prepared.targets("train")
    assert set(y) == {"age_group"} and y["age_group"].dtype == np.int32 and y["age_group"].max() <= 7
    names = set().union(*(c.keys() for c in prepared.provenance()["class_counts"].values()))
    assert names <= {"0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100"}

    gender = data.prepare(_cfg(dataset="adience", root=str(root)), tmp_path / "results", progress=False)
    assert gender.quarantine["reason"].tolist() == ["no gender label: task gender"]
    assert gender.provenance()["quarantine_by_stage"] == {"label": 1}


def test_age_task_on_synthetic_utkface(tmp_path):
    cfg = _cfg(dataset="utkface", synthetic={"n": 50, "seed": 0, "size": 32}, task="age_gender")
    prepared = data.prepare(cfg, tmp_path, progress=False)
    y = prepared.targets("train")
    assert set(y) == {"gender", "age"} and y["age"].dtype == np.float32 and (y["age"] >= 1).all()
    age = data.prepare({**cfg, "task": "age"}, tmp_path, progress=False)
    assert set(age.targets("val")) == {"age"}
    decades = set().union(*(c.keys() for c in age.provenance()["class_counts"].values()))
    assert all(d.endswith("+") or "-" in d for d in decades)


def test_one_line_errors(celeba_root, tmp_path):
    with pytest.raises(ParamError, match=r"data.attributes: 'Nope' is not a column of celeba"):
        data.prepare(_cfg(root=str(celeba_root), attributes=["Nope"]), tmp_path, progress=False)
    with pytest.raises(DataError, match="split 'holdout' is not one of train, val, test"):
        data.prepare(_cfg(root=str(celeba_root)), tmp_path, progress=False).rows("holdout")
    root = _adience(tmp_path / "adience", users=5, per_user=1)
    for fold in root.glob("fold_frontal_*"):
        lines = fold.read_text().splitlines()
        fold.write_text("\n".join([lines[0]] + [line.replace("\tm\t", "\tu\t").replace("\tf\t", "\tu\t") for line in lines[1:]]) + "\n")
    with pytest.raises(DataError, match="has the labels task gender needs"):
        data.prepare(_cfg(dataset="adience", root=str(root)), tmp_path, progress=False)
    assert resolve_run(_cfg(root="x"))["data"]["crop"] == "center"


def test_folder_dataset_with_mixed_pixel_modes(tmp_path):
    root = tmp_path / "faces"
    (root / "img").mkdir(parents=True)
    modes = ["RGB", "L", "RGBA", "P", "LA", "CMYK"]
    lines = ["path,sex,person,years"]
    for i in range(36):
        mode = modes[i % len(modes)]
        name = f"img/{i:03d}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new("RGB", (30 + i, 40), (i * 7 % 255, 90, 200)).convert(mode).save(root / name)
        years = "" if i == 4 else str(20 + i)
        lines.append(f"{name},{'MF'[i % 2]},p{i // 2},{years}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    folder = {"csv": "labels.csv", "path_column": "path", "gender_column": "sex", "male_value": "M", "female_value": "F", "subject_column": "person", "age_column": "years"}
    cfg = _cfg(dataset="folder", root=str(root), folder=folder, task="age_gender", split={"fractions": [0.5, 0.25, 0.25]})
    prepared = data.prepare(cfg, tmp_path / "results", progress=False)
    assert prepared.cache.images.shape == (35, 32, 32, 3) and prepared.cache.skipped == []
    assert prepared.quarantine[["reason", "stage"]].values.tolist() == [["no age label: task age_gender", "label"]]
    assert prepared.records.groupby("subject")["split"].nunique().eq(1).all()
    np.testing.assert_array_equal(prepared.targets("test")["age"], prepared.records.loc[prepared.records["split"] == "test", "age"].to_numpy(np.float32))


def test_the_run_seed_does_not_move_the_split_or_the_subset(celeba_root, tmp_path):
    """Repeats (seed, seed + 1, ...) train and test on the same images; data.split.seed moves them."""
    def prepared(seed, split_seed):
        cfg = _cfg(root=str(celeba_root), limit=60, split={"seed": split_seed})
        return data.prepare({**cfg, "seed": seed}, tmp_path, progress=False)

    base = prepared(0, 0)
    for seed in (1, 7):
        pd.testing.assert_frame_equal(prepared(seed, 0).records[["path", "split"]], base.records[["path", "split"]])
    moved = prepared(0, 1).records
    assert set(moved["path"]) != set(base.records["path"]) or not moved["split"].equals(base.records["split"])
    assert base.provenance()["split"]["seed"] == 0 and prepared(3, 5).provenance()["split"]["seed"] == 5
    assert base.split_kind().startswith("subject-disjoint (") and base.near_duplicates is None


def test_provenance_says_which_adience_folds_were_read(tmp_path):
    root = _adience(tmp_path / "adience", users=30, per_user=2)
    for fold in root.glob("fold_frontal_*"):
        fold.rename(root / fold.name.replace("fold_frontal_", "fold_"))  # only the full folds
    prepared = data.prepare(_cfg(dataset="adience", root=str(root), split={"source": "folds", "test_fold": 0}), tmp_path, progress=False)
    provenance = prepared.provenance()
    assert provenance["layout"] == "adience-all"
    assert provenance["dataset_info"]["folds_read"] == "fold_*_data.txt (no fold_frontal_*_data.txt; data.frontal: null)"


def test_train_size_limits_train_only_nested_and_stratified(celeba_root, tmp_path):
    full = data.prepare(_cfg(root=str(celeba_root)), tmp_path, progress=False)
    n_train = len(full.rows("train"))
    sizes = {}
    for n in (2, 10, 30):
        part = data.prepare(_cfg(root=str(celeba_root), train_size=n), tmp_path, progress=False)
        for split in ("val", "test"):
            assert part.records.loc[part.records["split"] == split, "path"].tolist() == full.records.loc[full.records["split"] == split, "path"].tolist()
        train = part.records[part.records["split"] == "train"]
        assert len(train) == n and set(train["gender"]) == {0, 1}
        assert part.provenance()["train_size"] == {"requested": n, "used": n, "of": n_train}
        sizes[n] = set(train["path"])
    assert sizes[2] <= sizes[10] <= sizes[30]
    share = full.records.loc[full.records["split"] == "train", "gender"].mean()
    assert abs(len([p for p in sizes[30] if full.records.set_index("path").loc[p, "gender"] == 1]) / 30 - share) <= 1 / 30 + 1e-9


@pytest.mark.parametrize("size", [1, 10_000])
def test_train_size_outside_the_training_split_is_one_line(celeba_root, tmp_path, size):
    n_train = len(data.prepare(_cfg(root=str(celeba_root)), tmp_path, progress=False).rows("train"))
    with pytest.raises(ParamError, match=rf"^params: data.train_size: {size} is outside the training split's size: allowed 2..{n_train} .*$"):
        data.prepare(_cfg(root=str(celeba_root), train_size=size), tmp_path, progress=False)
