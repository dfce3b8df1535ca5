"""``facetransfer run`` end to end with the REAL notebooks on the ``facetransfer`` kernel:
a tiny SYNTHETIC study through all four stages — 01_explore, 02_search (two values of one
key, then two Optuna trials), 03_finetune for a source run (age + gender on UTKFace-layout
faces, from scratch), a transfer run (``weights: run:source``, gender on CelebA-layout
faces, two epochs) and a ``use_search`` run, then 04_compare — and the HTML report. Then resuming: a second invocation executes nothing and rewrites no artifact;
after deleting one run's metrics.json only that run (and the comparison reading it) runs
again, with the same numbers.

The same study checks the rendered report is clean and escaped: its title, description and
one run's name carry markup, and no page shows tool noise (warnings, log lines), a missing
value as ``None`` / ``nan`` / ``()``, text cut with ``...``, a fixed introduction that is
false for the run, or live markup from the study file. (One study serves both: every
notebook execution costs a kernel start and a Keras import.)

tests/test_runner.py covers the runner's mechanics with stand-in notebooks; this module
checks what the real notebooks write.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pytest
import yaml

from _studyutil import FACETRANSFER, RUN_FILES, quiet_env, study_runs, synth
from facetransfer import cli
from facetransfer.io import read_json
from test_escaping import PAYLOAD, live

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

SEARCH_VALUES = [0.01, 0.001]
TUNED = f"tuned <b>bold</b> {PAYLOAD}"  # a run name with markup: shown escaped, never live
NOISE = ("Warning:", "WARNING:", "retracing", "IProgress", "DecompressionBomb", "absl", "oneDNN")
# A missing value shown as such; not Keras's "(None, 32, 32, 3)" (the batch dimension of a layer's shape).
MISSING = re.compile(r"(^|\s)(None|nan|NaN|<NA>|NaT|\(\))(?!\s*,)(\s|$)")


def tiny_study(celeba_root: Path) -> dict:
    return {
        "study": "tiny",
        "title": f"Tiny end-to-end study (SYNTHETIC) {PAYLOAD}",
        "description": f"Escaping check {PAYLOAD}",
        "stages": ["explore", "search", "finetune", "compare"],
        "defaults": {
            "seed": 0,
            "task": "gender",
            "data": {"dataset": "celeba", "root": str(celeba_root), "image_size": 32, "attributes": ["Young"], "split": {"source": "random"}},
            "model": {"backbone": "compact", "weights": "run:source", "strategy": "frozen", "head": {"dense": [16]}},
            "train": {"learning_rate": 0.003, "batch_size": 16, "epochs": 1},
            "eval": {"subgroups": ["Young"], "saliency": 2, "n_misclassified": 4},
        },
        "runs": [
            {
                "name": "source",
                "set": {
                    "task": "age_gender",
                    "data.dataset": "utkface",
                    "data.root": None,
                    "data.synthetic": {"n": 60, "seed": 1, "size": 64},
                    "data.attributes": [],
                    "model.weights": "none",
                    "model.strategy": "full",
                    "eval.subgroups": ["race"],
                },
            },
            {"name": "transfer", "set": {"train.epochs": 2}},
            {"name": TUNED, "use_search": True},
        ],
        "search": {
            "metric": "val.accuracy",
            "set": {"train.epochs": 1},
            "sequential": [{"key": "train.learning_rate", "values": SEARCH_VALUES}],
            "optuna": {"n_trials": 2, "sampler": "tpe", "space": {"model.head.dropout": {"low": 0.0, "high": 0.5}}},
        },
    }


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The tiny study run once through the installed ``facetransfer`` command."""
    tmp = tmp_path_factory.mktemp("e2e")
    celeba = synth("celeba", tmp / "celeba", n=100)
    broken = sorted((celeba / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))[7]
    jpeg = broken.read_bytes()
    broken.write_bytes(jpeg[: len(jpeg) * 2 // 3])  # a truncated JPEG: quarantined at decode
    study = tmp / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study(celeba), sort_keys=False), encoding="utf-8")
    results = tmp / "results"
    done = subprocess.run([str(FACETRANSFER), "run", str(study), "--results", str(results)], env=quiet_env(), cwd=tmp, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"study": study, "results": results, "dir": results / "tiny", "broken": broken, "stdout": done.stdout}


