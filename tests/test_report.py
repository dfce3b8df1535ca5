"""The HTML report: notebook pages and the index, from a study folder written here in the
runner's layout (notebooks carry real outputs, made with nbformat; no kernel needed)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from facetransfer import report
from facetransfer.errors import FacetransferError
from facetransfer.io import atomic_write_json

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def executed_notebook(path: Path, text: str) -> None:
    cell = new_code_cell("show()", execution_count=1)
    cell.outputs = [
        new_output("stream", name="stdout", text=text),
        new_output("display_data", data={"image/png": PNG_1PX, "text/plain": "<Figure>"}),
    ]
    nb = new_notebook(cells=[new_markdown_cell(f"# {text}"), new_code_cell("x = 1", execution_count=0), cell])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def params(name, lr=0.001, synthetic=True, task="gender"):
    return {
        "name": name,
        "seed": 0,
        "task": task,
        "data": {"dataset": "celeba", "root": None if synthetic else "/data/celeba", "synthetic": {"n": 10} if synthetic else None},
        "model": {"backbone": "vgg16", "weights": "imagenet", "strategy": "frozen"},
        "train": {"learning_rate": lr, "batch_size": 32, "epochs": 3},
    }


def provenance(synthetic):
    return {
        "dataset": "celeba",
        "root": "/data/celeba",
        "synthetic": synthetic,
        "n_records": 120,
        "n_usable": 117,
        "n_quarantined": 3,
        "quarantine_by_reason": {"unreadable image": 2, "missing label": 1},
        "split_counts": {"train": 93, "val": 12, "test": 12},
    }


def make_study(root: Path, *, synthetic: bool, with_study_json: bool = True) -> Path:
    study_dir = root / "results" / "demo"
    runs = [
        ("aaaaaaaaaaa1", params("main lr=0.001", 0.001, synthetic), {"accuracy": 0.9125, "f1_macro": 0.9011, "degenerate": False}, "ok"),
        ("aaaaaaaaaaa2", params("main lr=0.1", 0.1, synthetic), {"accuracy": 0.5773, "f1_macro": 0.366, "degenerate": True, "degenerate_reason": "predicts class 0 for 99.0% of 12 images"}, "ok"),
        ("aaaaaaaaaaa3", params("<b>broken</b>", 0.01, synthetic), None, "failed"),
    ]
    listed = []
    for run_id, p, test, status in runs:
        run_dir = study_dir / "runs" / run_id
        metrics = {"run_id": run_id, "status": status, "params": p}
        if status == "ok":
            metrics.update(
                test=test,
                timing={"train_seconds": 12.5},
                environment={"python": "3.11.9", "keras": "3.15.1", "backend": "tensorflow", "devices": ["CPU:0"]},
                data={"provenance": provenance(synthetic)} if run_id.endswith("1") else provenance(synthetic),
            )
        else:
            metrics["error"] = "RuntimeError: out of <memory>"
        atomic_write_json(run_dir / "metrics.json", metrics)
        executed_notebook(run_dir / "03_finetune.ipynb", f"run {p['name']}")
        listed.append({"run_id": run_id, "name": p["name"], "notebook": "03_finetune.ipynb", "params": p})
    executed_notebook(study_dir / "explore" / "01_explore.ipynb", "explored")
    atomic_write_json(study_dir / "explore" / ".done.json", {"stage": "explore", "key": "k"})
    executed_notebook(study_dir / "compare" / "04_compare.ipynb", "compared")  # no marker: failed
    if with_study_json:
        atomic_write_json(
            study_dir / "study.json",
            {
                "study": "demo",
                "title": "Demo & <friends>",
                "description": "A study of things.",
                "stages": ["explore", "finetune", "compare"],
                "runs": listed,
                "pending_runs": [],
                "reported": [{"match": {"train.learning_rate": 0.001}, "metrics": {"test.accuracy": 0.9397}, "source": "report A"}],
                "study_file": "/x/params/demo.yaml",
                "study_sha1": "0" * 40,
                "overrides": ["train.epochs=3"],
            },
        )
    return study_dir


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    study_dir = make_study(tmp_path_factory.mktemp("report"), synthetic=True)
    index = report.render(study_dir)
    return study_dir, index, index.read_text()


def test_index_summarises_the_study(rendered):
    study_dir, index, text = rendered
    assert index == study_dir / "report" / "index.html"
    assert "<h1>Demo &amp; &lt;friends&gt;</h1>" in text
    assert "A study of things." in text
    assert "SYNTHETIC DATA" in text
    assert "<b>3</b> runs" in text and "2 ok" in text and "1 failed" in text
    assert "0.9125" in text and "0.9011" in text and "12.5" in text
    assert "&lt;b&gt;broken&lt;/b&gt;" in text and "<b>broken</b>" not in text  # escaped
    assert "RuntimeError: out of &lt;memory&gt;" in text


def test_degenerate_run_is_flagged_in_red(rendered):
    text = rendered[2]
    row = next(r for r in text.split("<tr>") if "main lr=0.1" in r)
    assert '<span class="bad"' in row and "degenerate" in row and "predicts class 0" in row
    good = next(r for r in text.split("<tr>") if "main lr=0.001" in r)
    assert "degenerate" not in good


def test_provenance_environment_and_reported(rendered):
    text = rendered[2]
    assert "unreadable image: 2" in text and "missing label: 1" in text
    assert "<td>celeba" in text and "/data/celeba" in text
    assert "3.15.1" in text and "CPU:0" in text
    section = text[text.index("Reported elsewhere") :]
    assert "0.9397" in section and "report A" in section and "main lr=0.001: 0.9125" in section


def test_stage_status_and_links_resolve(rendered):
    study_dir, index, text = rendered
    assert re.search(r"Data exploration</b> — <span class=\"ok\">ok</span>", text)
    assert re.search(r"Comparison of the runs</b> — <span class=\"bad\">failed or interrupted</span>", text)
    hrefs = re.findall(r'href="([^"]+)"', text)
    assert "explore/01_explore.html" in hrefs and "compare/04_compare.html" in hrefs
    assert "runs/aaaaaaaaaaa1/03_finetune.html" in hrefs and "../runs/aaaaaaaaaaa1/metrics.json" in hrefs
    for href in hrefs:
        assert not href.startswith(("http:", "https:", "/")), href
        assert (index.parent / href).resolve().is_file(), href
    assert "<link" not in text and "<script" not in text  # the index needs nothing external


def test_notebook_pages_are_self_contained_with_a_code_toggle(rendered):
    study_dir = rendered[0]
    page = (study_dir / "report" / "runs" / "aaaaaaaaaaa1" / "03_finetune.html").read_text()
    assert "data:image/png;base64," in page
    assert not re.search(r'<img[^>]+src="(?!data:)', page)
    assert not re.search(r'<link[^>]+rel="stylesheet"[^>]+href="http', page)
    assert 'id="ft-toggle"' in page and "ft-hide-code" in page
    assert 'href="../../index.html"' in page
    assert "run main lr=0.001 (aaaaaaaaaaa1)" in page
    assert "SYNTHETIC DATA" in page


def test_rerender_skips_unchanged_pages_and_force_rewrites(tmp_path):
    study_dir = make_study(tmp_path, synthetic=False)
    report.render(study_dir)
    page = study_dir / "report" / "explore" / "01_explore.html"
    old = page.stat().st_mtime_ns
    report.render(study_dir)
    assert page.stat().st_mtime_ns == old
    nb = study_dir / "explore" / "01_explore.ipynb"
    os.utime(nb, ns=(old + 10**9, old + 10**9))
    report.render(study_dir)
    assert page.stat().st_mtime_ns != old
    newer = page.stat().st_mtime_ns
    report.render(study_dir, force=True)
    assert page.stat().st_mtime_ns != newer


def test_real_data_has_no_synthetic_banner(tmp_path):
    study_dir = make_study(tmp_path, synthetic=False)
    text = report.render(study_dir).read_text()
    assert "SYNTHETIC" not in text


def test_without_study_json_runs_come_from_their_folders(tmp_path):
    study_dir = make_study(tmp_path, synthetic=False, with_study_json=False)
    text = report.render(study_dir).read_text()
    assert "<h1>demo</h1>" in text
    assert all(f"aaaaaaaaaaa{i}" in text for i in (1, 2, 3))
    assert "Other run folders" not in text


def test_run_folders_not_in_study_json_are_listed_apart(tmp_path):
    study_dir = make_study(tmp_path, synthetic=False)
    info = json.loads((study_dir / "study.json").read_text())
    info["runs"] = info["runs"][:2]
    atomic_write_json(study_dir / "study.json", info)
    text = report.render(study_dir).read_text()
    assert "<b>2</b> runs" in text
    other = text[text.index("Other run folders") :]
    assert "aaaaaaaaaaa3" in other


def test_missing_study_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(FacetransferError, match="does not exist"):
        report.render(tmp_path / "nope")
