"""`facetransfer data summary` on tiny sets in real layouts (the CLI contract of DESIGN.md)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from facetransfer.cli import main


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 10), (90, 60, 50)).save(buf, format="JPEG")
    return buf.getvalue()


def make_utkface(root: Path) -> Path:
    data = jpeg()
    names = ["25_0_2_20170116174525125.jpg.chip.jpg", "30_1_0_20170116174525126.jpg.chip.jpg",
             "41_1_1_20170116174525127.jpg.chip.jpg", "39_1_20170116174525128.jpg.chip.jpg"]  # fmt: skip
    for name in names:
        (root / "UTKFace").mkdir(parents=True, exist_ok=True)
        (root / "UTKFace" / name).write_bytes(data)
    return root


def run_json(capsys, *args) -> dict:
    assert main(["data", "summary", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object on one line
    return json.loads(out)


def test_summary_json_utkface(tmp_path, capsys):
    s = run_json(capsys, "--dataset", "utkface", "--root", str(make_utkface(tmp_path)))
    assert s["dataset"] == "utkface" and s["layout"] == "utkface-chip" and s["synthetic"] is False
    assert s["root"] == str(tmp_path / "UTKFace")
    assert s["n_records"] == 4 and s["n_usable"] == 3 and len(s["skipped"]) == 1  # 39_1_<date>: no race
    assert s["gender_counts"] == {"female": 2, "male": 1}
    assert s["age"] == {"count": 3, "mean": 32.0, "min": 25.0, "max": 41.0, "median": 30.0}
    assert s["skipped"] == [{"path": str(tmp_path / "UTKFace" / "39_1_20170116174525128.jpg.chip.jpg"),
                             "reason": s["skipped"][0]["reason"]}]  # fmt: skip
    assert s["skipped"][0]["reason"].startswith("malformed name: missing field")
    assert s["skipped_by_reason"] == {"malformed name": 1}


def test_summary_text(tmp_path, capsys):
    assert main(["data", "summary", "--dataset", "utkface", "--root", str(make_utkface(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "utkface (utkface-chip)" in out and "female 2 (66.7 %), male 1 (33.3 %)" in out
    assert "malformed name" in out and "checked     every image decoded" in out


def test_summary_folder_spec_from_cli(tmp_path, capsys):
    data = jpeg()
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jpg").write_bytes(data)
    (tmp_path / "faces.csv").write_text("file,sex,grp\na.jpg,m,3\nb.jpg,w,7\nc.jpg,m,\n")
    spec = ["csv=faces.csv", "path_column=file", "gender_column=sex", "male_value=m", "female_value=w",
            "age_group_column=grp"]  # fmt: skip
    s = run_json(capsys, "--dataset", "folder", "--root", str(tmp_path), *(f"--folder={kv}" for kv in spec))
    assert s["gender_counts"] == {"female": 1, "male": 2} and s["age"] is None
    assert s["age_group_counts"]["15-20"] == 1 and s["age_group_counts"]["60-100"] == 1
    assert s["usable_by_label"] == {"gender": 3, "age_group": 2}


def test_summary_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert main(["data", "summary", "--dataset", "celeba", "--root", str(tmp_path / "nothing"), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facetransfer: error: celeba: no known celeba layout") and err.count("\n") == 1
    assert "list_attr_celeba.csv" in err
    assert main(["data", "summary", "--dataset", "folder", "--root", str(tmp_path), "--folder", "colour=red"]) == 2
    assert "data.folder.colour: unknown key" in capsys.readouterr().err
    assert main(["data", "summary", "--dataset", "folder", "--root", str(tmp_path), "--folder", "gender_colum=sex"]) == 2
    assert "data.folder.gender_colum: unknown key (did you mean gender_column?)" in capsys.readouterr().err


def test_summary_subprocess_stdout_is_only_json(tmp_path):
    root = make_utkface(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "facetransfer", "data", "summary", "--dataset", "utkface", "--root", str(root), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    for key in ("dataset", "n_records", "n_usable", "skipped", "gender_counts", "age", "root", "layout",
                "synthetic", "skipped_by_reason"):  # fmt: skip
        assert key in s


def test_summary_decodes_every_image_so_its_usable_count_is_what_a_run_uses(tmp_path, capsys):
    from facetransfer import datasets
    from facetransfer.images import build_cache

    root = make_utkface(tmp_path)
    good = Image.new("RGB", (178, 218), (120, 90, 70))
    buf = io.BytesIO()
    good.save(buf, format="JPEG")
    truncated = root / "UTKFace" / "33_0_0_20170116174525129.jpg.chip.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # a valid JPEG header, half the data
    fast = run_json(capsys, "--dataset", "utkface", "--root", str(root), "--fast")
    full = run_json(capsys, "--dataset", "utkface", "--root", str(root))
    assert fast["n_usable"] == 4 and full["n_usable"] == 3  # the header check cannot see truncation
    (entry,) = [s for s in full["skipped"] if s["path"] == str(truncated)]
    assert entry["reason"].startswith("truncated image")
    assert full["info"]["decoded"] == "every image"
    loaded = datasets.load("utkface", root, progress=False)
    cache = build_cache(loaded.records["path"], size=32, cache_dir=tmp_path / "cache", progress=False)
    assert len(cache.paths) == full["n_usable"] and cache.skipped == [entry]
