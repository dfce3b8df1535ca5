"""Reliability (issue 8): kill it, corrupt it, run it twice — nothing lost, nothing silently wrong.

The slow tests run a tiny study (two runs of the REAL ``03_finetune`` notebook on the
``facetransfer`` kernel) through the ``facetransfer`` console script, SIGKILL the runner's
process group at several points, and run it again:

1. during caching: the image cache ``<key>.u8`` is in place but its sidecar is not yet;
2. during training: the run's temporary notebook shows the ``ft.train.fit`` cell running;
3. during report rendering: the notebook pages are written, ``report/index.html`` is not.

Points 1 and 3 last a few milliseconds, so the runner is started with a ``sitecustomize``
on ``PYTHONPATH`` that makes the process about to write that file (the kernel, or the
runner for the report) wait before writing it, and says so in a flag file; the test then
kills the real processes. Point 2 is found by polling the results tree. The kernel runs in
its own session (jupyter_client), so the test also checks that it does not outlive its
runner. A second ``facetransfer run`` started while the first holds the lock must say the
study is busy, and the lock left by the killed runner must be taken over.

The fast tests corrupt caches and markers in place, force leakage into a split, and check
the study lock's stale-lock rules.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from facetransfer import data as D
from facetransfer import params as P
from facetransfer import runner, synthetic
from facetransfer.errors import FacetransferError, StudyBusyError
from facetransfer.io import StudyLock
from facetransfer.splits import LeakageError

ROOT = Path(__file__).resolve().parents[1]
FACETRANSFER = ROOT / ".venv" / "bin" / "facetransfer"
STAGE_TIMEOUT = 150  # seconds one invocation may take to reach its kill point

DEFAULTS = {
    "task": "gender",
    "data": {"dataset": "celeba", "root": None, "image_size": 32},
    "model": {"backbone": "compact", "weights": "none", "strategy": "full", "head": {"dense": [8]}},
    "train": {"epochs": 1, "batch_size": 16},
    "eval": {"saliency": 0, "bootstrap": 50},
}

HOOK = '''\
"""Test hook (tests/test_reliability.py): record this process; pause before one write."""
import os

_dir = os.environ.get("FT_TEST_HOOK_DIR")
if _dir:
    import sys

    with open(os.path.join(_dir, "pids", str(os.getpid())), "w") as _fh:
        _fh.write(" ".join(sys.argv))
    _pattern = os.environ.get("FT_TEST_PAUSE")
    if _pattern:
        import contextlib
        import fnmatch
        import json
        import time

        import facetransfer.io as _io

        _real = _io.atomic_path

        @contextlib.contextmanager
        def _atomic_path(path, suffix=""):
            if fnmatch.fnmatch(os.fspath(path), _pattern):
                flag = os.path.join(_dir, "paused")
                with open(flag + ".tmp", "w") as fh:
                    json.dump({"pid": os.getpid(), "path": os.fspath(path)}, fh)
                os.replace(flag + ".tmp", flag)
                time.sleep(600)
            with _real(path, suffix) as tmp:
                yield tmp

        _io.atomic_path = _atomic_path
'''


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """One SYNTHETIC CelebA-layout set shared by every study here (same paths → same bytes)."""
    out = tmp_path_factory.mktemp("faces") / "celeba"
    synthetic.generate("celeba", out, n=48, seed=0, size=64, workers=1, progress=False)
    return out


def write_study(folder: Path, faces: Path, grid: list[float], name: str = "tiny.yaml") -> Path:
    defaults = json.loads(json.dumps(DEFAULTS))
    defaults["data"]["root"] = str(faces)
    body = {"study": "tiny", "stages": ["finetune"], "defaults": defaults, "grid": {"train.learning_rate": grid}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def fingerprint(folder: Path) -> dict[str, tuple[int, int, str]]:
    """(inode, mtime_ns, sha256) of every file under ``folder``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[path.relative_to(folder).as_posix()] = (st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting to be reaped by init, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Invocation:
    """One ``facetransfer run`` in its own session, optionally paused before a write."""

    def __init__(self, tmp: Path, name: str, study: Path, results: Path, pause: str | None = None):
        self.hook = tmp / f"hook-{name}"
        (self.hook / "pids").mkdir(parents=True)
        (self.hook / "sitecustomize.py").write_text(HOOK)
        env = {**os.environ, "FT_TEST_HOOK_DIR": str(self.hook), "PYTHONPATH": str(self.hook), "PYTHONUNBUFFERED": "1"}
        env.pop("FT_TEST_PAUSE", None)
        if pause:
            env["FT_TEST_PAUSE"] = pause
        self.log = tmp / f"{name}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [str(FACETRANSFER), "run", str(study), "--results", str(results)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, condition, timeout: float = STAGE_TIMEOUT, every: float = 0.1):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited ({self.proc.returncode}) before {what}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {what} after {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(every)

    def paused(self) -> dict:
        flag = self.hook / "paused"
        return self.wait_for("pause point", lambda: flag.is_file() and json.loads(flag.read_text()))

    def kill(self) -> None:
        """SIGKILL the runner's process group, then check no kernel outlives it."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        pids = [int(p.name) for p in (self.hook / "pids").iterdir()]
        deadline = time.monotonic() + 15
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        orphans = [p for p in pids if alive(p)]
        for pid in orphans:  # started by this test (through the runner): end them by id
            os.kill(pid, signal.SIGKILL)
        assert not orphans, f"processes {orphans} outlived their killed runner"

    def finish(self, timeout: float = STAGE_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"runner did not finish in {timeout} s:\n{self.output()[-3000:]}") from None


def running_cell(run_dir: Path) -> str | None:
    """Source of the cell papermill marks as running in the run's temporary notebook."""
    for tmp in run_dir.glob(".03_finetune.*.tmp.ipynb"):
        try:
            nb = json.loads(tmp.read_text())
        except (ValueError, OSError):  # being rewritten by papermill right now
            return None
        for cell in nb["cells"]:
            if cell.get("metadata", {}).get("papermill", {}).get("status") == "running":
                return "".join(cell["source"])
    return None


def complete_json_files(folder: Path) -> None:
    """Every JSON file under its final name parses: nothing half-written is in place."""
    for path in folder.rglob("*.json"):
        if not path.name.startswith("."):
            json.loads(path.read_text())


# ----------------------------------------------------------------------------- kill -9


@pytest.fixture(scope="module")
def killed_study(tmp_path_factory, faces):
    """The tiny study killed three times, then finished; what each step saw."""
    tmp = tmp_path_factory.mktemp("killed")
    study = write_study(tmp, faces, [0.001, 0.002])
    results = (tmp / "results").resolve()
    study_dir = results / "tiny"
    a, b = runner.load_study(study).runs
    run_a, run_b = study_dir / "runs" / a.run_id, study_dir / "runs" / b.run_id
    cache = results / "_cache" / "images"
    seen = {"a": a, "b": b, "results": results, "study_dir": study_dir, "tmp": tmp}

    # 1. during caching (run a): <key>.u8 written, its sidecar not yet; a second run is refused
    first = Invocation(tmp, "1-caching", study, results, pause=f"{cache}/*.json")
    lock = study_dir / ".lock"
    first.wait_for("study lock", lambda: lock.is_file() and lock.read_text())
    assert json.loads(lock.read_text())["pid"] == first.proc.pid
    second = subprocess.run([str(FACETRANSFER), "run", str(study), "--results", str(results)], capture_output=True, text=True, timeout=120, cwd=tmp)
    seen["busy"] = second
    assert json.loads(lock.read_text())["pid"] == first.proc.pid  # the refused run left it alone
    seen["pause_caching"] = first.paused()
    seen["cache_at_kill"] = sorted(p.name for p in cache.iterdir())
    seen["run_a_at_kill"] = sorted(p.name for p in run_a.iterdir())
    first.kill()
    seen["lock_after_kill"] = json.loads(lock.read_text())
    complete_json_files(results)

    # 2. during training (run b), after run a finished
    second_run = Invocation(tmp, "2-training", study, results)
    second_run.wait_for("run b training", lambda: "ft.train.fit" in (running_cell(run_b) or ""))
    time.sleep(0.3)
    assert "ft.train.fit" in (running_cell(run_b) or "")
    seen["run_b_at_kill"] = sorted(p.name for p in run_b.iterdir())
    seen["a_done"] = fingerprint(run_a)
    seen["a_log"] = (run_a / "run.log").read_text()
    second_run.kill()
    complete_json_files(results)

    # 3. during report rendering: pages written, index.html not
    third = Invocation(tmp, "3-report", study, results, pause=f"{study_dir}/report/index.html")
    seen["pause_report"] = third.paused()
    pages = [p for p in (study_dir / "report").rglob("*") if p.is_file()]
    seen["report_at_kill"] = sorted(p.relative_to(study_dir / "report").as_posix() for p in pages)
    seen["pages_whole"] = all(p.read_text().rstrip().endswith("</html>") for p in pages)
    seen["b_done"] = fingerprint(run_b)
    third.kill()
    seen["out3"] = third.output()
    complete_json_files(results)

    # 4. run again: finishes, recomputes nothing
    last = Invocation(tmp, "4-resume", study, results)
    seen["code"] = last.finish()
    seen["out4"] = last.output()
    return seen


@pytest.mark.slow
def test_second_run_of_a_busy_study_is_refused(killed_study):
    busy = killed_study["busy"]
    assert busy.returncode == 2
    ours = [line for line in busy.stderr.splitlines() if line.startswith("facetransfer")]
    assert ours == [ours[0]] and "study is busy" in ours[0] and "held by pid" in ours[0]
    assert f"pid {killed_study['lock_after_kill']['pid']} on" in ours[0]
    assert "Traceback" not in busy.stderr and busy.stdout == ""


@pytest.mark.slow
def test_kill_during_caching_leaves_nothing_that_is_read_as_complete(killed_study):
    pause = killed_study["pause_caching"]
    key = Path(pause["path"]).stem
    assert pause["path"].endswith(".json")
    assert f"{key}.u8" in killed_study["cache_at_kill"] and f"{key}.json" not in killed_study["cache_at_kill"]
    assert "metrics.json" not in killed_study["run_a_at_kill"]
    assert any(n.startswith(".03_finetune.") for n in killed_study["run_a_at_kill"])
    # the next run did not use the sidecar-less cache: it rebuilt it, with a warning
    assert "no sidecar (an interrupted build); rebuilding" in killed_study["a_log"]
    assert "image cache built: decoded" in killed_study["a_log"]
    # the lock of the killed runner stayed, naming a dead process, and was taken over
    assert not alive(killed_study["lock_after_kill"]["pid"])
    assert killed_study["lock_after_kill"]["host"] == socket.gethostname()


@pytest.mark.slow
def test_kill_during_training_keeps_finished_runs(killed_study):
    assert "metrics.json" not in killed_study["run_b_at_kill"] and "model.keras" not in killed_study["run_b_at_kill"]
    assert "metrics.json" in killed_study["a_done"] and "model.keras" in killed_study["a_done"]
    assert f"skip {killed_study['a'].run_id} (complete)" in killed_study["out3"]


@pytest.mark.slow
def test_kill_during_report_then_resume_recomputes_nothing(killed_study):
    a, b, study_dir = killed_study["a"], killed_study["b"], killed_study["study_dir"]
    report = killed_study["report_at_kill"]
    assert "index.html" not in report and f"runs/{a.run_id}/03_finetune.html" in report
    assert killed_study["pages_whole"]  # pages are written whole or not at all
    assert killed_study["code"] == 0, killed_study["out4"][-3000:]
    out = killed_study["out4"]
    assert f"skip {a.run_id} (complete)" in out and f"skip {b.run_id} (complete)" in out
    assert "study tiny: 2 ok, 0 failed" in out
    assert "report: [" not in out  # the pages written before the kill are not rendered again
    # finished runs untouched: same inode, mtime and content for every file
    assert fingerprint(study_dir / "runs" / a.run_id) == killed_study["a_done"]
    assert fingerprint(study_dir / "runs" / b.run_id) == killed_study["b_done"]
    for run in (a, b):
        metrics = json.loads((study_dir / "runs" / run.run_id / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["run_id"] == run.run_id
    assert (study_dir / "report" / "index.html").is_file()
    assert not (study_dir / ".lock").exists()
    leftovers = [p for p in killed_study["results"].rglob(".*") if "tmp" in p.name]
    assert leftovers == []
    complete_json_files(killed_study["results"])


# ----------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_same_params_same_splits_and_metrics(killed_study, tmp_path):
    """Run a of the killed-and-resumed study (its notebook) against the same params run
    again in this process into another results folder (train.run_config, no notebook)."""
    from facetransfer import train

    a = killed_study["a"]
    one = killed_study["study_dir"] / "runs" / a.run_id
    two = tmp_path / "results" / "tiny" / "runs" / a.run_id
    train.run_config(a.params, two, results_root=tmp_path / "results", run_id=a.run_id, verbose=0)
    for name in ("splits.csv", "predictions.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["run_id"] == m2["run_id"] == a.run_id
    assert m1["test"] == m2["test"] and m1["val"] == m2["val"] and m1["params"] == m2["params"]
    assert m1["data"]["split_counts"] == m2["data"]["split_counts"]
    h1, h2 = (list(csv.DictReader(open(d / "history.csv"))) for d in (one, two))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in h1] == [{k: v for k, v in r.items() if k != "seconds"} for r in h2]


# ----------------------------------------------------------------------------- the lock


def _lock_at(tmp_path: Path, content: str, age: float = 0.0) -> Path:
    lock = tmp_path / "study" / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(content)
    if age:
        then = time.time() - age
        os.utime(lock, (then, then))
    return lock


def test_lock_held_by_a_live_process_is_busy_and_a_dead_ones_is_taken_over(tmp_path):
    host = socket.gethostname()
    holder = subprocess.Popen(["sleep", "30"])
    try:
        lock = _lock_at(tmp_path, json.dumps({"pid": holder.pid, "host": host}))
        with pytest.raises(StudyBusyError, match=rf"study is busy: .*held by pid {holder.pid} on {host}"):
            StudyLock(lock).acquire()
        assert json.loads(lock.read_text())["pid"] == holder.pid  # not touched
    finally:
        holder.kill()
        holder.wait()
    with StudyLock(lock):  # the holder is dead now: a stale lock
        assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": host}
    assert not lock.exists()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = _lock_at(tmp_path, json.dumps({"pid": dead.pid, "host": "elsewhere.example"}), age=3600)
    with pytest.raises(StudyBusyError, match=rf"held by pid {dead.pid} on elsewhere.example"):
        StudyLock(lock).acquire()


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '"text"', "null", '{"pid": "x", "host": 3}'])
def test_unreadable_lock_is_busy_while_fresh_and_stale_when_old(tmp_path, content):
    """Empty (killed between create and write) or damaged: busy for 10 s, then taken over."""
    lock = _lock_at(tmp_path, content)
    with pytest.raises(StudyBusyError, match="study is busy"):
        StudyLock(lock).acquire()
    _lock_at(tmp_path, content, age=60)
    with StudyLock(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


# ----------------------------------------------------------------------------- caches


def _cfg(faces: Path, **data) -> dict:
    raw = json.loads(json.dumps(DEFAULTS))
    raw["data"].update(root=str(faces), **data)
    return P.resolve_run(raw)


@pytest.mark.parametrize("damage", ["truncated data", "no sidecar", "damaged sidecar", "empty data"])
def test_damaged_image_cache_is_rebuilt_by_prepare(tmp_path, faces, damage, caplog):
    cfg = _cfg(faces)
    first = D.prepare(cfg, tmp_path, progress=False)
    pixels, records = np.array(first.cache.images), first.records.copy()
    data_file = first.cache.file
    sidecar = data_file.with_suffix(".json")
    if damage == "truncated data":
        with open(data_file, "r+b") as fh:
            fh.truncate(data_file.stat().st_size - 3 * 32 * 32)
    elif damage == "empty data":
        data_file.write_bytes(b"")
    elif damage == "no sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text(sidecar.read_text()[:40])
    with caplog.at_level("WARNING", logger="facetransfer.images"):
        again = D.prepare(cfg, tmp_path, progress=False)
    assert not again.cache.hit and "rebuilding" in caplog.text
    np.testing.assert_array_equal(np.array(again.cache.images), pixels)
    assert again.records.equals(records)
    assert D.prepare(cfg, tmp_path, progress=False).cache.hit  # whole again


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no sidecar"])
def test_damaged_feature_cache_is_recomputed(tmp_path, damage):
    import keras

    from facetransfer import features

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    prefix = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))
    images = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    rows = np.arange(0, 20, 2)
    cfg = P.resolve_run({"data": {"dataset": "celeba", "root": "/nowhere", "image_size": 32}, "model": {"backbone": "compact", "weights": "none", "strategy": "full"}})
    parts = features.key_parts(cfg, prefix, image_key="imgs", rows=rows)
    first = np.array(features.prefix_features(prefix, images, rows, cache_dir=tmp_path, key_parts=parts, progress=False))
    npy, sidecar = features.cache_files(tmp_path, parts)
    if damage == "truncated":
        with open(npy, "r+b") as fh:
            fh.truncate(npy.stat().st_size - 8)
    elif damage == "garbage":
        npy.write_bytes(b"not a numpy file")
    else:
        sidecar.unlink()
    assert not features.is_cached(tmp_path, parts)
    again = features.prefix_features(prefix, images, rows, cache_dir=tmp_path, key_parts=parts, progress=False)
    np.testing.assert_allclose(np.array(again), first, rtol=1e-6)
    assert features.is_cached(tmp_path, parts)