def test_every_run_folder_holds_the_artifacts(executed):
    study_dir = executed["dir"]
    runs = {r["name"]: r for r in study_runs(study_dir)}
    assert set(runs) == {"source", "transfer", TUNED}
    for name, run in runs.items():
        run_dir = study_dir / "runs" / run["run_id"]
        for file in RUN_FILES:
            assert (run_dir / file).is_file() and (run_dir / file).stat().st_size > 0, (name, file)
        m = run["metrics"]
        assert m["status"] == "ok" and m["run_id"] == run["run_id"] and m["params"] == run["params"]
        assert {"run_id", "params", "test", "val", "timing", "environment", "data"} <= set(m)
        assert 0 <= m["test"]["accuracy"] <= 1 and 0 <= m["test"]["f1_macro"] <= 1 and m["data"]["synthetic"] is True
        epochs = run["params"]["train"]["epochs"]
        assert m["timing"]["train_seconds"] > 0 and m["timing"]["epochs"] == epochs == (2 if name == "transfer" else 1)
        assert {"python", "backend", "keras", "devices"} <= set(m["environment"])
        history = pd.read_csv(run_dir / "history.csv")
        assert history["epoch"].tolist() == list(range(1, epochs + 1)) and np.isfinite(history["loss"]).all()
        splits = pd.read_csv(run_dir / "splits.csv")
        predictions = pd.read_csv(run_dir / "predictions.csv")
        assert set(splits["split"]) == {"train", "val", "test"}
        assert (predictions["split"] == "test").sum() == m["test"]["n"] == (splits["split"] == "test").sum()
        nb = json.loads((run_dir / "03_finetune.ipynb").read_text(encoding="utf-8"))
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        test = m["test"]
        assert test["classes"] == ["female", "male"]
        cm = np.asarray(test["confusion_matrix"])
        assert cm.shape == (2, 2) and cm.sum() == test["n"]
        assert test["support"] == {"female": int(cm[0].sum()), "male": int(cm[1].sum())}
        truth = predictions.loc[predictions["split"] == "test", "y_true"]
        assert [int((truth == 0).sum()), int((truth == 1).sum())] == cm.sum(axis=1).tolist()  # rows: female, male
    source, transfer, tuned = runs["source"], runs["transfer"], runs[TUNED]
    assert source["metrics"]["test"]["mae"] >= 0 and set(source["metrics"]["test"]["outputs"]) == {"gender", "age"}
    for run in (transfer, tuned):
        assert run["params"]["model"]["weights"] == f"run:{source['run_id']}"
    best = read_json(study_dir / "search" / "best_params.json")["best"]
    assert best["train.learning_rate"] in SEARCH_VALUES
    assert tuned["params"]["train"]["learning_rate"] == best["train.learning_rate"]
    assert transfer["params"]["train"]["learning_rate"] == 0.003


def test_stages_write_their_notebooks_and_outputs(executed):
    study_dir = executed["dir"]
    explore = read_json(study_dir / "explore" / "summary.json")
    assert explore["synthetic"] is True and explore["n_quarantined"] == 1
    assert explore["quarantine_by_reason"] == {"truncated image": 1}
    assert len(list((study_dir / "search" / "trials").glob("*.json"))) == len(SEARCH_VALUES) + 2  # + Optuna
    for stage, notebook in (("explore", "01_explore"), ("search", "02_search"), ("compare", "04_compare")):
        assert (study_dir / stage / f"{notebook}.ipynb").is_file()
        assert read_json(study_dir / stage / ".done.json")["stage"] == stage
    transfer = next(r for r in study_runs(study_dir) if r["name"] == "transfer")
    data = transfer["metrics"]["data"]
    assert data["quarantine_by_stage"] == {"decode": 1} and data["synthetic"] is True


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value:
                self.links.append(value)


