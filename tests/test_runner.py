"""The study runner: papermill executions on the real "facetransfer" kernel, with tiny
stand-in notebooks (a parameters cell + one cell writing what the real notebook writes),
so that the runner's mechanism is tested without training: dry runs, resume, failures,
the lock, kill -9 recovery, the search stage feeding ``use_search`` runs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from facetransfer import cli, runner
from facetransfer import study as S
from facetransfer.io import host_tag

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

EXPLORE = """\
import pathlib
from facetransfer.io import atomic_write_json
assert pathlib.Path.cwd() == pathlib.Path(out_dir)
atomic_write_json(pathlib.Path(out_dir) / "explore.json", {"dataset": data["dataset"], "task": task, "seed": seed})
print("explored", data["dataset"])
"""

SEARCH = """\
import pathlib
from facetransfer.io import atomic_write_json
step = search["sequential"][0]
best = {step["key"]: step["values"][-1], "train.epochs": 99}
atomic_write_json(pathlib.Path(out_dir) / "best_params.json", {"method": "sequential", "metric": "val.accuracy", "score": 0.9, "best": best})
"""

FINETUNE = """\
import os, pathlib, time
from facetransfer.io import atomic_write_json
assert pathlib.Path.cwd() == pathlib.Path(run_dir)
lr = params["train"]["learning_rate"]
if params["train"]["epochs"] == 13:
    raise RuntimeError("unlucky epochs")
if os.environ.get("FT_TEST_HANG") and lr == 0.002:
    (pathlib.Path(run_dir) / "hanging").write_text(str(os.getpid()))
    time.sleep(120)
