"""Execute a study: its notebooks through papermill on the ``facetransfer`` kernel.

``facetransfer run params/<study>.yaml`` calls :func:`run_study`. Under
``results/<study>/`` (``--results`` moves ``results/``) it

1. takes the study lock (``.lock``; a second live ``facetransfer run`` of the same study
   stops with "study is busy ... pid ..."; a lock left by a killed process is taken over);
2. writes ``study.json`` (name, title, description, stages, runs, reported, search, the
   study file and its sha1, the ``--set`` overrides);
3. executes the stages in order: ``explore/01_explore.ipynb``, ``search/02_search.ipynb``
   (after the runs its base params start from), ``runs/<run_id>/03_finetune.ipynb`` for every
   run (a run after the runs its weights come from), ``compare/04_compare.ipynb`` (for a
   k-fold study, runs over several ``data.split.test_fold`` values, with
   ``aggregate_over="data.split.test_fold"``: mean ± std over the folds, not the seeds);
4. prints a summary table and, unless ``report=False``, renders ``report/index.html``
   (the pages of a study on synthetic data are rendered as its executions finish, in a
   background thread: :class:`ReportPages`).

Resuming. A run is complete when ``runs/<id>/metrics.json`` says ``status: ok`` for that id
and its executed notebook is there; complete runs are skipped unless ``force``. A study-level
stage re-runs only when its inputs changed: its parameters, its notebook file, and the
``metrics.json`` of the runs it reads (``.done.json`` in its folder records what it last ran
on). Notebooks execute into a hidden temporary file that is renamed into place, and every
marker is written atomically, so after a ``kill -9`` at any point a re-run finishes the
study without recomputing what was finished. A ``metrics.json`` or ``.done.json`` damaged
afterwards (not a JSON object) is said on the console and counts as not done: it runs again.

Failures. A notebook that raises keeps its executed copy (with the error) and the run gets a
``metrics.json`` with ``status: failed``; the other runs go on (a run whose weights come from
a failed run fails without executing). The exit status is 0 only when everything ended ok.

Console: one line per execution, papermill's cell progress bar, and the kernel's own output
(Keras progress bars, prints) in ``run.log`` (``<stage>.log`` for stages) beside the notebook.

Planning and executing. The study's graph is built once (:class:`facetransfer.plan.StudyPlan`);
an executor (:mod:`facetransfer.executors`: serial, or Dask with ``workers``/``scheduler``)
walks it, calling :func:`execute_node` for every node; :class:`StudyRun` keeps the
bookkeeping (study.json, outcomes, the search's choices, the summary) in this process.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facetransfer import executors
from facetransfer.errors import FacetransferError
from facetransfer.io import (
    DamagedFileError,
    StudyLock,
    atomic_write_json,
    read_json,
    remove_orphan_temps,
)
from facetransfer.plan import (  # noqa: F401 - their home is plan.py; kept here for callers
    FOLD_KEY,
    Execution,
    Node,
    StudyPlan,
    is_k_fold,
    plan,
    run_execution,
    stage_execution,
)
from facetransfer.study import NOTEBOOKS, Run, Study, load_study

KERNEL = "facetransfer"
# The Jupyter kernel of each Keras backend, and the command that builds its environment
# and registers it: the notebooks must run on the backend the runner itself runs on.
KERNELS = {
    "tensorflow": (KERNEL, "make venv` and use .venv/bin/facetransfer"),
    "jax": ("facetransfer-jax", "make venv-jax` and use KERAS_BACKEND=jax .venv-jax/bin/facetransfer"),
}
NOTEBOOKS_ENV = "FACETRANSFER_NOTEBOOKS"
DONE_MARKER = ".done.json"
ERROR_CHARS = 400


def notebooks_dir(notebooks=None) -> Path:
    """The folder with 01_explore … 04_compare: ``notebooks``, else $FACETRANSFER_NOTEBOOKS,
    else the repository's ``notebooks/`` (two levels above this package)."""
    if notebooks is not None:
        return Path(notebooks).resolve()
    if os.environ.get(NOTEBOOKS_ENV):
        return Path(os.environ[NOTEBOOKS_ENV]).resolve()
    return Path(__file__).resolve().parents[2] / "notebooks"


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _file_sha1(path: Path) -> str | None:
    return hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------
# completeness


