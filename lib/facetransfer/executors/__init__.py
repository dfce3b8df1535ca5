"""Executors: walk a study's plan (:class:`facetransfer.plan.StudyPlan`) serially or on Dask.

Both call :func:`facetransfer.runner.execute_node` for every node and hand each outcome to
:class:`facetransfer.runner.StudyRun` (which records it and, when the search finishes, gives
the plan the search's chosen values). They differ only in where and when a node executes:

- :class:`SerialExecutor` (no ``--workers``/``--scheduler``): one node after the other in the
  plan's serial order, in this process; no Dask is imported.
- :class:`facetransfer.executors.on_dask.DaskExecutor` (``--workers N``: a LocalCluster of N
  worker processes; ``--scheduler ADDRESS``: an existing cluster): every node is a Dask task
  whose dependencies are the tasks of the nodes it needs, so independent runs execute
  concurrently. ``distributed`` is imported only here.
"""

from __future__ import annotations

from functools import partial

from facetransfer.errors import FacetransferError

say = partial(print, flush=True)


def check_options(*, workers: int | None, scheduler: str | None) -> None:
    """Refuse ``workers`` below 1 and both options at once (one line, before anything runs)."""
    if workers is not None and scheduler is not None:
        raise FacetransferError("--workers and --scheduler exclude each other: --workers N starts a local cluster, --scheduler ADDRESS uses a running one")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise FacetransferError(f"--workers {workers!r}: must be an integer >= 1")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise FacetransferError(f"--scheduler {scheduler!r}: expected a Dask scheduler address such as tcp://10.0.0.5:8786")


def make_executor(*, workers: int | None = None, scheduler: str | None = None):
    """The serial executor without options, else a Dask executor (connected or started now)."""
    check_options(workers=workers, scheduler=scheduler)
    if workers is None and scheduler is None:
        return SerialExecutor()
    from facetransfer.executors.on_dask import DaskExecutor

    return DaskExecutor.start(workers=workers, scheduler=scheduler)


class SerialExecutor:
    """Every node in the plan's serial order, one after the other, in this process."""

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def execute(self, study_run) -> None:
        from facetransfer.runner import execute_node

        plan = study_run.plan
        while True:
            key = next((k for k in plan.order() if k in plan.nodes and k not in study_run.outcomes), None)
            if key is None:
                break
            node = plan.nodes[key]
            study_run.finished(node, execute_node(node, study_run.context, study_run.outcomes, say))
        study_run.fail_waiting(say)
        if "compare" in plan.study.stages:
            node = plan.compare_node()
            study_run.finished(node, execute_node(node, study_run.context, study_run.outcomes, say))
