"""The plan of a study: every notebook execution as a node of a graph, built once.

:class:`StudyPlan` asks :mod:`facetransfer.study` for the runs, their dependencies and their
order ONCE and keeps the answer as nodes keyed by ``explore``, ``search``, ``compare`` or a
run id, each naming the nodes it waits for (``needs``):

- ``explore`` needs nothing;
- ``search`` needs the runs its base weights come from;
- a run needs the runs its weights come from (``model.weights: run:<name>``);
- a ``use_search`` run waits for the search: it becomes a node when :meth:`resolve_search`
  is given the search's chosen values (its params, and so its id, are known only then);
- ``compare`` needs every other node; it is built by :meth:`compare_node` after them all
  (it reads the metrics of every run, the resolved ``use_search`` runs included).

:meth:`order` is the serial order (explore, the search's base runs, search, the runs with
dependencies first, compare): the serial executor follows it, the Dask executor submits
every ready node at once, and the console summary lists outcomes in it either way. What is
complete is asked at execution time (:func:`facetransfer.runner.run_complete`), on the
machine that would execute the node, so a plan never goes stale while it waits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facetransfer.study import NOTEBOOKS, Run, Study, dependencies, execution_order

FOLD_KEY = "data.split.test_fold"
COMPARE = "compare"


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class Execution:
    """One planned notebook execution (a stage, or one run of 03_finetune)."""

    stage: str  # explore | search | finetune | compare
    run_id: str | None  # the run id, or the stage's own id (hash of its parameters)
    name: str
    notebook: str
    out_dir: Path
    parameters: dict
    run: Run | None = None
    needs: tuple[str, ...] = ()  # run ids whose metrics this execution reads

    def to_json(self) -> dict:
        if self.run is not None:
            out = {"run_id": self.run_id, "name": self.name, "notebook": self.notebook, "params": self.run.params}
            if self.run.pending:
                out["pending"] = "its params take the search stage's chosen values (use_search)"
            return out
        return {"run_id": self.run_id, "stage": self.stage, "notebook": self.notebook, "params": self.parameters}


def stage_execution(study: Study, stage: str, study_dir: Path, results_root: Path) -> Execution:
    out_dir = study_dir / stage
    if stage == "explore":
        base = study.base_params
        parameters = {
            "data": base["data"],
            "task": base["task"],
            "seed": base["seed"],
            "augment": base["train"]["augment"],
            "out_dir": str(out_dir),
            "results_root": str(results_root),
        }
        needs: tuple[str, ...] = ()
    elif stage == "search":
        parameters = {"search": study.search, "base_params": study.base_params, "out_dir": str(out_dir), "results_root": str(results_root)}
        needs = tuple(study.base_depends_on)
    elif stage == "compare":
        parameters = {"study_dir": str(study_dir)}
        if is_k_fold(study):
            parameters["aggregate_over"] = FOLD_KEY  # the notebook's default is "seed" (repeats)
        needs = tuple(r.run_id for r in study.runs if not r.pending)
    else:
        raise ValueError(stage)
    return Execution(stage, _hash({"stage": stage, "parameters": parameters}), stage, NOTEBOOKS[stage], out_dir, parameters, needs=needs)


def is_k_fold(study: Study) -> bool:
    """True when the study's runs are folds: split source ``folds`` with several test folds."""
    folds = {r.params["data"]["split"]["test_fold"] for r in study.runs if r.params["data"]["split"]["source"] == "folds"}
    return len(folds) > 1


def run_execution(run: Run, study_dir: Path, results_root: Path) -> Execution:
    run_dir = study_dir / "runs" / (run.run_id or "pending")
    parameters = {"params": run.params, "run_id": run.run_id, "run_dir": str(run_dir), "results_root": str(results_root)}
    return Execution("finetune", run.run_id, run.name, run.notebook, run_dir, parameters, run=run)


@dataclass
class Node:
    """One node of the study graph: an execution and the node keys it waits for."""

    key: str  # explore | search | compare | a run id
    execution: Execution
    needs: tuple[str, ...] = ()

    @property
    def run(self) -> Run | None:
        return self.execution.run

    @property
    def label(self) -> str:
        return self.key if self.run is None else f"{self.key} {self.run.name}"


class StudyPlan:
    """The study as a graph of :class:`Node` (see the module docstring)."""

    def __init__(self, study: Study, study_dir: Path, results_root: Path):
        self.study = study
        self.study_dir = study_dir
        self.results_root = results_root
        self.nodes: dict[str, Node] = {}
        stages = study.stages
        if "explore" in stages:
            self._add_stage("explore", ())
        if "search" in stages:
            self._add_runs(dependencies(study, study.base_depends_on))
            self._add_stage("search", tuple(study.base_depends_on))
        if "finetune" in stages:
            self._add_runs(execution_order(study))

    def _add_stage(self, stage: str, needs: tuple[str, ...]) -> Node:
        node = Node(stage, stage_execution(self.study, stage, self.study_dir, self.results_root), needs)
        self.nodes[stage] = node
        return node

    def _add_runs(self, run_ids) -> list[Node]:
        added = []
        for run_id in run_ids:
            if run_id not in self.nodes:
                run = self.study.run_by_id(run_id)
                self.nodes[run_id] = Node(run_id, run_execution(run, self.study_dir, self.results_root), tuple(run.depends_on))
                added.append(self.nodes[run_id])
        return added

    @property
    def waiting(self) -> list[Run]:
        """The ``use_search`` runs whose params still wait for the search's chosen values."""
        return [r for r in self.study.runs if r.pending] if "finetune" in self.study.stages else []

    def resolve_search(self, best: Mapping) -> list[Node]:
        """Give the ``use_search`` runs the search's chosen values; their new nodes.

        A resolved run whose params equal a run already planned is that run (no new node).
        """
        self.study.apply_search(best)
        return self._add_runs(execution_order(self.study)) if "finetune" in self.study.stages else []

    def order(self) -> list[str]:
        """Node keys in the serial order (compare, when planned, last)."""
        keys = [k for k in ("explore",) if k in self.nodes]
        if "search" in self.nodes:
            keys += [*dependencies(self.study, self.study.base_depends_on), "search"]
        keys += [k for k in execution_order(self.study) if k in self.nodes and k not in keys]
        return keys + ([COMPARE] if "compare" in self.study.stages else [])

    def compare_node(self) -> Node:
        """04_compare over every run planned so far; it needs every other node."""
        execution = stage_execution(self.study, COMPARE, self.study_dir, self.results_root)
        return Node(COMPARE, execution, tuple(self.nodes))

    def executions(self) -> list[Execution]:
        """Every execution in the serial order; the ``use_search`` runs still waiting last
        but compare (what ``--dry-run`` prints)."""
        out = [self.nodes[k].execution for k in self.order() if k in self.nodes]
        out += [run_execution(r, self.study_dir, self.results_root) for r in self.waiting]
        if "compare" in self.study.stages:
            out.append(self.compare_node().execution)
        return out


def plan(study: Study, study_dir: Path, results_root: Path) -> list[Execution]:
    """Every execution of the study, in the order the serial executor executes them."""
    return StudyPlan(study, study_dir, results_root).executions()