def _json_object(path: Path, what: str) -> dict | None:
    """The JSON object in ``path``; None (said on the console) when it is missing or damaged."""
    if not path.is_file():
        return None
    try:
        value = read_json(path)
    except DamagedFileError:
        value = None
    if not isinstance(value, dict):
        print(f"warning: {path} is damaged (not a JSON object); {what}", flush=True)
        return None
    return value


def run_metrics(run_dir: Path) -> dict | None:
    return _json_object(Path(run_dir) / "metrics.json", "the run counts as not complete")


def run_complete(run_dir: Path, run_id: str, notebook: str = NOTEBOOKS["finetune"], params: dict | None = None) -> dict | None:
    """The run's metrics when it finished ok (metrics.json ok for this id + its notebook) and,
    given ``params``, was evaluated with the same ``eval.*`` (else it needs re-evaluation)."""
    metrics = _trained(run_dir, run_id)
    if metrics is None or not (Path(run_dir) / notebook).is_file():
        return None
    if params is not None and changed_eval(metrics, params):
        return None
    return metrics


def _trained(run_dir: Path, run_id: str) -> dict | None:
    metrics = run_metrics(run_dir)
    if metrics is None or metrics.get("status") != "ok" or metrics.get("run_id") != run_id:
        return None
    return metrics


def changed_eval(metrics: dict, params: dict) -> list[str]:
    """The ``eval.*`` keys whose value differs between a finished run and ``params``."""
    old = (metrics.get("params") or {}).get("eval") or {}
    return [f"eval.{k}" for k, v in params["eval"].items() if old.get(k) != v]


def needs_reevaluation(run_dir: Path, run_id: str, params: dict) -> list[str]:
    """The changed ``eval.*`` keys when the run's trained model can be re-evaluated without
    retraining (ok for this id — same training — with its model.keras and history.csv), else []."""
    metrics = _trained(run_dir, run_id)
    if metrics is None or not all((Path(run_dir) / name).is_file() for name in ("model.keras", "history.csv")):
        return []
    return changed_eval(metrics, params)


def stage_key(ex: Execution, notebooks: Path, study_dir: Path) -> str:
    """What a stage's result depends on: its parameters, its notebook, the metrics it reads."""
    inputs = []
    for run_id in ex.needs:
        path = study_dir / "runs" / run_id / "metrics.json"
        inputs.append([run_id, path.stat().st_mtime_ns if path.is_file() else None])
    return _hash({"id": ex.run_id, "notebook": _file_sha1(notebooks / ex.notebook), "inputs": inputs})


def stage_complete(ex: Execution, key: str) -> bool:
    marker = ex.out_dir / DONE_MARKER
    if not marker.is_file() or not (ex.out_dir / ex.notebook).is_file():
        return False
    done = _json_object(marker, "the stage counts as not done")
    return done is not None and done.get("key") == key


def search_best(study_dir: Path) -> dict | None:
    path = study_dir / "search" / "best_params.json"
    return dict(read_json(path)["best"]) if path.is_file() else None


# ----------------------------------------------------------------------------------------
# executing one notebook


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "…"


