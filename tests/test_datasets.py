"""Dataset loaders on tiny image sets written in every real layout (facetransfer.datasets)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from facetransfer import datasets
from facetransfer.cli import main
from facetransfer.datasets import adience, common, utkface
from facetransfer.errors import DataError, ParamError

ATTRS = datasets.ATTRIBUTES


def image_bytes(fmt: str = "JPEG", color=(120, 80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 10), color).save(buf, format=fmt)
    return buf.getvalue()


JPEG = image_bytes()


def put(path: Path, data: bytes = JPEG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def reasons(ds) -> dict[str, str]:
    """{file name: reason category} of the skipped inputs (names are unique in these sets)."""
    out = {}
    for item in ds.skipped:
        out[Path(item["path"].split(":")[0]).name] = common.reason_category(item["reason"])
    return out


def attr_values(i: int, minus: str = "-1") -> list[str]:
    """40 attribute values for image i: Male = 1 for odd i, Smiling = 1 for i % 3 == 0."""
    values = [minus] * 40
    values[ATTRS.index("Male")] = "1" if i % 2 else minus
    values[ATTRS.index("Smiling")] = "1" if i % 3 == 0 else minus
    return values


# --------------------------------------------------------------------------- CelebA

GOOD = [1, 2, 3, 4, 5, 6, 14, 15]


def make_celeba_txt(root: Path) -> Path:
    """Original layout with one of each bad input (see the comments)."""
    img = root / "img_align_celeba"
    for i in [*GOOD, 11, 12, 13]:
        put(img / f"{i:06d}.jpg")
    put(img / "000007.jpg", b"")  # zero bytes
    put(img / "000008.jpg", b"hello, not a picture")  # not an image
    put(img / "000010.jpg")  # no label row
    put(img / "notes.txt", b"not an input")  # ignored: not an image extension
    rows = []
    for i in [*GOOD, 7, 8, 9, 11, 11, 12, 13]:  # 9: no file; 11: twice
        values = attr_values(i)
        if i == 12:
            values[ATTRS.index("Smiling")] = "2"  # out of range
        if i == 13:
            values = values[:-1]  # a field short
        sep = "  " if i % 2 else " "  # runs of spaces vary
        rows.append(f"{i:06d}.jpg " + sep.join(values))
    text = f"{len(rows)}\n" + " ".join(ATTRS) + " \n" + "\n".join(rows) + "\n"
    put(root / "Anno" / "list_attr_celeba.txt", text.encode())
    part = {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 2, 14: 5, 15: 0}
    put(root / "Eval" / "list_eval_partition.txt", "".join(f"{i:06d}.jpg {p}\n" for i, p in part.items()).encode())
    ident = [(1, 10), (2, 10), (3, 20), (4, 20), (5, 30), (6, 30), (14, 40), (15, 50), (15, 51)]
    put(root / "Anno" / "identity_CelebA.txt", "".join(f"{i:06d}.jpg {s}\n" for i, s in ident).encode())
    return root


def test_celeba_original_txt_records(tmp_path):
    root = make_celeba_txt(tmp_path / "celeba")
    ds = datasets.load("celeba", root)
    rec = ds.records
    assert ds.layout == "original-txt" and ds.root == root and not ds.synthetic
    assert rec.columns[:7].tolist() == datasets.RECORD_COLUMNS
    assert rec.columns[7:].tolist() == ATTRS
    assert [Path(p).name for p in rec["path"]] == [f"{i:06d}.jpg" for i in range(1, 7)]
    assert all(Path(p).is_absolute() for p in rec["path"])
    assert rec["gender"].tolist() == [1, 0, 1, 0, 1, 0]
    assert rec["Male"].tolist() == rec["gender"].tolist()
    assert rec["Smiling"].tolist() == [0, 0, 1, 0, 0, 1]
    assert set(rec[ATTRS].stack().unique()) == {0, 1}
    assert rec["subject"].tolist() == ["10", "10", "20", "20", "30", "30"]
    assert rec["source_split"].tolist() == ["train"] * 4 + ["val", "test"]
    assert rec["fold"].isna().all() and rec["age"].isna().all() and rec["age_group"].isna().all()
    assert ds.info["label_encoding"] == "-1/1"


def test_celeba_original_txt_quarantine(tmp_path):
    ds = datasets.load("celeba", make_celeba_txt(tmp_path / "celeba"))
    got = [(Path(s["path"]).name, common.reason_category(s["reason"])) for s in ds.skipped]
    assert sorted(got) == sorted([
        ("000007.jpg", "empty file"),
        ("000008.jpg", "not an image"),
        ("000009.jpg", "label row without image file"),
        ("000010.jpg", "image file without label row"),
        ("000011.jpg", "duplicate id"),
        ("000011.jpg", "duplicate id"),  # every row of a duplicated id
        ("000012.jpg", "bad label value"),
        ("000013.jpg", "malformed row"),
        ("000014.jpg", "bad label value"),  # partition 5
        ("000015.jpg", "duplicate id"),  # twice in identity_CelebA.txt
    ])  # fmt: skip
    detail = {Path(s["path"]).name: s["reason"] for s in ds.skipped}
    assert "Smiling='2'" in detail["000012.jpg"] and "partition='5'" in detail["000014.jpg"]
    assert "identity_CelebA.txt" in detail["000015.jpg"]


def make_celeba_kaggle(root: Path, *, first_cell: str = "image_id", minus: str = "-1", nested: bool = True) -> Path:
    img = root / "img_align_celeba" / "img_align_celeba" if nested else root / "img_align_celeba"
    for i in range(1, 7):
        put(img / f"{i:06d}.jpg")
    lines = [",".join([first_cell, *ATTRS])] + [",".join([f"{i:06d}.jpg", *attr_values(i, minus)]) for i in range(1, 7)]
    put(root / "list_attr_celeba.csv", ("\n".join(lines) + "\n").encode())
    put(root / "list_eval_partition.csv", ("image_id,partition\n" + "".join(f"{i:06d}.jpg,{i % 3}\n" for i in range(1, 7))).encode())
    put(root / "identity_CelebA.txt", "".join(f"{i:06d}.jpg {100 + i // 2}\n" for i in range(1, 7)).encode())
    return root


@pytest.mark.parametrize("first_cell", ["image_id", ""])
@pytest.mark.parametrize("minus", ["-1", "0"])
def test_celeba_kaggle_csv(tmp_path, first_cell, minus):
    root = make_celeba_kaggle(tmp_path / "celeba", first_cell=first_cell, minus=minus)
    ds = datasets.load("celeba", root)
    rec = ds.records
    assert ds.layout == "kaggle-csv" and ds.skipped == []
    assert ds.info["label_encoding"] == ("-1/1" if minus == "-1" else "0/1")
    assert ds.info["images"].endswith("img_align_celeba/img_align_celeba")
    assert rec["gender"].tolist() == [1, 0, 1, 0, 1, 0]
    assert rec["Smiling"].tolist() == [0, 0, 1, 0, 0, 1]
    assert rec["source_split"].tolist() == ["val", "test", "train", "val", "test", "train"]
    assert rec["subject"].tolist() == ["100", "101", "101", "102", "102", "103"]


def test_celeba_kaggle_nested_once_and_no_identity(tmp_path):
    root = make_celeba_kaggle(tmp_path / "celeba", nested=False)
    (root / "identity_CelebA.txt").unlink()
    ds = datasets.load("celeba", root)
    assert len(ds.records) == 6 and ds.records["subject"].isna().all() and ds.info["identity"] is None


def test_celeba_minority_encoding_rows_are_quarantined_with_line_and_column(tmp_path):
    root = make_celeba_kaggle(tmp_path / "celeba")
    text = (root / "list_attr_celeba.csv").read_text().replace("000002.jpg,-1", "000002.jpg,0", 1)
    (root / "list_attr_celeba.csv").write_text(text)
    before = datasets.load("celeba", make_celeba_kaggle(tmp_path / "intact"))
    ds = datasets.load("celeba", root)  # one 0 in a -1/1 file: that row only, never the dataset
    assert ds.info["label_encoding"] == "-1/1"
    assert len(ds.records) == len(before.records) - 1
    (entry,) = [s for s in ds.skipped if s["path"].endswith("000002.jpg")]
    line = next(n for n, t in enumerate(text.splitlines(), start=1) if t.startswith("000002.jpg"))
    assert entry["reason"] == f"bad label value: list_attr_celeba.csv line {line} column {ATTRS[0]}='0' (this file uses -1/1)"


def test_binary_labels_majority_decides_and_a_tie_is_one_line(tmp_path):
    header = ["image_id", "Male", "Young"]
    rows = [(2, ["a.jpg", "0", "1"]), (3, ["b.jpg", "1", "0"]), (4, ["c.jpg", "-1", "1"]), (5, ["d.jpg", "1", "1"])]
    frame, encoding = common.binary_table(
        rows, header=header, id_index=0, labels=["Male", "Young"], source=tmp_path / "x.csv", skipped=[], folder=tmp_path
    )
    assert encoding == "0/1"  # two rows use 0, one uses -1; d.jpg fits both
    assert frame["_reason"].tolist()[:2] == [None, None] and frame["_reason"].tolist()[3] is None
    assert frame["_reason"][2] == "bad label value: x.csv line 4 column Male='-1' (this file uses 0/1)"
    with pytest.raises(DataError, match=r"x.csv: as many rows use -1/1 \(1, first line 4\) as 0/1 \(1, first line 2\)"):
        common.binary_table(rows[:1] + rows[2:], header=header, id_index=0, labels=["Male", "Young"],
                            source=tmp_path / "x.csv", skipped=[], folder=tmp_path)  # fmt: skip


def test_names_match_after_unicode_normalisation(tmp_path):
    import unicodedata

    root = make_celeba30k(tmp_path / "c30k")
    nfc, nfd = unicodedata.normalize("NFC", "José.jpg"), unicodedata.normalize("NFD", "José.jpg")
    put(root / "images" / nfd)  # as macOS stores it
    csv = root / "celeba30k.csv"
    line = csv.read_text().splitlines()[1].split(",", 1)[1]
    csv.write_text(csv.read_text() + f"{nfc},{line}\n")  # as typed in the label file
    ds = datasets.load("celeba30k", root)
    assert str(root / "images" / nfd) in set(ds.records["path"])
    assert not [s for s in ds.skipped if "José" in unicodedata.normalize("NFC", s["path"])]


def test_celeba_errors_name_what_was_expected(tmp_path):
    root = make_celeba_kaggle(tmp_path / "celeba")
    csv = root / "list_attr_celeba.csv"
    csv.write_text(csv.read_text().replace("Male", "Mle"))
    with pytest.raises(DataError, match="no Male column"):
        datasets.load("celeba", root)
    csv.write_text(csv.read_text().replace("image_id", "name", 1))
    with pytest.raises(DataError, match="expected image_id"):
        datasets.load("celeba", root)
    txt = make_celeba_txt(tmp_path / "other")
    (txt / "Anno" / "list_attr_celeba.txt").write_text("lots\n" + " ".join(ATTRS) + "\n")
    with pytest.raises(DataError, match="line 1 should be the image count"):
        datasets.load("celeba", txt)


def test_celeba_without_image_folder(tmp_path):
    root = make_celeba_kaggle(tmp_path / "celeba")
    (root / "img_align_celeba").rename(root / "pictures")
    with pytest.raises(DataError, match="no known celeba layout .*beside an image folder img_align_celeba/"):
        datasets.load("celeba", root)


# --------------------------------------------------------------------------- root detection


def test_root_one_level_above_and_below(tmp_path):
    txt = make_celeba_txt(tmp_path / "a" / "celeba")
    kaggle = make_celeba_kaggle(tmp_path / "b" / "CelebA")
    for given, want in [
        (tmp_path / "a", txt),  # folder holding the dataset
        (txt / "img_align_celeba", txt),  # pointed into the image folder
        (txt / "Anno", txt),
        (tmp_path / "b", kaggle),
        (kaggle / "img_align_celeba", kaggle),
        (kaggle / "img_align_celeba" / "img_align_celeba", kaggle),  # nested twice
    ]:
        ds = datasets.load("celeba", given, progress=False)
        assert ds.root == want, given
        assert len(ds.records) > 0


def test_root_not_recognised_lists_what_was_looked_for(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        datasets.load("celeba", tmp_path / "empty")
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / "empty") in msg
    assert "Anno/list_attr_celeba.txt" in msg and "list_attr_celeba.csv" in msg and "1 subfolders" in msg
    with pytest.raises(DataError, match="fold_frontal_0_data.txt"):
        datasets.load("adience", tmp_path / "empty")
    with pytest.raises(DataError, match=r"\[age\]_\[gender\]"):
        datasets.load("utkface", tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        datasets.load("celeba", tmp_path / "nowhere")


def test_root_with_two_datasets_is_ambiguous(tmp_path):
    make_celeba_kaggle(tmp_path / "one")
    make_celeba_kaggle(tmp_path / "two")
    with pytest.raises(DataError, match="several celeba folders .*one, two"):
        datasets.load("celeba", tmp_path)


def test_synthetic_marker(tmp_path):
    root = make_celeba_kaggle(tmp_path / "set" / "celeba")
    assert not datasets.load("celeba", root).synthetic
    put(tmp_path / "set" / datasets.SYNTHETIC_MARKER, b"synthetic\n")
    assert datasets.load("celeba", tmp_path / "set").synthetic  # marker in the given root
    assert not datasets.load("celeba", root).synthetic  # not above the given root
    put(root / datasets.SYNTHETIC_MARKER, b"synthetic\n")
    assert datasets.load("celeba", root).synthetic


# --------------------------------------------------------------------------- CelebA30k

LABELS30 = datasets.CELEBA30K_LABELS


def make_celeba30k(root: Path, *, name_column="image_id", minus="-1", labels=LABELS30) -> Path:
    for i in range(1, 6):
        put(root / "images" / f"{i:06d}.jpg")
    put(root / "images" / "000099.jpg")  # no label row
    order = list(reversed(labels))  # column order must not matter
    rows = [",".join([name_column, *order])]
    for i in range(1, 7):  # 6: no file
        value = {name: ("1" if (name == "Male" and i % 2) or (name == "Young" and i > 3) else minus) for name in labels}
        rows.append(",".join([f"{i:06d}.jpg", *(value[n] for n in order)]))
    rows.append(",".join(["000007.jpg", *(["yes"] * len(order))]))
    put(root / "images" / "000007.jpg")
    put(root / "celeba30k.csv", ("\n".join(rows) + "\n").encode())
    put(root / "notes.csv", b"a,b\n1,2\n")  # another CSV without Male is not the label file
    return root


@pytest.mark.parametrize("name_column", ["image_id", "filename", ""])
@pytest.mark.parametrize("minus", ["-1", "0"])
def test_celeba30k_variants(tmp_path, name_column, minus):
    root = make_celeba30k(tmp_path / "c30k", name_column=name_column, minus=minus)
    ds = datasets.load("celeba30k", tmp_path)  # one level above
    rec = ds.records
    assert ds.root == root and ds.layout == "csv+images"
    assert rec.columns[7:].tolist() == LABELS30
    assert rec["gender"].tolist() == [1, 0, 1, 0, 1]
    assert rec["Young"].tolist() == [0, 0, 0, 1, 1]
    assert ds.info["label_encoding"] == ("-1/1" if minus == "-1" else "0/1")
    assert reasons(ds) == {
        "000006.jpg": "label row without image file",
        "000007.jpg": "bad label value",
        "000099.jpg": "image file without label row",
    }


def test_celeba30k_refuses_other_files(tmp_path):
    with pytest.raises(DataError, match="no file-name column; expected a first column named image_id or filename"):
        datasets.load("celeba30k", make_celeba30k(tmp_path / "a", name_column="file"))
    with pytest.raises(DataError, match="missing label columns Black_Hair"):
        datasets.load("celeba30k", make_celeba30k(tmp_path / "b", labels=LABELS30[:-1]))
    root = make_celeba30k(tmp_path / "c")
    csv = root / "celeba30k.csv"
    csv.write_text(csv.read_text().replace("Male", "Gender"))
    with pytest.raises(DataError, match="no known celeba30k layout .*Male column"):
        datasets.load("celeba30k", root)
    root = make_celeba30k(tmp_path / "d")
    (root / "images").rename(root / "gone")
    for f in (root / "gone").iterdir():
        f.rename(root / "gone" / f"x{f.name}")
    with pytest.raises(DataError, match="none of the CSV's file names"):
        datasets.load("celeba30k", root)
    root = make_celeba30k(tmp_path / "e")
    csv = root / "celeba30k.csv"
    csv.write_text(csv.read_text().replace("000002.jpg,-1", "000002.jpg,0"))
    ds = datasets.load("celeba30k", root)  # the majority (-1/1) decides; the 0 row is quarantined
    assert "000002.jpg" not in {Path(p).name for p in ds.records["path"]}
    assert reasons(ds)["000002.jpg"] == "bad label value"


# --------------------------------------------------------------------------- UTKFace

UTK_GOOD = {
    "25_0_2_20170116174525125.jpg.chip.jpg": (25, 1, "Asian"),
    "30_1_0_20170116174525126.jpg.chip.jpg": (30, 0, "White"),
    "1_1_4_20170116174525127.jpg.chip.jpg": (1, 0, "Others"),
    "116_0_3_20170116174525128.jpg.chip.jpg": (116, 1, "Indian"),
    "0_0_1_20170116174525129.jpg.chip.jpg": (0, 1, "Black"),
}
UTK_BAD = {
    "39_1_20170116174525125.jpg.chip.jpg": "missing field",
    "x_0_1_20170116174525125.jpg.chip.jpg": "age 'x' is not a number",
    "117_0_1_20170116174525125.jpg.chip.jpg": "age 117 is outside 0-116",
    "20_2_1_20170116174525125.jpg.chip.jpg": "gender 2 is not 0",
    "20_0_5_20170116174525125.jpg.chip.jpg": "race 5 is outside 0-4",
    "20_0_1_2017x.jpg.chip.jpg": "date&time '2017x' is not a number",
    "20_0_1_2017_1.jpg.chip.jpg": "5 fields, not 4",
    "20_-1_1_20170116174525125.jpg.chip.jpg": "gender '-1' is not a number",
    "face.png": "not a .jpg file",
}


def make_utkface(root: Path, suffix: str = ".jpg.chip.jpg") -> Path:
    for name in [*UTK_GOOD, *UTK_BAD]:
        put(root / name.replace(".jpg.chip.jpg", suffix))
    put(root / "40_0_0_20170116174525130.jpg.chip.jpg".replace(".jpg.chip.jpg", suffix), b"")
    put(root / "41_0_0_20170116174525131.jpg.chip.jpg".replace(".jpg.chip.jpg", suffix), b"GIF? no")
    put(root / "README.txt", b"not an input")
    put(root / ".DS_Store", b"\0\0")
    return root


@pytest.mark.parametrize("suffix,layout", [(".jpg.chip.jpg", "utkface-chip"), (".jpg", "utkface-jpg")])
def test_utkface_names(tmp_path, suffix, layout):
    root = make_utkface(tmp_path / "UTKFace", suffix)
    ds = datasets.load("utkface", tmp_path)  # one level above
    assert ds.root == root and ds.layout == layout and ds.labels == ("gender", "age")
    rec = ds.records.set_index(ds.records["path"].map(lambda p: Path(p).name))
    for name, (age, gender, race) in UTK_GOOD.items():
        row = rec.loc[name.replace(".jpg.chip.jpg", suffix)]
        assert (row["age"], row["gender"], row["race"]) == (age, gender, race)
    assert rec["subject"].isna().all()
    detail = {Path(s["path"]).name: s["reason"] for s in ds.skipped}
    assert len(detail) == len(ds.skipped) == len(UTK_BAD) + 2
    for name, why in UTK_BAD.items():
        reason = detail[name.replace(".jpg.chip.jpg", suffix)]
        assert reason.startswith("malformed name: ") and why in reason, reason
    assert common.reason_category(detail["40_0_0_20170116174525130" + suffix]) == "empty file"
    assert common.reason_category(detail["41_0_0_20170116174525131" + suffix]) == "not an image"


def test_utkface_mixed_suffixes(tmp_path):
    put(tmp_path / "25_0_2_20170116174525125.jpg.chip.jpg")
    put(tmp_path / "26_1_2_20170116174525125.jpg")
    ds = datasets.load("utkface", tmp_path)
    assert ds.layout == "utkface-mixed" and ds.records["gender"].tolist() == [1, 0]


def test_utkface_parse_name_never_guesses():
    assert utkface.parse_name("25_0_2_20170116174525125.jpg.chip.jpg") == (25, 1, "Asian")
    assert utkface.parse_name("25_1_0_20170116174525125.JPG") == (25, 0, "White")
    for bad in ["25_0_2.jpg", "25__2_1.jpg", "25_0_2_1_2.jpg", "2.5_0_2_1.jpg", "٣_0_2_1.jpg", "25_0_2_1.jpeg"]:
        assert isinstance(utkface.parse_name(bad), str), bad


def test_empty_usable_set_is_one_line_error(tmp_path):
    put(tmp_path / "39_1_20170116174525125.jpg.chip.jpg")
    with pytest.raises(DataError, match=r"utkface: no usable records .*1 inputs skipped; malformed name: 1") as exc:
        datasets.load("utkface", tmp_path)
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- Adience

# (user, face, age text, gender text, expected age_group, expected gender)
ADIENCE_ROWS = [
    ("u0", 1, "(25, 32)", "f", 4, 0),
    ("u0", 2, "(8, 23)", "m", 3, 1),  # midpoint 15.5
    ("u1", 3, "(27, 32)", "m", 4, 1),
    ("u1", 4, "(38, 42)", "f", 5, 0),
    ("u2", 5, "(38, 48)", "f", 5, 0),  # midpoint 43, the upper bound
    ("u2", 6, "35", "u", 4, None),  # gap 32..38, tie → younger; gender unknown kept
    ("u3", 7, "3", "", 0, None),  # gap 2..4, tie → younger; empty gender kept
    ("u3", 8, "55", "m", 6, 1),  # gap 53..60, nearer 53
    ("u4", 9, "None", "f", None, 0),
    ("u4", 10, "(60, 100)", "m", 7, 1),
    ("u4", 11, "13", "f", 2, 0),  # gap 12..15, nearer 12
]
HEADER = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"


def adience_line(user, face, age, gender) -> str:
    return "\t".join([user, f"img{face}.jpg", str(face), age, gender, "0", "0", "10", "10", "0", "0", "1"])


def adience_image(root: Path, user: str, face: int) -> Path:
    return root / "aligned" / user / f"landmark_aligned_face.{face}.img{face}.jpg"


def make_adience(root: Path) -> Path:
    folds: dict[int, list[str]] = {i: [] for i in range(5)}
    for user, face, age, gender, _, _ in ADIENCE_ROWS:
        put(adience_image(root, user, face))
        folds[int(user[1])].append(adience_line(user, face, age, gender))
    frontal = {i: list(lines) for i, lines in folds.items()}
    folds[0].append(adience_line("u0", 20, "(25, 32)", "m"))  # not frontal
    put(adience_image(root, "u0", 20))
    frontal[1].append(adience_line("u1", 21, "(4, 6)", "x"))  # bad gender
    put(adience_image(root, "u1", 21))
    frontal[2].append(adience_line("u2", 22, "(4, 6)", "m"))  # no image file
    put(adience_image(root, "u3", 23))  # in no fold file
    for i in range(5):
        put(root / f"fold_{i}_data.txt", (HEADER + "\n" + "\n".join(folds[i]) + "\n").encode())
        put(root / f"fold_frontal_{i}_data.txt", (HEADER + "\n" + "\n".join(frontal[i]) + "\n").encode())
    return root


def test_adience_frontal(tmp_path):
    root = make_adience(tmp_path / "adience")
    ds = datasets.load("adience", root)
    assert ds.layout == "adience-frontal" and ds.labels == ("gender", "age_group")
    rec = ds.records.set_index("face_id")
    assert len(rec) == len(ADIENCE_ROWS)
    for user, face, age, _, group, gender in ADIENCE_ROWS:
        row = rec.loc[str(face)]
        assert row["subject"] == user and row["fold"] == int(user[1]) and row["age_raw"] == age
        assert (None if pd.isna(row["age_group"]) else row["age_group"]) == group, age
        assert (None if pd.isna(row["gender"]) else row["gender"]) == gender, face
        assert Path(row["path"]) == adience_image(root, user, face)
    assert ds.records["age"].isna().all()
    assert reasons(ds) == {
        "landmark_aligned_face.20.img20.jpg": "not in the frontal folds",
        "landmark_aligned_face.21.img21.jpg": "bad label value",
        "landmark_aligned_face.22.img22.jpg": "label row without image file",
        "landmark_aligned_face.23.img23.jpg": "image file without label row",
    }
    s = datasets.summary(ds)
    assert s["n_loaded"] == 11 and s["n_usable"] == 9 and s["gender_unknown"] == 2
    assert s["n_records"] == s["n_loaded"] + s["n_skipped"] == 15
    assert s["age_group_counts"]["25-32"] == 3 and s["usable_by_label"]["age_group"] == 10
    assert s["fold_counts"] == {"0": 2, "1": 2, "2": 2, "3": 2, "4": 3} and s["n_subjects"] == 5
    assert "usable for gender: 9" in datasets.format_summary(s)


def test_adience_all_folds(tmp_path):
    root = make_adience(tmp_path / "adience")
    ds = datasets.load("adience", root / "aligned", frontal=False)  # one level below
    assert ds.root == root and ds.layout == "adience-all"
    assert "20" in set(ds.records["face_id"]) and "21" not in set(ds.records["face_id"])
    assert reasons(ds)["landmark_aligned_face.21.img21.jpg"] == "image file without label row"


def test_adience_reads_the_full_folds_when_no_frontal_fold_exists_and_says_so(tmp_path, capsys):
    root = make_adience(tmp_path / "adience")
    frontal = datasets.load("adience", root)
    assert frontal.layout == "adience-frontal" and frontal.info["folds_read"].startswith("fold_frontal_*_data.txt (present")
    for i in range(5):
        (root / f"fold_frontal_{i}_data.txt").unlink()
    ds = datasets.load("adience", root)
    assert ds.layout == "adience-all" and "20" in set(ds.records["face_id"])
    assert ds.info["folds_read"] == "fold_*_data.txt (no fold_frontal_*_data.txt; data.frontal: null)"
    assert "folds read  fold_*_data.txt (no fold_frontal_*_data.txt" in datasets.format_summary(datasets.summary(ds))
    assert main(["data", "summary", "--dataset", "adience", "--root", str(root), "--frontal"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing fold files" in err and "fold_frontal_0_data.txt" in err


def test_adience_fold_files_required(tmp_path):
    root = make_adience(tmp_path / "adience")
    (root / "fold_frontal_3_data.txt").unlink()
    with pytest.raises(DataError, match="missing fold files .*fold_frontal_3_data.txt"):
        datasets.load("adience", root)
    for i in range(5):
        (root / f"fold_frontal_{i}_data.txt").unlink(missing_ok=True)
    with pytest.raises(DataError, match=r"missing fold files .*fold_frontal_0_data.txt.*data.frontal: null or false / --all-folds") as exc:
        datasets.load("adience", root, frontal=True)  # asked for explicitly: an error
    assert "\n" not in str(exc.value)
    (root / "aligned").rename(root / "faces")
    with pytest.raises(DataError, match="no aligned/ image folder .*found faces/"):
        datasets.load("adience", root, frontal=False)


def test_adience_bad_header(tmp_path):
    root = make_adience(tmp_path / "adience")
    (root / "fold_frontal_0_data.txt").write_text(HEADER.replace("gender", "sex") + "\n")
    with pytest.raises(DataError, match="header lacks gender"):
        datasets.load("adience", root)


@pytest.mark.parametrize(
    "text,group",
    [("(0, 2)", 0), ("(4, 6)", 1), ("(8, 12)", 2), ("(15, 20)", 3), ("(25, 32)", 4), ("(38, 43)", 5),
     ("(48, 53)", 6), ("(60, 100)", 7), ("(8, 23)", 3), ("(27, 32)", 4), ("(38, 42)", 5), ("(38, 48)", 5),
     ("35", 4), ("3", 0), ("55", 6), ("13", 2), ("14", 3), ("22", 3), ("23", 4), ("57", 7), ("0", 0),
     ("45", 5), ("46", 6), ("101", 7), (" (25,32) ", 4), ("None", None), ("", None), ("(32, 25)", None),
     ("adult", None), ("-3", None)],
)  # fmt: skip
def test_adience_age_rule(text, group):
    assert adience.age_group(text) == group


# --------------------------------------------------------------------------- folder


def make_folder(root: Path) -> Path:
    for name in "abcdefhz":
        put(root / "imgs" / f"{name}.jpg")
    put(root / "imgs" / "p.png", image_bytes("PNG"))
    lines = [
        "path,sex,age,person,glasses",
        "imgs/a.jpg,M,30,p1,1",
        "imgs/b.jpg,F,41.5,p2,0",
        "imgs/c.jpg,,22,p3,0",  # gender unknown: kept as NA
        "imgs/d.jpg,X,20,p4,0",  # bad gender
        "imgs/e.jpg,M,abc,p5,0",  # bad age
        "imgs/f.jpg,M,200,p6,0",  # age out of range
        "imgs/g.jpg,F,20,p7,0",  # no file
        "imgs/h.jpg,F,20,p8,0",  # twice
        "imgs/h.jpg,F,20,p8,0",
        "imgs/p.png,F,,p9,1",  # PNG, age unknown
        ",F,20,p10,0",  # no path
    ]
    put(root / "labels.csv", ("\n".join(lines) + "\n").encode())
    return root


SPEC = {"csv": "labels.csv", "gender_column": "sex", "male_value": "M", "female_value": "F",
        "age_column": "age", "subject_column": "person"}  # fmt: skip


def test_folder_dataset(tmp_path):
    root = make_folder(tmp_path / "mine")
    ds = datasets.load("folder", tmp_path, folder=SPEC)
    rec = ds.records
    assert ds.root == root and ds.labels == ("gender", "age")
    assert [Path(p).name for p in rec["path"]] == ["a.jpg", "b.jpg", "c.jpg", "p.png"]
    assert rec["gender"].tolist()[:2] == [1, 0] and pd.isna(rec["gender"][2]) and rec["gender"][3] == 0
    assert rec["age"].tolist()[:3] == [30.0, 41.5, 22.0] and pd.isna(rec["age"][3])
    assert rec["subject"].tolist() == ["p1", "p2", "p3", "p9"]
    assert rec["glasses"].tolist() == ["1", "0", "0", "1"]
    assert reasons(ds) == {
        "d.jpg": "bad label value", "e.jpg": "bad label value", "f.jpg": "bad label value",
        "g.jpg": "label row without image file", "h.jpg": "duplicate id",
        "z.jpg": "image file without label row", "labels.csv": "malformed row",
    }  # fmt: skip
    assert sum(common.reason_category(s["reason"]) == "duplicate id" for s in ds.skipped) == 2
    s = datasets.summary(ds)
    assert s["n_usable"] == 3 and s["age"]["count"] == 3 and s["age"]["median"] == 30.0


def test_folder_values_compare_as_strings(tmp_path):
    put(tmp_path / "x.jpg")
    put(tmp_path / "y.jpg")
    put(tmp_path / "z.jpg")
    put(tmp_path / "t.csv", b'file,male,group\nx.jpg,1,4\ny.jpg,0,"(60, 100)"\nz.jpg,1.0,9\n')
    ds = datasets.load("folder", tmp_path, folder={"csv": "t.csv", "path_column": "file", "gender_column": "male",
                                                   "male_value": 1, "female_value": 0, "age_group_column": "group"})  # fmt: skip
    assert ds.records["gender"].tolist() == [1, 0] and ds.records["age_group"].tolist() == [4, 7]
    assert "male='1.0'" in ds.skipped[0]["reason"]


def test_folder_spec_errors(tmp_path):
    root = make_folder(tmp_path)
    with pytest.raises(ParamError, match="data.folder.colour: unknown key"):
        datasets.load("folder", root, folder={**SPEC, "colour": "x"})
    with pytest.raises(ParamError, match="names no label column"):
        datasets.load("folder", root, folder={"csv": "labels.csv"})
    with pytest.raises(DataError, match="no column 'gender' .*data.folder.gender_column"):
        datasets.load("folder", root, folder={**SPEC, "gender_column": "gender"})
    with pytest.raises(DataError, match=r"looked for other.csv \(data.folder.csv\)"):
        datasets.load("folder", root, folder={**SPEC, "csv": "other.csv"})
    with pytest.raises(ParamError, match="only used with dataset folder"):
        datasets.load("celeba", root, folder=SPEC)


# --------------------------------------------------------------------------- files, summary


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP"])
def test_image_signatures(tmp_path, fmt):
    assert common.check_file(str(put(tmp_path / "x.img", image_bytes(fmt)))) is None


def test_file_checks(tmp_path):
    assert common.check_file(str(tmp_path / "missing.jpg")) == common.MISSING_IMAGE
    assert common.check_file(str(put(tmp_path / "e.jpg", b""))) == common.EMPTY_FILE
    assert common.check_file(str(put(tmp_path / "h.jpg", b"<html>"))).startswith(common.NOT_IMAGE)
    assert common.check_file(str(tmp_path)).startswith(common.NOT_IMAGE)


def test_summary_is_plain_json_and_consistent(tmp_path):
    ds = datasets.load("celeba", make_celeba_txt(tmp_path / "celeba"))
    s = datasets.summary(ds)
    back = json.loads(json.dumps(s))  # plain Python types only
    assert back["dataset"] == "celeba" and back["layout"] == "original-txt" and back["synthetic"] is False
    assert back["n_loaded"] == len(ds.records) == back["n_usable"] == 6
    assert back["n_records"] == back["n_loaded"] + len(ds.skipped)
    assert back["gender_counts"] == {"female": 3, "male": 3} and back["age"] is None
    assert back["source_split_counts"] == {"train": 4, "val": 1, "test": 1}
    assert back["n_subjects"] == 3 and back["n_skipped"] == len(back["skipped"]) == 10
    assert back["skipped_by_reason"]["duplicate id"] == 3
    assert sum(back["skipped_by_reason"].values()) == len(back["skipped"])
    assert all(set(item) == {"path", "reason"} for item in back["skipped"])
    text = datasets.format_summary(s)
    assert "female 3 (50.0 %), male 3 (50.0 %)" in text and "partition   train 4, val 1, test 1" in text
    assert "duplicate id" in text


def test_bom_crlf_and_non_utf8_label_files(tmp_path):
    root = make_celeba_kaggle(tmp_path / "celeba", first_cell="image_id")
    csv = root / "list_attr_celeba.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes().replace(b"\n", b"\r\n"))  # Excel re-export
    ds = datasets.load("celeba", root)
    assert ds.records["gender"].tolist() == [1, 0, 1, 0, 1, 0] and ds.skipped == []
    csv.write_bytes(csv.read_bytes().replace(b"000003.jpg", b"00000\xe9.jpg"))
    with pytest.raises(DataError, match="list_attr_celeba.csv: not UTF-8 text"):
        datasets.load("celeba", root)


@pytest.mark.parametrize("column", ["split", "row", "fold", "gender", "_reason"])
def test_folder_reserved_column_is_refused_in_one_line(tmp_path, column):
    root = make_folder(tmp_path / "f")
    csv = root / "labels.csv"
    csv.write_text("\n".join(f"{line},{'train' if i else column}" for i, line in enumerate(csv.read_text().splitlines())) + "\n")
    with pytest.raises(DataError) as exc:
        datasets.load("folder", root, folder=SPEC)
    assert "\n" not in str(exc.value) and f"column {column!r} has a name facetransfer uses itself" in str(exc.value)


def test_folder_user_columns_keep_their_names(tmp_path):
    ds = datasets.load("folder", make_folder(tmp_path / "f"), folder=SPEC)
    assert ds.records["glasses"].tolist()[:2] == ["1", "0"]


def test_folder_duplicate_header_is_refused_in_one_line(tmp_path):
    root = make_folder(tmp_path / "f")
    csv = root / "labels.csv"
    csv.write_text(csv.read_text().replace("person,glasses", "person,person", 1))
    with pytest.raises(DataError, match=r"labels.csv: line 1 names column 'person' twice \(columns 4 and 5\)"):
        datasets.load("folder", root, folder=SPEC)
