"""The SYNTHETIC face set: real layouts, determinism, learnable-but-imperfect signal, atomicity."""

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetransfer import synthetic
from facetransfer.cli import main
from facetransfer.errors import FacetransferError

UTK_NAME = re.compile(r"^(\d+)_([01])_([0-4])_(\d{17})\.jpg\.chip\.jpg$")


# ---------------------------------------------------------------- minimal readers (as a user would)


def read_celeba(root: Path) -> dict:
    images = root / "img_align_celeba" / "img_align_celeba"
    with open(root / "list_attr_celeba.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    attrs = {row[0]: dict(zip(header[1:], map(int, row[1:]), strict=True)) for row in body}
    with open(root / "list_eval_partition.csv", newline="") as fh:
        part_rows = list(csv.reader(fh))
    partition = {name: int(p) for name, p in part_rows[1:]}
    identity = dict(line.split() for line in (root / "identity_CelebA.txt").read_text().splitlines())
    return {"images": images, "header": header, "attrs": attrs, "partition": partition, "partition_header": part_rows[0], "identity": identity}


def read_utkface(root: Path) -> list[dict]:
    records = []
    for path in sorted(root.glob("*.jpg")):
        age, gender, race, stamp = UTK_NAME.match(path.name).groups()
        records.append({"path": path, "age": int(age), "male": gender == "0", "race": int(race), "stamp": stamp})
    return records


def pixels(paths, side=32) -> np.ndarray:
    """Downscaled RGB pixels in 0..1, one row per image."""
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((side, side), Image.BILINEAR), np.float32).ravel() / 255 for p in paths])