acc = 0.5 + lr * 100
metrics = {
    "run_id": run_id, "status": "ok", "params": params,
    "test": {"accuracy": acc, "f1_macro": acc - 0.01, "degenerate": False},
    "timing": {"train_seconds": 1.25},
    "environment": {"python": "3", "backend": "tensorflow", "devices": ["CPU:0"]},
    "data": {"dataset": params["data"]["dataset"], "root": str(params["data"]["root"]),
             "synthetic": params["data"]["synthetic"] is not None, "n_records": 10, "n_usable": 9,
             "n_quarantined": 1, "quarantine_by_reason": {"unreadable image": 1},
             "split_counts": {"train": 7, "val": 1, "test": 1}},
}
atomic_write_json(pathlib.Path(run_dir) / "metrics.json", metrics)
"""

COMPARE = f"""\
import base64, pathlib
from IPython.display import Image, display
from facetransfer.io import atomic_write_json, read_json
study = read_json(pathlib.Path(study_dir) / "study.json")
atomic_write_json(pathlib.Path.cwd() / "compared.json", {{"runs": [r["run_id"] for r in study["runs"]]}})
display(Image(data=base64.b64decode("{PNG_1PX}")))
"""

PARAMETERS = {
    "01_explore.ipynb": ("data = None\ntask = None\nseed = None\naugment = None\nout_dir = None\nresults_root = None", EXPLORE),
    "02_search.ipynb": ("search = None\nbase_params = None\nout_dir = None\nresults_root = None", SEARCH),
    "03_finetune.ipynb": ("params = None\nrun_id = None\nrun_dir = None\nresults_root = None", FINETUNE),
    "04_compare.ipynb": ("study_dir = None", COMPARE),
}


def write_notebooks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (parameters, body) in PARAMETERS.items():
        nb = new_notebook()
        nb.metadata["kernelspec"] = {"name": "facetransfer", "display_name": "Python (facetransfer)", "language": "python"}
        nb.cells = [
            new_markdown_cell(f"# stand-in {name}"),
            new_code_cell(parameters, metadata={"tags": ["parameters"]}),
            new_code_cell(body),
        ]
        nbformat.write(nb, folder / name)
    return folder


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    return write_notebooks(tmp_path_factory.mktemp("notebooks"))


def study_body(**changes):
    body = {
        "study": "tiny",
        "title": "Tiny <study>",
        "description": "stand-in notebooks",
        "stages": ["explore", "finetune", "compare"],
        "defaults": {
            "data": {"dataset": "celeba", "synthetic": {"n": 20, "seed": 0, "size": 64}, "image_size": 32},
            "model": {"backbone": "compact", "weights": "none", "strategy": "full"},
            "train": {"epochs": 1, "batch_size": 4},
        },
        "grid": {"train.learning_rate": [0.001, 0.002]},
    }
    body.update(changes)
    return body


def write_study(folder: Path, body: dict, name: str = "tiny.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def snapshot(study_dir: Path) -> dict[str, int]:
    """mtime of every artifact (not the report, not study.json, which every run rewrites)."""
    out = {}
    for path in study_dir.rglob("*"):
        rel = path.relative_to(study_dir)
        if path.is_file() and rel.parts[0] not in ("report", "study.json", ".lock"):
            out[rel.as_posix()] = path.stat().st_mtime_ns
    return out


def test_notebooks_dir_default_env_and_argument(tmp_path, monkeypatch):
    monkeypatch.delenv(runner.NOTEBOOKS_ENV, raising=False)
    assert runner.notebooks_dir() == Path(__file__).resolve().parents[1] / "notebooks"
    monkeypatch.setenv(runner.NOTEBOOKS_ENV, str(tmp_path))
    assert runner.notebooks_dir() == tmp_path.resolve()
    assert runner.notebooks_dir(tmp_path / "x") == (tmp_path / "x").resolve()


def test_dry_run_prints_json_lines_and_executes_nothing(tmp_path, notebooks, capsys):
    body = study_body(stages=["explore", "search", "finetune", "compare"])
    body["search"] = {"sequential": [{"key": "train.batch_size", "values": [2, 4]}]}
    body["runs"] = [{"name": "tuned", "use_search": True}]
    path = write_study(tmp_path, body)
    results = tmp_path / "results"
    assert runner.run_study(path, dry_run=True, results=results, notebooks=notebooks) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not results.exists()
    assert [x["notebook"] for x in lines] == ["01_explore.ipynb", "02_search.ipynb", "03_finetune.ipynb", "03_finetune.ipynb", "03_finetune.ipynb", "04_compare.ipynb"]
    study = S.load_study(path)
    runs = [x for x in lines if x["notebook"] == "03_finetune.ipynb"]
    assert [x["run_id"] for x in runs] == [r.run_id for r in study.runs]
    assert runs[-1]["run_id"] is None and "pending" in runs[-1]  # waits for the search
    assert runs[0]["params"] == study.runs[0].params
    explore, search = lines[0], lines[1]
    assert re.fullmatch(r"[0-9a-f]{12}", explore["run_id"]) and explore["stage"] == "explore"
    assert explore["params"]["data"] == study.base_params["data"]
    assert explore["params"]["task"] == "gender" and explore["params"]["augment"] is None
    assert search["params"]["base_params"] == study.base_params
    assert lines[-1]["params"] == {"study_dir": str((results / "tiny").resolve())}


@pytest.fixture(scope="module")
def executed(tmp_path_factory, notebooks):
    """The tiny study run once: explore, two runs, compare, report."""
    root = tmp_path_factory.mktemp("executed")
    path = write_study(root, study_body())
    results = root / "results"
    code = runner.run_study(path, results=results, notebooks=notebooks)
    return {"path": path, "results": results, "study_dir": results / "tiny", "code": code, "notebooks": notebooks}


def test_study_runs_every_stage_and_writes_artifacts(executed):
    assert executed["code"] == 0
    study_dir = executed["study_dir"]
    info = json.loads((study_dir / "study.json").read_text())
    assert info["study"] == "tiny" and info["title"] == "Tiny <study>"
    assert info["stages"] == ["explore", "finetune", "compare"]
    assert info["study_file"] == str(executed["path"].resolve())
    assert len(info["study_sha1"]) == 40
    study = S.load_study(executed["path"])
    assert [r["run_id"] for r in info["runs"]] == [r.run_id for r in study.runs]
    for run in study.runs:
        run_dir = study_dir / "runs" / run.run_id
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["run_id"] == run.run_id
        assert metrics["params"] == run.params
        assert (run_dir / "03_finetune.ipynb").is_file() and (run_dir / "run.log").is_file()
        executed_nb = nbformat.read(run_dir / "03_finetune.ipynb", as_version=4)
        injected = [c for c in executed_nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert run.run_id in injected[0].source
        assert not list(run_dir.glob(".*.tmp.ipynb"))
    assert json.loads((study_dir / "explore" / "explore.json").read_text()) == {"dataset": "celeba", "task": "gender", "seed": 0}
    assert sorted(json.loads((study_dir / "compare" / "compared.json").read_text())["runs"]) == sorted(r.run_id for r in study.runs)
    for stage in ("explore", "compare"):
        assert json.loads((study_dir / stage / ".done.json").read_text())["stage"] == stage
    assert not (study_dir / ".lock").exists()


def test_report_of_the_executed_study(executed):
    index = executed["study_dir"] / "report" / "index.html"
    text = index.read_text()
    assert "Tiny &lt;study&gt;" in text
    assert "SYNTHETIC DATA" in text
    for name in ("main lr=0.001", "main lr=0.002"):
        assert f"<td>{name}</td>" in text
    assert "0.6000" in text and "0.7000" in text
    hrefs = re.findall(r'href="([^"]+)"', text)
    assert any(h.startswith("runs/") for h in hrefs) and "explore/01_explore.html" in hrefs and "compare/04_compare.html" in hrefs
    for href in hrefs:
        assert (index.parent / href).resolve().is_file(), href
    page = (index.parent / "compare" / "04_compare.html").read_text()
    assert "data:image/png;base64," in page
    assert not re.search(r'<img[^>]+src="(?!data:)', page)
    assert 'id="ft-toggle"' in page and 'href="../index.html"' in page


def test_a_failed_run_does_not_stop_the_others(tmp_path, notebooks, capsys):
    body = study_body(stages=["finetune"])
    body["defaults"]["model"]["weights"] = "run:bad"
    body["defaults"]["model"]["strategy"] = "frozen"
    body["runs"] = [
        {"name": "good", "set": {"model.weights": "none", "model.strategy": "full"}},
        {"name": "bad", "set": {"train.epochs": 13, "model.weights": "none", "model.strategy": "full"}},
        {"name": "child"},
    ]
    del body["grid"]
    path = write_study(tmp_path, body)
    code = runner.run_study(path, results=tmp_path / "results", notebooks=notebooks, report=False)
    out = capsys.readouterr().out
    assert code == 1
    good, bad, child = S.load_study(path).runs
    runs_dir = tmp_path / "results" / "tiny" / "runs"
    status = {r.name: json.loads((runs_dir / r.run_id / "metrics.json").read_text()) for r in (good, bad, child)}
    assert status["good"]["status"] == "ok"
    assert status["bad"]["status"] == "failed"
    assert "RuntimeError: unlucky epochs" in status["bad"]["error"]
    assert status["bad"]["params"] == bad.params and status["bad"]["run_id"] == bad.run_id
    assert "unlucky epochs" in (runs_dir / bad.run_id / "03_finetune.ipynb").read_text()  # kept, with the error
    assert status["child"]["status"] == "failed" and bad.run_id in status["child"]["error"]
    assert not (runs_dir / child.run_id / "03_finetune.ipynb").exists()  # never executed
    summary = out[out.index("study tiny:"):]
    assert "1 ok, 2 failed" in summary
    assert re.search(rf"{bad.run_id}\s+bad\s+failed", summary)
    assert re.search(rf"{good.run_id}\s+good\s+ok\s+0.6000", summary)


def test_search_stage_feeds_use_search_runs(tmp_path, notebooks, capsys):
    body = study_body(stages=["search", "finetune"])
    body["search"] = {"set": {"train.epochs": 2}, "sequential": [{"key": "train.learning_rate", "values": [0.001, 0.002]}]}
    body["runs"] = [{"name": "tuned", "use_search": True}]
    del body["grid"]
    path = write_study(tmp_path, body)
    results = tmp_path / "results"
    assert runner.run_study(path, results=results, notebooks=notebooks, report=False) == 0
    info = json.loads((results / "tiny" / "study.json").read_text())
    (tuned,) = info["runs"]
    assert info["pending_runs"] == []
    assert tuned["params"]["train"]["learning_rate"] == 0.002  # the search's choice
    assert tuned["params"]["train"]["epochs"] == 1  # not the search's trial budget
    metrics = json.loads((results / "tiny" / "runs" / tuned["run_id"] / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    capsys.readouterr()
    runner.run_study(path, results=results, notebooks=notebooks, dry_run=True)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[-1]["run_id"] == tuned["run_id"]  # resolved from the finished search


def test_busy_study_exits_non_zero_naming_the_pid(tmp_path, notebooks, capsys, monkeypatch):
    path = write_study(tmp_path, study_body(stages=["finetune"]))
    results = tmp_path / "results"
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = results / "tiny" / ".lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        monkeypatch.setenv(runner.NOTEBOOKS_ENV, str(notebooks))
        code = cli.main(["run", str(path), "--results", str(results)])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 2
    assert "study is busy" in err and str(holder.pid) in err and len(err.strip().splitlines()) == 1
    assert not (results / "tiny" / "runs").exists()


def test_missing_notebook_is_an_error_before_any_run(tmp_path):
    path = write_study(tmp_path, study_body())
    with pytest.raises(runner.FacetransferError, match="01_explore.ipynb not found"):
        runner.run_study(path, results=tmp_path / "results", notebooks=tmp_path / "empty")
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_kill_9_then_rerun_completes_without_recomputing(tmp_path, notebooks, capsys):
    path = write_study(tmp_path, study_body(stages=["finetune"]))
    results = tmp_path / "results"
    first, second = S.load_study(path).runs  # lr 0.001 finishes; lr 0.002 hangs
    env = {**os.environ, "FT_TEST_HANG": "1", runner.NOTEBOOKS_ENV: str(notebooks)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "facetransfer", "run", str(path), "--results", str(results), "--no-report"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    hanging = results / "tiny" / "runs" / second.run_id / "hanging"
    kernel_pid = None
    try:
        deadline = time.monotonic() + 120
        while not hanging.is_file() or not hanging.read_text():
            assert proc.poll() is None, "the runner ended before the hanging run started"
            assert time.monotonic() < deadline, "the hanging run never started"
            time.sleep(0.2)
        kernel_pid = int(hanging.read_text())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if kernel_pid is not None:
            os.kill(kernel_pid, signal.SIGKILL)
    study_dir = results / "tiny"
    assert (study_dir / ".lock").exists()  # left behind by the killed runner
    assert list((study_dir / "runs" / second.run_id).glob(".*.tmp.ipynb"))  # its half-written output
    before = snapshot(study_dir)
    assert runner.run_study(path, results=results, notebooks=notebooks, report=False) == 0
    out = capsys.readouterr().out
    assert f"skip {first.run_id} (complete)" in out
    after = snapshot(study_dir)
    for rel in ("metrics.json", "03_finetune.ipynb"):
        assert after[f"runs/{first.run_id}/{rel}"] == before[f"runs/{first.run_id}/{rel}"]
    assert json.loads((study_dir / "runs" / second.run_id / "metrics.json").read_text())["status"] == "ok"
    assert not list((study_dir / "runs" / second.run_id).glob(".*.tmp.ipynb"))
    assert not (study_dir / ".lock").exists()


# Last in the file: it changes the executed study (module fixture) the tests above read.
def test_resume_skips_complete_work_and_reruns_only_what_is_missing(executed, capsys):
    study_dir, path = executed["study_dir"], executed["path"]
    kwargs = {"results": executed["results"], "notebooks": executed["notebooks"]}
    a, b = S.load_study(path).runs
    before = snapshot(study_dir)
    capsys.readouterr()
    assert runner.run_study(path, **kwargs) == 0
    out = capsys.readouterr().out
    assert f"skip {a.run_id} (complete)" in out and f"skip {b.run_id} (complete)" in out
    assert "skip explore" in out and "skip compare" in out
    assert snapshot(study_dir) == before  # nothing rewritten
    (study_dir / "runs" / a.run_id / "metrics.json").unlink()
    assert runner.run_study(path, **kwargs) == 0
    out = capsys.readouterr().out
    assert f"run {a.run_id}" in out and f"skip {b.run_id} (complete)" in out
    after = snapshot(study_dir)
    changed = {k for k in after if after[k] != before.get(k)}
    assert f"runs/{a.run_id}/03_finetune.ipynb" in changed and f"runs/{a.run_id}/metrics.json" in changed
    assert not any(k.startswith(f"runs/{b.run_id}/") or k.startswith("explore/") for k in changed)
    assert "compare/04_compare.ipynb" in changed  # its input (a's metrics) changed


def test_a_run_removes_temporary_files_of_killed_writers(tmp_path, notebooks, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    host = host_tag()
    results = tmp_path / "results"
    orphans = [results / "_cache" / "features" / f".k.npy.pid{dead.stdout.strip()}@{host}.a1.tmp.npy", results / "tiny" / "runs" / "r1" / f".model.keras.pid{dead.stdout.strip()}@{host}.b2.tmp.keras"]
    for path in orphans:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"0" * 2**20)
    code = runner.run_study(write_study(tmp_path, study_body(stages=["explore"])), results=results, notebooks=notebooks, report=False)
    out = capsys.readouterr().out
    assert code == 0
    assert not any(p.exists() for p in orphans)
    assert f"removed 1 temporary file(s) left by killed processes under {results.resolve() / '_cache'} (1.0 MiB)" in out
    assert f"removed 1 temporary file(s) left by killed processes under {results.resolve() / 'tiny'} (1.0 MiB)" in out


REEVALUATE = FINETUNE + """
pathlib.Path(run_dir, "model.keras").write_text("stand-in")
pathlib.Path(run_dir, "history.csv").write_text("epoch\\n1\\n")
with open(pathlib.Path(run_dir) / "calls.txt", "a") as calls:
    calls.write(f"{globals().get('reevaluate', False)} {params['eval']['bootstrap']}\\n")
