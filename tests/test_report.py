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
    text = text[text.index("<h2>Runs</h2>"):]  # the runs table (the answer at a glance names runs above it)
    row = next(r for r in text.split("<tr>") if "main lr=0.1" in r)
    assert '<span class="bad"' in row and "degenerate" in row and "predicts class 0" in row
    good = next(r for r in text.split("<tr>") if "main lr=0.001" in r)
    assert "degenerate" not in good


def test_provenance_environment_and_reported(rendered):
    text = rendered[2]
    assert "unreadable image: 2" in text and "missing label: 1" in text
    assert "<td>celeba" in text and "/data/celeba" in text
    assert "3.15.1" in text and "CPU:0" in text
    section = text[text.index("Reported elsewhere") : text.index("Data provenance")]
    assert "0.9397" in section and "report A" in section and "main lr=0.001" in section and "0.9125" in section
    # no predictions.csv and no confusion matrix: no interval, said so (the same table as 04_compare)
    assert "no interval" in section and "unknown" in section and "nan" not in section.lower()


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


def test_pages_render_as_executions_finish_once_the_study_shows_synthetic_data(tmp_path, capsys):
    from facetransfer import runner

    study_dir = make_study(tmp_path, synthetic=True)
    late = study_dir / "runs" / "aaaaaaaaaaa2" / "03_finetune.ipynb"
    late.unlink()  # still executing
    pages = runner.ReportPages(study_dir)
    pages.refresh()
    pages.close()
    page = study_dir / "report" / "runs" / "aaaaaaaaaaa1" / "03_finetune.html"
    assert page.is_file() and "SYNTHETIC DATA" in page.read_text()
    assert not (study_dir / "report" / "runs" / "aaaaaaaaaaa2").exists() and not (study_dir / "report" / "index.html").exists()
    executed_notebook(late, "run main lr=0.1")  # it finished: render() adds its page and the index only
    capsys.readouterr()
    report.render(study_dir)
    assert capsys.readouterr().out.splitlines() == ["report: [4/5] runs/aaaaaaaaaaa2/03_finetune.ipynb"]
    # real data: a later run could still be synthetic, so every page waits for render()
    real = make_study(tmp_path / "real", synthetic=False)
    assert report.render_pages(real) is False and not (real / "report").exists()
    # a page that cannot be rendered raises when the pages are closed
    (real / "explore" / "01_explore.ipynb").write_text("{not json")
    atomic_write_json(real / "runs" / "aaaaaaaaaaa1" / "metrics.json", {"run_id": "aaaaaaaaaaa1", "status": "ok", "params": params("x"), "data": provenance(True)})
    broken = runner.ReportPages(real)
    broken.refresh()
    with pytest.raises(nbformat.reader.NotJSONError):
        broken.close()


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


# ----------------------------------------------------------------------------------------
# what a reader sees: outputs as a terminal shows them, tidy tables, nothing fetched


KERAS_EPOCH = (
    "\r\x1b[1m1/6\x1b[0m \x1b[32m━━━\x1b[0m 29s 6s/step - loss: 0.91"
    + "\b" * 40 + "\r\x1b[1m6/6\x1b[0m \x1b[32m━━━━━━\x1b[0m 11s 1s/step - loss: 0.52 - val_loss: 0.61\n"
)
TF_LOG = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1795524242.869648    9657 port.cc:153] oneDNN custom operations are on.\n"
    "E0000 00:00:1795524256.706972    9657 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
)


def test_terminal_text_keeps_the_last_state_of_each_progress_line():
    assert report.terminal_text(KERAS_EPOCH) == "\x1b[1m6/6\x1b[0m \x1b[32m━━━━━━\x1b[0m 11s 1s/step - loss: 0.52 - val_loss: 0.61\n"
    bars = "\rdecode:   0%|   | 0/4\rdecode:  50%|█  | 2/4\rdecode: 100%|███| 4/4\n"
    assert report.terminal_text(bars) == "decode: 100%|███| 4/4\n"
    assert report.terminal_text("abc\b\bX\n") == "aX\n"
    assert report.terminal_text("done\r\n") == "done\n"  # a trailing rewrite with nothing after it