def execute_notebook(notebook: Path, out_dir: Path, parameters: dict, *, kernel_name: str, log_name: str) -> str | None:
    """Execute ``notebook`` into ``out_dir/<its name>``; None when it ran through, else the error.

    The output goes to a hidden temporary file renamed into place when papermill returns or
    raises a notebook error (the executed notebook then shows the error). The kernel's
    stdout/stderr go to ``out_dir/<log_name>``; the console shows papermill's progress bar.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".{notebook.stem}.*.tmp.ipynb"):
        stale.unlink()  # left by a killed runner; we hold the study lock
    tmp = out_dir / f".{notebook.stem}.{os.getpid()}.tmp.ipynb"
    error, returned = None, False
    try:
        with open(out_dir / log_name, "w", encoding="utf-8") as log:
            papermill.execute_notebook(
                str(notebook),
                str(tmp),
                parameters=parameters,
                kernel_name=kernel_name,
                progress_bar=True,
                log_output=False,
                stdout_file=log,
                stderr_file=log,
                # The kernel starts in out_dir. Not papermill's cwd=: that os.chdir()s the whole
                # process for the execution, and a Dask worker runs a seceded search's
                # execution beside another task's, so one would start its kernel in the
                # other's folder. nbclient passes this path to the kernel's start instead.
                resources={"metadata": {"path": str(out_dir)}},
            )
        returned = True
    except PapermillExecutionError as exc:
        error, returned = _one_line(f"{exc.ename}: {exc.evalue} (cell [{exc.exec_count}])"), True
    except (DeadKernelError, CellTimeoutError) as exc:
        error, returned = _one_line(f"{type(exc).__name__}: {exc}"), True
    finally:
        if not returned:
            tmp.unlink(missing_ok=True)  # interrupted: no half notebook under the final name
    if tmp.exists():
        os.replace(tmp, out_dir / notebook.name)
    return error


def failed_metrics(run: Run, error: str, seconds: float) -> dict:
    """metrics.json of a failed run (facetransfer.artifacts.failed_metrics where it exists)."""
    metrics = None
    if importlib.util.find_spec("facetransfer.artifacts") is not None:
        builder = getattr(importlib.import_module("facetransfer.artifacts"), "failed_metrics", None)
        if builder is not None:
            metrics = dict(builder(run.params, run.run_id, error))
    if metrics is None:
        metrics = {"run_id": run.run_id, "status": "failed", "params": run.params, "error": error}
    metrics["status"] = "failed"
    metrics.setdefault("name", run.name)
    metrics.setdefault("timing", {}).setdefault("wall_seconds", seconds)
    return metrics


# ----------------------------------------------------------------------------------------
# the runner


@dataclass
class Outcome:
    stage: str
    run_id: str | None
    name: str
    status: str  # ok | skipped | failed
    seconds: float = 0.0
    metrics: dict | None = None
    error: str | None = None
    started: float | None = None  # wall clock (time.time()) while the node executed
    ended: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "skipped")


def _headline(metrics: dict, task: str) -> str:
    """`` (test accuracy 0.9397)`` — or MAE for age, both for age + gender."""
    acc, mae = _test_metric(metrics, "accuracy"), _test_metric(metrics, "mae")
    parts = []
    if acc is not None and task != "age":
        parts.append(f"test accuracy {acc:.4f}")
    if mae is not None:
        parts.append(f"test MAE {mae:.2f}")
    return f" ({', '.join(parts)})" if parts else ""


def _test_metric(metrics: dict | None, key: str) -> float | None:
    test = (metrics or {}).get("test") or {}
    value = test.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Context:
    """What executing one node needs besides the node (sent to Dask workers with it)."""

    study_dir: Path
    notebooks: Path
    kernel_name: str
    force: bool


def execute_node(node: Node, context: Context, done: Mapping[str, Outcome], say=print) -> Outcome:
    """Execute one node of the plan (a stage or a run) unless complete; its outcome.

    ``done`` holds the outcomes of the nodes it needs; ``say`` prints a console line. This is
    the whole of what a serial run or a Dask worker does for one node.
    """
    started = time.time()
    outcome = (_execute_run if node.run is not None else _execute_stage)(node, context, done, say)
    outcome.started, outcome.ended = started, time.time()
    return outcome


def _execute_stage(node: Node, context: Context, done: Mapping[str, Outcome], say) -> Outcome:
    ex, name = node.execution, node.key
    failed = [d for d in ex.needs if d in done and not done[d].ok]
    if name != "compare" and failed:
        error = f"needs run {failed[0]} ({done[failed[0]].name}), which did not end ok"
        say(f"FAILED {name}: {error}")
        return Outcome(name, ex.run_id, name, "failed", error=error)
    key = stage_key(ex, context.notebooks, context.study_dir)
    if not context.force and stage_complete(ex, key):
        say(f"skip {name} {ex.run_id} (inputs unchanged)")
        return Outcome(name, ex.run_id, name, "skipped")
    say(f"{name} {ex.run_id}: {ex.notebook} → {ex.out_dir}")
    (ex.out_dir / DONE_MARKER).unlink(missing_ok=True)
    start = time.perf_counter()
    error = execute_notebook(context.notebooks / ex.notebook, ex.out_dir, ex.parameters, kernel_name=context.kernel_name, log_name=f"{name}.log")
    seconds = time.perf_counter() - start
    if error is not None:
        say(f"FAILED {name} after {seconds:.1f} s: {error}")
        return Outcome(name, ex.run_id, name, "failed", seconds, error=error)
    atomic_write_json(ex.out_dir / DONE_MARKER, {"stage": name, "stage_id": ex.run_id, "key": key, "finished": _now(), "seconds": seconds})
    say(f"ok {name} in {seconds:.1f} s")
    return Outcome(name, ex.run_id, name, "ok", seconds)


def _execute_run(node: Node, context: Context, done: Mapping[str, Outcome], say) -> Outcome:
    run, run_dir = node.run, node.execution.out_dir
    for dep in run.depends_on:
        dep_outcome = done.get(dep)
        if dep_outcome is not None and not dep_outcome.ok:
            return fail_run(run, run_dir, f"its weights come from run {dep} ({dep_outcome.name}), which did not end ok", 0.0, say)
    reevaluate: list[str] = []
    if not context.force:
        metrics = run_complete(run_dir, run.run_id, run.notebook, run.params)
        if metrics is not None:
            say(f"skip {run.run_id} (complete) {run.name}")
            return Outcome("finetune", run.run_id, run.name, "skipped", metrics=metrics)
        reevaluate = needs_reevaluation(run_dir, run.run_id, run.params)
    if reevaluate:  # metrics.json stays until the notebook replaces it: it holds the training timings
        say(f"re-evaluate {run.run_id} {run.name}: {', '.join(reevaluate)} changed; the saved model, no retraining")
    else:
        say(f"run {run.run_id} {run.name}: {run.notebook} → {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").unlink(missing_ok=True)
    start = time.perf_counter()
    parameters = {**node.execution.parameters, "reevaluate": True} if reevaluate else node.execution.parameters
    error = execute_notebook(context.notebooks / run.notebook, run_dir, parameters, kernel_name=context.kernel_name, log_name="run.log")
    seconds = time.perf_counter() - start
    metrics = run_metrics(run_dir)
    if error is None:
        if metrics is None:
            error = "the notebook finished without writing metrics.json"
        elif metrics.get("run_id") != run.run_id:
            error = f"metrics.json names run_id {metrics.get('run_id')!r}, expected {run.run_id}"
        elif metrics.get("status") != "ok":
            error = _one_line(metrics.get("error") or f"metrics.json says status {metrics.get('status')!r}")
    if error is not None:
        return fail_run(run, run_dir, error, seconds, say)
    extra = _headline(metrics, run.params["task"])
    say(f"ok {run.run_id} in {seconds:.1f} s{extra}")
    return Outcome("finetune", run.run_id, run.name, "ok", seconds, metrics)


def fail_run(run: Run, run_dir: Path, error: str, seconds: float, say=print) -> Outcome:
    """Write the failed run's metrics.json and say so; its outcome."""
    metrics = failed_metrics(run, error, seconds)
    atomic_write_json(run_dir / "metrics.json", metrics)
    say(f"FAILED {run.run_id} {run.name} after {seconds:.1f} s: {error}")
    return Outcome("finetune", run.run_id, run.name, "failed", seconds, metrics, error)