# ----------------------------------------------------------------------------- markers


def test_damaged_metrics_json_is_not_a_complete_run(tmp_path, capsys):
    run_dir = tmp_path / "study" / "runs" / "0123456789ab"
    run_dir.mkdir(parents=True)
    (run_dir / "03_finetune.ipynb").write_text("{}")
    body = json.dumps({"run_id": "0123456789ab", "status": "ok", "test": {"accuracy": 0.5}})
    (run_dir / "metrics.json").write_text(body)
    assert runner.run_complete(run_dir, "0123456789ab")["status"] == "ok"
    for damaged in (body[:30], "", "[1, 2]"):
        (run_dir / "metrics.json").write_text(damaged)
        assert runner.run_complete(run_dir, "0123456789ab") is None  # re-run, not skipped
    assert "metrics.json" in capsys.readouterr().out


def test_report_of_a_damaged_metrics_json_is_a_one_line_error(tmp_path):
    from facetransfer import report

    run_dir = tmp_path / "tiny" / "runs" / "0123456789ab"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"run_id": "0123456789ab", "status": "o')
    with pytest.raises(FacetransferError) as err:
        report.render(tmp_path / "tiny")
    assert "\n" not in str(err.value) and str(run_dir / "metrics.json") in str(err.value)


# ----------------------------------------------------------------------------- leakage