def test_tidy_outputs_merges_streams_drops_tf_logs_and_keeps_real_warnings():
    outputs = [
        new_output("stream", name="stderr", text=TF_LOG),
        new_output("stream", name="stderr", text="\rsynth:   0%|   | 0/4"),
        new_output("stream", name="stderr", text="\rsynth: 100%|███| 4/4\n"),
        new_output("stream", name="stdout", text=KERAS_EPOCH),
        new_output("stream", name="stderr", text="UserWarning: the learning rate is large\n"),
        new_output("display_data", data={"text/plain": "<Figure>"}),
    ]
    shown, hidden = report.tidy_outputs(outputs)
    assert hidden == 3
    assert [(o.get("name"), o.get("text")) for o in shown[:3]] == [
        ("stdout", "synth: 100%|███| 4/4\n"),  # progress only: not shown as an error
        ("stdout", "\x1b[1m6/6\x1b[0m \x1b[32m━━━━━━\x1b[0m 11s 1s/step - loss: 0.52 - val_loss: 0.61\n"),
        ("stderr", "UserWarning: the learning rate is large\n"),
    ]
    assert shown[3]["output_type"] == "display_data" and len(shown) == 4
    assert outputs[1]["text"] == "\rsynth:   0%|   | 0/4"  # the notebook's own outputs are left as they are
    only_logs, hidden = report.tidy_outputs([new_output("stream", name="stderr", text=TF_LOG)])
    assert only_logs == [] and hidden == 3


TOOL_NOISE = (
    "/v/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update jupyter and ipywidgets.\n"
    "  from .autonotebook import tqdm as notebook_tqdm\n"
    "WARNING:tensorflow:5 out of the last 5 calls to <function f at 0x7f> triggered tf.function retracing. Tracing is expensive\n"
    "/v/lib/python3.11/site-packages/PIL/Image.py:3402: DecompressionBombWarning: Image size (95000000 pixels) exceeds limit\n"
    "  warnings.warn(\n"
    "loaded 300 records\n"
)


def test_tool_warnings_and_log_lines_are_left_out_of_the_page():
    shown, hidden = report.tidy_outputs([new_output("stream", name="stderr", text=TOOL_NOISE)])
    assert hidden == 5 and [o["text"] for o in shown] == ["loaded 300 records\n"]


def test_a_log_line_written_into_a_progress_bar_is_cut_out_and_the_bar_still_ends():
    # Keras writes a bar update without a newline; TensorFlow's retracing warning came next.
    bar = "\r1/6 \x1b[32m━\x1b[0m - loss: 0.97"
    logged = "WARNING:tensorflow:5 out of the last 15 calls to <function f at 0x7f> triggered tf.function retracing.\n"
    text = bar + logged + "\r6/6 \x1b[32m━━━━━━\x1b[0m - loss: 0.52\n[fit] done\n"
    shown, hidden = report.tidy_outputs([new_output("stream", name="stdout", text=text)])
    assert hidden == 1 and [o["text"] for o in shown] == ["6/6 \x1b[32m━━━━━━\x1b[0m - loss: 0.52\n[fit] done\n"]


def test_tidy_table_drops_the_range_index_and_left_aligns_text_columns():
    import pandas as pd

    frame = pd.DataFrame({"param": ["seed", "model.backbone"], "value": ["0", "x" * 41], "n": [3, 4]})
    html_text = report.tidy_table(frame.to_html())
    assert html_text.startswith('<div class="ft-scroll">') and html_text.endswith("</div>")
    assert "<th>0</th>" not in html_text and "<th>1</th>" not in html_text
    rows = re.findall(r"<tr.*?</tr>", html_text, re.S)
    head = re.findall(r"<th[^>]*>", rows[0])
    assert len(head) == 3 and "ft-text" in head[0] and "ft-text" in head[1] and "ft-text" not in head[2]
    assert re.search(r'<td class="ft-text ft-nowrap">seed</td>\s*<td class="ft-text ft-nowrap">0</td>\s*<td class="ft-nowrap">3</td>', rows[1])
    assert f'<td class="ft-text">{"x" * 41}</td>' in rows[2]  # long text may wrap
    verdict = report.tidy_table(pd.DataFrame({"p": [0.289062], "verdict": ["no significant difference (alpha 0.05)"]}).to_html())
    assert '<td class="ft-nowrap">0.289062</td>' in verdict  # numbers stay whole
    assert '<td class="ft-text">no significant difference (alpha 0.05)</td>' in verdict  # wraps: never pushed out of view
    missing = report.tidy_table(pd.DataFrame({"error": [None, "x"], "acc": [float("nan"), 1.0], "tags": [(), [1]]}).to_html())
    assert not re.search(r">\s*(None|NaN|nan|\(\))\s*<", missing) and missing.count(">—<") == 3
    named = pd.DataFrame({"accuracy": [0.9, 0.8]}, index=pd.Index(["female", "male"], name="class"))
    kept = report.tidy_table(named.to_html())
    assert re.search(r'<th class="ft-text ft-nowrap">female</th>\s*<td class="ft-nowrap">0.9</td>', kept)  # a real index stays