class StudyRun:
    """The bookkeeping of one ``facetransfer run`` whichever executor walks the plan:
    study.json, the outcomes, the search's choices given to the plan, the summary."""

    def __init__(self, plan: StudyPlan, context: Context, results_root: Path, on_finished=None):
        self.plan = plan
        self.study = plan.study
        self.context = context
        self.results_root = results_root
        self.outcomes: dict[str, Outcome] = {}  # by node key ("pending:<name>" for unresolved runs)
        self.started = _now()
        self.on_finished = on_finished  # called with no arguments after each outcome is recorded

    def write_study_json(self) -> None:
        st = self.study
        atomic_write_json(
            self.context.study_dir / "study.json",
            {
                "study": st.name,
                "title": st.title,
                "description": st.description,
                "stages": st.stages,
                "runs": [r.to_json() for r in st.runs if not r.pending],
                "pending_runs": [r.to_json() for r in st.runs if r.pending],
                "reported": st.reported,
                "search": st.search,
                "search_best": st.search_best,
                "created": self.started,
                "study_file": str(st.path),
                "study_sha1": st.sha1,
                "overrides": st.overrides,
                "results_root": str(self.results_root),
            },
        )

    def finished(self, node: Node, outcome: Outcome) -> list[Node]:
        """Record a node's outcome; the nodes it made known (the resolved ``use_search`` runs)."""
        added = self._record(node, outcome)
        if self.on_finished is not None:
            self.on_finished()
        return added

    def _record(self, node: Node, outcome: Outcome) -> list[Node]:
        self.outcomes[node.key] = outcome
        if node.key != "search" or not outcome.ok or not self.plan.waiting:
            return []
        best = search_best(self.context.study_dir)
        if best is None:
            outcome.status, outcome.error = "failed", "02_search did not write search/best_params.json"
            return []
        added = self.plan.resolve_search(best)
        self.write_study_json()
        return added

    def fail_waiting(self, say=print) -> None:
        """The ``use_search`` runs still waiting once the search is over: failed."""
        for run in self.plan.waiting:
            error = "its params wait for the search stage, which did not end ok"
            say(f"FAILED {run.name}: {error}")
            self.outcomes[f"pending:{run.name}"] = Outcome("finetune", None, run.name, "failed", error=error)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes.values())

    def ordered(self) -> list[Outcome]:
        """The outcomes in the serial order, whatever order they finished in."""
        rank = {key: i for i, key in enumerate(self.plan.order())}
        last = rank.pop("compare", len(rank))
        keys = sorted(self.outcomes, key=lambda key: rank.get(key, last - 0.5 if key.startswith("pending:") else last))
        return [self.outcomes[key] for key in keys]

    def summary(self) -> str:
        rows = [("stage", "id", "name", "status", "test acc", "test mae", "seconds")]
        outcomes = self.ordered()
        for o in outcomes:
            acc, mae = _test_metric(o.metrics, "accuracy"), _test_metric(o.metrics, "mae")
            if (o.metrics or {}).get("params", {}).get("task") == "age":
                acc = None  # an age run's accuracy is over derived age groups: MAE is its figure
            rows.append(
                (
                    o.stage,
                    o.run_id or "-",
                    o.name,
                    o.status,
                    "-" if acc is None else f"{acc:.4f}",
                    "-" if mae is None else f"{mae:.2f}",
                    f"{o.seconds:.1f}" if o.seconds else "-",
                )
            )
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        n_failed = sum(1 for o in outcomes if not o.ok)
        head = f"study {self.study.name}: {len(outcomes) - n_failed} ok, {n_failed} failed"
        errors = [f"  {o.run_id or o.name}: {o.error}" for o in outcomes if o.error]
        return "\n".join([head, *lines, *(["errors:", *errors] if errors else [])])


