"""Studies on Dask (``facetransfer run --workers N | --scheduler ADDRESS``).

The runner's mechanics run on the stand-in notebooks of test_runner.py (no training), with
a finetune stand-in that records each attempt (``attempt.<n>``: the pid of the Dask worker
whose kernel ran it, start and end times) and, with ``FT_DASK_FAULTS`` set in the workers'
environment, misbehaves on cue: the run with learning rate 0.002 holds on its first attempt
until the test drops a ``release`` file (so the test kills its worker, or its client, in
the middle of it deterministically), and the run with 0.004 kills its own worker on every
attempt. The fault tests use a REAL ``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1 that the module starts and stops. The same-numbers test trains two tiny runs of
the real notebook serially and on a 2-worker LocalCluster.
"""

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
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from _studyutil import FACETRANSFER, quiet_env
from facetransfer import cli, runner
from facetransfer.io import read_json
from test_runner import FINETUNE, PARAMETERS, study_body, write_study

DASK = Path(sys.executable).with_name("dask")
LIB = Path(__file__).resolve().parents[1] / "lib"
WAIT_S = 120

ATTEMPT = """\
import json, os, pathlib, signal, time
_run = pathlib.Path(run_dir)
_attempt = len(list(_run.glob("attempt.*"))) + 1
_start = time.time()
(_run / f"attempt.{_attempt}").write_text(json.dumps({"worker_pid": os.getppid()}))
_lr = params["train"]["learning_rate"]
if os.environ.get("FT_DASK_FAULTS") and _lr == 0.004:
    os.kill(os.getppid(), signal.SIGKILL)  # this run's worker dies on every attempt
    time.sleep(60)
if os.environ.get("FT_DASK_FAULTS") and _lr == 0.002 and _attempt == 1:
    (_run / "holding").write_text(str(os.getppid()))
    _until = time.time() + 90
    while not (_run / "release").exists() and time.time() < _until:
        time.sleep(0.2)
time.sleep(1.0)
(_run / f"span.{_attempt}").write_text(json.dumps([_start, time.time()]))
"""