def test_notebook_page_is_tidy_and_fetches_nothing(tmp_path):
    cell = new_code_cell("fit()", execution_count=1)
    cell.outputs = [new_output("stream", name="stderr", text=TF_LOG), new_output("stream", name="stdout", text="Epoch 1/1\n" + KERAS_EPOCH)]
    nb = new_notebook(cells=[new_markdown_cell("# Fit"), cell])
    path = tmp_path / "03_finetune.ipynb"
    nbformat.write(nb, path)
    page = report.notebook_html(path, title="t", index_href="index.html", synthetic=False)
    assert not re.search(r'<script[^>]+src="https?:', page)
    assert "3 tool warning and log lines not shown" in page
    assert "oneDNN" not in page and "1/6" not in page and "6/6" in page
    assert "SYNTHETIC" not in page
    assert nbformat.read(path, as_version=4).cells[1].outputs[0]["text"] == TF_LOG  # the notebook is untouched


def test_index_lists_the_params_that_differ_and_the_search_choice(tmp_path):
    study_dir = make_study(tmp_path, synthetic=True)
    atomic_write_json(study_dir / "search" / "best_params.json",
                      {"best": {"train.batch_size": 32, "model.strategy": "frozen"}, "method": "sequential", "metric": "val.accuracy", "score": 0.875})
    info = json.loads((study_dir / "study.json").read_text())
    info["stages"] = ["explore", "search", "finetune", "compare"]
    info["search_best"] = {"train.batch_size": 32}
    atomic_write_json(study_dir / "study.json", info)
    text = report.render(study_dir).read_text()
    assert "params that differ" in text
    runs = text[text.index("<h2>Runs</h2>"):]  # the runs table (the answer at a glance names runs above it)
    row = next(r for r in runs.split("<tr>") if "main lr=0.001<" in r)
    assert '<span class="params">lr=0.001</span>' in row  # only the learning rate differs
    assert "Same in every run: task=gender · dataset=celeba · backbone=vgg16 · weights=imagenet · strategy=frozen · batch=32 · epochs=3 · seed=0." in text
    assert '<td class="num best">0.9125</td>' in row  # best accuracy among runs that are not degenerate
    flagged = next(r for r in text.split("<tr>") if "main lr=0.1<" in r)
    assert 'class="num flagged"' in flagged and "best" not in flagged
    stages = text[text.index("Hyperparameter search") : text.index("Comparison of the runs")]
    assert "sequential search (val.accuracy 0.8750)" in stages and "train.batch_size=32" in stages
    assert "model.strategy" not in stages  # the search's fixed set values are not choices
    assert "train 93, val 12, test 12" in text


def test_age_runs_show_accuracy_as_the_derived_age_group(tmp_path):
    study_dir = make_study(tmp_path, synthetic=False)
    metrics_path = study_dir / "runs" / "aaaaaaaaaaa1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["params"]["task"] = "age"
    metrics["test"] = {"accuracy": 0.0244, "f1_macro": 0.0068, "mae": 31.19}
    atomic_write_json(metrics_path, metrics)
    info = json.loads((study_dir / "study.json").read_text())
    info["runs"][0]["params"]["task"] = "age"
    atomic_write_json(study_dir / "study.json", info)
    row = next(r for r in report.render(study_dir).read_text().split("<tr>") if "aaaaaaaaaaa1" in r)
    assert "0.0244<br><span class=\"small\">age group</span>" in row and "31.19" in row and "best" not in row