def test_leaky_split_is_refused_before_training(tmp_path, faces, monkeypatch):
    from facetransfer import train

    real = D.make_splits

    def leaky(records, **kw):
        split = real(records, **kw).copy()
        counts = records.loc[split == "train", "subject"].value_counts()
        subject = counts.index[counts >= 2][0]
        split[records.index[records["subject"] == subject][-1]] = "test"
        return split

    monkeypatch.setattr(D, "make_splits", leaky)
    fitted = []
    monkeypatch.setattr(train, "fit", lambda *a, **k: fitted.append(1))
    run_dir = tmp_path / "run"
    with pytest.raises(LeakageError) as err:
        train.run_config(_cfg(faces), run_dir, results_root=tmp_path / "results")
    message = str(err.value)
    assert "\n" not in message and message.startswith("leakage: subject ") and "test and train" in message
    assert fitted == [] and not run_dir.exists()
    # the notebook trains only on what data.prepare returned
    nb = json.loads((ROOT / "notebooks" / "03_finetune.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert 0 <= code.index("ft.data.prepare(") < code.index("ft.train.fit(")


def test_dataset_partition_sharing_a_subject_is_refused(tmp_path, faces):
    """A real-layout CelebA copy whose partition file puts one identity in train and test."""
    root = tmp_path / "celeba"
    shutil.copytree(faces, root)
    identity = dict(line.split() for line in (root / "identity_CelebA.txt").read_text().splitlines())
    rows = list(csv.DictReader(open(root / "list_eval_partition.csv")))
    in_train = [identity[r["image_id"]] for r in rows if r["partition"] == "0"]
    subject = sorted(s for s in set(in_train) if in_train.count(s) >= 2)[0]
    victim = [r for r in rows if identity[r["image_id"]] == subject][-1]
    victim["partition"] = "2"
    with open(root / "list_eval_partition.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image_id", "partition"])
        writer.writeheader()
        writer.writerows(rows)
    cfg = _cfg(root, split={"source": "dataset"})
    with pytest.raises(LeakageError, match=rf"^leakage: subject {subject} is in (test and train|train and test) \(1 subjects"):
        D.prepare(cfg, tmp_path / "results", progress=False)
    assert not any((tmp_path / "results").rglob("splits.csv"))