def kernel_for_backend(backend: str) -> tuple[str, str]:
    """(kernel name, what to run to get it) for a Keras backend."""
    if backend in KERNELS:
        return KERNELS[backend]
    name = f"facetransfer-{backend}"
    return name, f"python -m ipykernel install --sys-prefix --name {name} --env KERAS_BACKEND {backend}` in this environment"


def _check_kernel(kernel_name: str | None) -> str:
    """The kernel to run the notebooks on (by default the running Keras backend's); one line when missing."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    backend = _keras_backend()
    kernel_name, command = (kernel_name, None) if kernel_name else kernel_for_backend(backend)
    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        command = command or f"python -m ipykernel install --sys-prefix --name {kernel_name}` in this environment"
        raise FacetransferError(f"Jupyter kernel {kernel_name!r} (Keras backend {backend}) not found in {sys.prefix}; run `{command}") from None
    return kernel_name


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()


def _check_notebooks(study: Study, notebooks: Path) -> None:
    for stage in study.stages:
        path = notebooks / NOTEBOOKS[stage]
        if not path.is_file():
            raise FacetransferError(f"notebook {path} not found (stage {stage}); set {NOTEBOOKS_ENV} to another notebooks folder")
    if "search" in study.stages and study.base_depends_on and not (notebooks / NOTEBOOKS["finetune"]).is_file():
        raise FacetransferError(f"notebook {notebooks / NOTEBOOKS['finetune']} not found (the search starts from a run)")


def _dry_run(study: Study, study_dir: Path, results_root: Path, notebooks: Path) -> int:
    for run in study.runs:
        data, weights = run.params["data"], run.params["model"]["weights"]
        if data["synthetic"] is None and data["root"] and not os.path.exists(data["root"]):
            print(f"warning: data.root {data['root']} does not exist (run {run.name!r})", file=sys.stderr)
        if weights not in ("imagenet", "none") and not weights.startswith("run:") and not os.path.exists(weights):
            print(f"warning: model.weights {weights} does not exist (run {run.name!r})", file=sys.stderr)
    if any(r.pending for r in study.runs):
        search = stage_execution(study, "search", study_dir, results_root)
        best = search_best(study_dir)
        if best is not None and stage_complete(search, stage_key(search, notebooks, study_dir)):
            study.apply_search(best, check_paths=False)
    for ex in plan(study, study_dir, results_root):
        print(json.dumps(ex.to_json(), default=str), flush=True)
    return 0


def _remove_orphan_temps(*folders: Path) -> None:
    """Delete temporary files of killed writers (this host, dead pid) and say so."""
    for folder in folders:
        removed = remove_orphan_temps(folder)
        if removed:
            mib = sum(size for _, size in removed) / 2**20
            print(f"removed {len(removed)} temporary file(s) left by killed processes under {folder} ({mib:.1f} MiB)", flush=True)


def run_study(
    study,
    *,
    force: bool = False,
    dry_run: bool = False,
    overrides=(),
    results=None,
    report: bool = True,
    notebooks=None,
    kernel_name: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    outcomes: list | None = None,
) -> int:
    """Execute (or, with ``dry_run``, print) the study file ``study``; the exit status.

    0 when every execution ended ok, 1 otherwise. User errors (a bad study file, a busy
    study, a missing notebook or kernel, bad ``workers``/``scheduler``) raise
    :class:`FacetransferError` before any run. ``workers`` (a LocalCluster of that many
    processes) or ``scheduler`` (a running Dask cluster's address) execute it on Dask
    (:mod:`facetransfer.executors`); ``outcomes``, a list, receives every :class:`Outcome`
    in the summary's order (the bench reads their times).
    ``kernel_name`` None: the kernel of the running Keras backend (:data:`KERNELS`).
    """
    results_root = Path(results if results is not None else "results").resolve()
    st = load_study(study, list(overrides or []), check_paths=not dry_run)
    study_dir = results_root / st.name
    nb_dir = notebooks_dir(notebooks)
    if dry_run:
        return _dry_run(st, study_dir, results_root, nb_dir)
    _check_notebooks(st, nb_dir)
    kernel_name = _check_kernel(kernel_name)
    executors.check_options(workers=workers, scheduler=scheduler)
    with StudyLock(study_dir / ".lock"), executors.make_executor(workers=workers, scheduler=scheduler) as executor:
        _remove_orphan_temps(results_root / "_cache", study_dir)
        pages = ReportPages(study_dir) if report else None
        study_run = StudyRun(StudyPlan(st, study_dir, results_root), Context(study_dir, nb_dir, kernel_name, force), results_root, on_finished=None if pages is None else pages.refresh)
        study_run.write_study_json()
        try:
            executor.execute(study_run)
        except BaseException:
            if pages is not None:
                pages.abandon()
            raise
        print(study_run.summary(), flush=True)
        if outcomes is not None:
            outcomes.extend(study_run.ordered())
        if pages is not None:
            from facetransfer import report as R

            pages.close()
            print(f"report: {R.render(study_dir)}", flush=True)
    return 0 if study_run.ok else 1


class ReportPages:
    """Report pages rendered in a background thread as executions finish
    (:func:`facetransfer.report.render_pages`): the workers' kernels keep the cores busy while
    this process mostly waits, so the pages are ready when the last execution ends, instead of
    costing a serial half-minute (the demo's 14 pages) after it."""

    def __init__(self, study_dir: Path):
        self.study_dir = study_dir
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-pages")
        self.submitted: list[concurrent.futures.Future] = []

    def refresh(self) -> None:
        last = self.submitted[-1] if self.submitted else None
        if last is not None and not last.running() and not last.done():
            return  # one is queued and has not started: it will list this notebook too
        from facetransfer import report as R

        self.submitted.append(self.pool.submit(R.render_pages, self.study_dir))

    def close(self) -> None:
        """Wait for the pages; a page that failed to render raises here."""
        self.pool.shutdown(wait=True)
        for future in self.submitted:
            future.result()

    def abandon(self) -> None:
        """The study stopped with an error: wait for the page being written, drop the rest."""
        self.pool.shutdown(wait=True, cancel_futures=True)