"""


def test_eval_changes_re_evaluate_the_saved_model_without_retraining(tmp_path, capsys):
    """eval.* is not part of the run id: the same run folder, its notebook told to re-evaluate
    (03_finetune then loads model.keras instead of training: train.reuse_trained)."""
    notebooks = write_notebooks(tmp_path / "notebooks")
    nb = nbformat.read(notebooks / "03_finetune.ipynb", as_version=4)
    nb.cells[2].source = REEVALUATE
    nbformat.write(nb, notebooks / "03_finetune.ipynb")
    path = write_study(tmp_path, study_body(stages=["finetune"], grid={"train.learning_rate": [0.001]}))
    results = tmp_path / "results"
    assert runner.run_study(path, results=results, notebooks=notebooks, report=False) == 0
    (run_dir,) = (results / "tiny" / "runs").iterdir()
    capsys.readouterr()
    assert runner.run_study(path, results=results, notebooks=notebooks, report=False, overrides=["eval.bootstrap=10"]) == 0
    out = capsys.readouterr().out
    assert f"re-evaluate {run_dir.name} main lr=0.001: eval.bootstrap changed; the saved model, no retraining" in out
    assert [p.name for p in (results / "tiny" / "runs").iterdir()] == [run_dir.name]  # same run id
    assert runner.run_study(path, results=results, notebooks=notebooks, report=False, overrides=["eval.bootstrap=10"]) == 0
    assert f"skip {run_dir.name} (complete)" in capsys.readouterr().out
    assert (run_dir / "calls.txt").read_text().splitlines() == ["False 1000", "True 10"]


def test_a_kernel_starts_in_its_folder_without_changing_the_process_directory(tmp_path, monkeypatch):
    """A Dask worker runs a seceded search's execution beside another task's: a process-wide
    os.chdir() by one would start the other's kernel in the wrong folder."""
    notebook = tmp_path / "cwd.ipynb"
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "facetransfer", "display_name": "Python (facetransfer)", "language": "python"}
    nb.cells = [new_code_cell("import pathlib\npathlib.Path('cwd.txt').write_text(str(pathlib.Path.cwd()))")]
    nbformat.write(nb, notebook)

    here, chdir = os.getcwd(), os.chdir

    def no_chdir(path):  # papermill's context manager "returns" to where the process is: harmless
        if os.path.realpath(path) != os.path.realpath(here):
            raise AssertionError(f"os.chdir({path!r}) changes the directory of every thread")
        chdir(path)

    monkeypatch.setattr(os, "chdir", no_chdir)
    out_dir = tmp_path / "out"
    error = runner.execute_notebook(notebook, out_dir, {}, kernel_name="facetransfer", log_name="run.log")
    assert error is None
    assert (out_dir / "cwd.txt").read_text() == str(out_dir)