def best_single_feature_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Best accuracy of a threshold on any one column (either direction)."""
    order = np.argsort(x, axis=0, kind="stable")
    ys = y[order]  # (n, features), labels sorted by each feature
    n, positives = len(y), y.sum()
    below_pos = np.cumsum(ys, axis=0)
    k = np.arange(1, n + 1)[:, None]
    low_is_negative = (k - below_pos + positives - below_pos) / n
    low_is_positive = (below_pos + (n - k) - (positives - below_pos)) / n
    return float(max(low_is_negative.max(), low_is_positive.max(), max(positives, n - positives) / n))


def held_out_accuracy(x_train, y_train, x_test, y_test) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=500, class_weight="balanced"))
    predicted = model.fit(x_train, y_train).predict(x_test)
    return float(np.mean(predicted == y_test)), float(balanced_accuracy_score(y_test, predicted))


# ---------------------------------------------------------------- shared sets (generated once)


@pytest.fixture(scope="module")
def celeba_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "celeba"
    info = synthetic.generate("celeba", root, n=600, seed=11, size=64, progress=False)
    return Path(info["root"])


@pytest.fixture(scope="module")
def utk_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "utk"
    info = synthetic.generate("utkface", root, n=600, seed=12, size=64, progress=False)
    return Path(info["root"])


# ---------------------------------------------------------------- layouts


def test_celeba_layout_round_trips(celeba_set):
    data = read_celeba(celeba_set)
    assert data["header"] == ["image_id", *synthetic.CELEBA_ATTRIBUTES]
    assert data["partition_header"] == ["image_id", "partition"]
    names = sorted(p.name for p in data["images"].glob("*.jpg"))
    assert names == [f"{i:06d}.jpg" for i in range(1, 601)]
    assert set(data["attrs"]) == set(data["partition"]) == set(data["identity"]) == set(names)
    assert {v for row in data["attrs"].values() for v in row.values()} == {-1, 1}
    assert Image.open(data["images"] / names[0]).size == (round(64 * 178 / 218), 64)

    per_identity = Counter(data["identity"].values())
    assert max(per_identity.values()) >= 3 and np.median(list(per_identity.values())) >= 2
    subjects = {p: {data["identity"][n] for n in names if data["partition"][n] == p} for p in (0, 1, 2)}
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    counts = Counter(data["partition"].values())
    assert 0.75 < counts[0] / 600 < 0.85 and counts[1] > 30 and counts[2] > 30
    # an identity keeps its gender across images
    for subject in per_identity:
        assert len({data["attrs"][n]["Male"] for n in names if data["identity"][n] == subject}) == 1
    marker = (celeba_set / synthetic.SYNTHETIC_MARKER).read_text()
    assert "NOT photographs" in marker and "seed: 11" in marker and "layout: celeba" in marker


def test_celeba_attributes_correlate_with_gender_like_celeba(celeba_set):
    attrs = read_celeba(celeba_set)["attrs"]
    rows = list(attrs.values())
    male = np.array([r["Male"] == 1 for r in rows])

    def rate(name, who):
        return np.mean([r[name] == 1 for r, m in zip(rows, male, strict=True) if m == who])

    assert 0.36 < male.mean() < 0.48  # CelebA: about 42 % male
    for name in ("Goatee", "Mustache", "5_o_Clock_Shadow", "Sideburns"):
        assert rate(name, False) == 0 and rate(name, True) > 0.03, name
    assert rate("No_Beard", False) == 1 and rate("No_Beard", True) < 0.9
    for name in ("Heavy_Makeup", "Wearing_Lipstick", "Wearing_Earrings"):
        assert rate(name, False) > 0.2 and rate(name, True) < 0.06, name
    assert rate("Bald", False) == 0
    assert 0.6 < np.mean([r["Young"] == 1 for r in rows]) < 0.9


def test_utkface_layout_round_trips(utk_set):
    records = read_utkface(utk_set)
    assert len(records) == len(list(utk_set.glob("*.jpg"))) == 600
    assert len({r["path"].name for r in records}) == 600
    ages = np.array([r["age"] for r in records])
    assert ages.min() >= 1 and ages.max() <= 90
    assert 20 <= np.median(ages) <= 35 and (ages < 10).mean() > 0.05 and (ages > 60).mean() > 0.03
    assert set(r["race"] for r in records) == {0, 1, 2, 3, 4}
    assert np.mean([r["male"] for r in records]) == pytest.approx(0.52, abs=0.01)
    assert Image.open(records[0]["path"]).size == (64, 64)
    assert (utk_set / synthetic.SYNTHETIC_MARKER).is_file()


def test_utkface_gender_code_zero_is_male():
    # the names are built from the drawn person: UTKFace's own code, 0 = male, 1 = female
    specs, names = synthetic._plan_utkface(300, seed=5)
    for spec, name in zip(specs, names, strict=True):
        assert name.split("_")[1] == ("0" if spec["male"] else "1")
        assert int(name.split("_")[0]) == spec["age"]
        assert not spec["male"] or not spec["makeup"] or spec["age"] >= 14


# ---------------------------------------------------------------- signal: learnable, not trivial


def test_gender_is_learnable_but_no_single_feature_gives_it_away(celeba_set, capsys):
    data = read_celeba(celeba_set)
    names = sorted(data["attrs"])
    y = np.array([data["attrs"][n]["Male"] == 1 for n in names], int)
    train = np.array([data["partition"][n] == 0 for n in names])
    x = pixels([data["images"] / n for n in names])
    accuracy, balanced = held_out_accuracy(x[train], y[train], x[~train], y[~train])

    full = np.stack([np.asarray(Image.open(data["images"] / n).convert("RGB"), np.float32).ravel() for n in names])
    channel_means = full.reshape(len(names), -1, 3).mean(axis=1)
    best_mean = best_single_feature_accuracy(channel_means, y)
    best_pixel = best_single_feature_accuracy(full, y)
    with capsys.disabled():
        print(f"\n[synthetic] gender: logistic regression held-out accuracy {accuracy:.3f} (balanced {balanced:.3f}); "
              f"best single channel-mean threshold {best_mean:.3f}; best single pixel threshold {best_pixel:.3f}")
    assert accuracy >= 0.75
    assert best_mean < 0.99 and best_pixel < 0.99


def test_young_and_age_are_learnable(celeba_set, utk_set, capsys):
    data = read_celeba(celeba_set)
    names = sorted(data["attrs"])
    y = np.array([data["attrs"][n]["Young"] == 1 for n in names], int)
    train = np.array([data["partition"][n] == 0 for n in names])
    x = pixels([data["images"] / n for n in names])
    _, young_balanced = held_out_accuracy(x[train], y[train], x[~train], y[~train])

    records = read_utkface(utk_set)
    order = np.random.default_rng(0).permutation(len(records))  # file names sort by age
    records = [records[i] for i in order]
    older = np.array([r["age"] >= 35 for r in records], int)
    xu = pixels([r["path"] for r in records])
    cut = int(0.75 * len(records))
    _, age_balanced = held_out_accuracy(xu[:cut], older[:cut], xu[cut:], older[cut:])
    with capsys.disabled():
        print(f"\n[synthetic] celeba Young balanced accuracy {young_balanced:.3f}; utkface age>=35 balanced accuracy {age_balanced:.3f}")
    assert young_balanced >= 0.62
    assert age_balanced >= 0.65


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path):
    a = synthetic.generate("celeba", tmp_path / "a", n=70, seed=3, size=32, workers=1, progress=False)
    b = synthetic.generate("celeba", tmp_path / "b", n=70, seed=3, size=32, workers=2, progress=False)
    c = synthetic.generate("celeba", tmp_path / "c", n=70, seed=4, size=32, workers=1, progress=False)

    def files(info):
        root = Path(info["root"])
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    fa, fb, fc = files(a), files(b), files(c)
    assert len(fa) == 70 + 4
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert fa["list_attr_celeba.csv"] != fc["list_attr_celeba.csv"]
    assert sum(fa[k] != fc[k] for k in fa if k.endswith(".jpg")) == 70


def test_utkface_same_seed_same_bytes(tmp_path):
    def files(out, seed):
        root = Path(synthetic.generate("utkface", out, n=12, seed=seed, size=32, progress=False)["root"])
        return {p.name: p.read_bytes() for p in root.iterdir()}

    assert files(tmp_path / "a", 8) == files(tmp_path / "b", 8)
    assert files(tmp_path / "a2", 8).keys() != files(tmp_path / "c", 9).keys()


# ---------------------------------------------------------------- bad input, atomicity, ensure


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"layout": "adience"}, "allowed: celeba, utkface"),
        ({"n": 0}, "n must be an integer >= 1"),
        ({"size": 31}, "32..512"),
        ({"size": 513}, "32..512"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments_raise_one_line_and_write_nothing(tmp_path, kwargs, fragment):
    args = {"layout": "celeba", "n": 3, "seed": 0, "size": 32, **kwargs}
    with pytest.raises(FacetransferError) as err:
        synthetic.generate(args.pop("layout"), tmp_path / "out", progress=False, **args)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects --layout / --n itself
        code = exc.code
    return code, capsys.readouterr().err


def test_cli_bad_inputs_exit_2_and_leave_no_folder(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = [
        (["--layout", "celeba", "--out", str(tmp_path / "o1"), "--n", "3", "--size", "16"], "32..512"),
        (["--layout", "celeba", "--out", str(blocker / "sub"), "--n", "3"], "cannot write"),
        (["--layout", "utkface", "--out", str(taken), "--n", "3"], "not empty"),
        (["--layout", "utkface", "--out", str(taken), "--n", "3", "--overwrite"], "not a synthetic set"),
    ]
    for args, fragment in cases:
        code, err = run_cli(["synth", *args], capsys)
        assert code == 2, args
        assert err.count("\n") == 1 and err.startswith("facetransfer: error:") and fragment in err, err
    for args in (["--layout", "lfw", "--n", "3"], ["--layout", "celeba", "--n", "0"]):
        code, err = run_cli(["synth", "--out", str(tmp_path / "o2"), *args], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("facetransfer synth: error:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "taken"]
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_cli_writes_a_set(tmp_path, capsys):
    assert main(["synth", "--layout", "utkface", "--out", str(tmp_path / "u"), "--n", "4", "--size", "32", "--seed", "1"]) == 0
    assert "wrote 4 SYNTHETIC utkface-layout faces" in capsys.readouterr().out
    assert len(read_utkface(tmp_path / "u")) == 4


def test_overwrite_replaces_a_synthetic_set_atomically(tmp_path):
    out = tmp_path / "set"
    synthetic.generate("utkface", out, n=3, seed=1, size=32, progress=False)
    first = sorted(p.name for p in out.iterdir())
    with pytest.raises(FacetransferError, match="not empty"):
        synthetic.generate("utkface", out, n=5, seed=2, size=32, progress=False)
    assert sorted(p.name for p in out.iterdir()) == first
    synthetic.generate("utkface", out, n=5, seed=2, size=32, overwrite=True, progress=False)
    assert len(read_utkface(out)) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temporary siblings left


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(chunk):
        raise RuntimeError("killed")

    monkeypatch.setattr(synthetic, "_render_chunk", boom)
    with pytest.raises(RuntimeError):
        synthetic.generate("celeba", tmp_path / "deep" / "out", n=3, seed=0, size=32, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_ensure_generates_once_and_ignores_killed_builds(tmp_path, monkeypatch):
    final = tmp_path / "_synthetic" / "celeba-n5-s2-32px"
    final.parent.mkdir()
    dead = final.parent / f".{final.name}.tmp-999999999-abc"  # a killed build: no such pid
    dead.mkdir()
    (dead / "000001.jpg").write_bytes(b"half")
    path = synthetic.ensure(tmp_path, "celeba", n=5, seed=2, size=32, progress=False)
    assert path == final and (final / synthetic.SYNTHETIC_MARKER).is_file()
    assert not dead.exists()
    assert len(list((final / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))) == 5

    def must_not_build(*args, **kwargs):
        raise AssertionError("ensure rebuilt an existing set")

    monkeypatch.setattr(synthetic, "_build", must_not_build)
    assert synthetic.ensure(tmp_path, "celeba", n=5, seed=2, size=32) == final
    incomplete = tmp_path / "_synthetic" / "utkface-n5-s2-32px"
    incomplete.mkdir()
    with pytest.raises(FacetransferError, match="not a complete synthetic set"):
        synthetic.ensure(tmp_path, "utkface", n=5, seed=2, size=32)