def test_report_lists_every_run_and_its_links_resolve(executed):
    report = executed["dir"] / "report"
    index = (report / "index.html").read_text(encoding="utf-8")
    runs = study_runs(executed["dir"])
    for run in runs:
        assert run["run_id"] in index and html.escape(run["name"]) in index
        assert f"runs/{run['run_id']}/03_finetune.html" in index
    assert "SYNTHETIC" in index
    environment = runs[0]["metrics"]["environment"]
    assert "<h2>Environment</h2>" in index and environment["keras"] in index and environment["python"] in index
    assert "<h2>Data provenance</h2>" in index
    provenance = index.split("<h2>Data provenance</h2>")[1].split("<h2>")[0]
    assert "truncated image: 1" in provenance and str(executed["broken"].parents[2]) in provenance
    parser = Links()
    parser.feed(index)
    relative = [link for link in parser.links if not urlsplit(link).scheme and not link.startswith("#")]
    assert len(relative) >= 3 * 2 + 3  # notebook + metrics.json per run, one page per stage
    for link in relative:
        assert (report / unquote(urlsplit(link).path)).resolve().is_file(), link
    page = (report / "runs" / runs[0]["run_id"] / "03_finetune.html").read_text(encoding="utf-8")
    assert 'href="../../index.html"' in page and "SYNTHETIC" in page


class Text(HTMLParser):
    """The text a reader sees (no script, style or the hidden code inputs' markup)."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def output_text(page: str) -> str:
    """Visible text of the outputs and markdown (code inputs may hold anything)."""
    page = re.sub(r'<div class="jp-Cell-inputWrapper.*?<div class="jp-Cell-outputWrapper', "", page, flags=re.S)
    parser = Text()
    parser.feed(page)
    return "\n".join(parser.parts)


def report_pages(executed) -> dict[str, str]:
    report = executed["dir"] / "report"
    return {p.relative_to(report).as_posix(): p.read_text(encoding="utf-8") for p in report.rglob("*.html")}


def test_no_page_shows_tool_noise_missing_values_or_cut_text(executed):
    pages = report_pages(executed)
    assert len(pages) == 7  # index, explore, search, three runs, compare
    for name, page in pages.items():
        text = output_text(page)
        for noise in NOISE:
            assert noise not in text, (name, noise, text[max(0, text.find(noise) - 200) : text.find(noise) + 200])
        assert not MISSING.search(text), (name, MISSING.search(text))
        assert "..." not in text and "…" not in text, (name, text[max(0, text.find("...") - 200) : text.find("...") + 50])


def test_the_run_introduction_is_true_for_each_run(executed):
    pages = report_pages(executed)
    for run in study_runs(executed["dir"]):
        text = output_text(pages[f"runs/{run['run_id']}/03_finetune.html"])
        epochs = run["params"]["train"]["epochs"]
        assert "two epochs on a small synthetic set" not in text
        assert f"{epochs} epoch{'s' if epochs != 1 else ''} of adam" in text


def test_no_page_has_live_markup_from_the_study_file(executed):
    for name, page in report_pages(executed).items():
        assert live(page) == [], name
        assert "<b>bold</b>" not in page, name


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def rerun(executed, capsys) -> str:
    code = cli.main(["run", str(executed["study"]), "--results", str(executed["results"])])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_second_invocation_skips_everything_then_one_deleted_run_reruns(executed, capsys):
    study_dir = executed["dir"]
    runs = {r["name"]: r for r in study_runs(study_dir)}
    before = snapshot(study_dir)
    out = rerun(executed, capsys)
    after = snapshot(study_dir)
    rewritten = sorted(k for k in before if after.get(k) != before[k])
    assert rewritten == ["report/index.html", "study.json"]  # the run record and the index page only
    assert set(after) == set(before)
    assert not re.search(r"^(run|explore|search|compare) [0-9a-f]{12}", out, re.M)
    assert len(re.findall(r"^skip ", out, re.M)) == 3 + 3

    transfer = runs["transfer"]
    transfer_dir = study_dir / "runs" / transfer["run_id"]
    (transfer_dir / "metrics.json").unlink()
    before = snapshot(study_dir)
    out = rerun(executed, capsys)
    after = snapshot(study_dir)
    executed_lines = re.findall(r"^(run|explore|search|compare) ([0-9a-f]{12})", out, re.M)
    assert [kind for kind, _ in executed_lines] == ["run", "compare"]
    assert executed_lines[0][1] == transfer["run_id"]
    changed = {k.split("/")[0] + "/" + k.split("/")[1] for k in before if after.get(k) != before[k] and k.startswith("runs/")}
    assert changed == {f"runs/{transfer['run_id']}"}
    for stage in ("explore", "search"):
        assert all(after[k] == before[k] for k in before if k.startswith(stage + "/"))
    again = read_json(transfer_dir / "metrics.json")
    assert again["test"] == transfer["metrics"]["test"]  # same seed, same numbers on CPU