def write_notebooks(folder: Path) -> Path:
    """test_runner's stand-in notebooks, the finetune one prefixed with :data:`ATTEMPT`."""
    folder.mkdir(parents=True, exist_ok=True)
    bodies = {**PARAMETERS, "03_finetune.ipynb": (PARAMETERS["03_finetune.ipynb"][0], ATTEMPT + FINETUNE)}
    for name, (parameters, body) in bodies.items():
        nb = new_notebook()
        nb.metadata["kernelspec"] = {"name": "facetransfer", "display_name": "Python (facetransfer)", "language": "python"}
        nb.cells = [new_markdown_cell(f"# stand-in {name}"), new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell(body)]
        nbformat.write(nb, folder / name)
    return folder


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    return write_notebooks(tmp_path_factory.mktemp("notebooks"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def env_with(notebooks: Path, **extra) -> dict:
    env = quiet_env()
    env["PYTHONPATH"] = os.pathsep.join([str(LIB), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env[runner.NOTEBOOKS_ENV] = str(notebooks)
    env.update(extra)
    return env


def stop(proc: subprocess.Popen) -> None:
    """Kill a process started with start_new_session and everything it started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(notebooks, tmp_path_factory):
    """A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (a worker
    whose run dies twice fails it: allowed-failures 1)."""
    logs = tmp_path_factory.mktemp("dask-logs")
    env = env_with(notebooks, FT_DASK_FAULTS="1", DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1")
    address = f"tcp://127.0.0.1:{free_port()}"
    procs = []

    def start(name, *args):
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process below
        procs.append((subprocess.Popen([str(DASK), *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--dashboard-address", f"127.0.0.1:{free_port()}")
        for i in range(2):
            start(f"worker{i}", "worker", address, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard")
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc, log in reversed(procs):
            stop(proc)
            log.close()


def client_run(study: Path, results: Path, address: str, notebooks: Path) -> subprocess.Popen:
    args = [str(FACETRANSFER), "run", str(study), "--scheduler", address, "--results", str(results), "--no-report"]
    return subprocess.Popen(args, env=env_with(notebooks), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=WAIT_S)
    finally:
        stop(proc)
    return proc.returncode, out


def run_dirs(results: Path) -> dict[float, Path]:
    """Run folders by learning rate."""
    return {read_json(d / "metrics.json")["params"]["train"]["learning_rate"]: d for d in (results / "tiny" / "runs").iterdir()}


def summary_rows(text: str) -> list[list[str]]:
    """The console summary's rows without the seconds column and the stages' ids (a hash of
    their parameters, which hold the results folder)."""
    rows = []
    for line in text[text.index("study tiny:") :].splitlines():
        row = line.split()[:-1] if re.search(r"\d+\.\d$|-$", line) else line.split()
        rows.append([row[0], *row[2:]] if row[0] in ("explore", "search", "compare") else row)
    return rows


# ----------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing started


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "--workers: 0 must be >= 1"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not allowed with argument"),
    ],
)
def test_bad_executor_options_are_one_line_before_anything(tmp_path, capsys, argv, message):
    study = write_study(tmp_path, study_body())
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", str(study), "--results", str(tmp_path / "results"), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_unreachable_scheduler_is_one_line_before_anything(tmp_path, notebooks, capsys, monkeypatch):
    from facetransfer.executors import on_dask

    monkeypatch.setattr(on_dask, "CONNECT_TIMEOUT_S", 2)
    monkeypatch.setenv(runner.NOTEBOOKS_ENV, str(notebooks))
    study = write_study(tmp_path, study_body())
    code = cli.main(["run", str(study), "--results", str(tmp_path / "results"), "--scheduler", f"tcp://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no Dask scheduler answered within 2 s" in err
    assert not (tmp_path / "results" / "tiny" / "study.json").exists()
    with pytest.raises(runner.FacetransferError, match="must be an integer >= 1"):
        runner.run_study(study, results=tmp_path / "results", notebooks=notebooks, workers=0)
    with pytest.raises(runner.FacetransferError, match="exclude each other"):
        runner.run_study(study, results=tmp_path / "results", notebooks=notebooks, workers=1, scheduler="tcp://127.0.0.1:1")


def test_a_serial_run_starts_no_dask(tmp_path, notebooks):
    study = write_study(tmp_path, study_body(stages=["finetune"], grid={"train.learning_rate": [0.001]}))
    script = (
        "import sys; from facetransfer import runner; "
        f"code = runner.run_study({str(study)!r}, results={str(tmp_path / 'results')!r}, report=False); "
        "assert code == 0, code; assert 'distributed' not in sys.modules and 'dask' not in sys.modules, 'dask imported'"
    )
    subprocess.run([sys.executable, "-c", script], env=env_with(notebooks), check=True, capture_output=True, timeout=WAIT_S)


# ----------------------------------------------------------------------------------------
# the graph on a LocalCluster: same outcomes and summary as serial, runs concurrent


def graph_study() -> dict:
    """explore; source; a grid from source's weights (one run fails: epochs 13); search from
    source; tuned (use_search) from source; compare."""
    return study_body(
        stages=["explore", "search", "finetune", "compare"],
        grid=None,
        runs=[
            {"name": "source", "set": {"train.learning_rate": 0.001, "model.weights": "none"}},
            {"name": "transfer", "set": {"model.weights": "run:source"}, "grid": {"train.learning_rate": [0.003, 0.005]}},
            {"name": "bad", "set": {"train.epochs": 13, "model.weights": "none"}},
            {"name": "tuned", "use_search": True, "set": {"model.weights": "run:source"}},
        ],
        defaults={**study_body()["defaults"], "model": {"backbone": "compact", "weights": "run:source", "strategy": "full"}},
        search={"metric": "val.accuracy", "sequential": [{"key": "train.learning_rate", "values": [0.006, 0.007]}]},
    )


def test_ready_tasks_that_others_wait_for_start_first(tmp_path):
    """Dask starts the ready task of highest priority first: the search (the tuned run waits
    for it) and the source (everything from its weights, and the search, wait for it) go
    before runs that nothing waits for; compare is not counted."""
    from facetransfer import study as S
    from facetransfer.executors.on_dask import waiting_on
    from facetransfer.plan import StudyPlan

    study = S.load_study(write_study(tmp_path, graph_study()))
    plan = StudyPlan(study, tmp_path / "results" / "tiny", tmp_path / "results")
    by_name = {node.run.name: key for key, node in plan.nodes.items() if node.run is not None}
    priority = {name: waiting_on(plan, key) for name, key in by_name.items()}
    priority.update(explore=waiting_on(plan, "explore"), search=waiting_on(plan, "search"))
    # source: the two transfer runs, the search and the tuned run it will add
    assert priority["source"] == 4 and priority["search"] == 1
    assert priority["explore"] == priority["bad"] == priority["transfer lr=0.003"] == 0


def test_only_a_search_that_gives_trials_to_the_cluster_leaves_its_worker_slot():
    from facetransfer.search import gives_trials_to_a_cluster

    assert not gives_trials_to_a_cluster(None) and not gives_trials_to_a_cluster({"sequential": [], "optuna": {"parallel": 1}})
    assert gives_trials_to_a_cluster({"fan_out": True}) and gives_trials_to_a_cluster({"optuna": {"parallel": 2}})


def test_local_cluster_runs_the_graph_like_serial(tmp_path, notebooks, capsys):
    body = graph_study()
    results, outcomes = {}, []
    for how, workers in (("serial", None), ("dask", 2)):
        study = write_study(tmp_path / how, body)
        kept = outcomes if workers else None
        code = runner.run_study(study, results=tmp_path / how / "results", notebooks=notebooks, report=False, workers=workers, outcomes=kept)
        results[how] = (code, capsys.readouterr().out)
    (serial_code, serial_out), (dask_code, dask_out) = results["serial"], results["dask"]
    assert serial_code == dask_code == 1  # the "bad" run fails, the others go on
    assert summary_rows(dask_out) == summary_rows(serial_out)
    assert "dashboard http://127.0.0.1:" in dask_out and re.search(r"started \w+ .* on tcp://127\.0\.0\.1:\d+", dask_out)
    study_dir = tmp_path / "dask" / "results" / "tiny"
    serial_dir = tmp_path / "serial" / "results" / "tiny"
    assert sorted(p.name for p in (study_dir / "runs").iterdir()) == sorted(p.name for p in (serial_dir / "runs").iterdir())
    for stage in ("explore", "search", "compare"):
        assert read_json(study_dir / stage / ".done.json")["stage"] == stage
    spans = {o.run_id if o.stage == "finetune" else o.stage: (o.started, o.ended) for o in outcomes}
    source = next(o.run_id for o in outcomes if o.name == "source")
    for o in outcomes:  # what starts from source's weights starts after source ended; compare after all
        if o.stage == "search" or (o.metrics or {}).get("params", {}).get("model", {}).get("weights") == f"run:{source}":
            assert o.started >= spans[source][1], o.name
    assert spans["compare"][0] >= max(end for key, (_, end) in spans.items() if key != "compare")
    ordered = sorted(span for key, span in spans.items() if key != "compare")
    assert any(b[0] < a[1] for a, b in zip(ordered, ordered[1:], strict=False)), f"no two nodes overlapped: {ordered}"
    assert not list(study_dir.rglob(".node.lock")) and not list(study_dir.rglob("*.tmp.ipynb"))


# ----------------------------------------------------------------------------------------
# faults on a real scheduler with two workers


def fault_study(rates) -> dict:
    return study_body(stages=["finetune", "compare"], grid={"train.learning_rate": list(rates)})


def test_a_worker_killed_mid_run_is_retried_elsewhere(tmp_path, notebooks, cluster):
    study, results = write_study(tmp_path, fault_study([0.001, 0.002])), tmp_path / "results"
    client = client_run(study, results, cluster, notebooks)
    try:
        holding = wait_for(lambda: next((results / "tiny" / "runs").glob("*/holding"), None), "the run to hold")
        worker_pid = int(holding.read_text())
        os.kill(worker_pid, signal.SIGKILL)
    finally:
        code, out = finish(client)
    assert code == 0, out
    run_dir = holding.parent
    assert read_json(run_dir / "metrics.json")["status"] == "ok" and (run_dir / "03_finetune.ipynb").is_file()
    second = json.loads((run_dir / "attempt.2").read_text())["worker_pid"]
    assert second != worker_pid and not (run_dir / "attempt.3").exists()
    assert all(read_json(d / "metrics.json")["status"] == "ok" for d in (results / "tiny" / "runs").iterdir())


def test_a_run_whose_worker_dies_on_every_try_fails_and_the_study_goes_on(tmp_path, notebooks, cluster):
    study, results = write_study(tmp_path, fault_study([0.001, 0.004])), tmp_path / "results"
    code, out = finish(client_run(study, results, cluster, notebooks))
    assert code == 1, out
    dirs = run_dirs(results)
    failed = read_json(dirs[0.004] / "metrics.json")
    assert failed["status"] == "failed" and "KilledWorker" in failed["error"], failed
    assert not (dirs[0.004] / "03_finetune.ipynb").exists()  # the killed attempts left no notebook
    assert read_json(dirs[0.001] / "metrics.json")["status"] == "ok"
    assert read_json(results / "tiny" / "compare" / ".done.json")["stage"] == "compare"
    assert re.search(r"FAILED \w+ .*KilledWorker", out)


def test_killed_client_resumes_and_a_second_client_is_refused(tmp_path, notebooks, cluster):
    study, results = write_study(tmp_path, fault_study([0.001, 0.002, 0.003])), tmp_path / "results"
    runs = results / "tiny" / "runs"
    first = client_run(study, results, cluster, notebooks)
    try:
        holding = wait_for(lambda: next(runs.glob("*/holding"), None), "the run to hold")
        done = wait_for(lambda: [d for d in runs.iterdir() if runner.run_complete(d, d.name)], "a run to complete")
        code, out = finish(client_run(study, results, cluster, notebooks))
        assert code == 2 and "study is busy" in out, out
    finally:
        first.send_signal(signal.SIGKILL)
        finish(first)
    finished = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in done}
    (holding.parent / "release").write_text("go")  # the killed client's task still runs on its worker
    code, out = finish(client_run(study, results, cluster, notebooks))
    assert code == 0, out
    for run_id in finished:
        assert f"skip {run_id} (complete)" in out
        assert (runs / run_id / "metrics.json").stat().st_mtime_ns == finished[run_id]
    assert len(list(runs.iterdir())) == 3 and all(runner.run_complete(d, d.name) for d in runs.iterdir())
    assert not (holding.parent / "attempt.2").exists()  # the held run was finished once, by its first task


# ----------------------------------------------------------------------------------------
# same numbers serially and on two workers (the real notebook, two tiny runs)


@pytest.mark.slow
def test_same_numbers_serially_and_on_two_workers(tmp_path, capsys):
    """A CPU kernel's float sums depend on its thread count: serially TensorFlow takes every
    core, a worker's kernel its share of them (TF_NUM_INTRAOP_THREADS). ``train.cpu_threads``
    gives every kernel, and every search trial, the same count, so both give the same bytes:
    the trials (on two workers, the step's two values train as concurrent Dask tasks), the
    search's choice, and the ``use_search`` run that choice reached."""
    body = study_body(stages=["search", "finetune"], grid=None)  # the compact CNN from scratch, 1 epoch, 32 px
    body["defaults"]["data"]["synthetic"] = {"n": 120, "seed": 0, "size": 64}
    body["defaults"]["eval"] = {"saliency": 0}
    body["defaults"]["train"]["cpu_threads"] = 1
    body["runs"] = [{"name": "tuned", "use_search": True}]  # a run's bytes; the one the search's choice reached
    body["search"] = {"metric": "val.loss", "fan_out": True, "sequential": [{"key": "train.learning_rate", "values": [0.003, 0.001]}]}
    out, study, results = {}, write_study(tmp_path, body), tmp_path / "results"
    for how, workers in (("serial", None), ("dask", 2)):  # the same results path: splits.csv holds image paths
        assert runner.run_study(study, results=results, report=False, workers=workers) == 0
        out[how] = results.rename(tmp_path / how) / "tiny"
    capsys.readouterr()
    trials = {how: {p.name: read_json(p) for p in (out[how] / "search" / "trials").glob("*.json")} for how in out}
    assert sorted(trials["serial"]) == sorted(trials["dask"]) and len(trials["serial"]) == 2
    for name, trial in trials["serial"].items():
        assert {k: v for k, v in trial.items() if k != "seconds"} == {k: v for k, v in trials["dask"][name].items() if k != "seconds"}, name
    best = {how: read_json(out[how] / "search" / "best_params.json") for how in out}
    assert (best["serial"]["best"], best["serial"]["score"]) == (best["dask"]["best"], best["dask"]["score"])
    ids = sorted(p.name for p in (out["serial"] / "runs").iterdir())
    assert ids == sorted(p.name for p in (out["dask"] / "runs").iterdir()) and len(ids) == 1
    for run_id in ids:
        a, b = out["serial"] / "runs" / run_id, out["dask"] / "runs" / run_id
        for name in ("splits.csv", "predictions.csv"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{run_id}/{name}"
        assert read_json(a / "metrics.json")["test"] == read_json(b / "metrics.json")["test"]
        assert "CPU threads: 1," in (a / "run.log").read_text() and "CPU threads: 1," in (b / "run.log").read_text()


# ----------------------------------------------------------------------------------------
# the study bench's arithmetic and options (the bench itself is not a test: it times things)


def test_study_bench_table_and_options(capsys):
    from facetransfer import bench

    assert bench.parse_workers("1,2") == [1, 2]
    for bad in ("0", "two", ""):
        with pytest.raises(bench.FacetransferError, match="--workers"):
            bench.parse_workers(bad)
    rows = [
        {"how": "serial", "workers": None, "exit_status": 0, "seconds": 100.0, "finetune_seconds": 60.0, "speedup": 1.0, "finetune_speedup": 1.0},
        {"how": "2 worker(s)", "workers": 2, "exit_status": 0, "seconds": 80.0, "finetune_seconds": 40.0, "speedup": 1.25, "finetune_speedup": 1.5},
    ]
    machine = {"cpus": 2, "cpu_model": "x", "load_average": [1.0], "load_average_end": [1.0], "backend": "tensorflow"}
    text = bench.format_study_workers({"study": "demo.yaml", "overrides": [], "machine": machine, "rows": rows, "target": 1.3})
    assert "2 worker(s)" in text and "1.50x" in text and "finetune stage on 2 workers >= 1.3x: met" in text
    assert cli.main(["bench", "--workers", "2"]) == 2
    assert "--workers and --set go with --study" in capsys.readouterr().err
