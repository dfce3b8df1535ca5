"""The Dask executor: a study's nodes as Dask tasks (``facetransfer run --workers N`` or
``--scheduler ADDRESS``).

Every node of the plan is submitted as one task whose arguments include the futures of the
nodes it needs, so Dask starts it on a free worker once they are done, and independent runs
execute concurrently. The ``use_search`` runs are submitted when the search's task returns
(their params, and ids, are known only then); 04_compare once every other task is done.

Workers execute a node exactly as the serial runner does (:func:`facetransfer.runner.execute_node`):
the notebook goes to a hidden temporary file renamed into place, metrics and markers are
written atomically, so a worker killed mid-run leaves nothing that reads as complete. The
client keeps the study lock, study.json and the summary. The folders must be on a file
system every worker sees under the same path (one machine; a cluster's shared file system).

Faults. A task whose worker dies is rescheduled by Dask on another worker; after
``distributed.scheduler.allowed-failures`` deaths (3 by default, set by the scheduler) it
ends with ``KilledWorker`` and the node fails with that reason (a run gets its failed
metrics.json) while the study goes on. An exception raised by the task itself (not by the
notebook: those are run failures) is retried ``TASK_RETRIES`` times.

Threads. Every worker limits its backend threads to its share of the host's cores
(``OMP_NUM_THREADS``, ``TF_NUM_INTRAOP_THREADS`` ... = cores // workers on that host, unless
already set in the worker's environment); the notebook kernels it starts inherit them. A run
that sets ``train.cpu_threads`` gives its kernel that many intra-op threads instead, as a
serial run does (:func:`facetransfer.runtime.set_cpu_threads`): the same numbers.

Search. Every worker also sets ``DASK_SCHEDULER_ADDRESS`` to its scheduler, so the search
notebook's kernel submits its trials to this cluster (:mod:`facetransfer.search`); the search
task secedes from its worker's thread slot meanwhile, leaving it to the trials (only then:
without ``fan_out`` or a parallel Optuna search it trains in its kernel and keeps its slot).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import dask
from distributed import Client, LocalCluster, as_completed, get_worker, rejoin, secede
from distributed.diagnostics.plugin import WorkerPlugin

from facetransfer.errors import FacetransferError, StudyBusyError
from facetransfer.executors import say
from facetransfer.io import StudyLock, cores
from facetransfer.runner import Outcome, _one_line, execute_node, fail_run
from facetransfer.search import SCHEDULER_ENV, gives_trials_to_a_cluster

CONNECT_TIMEOUT_S = 10
TASK_RETRIES = 1
TOPIC = "facetransfer"
NODE_LOCK = ".node.lock"
NODE_LOCK_WAIT_S = 3600  # how long a task waits for another task of the same node (a killed client's)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker that may use ``threads`` cores (no progress bars: many
    workers share one console)."""
    return {**{name: str(threads) for name in THREAD_VARS}, "TQDM_DISABLE": "1"}


class ThreadLimits(WorkerPlugin):
    """Sets :func:`worker_env` in a worker (values already in its environment win) before
    it starts any notebook kernel: cores of its host // the workers on that host; and
    ``DASK_SCHEDULER_ADDRESS``, the cluster a search's kernel gives its trials to."""

    name = "facetransfer-thread-limits"

    def __init__(self, workers_per_host: dict[str, int]):
        self.workers_per_host = workers_per_host

    def setup(self, worker) -> None:
        on_host = self.workers_per_host.get(urlparse(worker.address).hostname, 1)
        for name, value in worker_env(max(1, cores() // on_host)).items():
            os.environ.setdefault(name, value)
        os.environ[SCHEDULER_ENV] = worker.scheduler.address


def run_node_task(node, context, *needed):
    """One node on a worker: ``needed`` are the (key, outcome, lines) results of its needs.
    Returns (key, outcome, console lines).

    It holds ``<out_dir>/.node.lock`` while it executes: a task of a killed client that
    still runs on some worker finishes before another task executes the same node (which
    then finds it complete), instead of two kernels writing one folder.
    """
    worker = get_worker()
    lines: list[str] = []
    lock = _node_lock(node.execution.out_dir)
    seceded = False
    try:
        worker.log_event(TOPIC, {"node": node.label, "worker": worker.address})
        if node.key == "search" and gives_trials_to_a_cluster(node.execution.parameters["search"]):
            secede()  # its kernel waits for its trials, tasks on this cluster: free the slot; else it keeps the slot
            seceded = True
        outcome = execute_node(node, context, {key: outcome for key, outcome, _ in needed}, lines.append)
    finally:
        if seceded:
            rejoin()
        lock.release()
    return node.key, outcome, lines


def _node_lock(out_dir: Path) -> StudyLock:
    """``out_dir``'s node lock, acquired (waiting up to NODE_LOCK_WAIT_S for its holder)."""
    lock = StudyLock(out_dir / NODE_LOCK)
    deadline = time.monotonic() + NODE_LOCK_WAIT_S
    while True:
        try:
            return lock.acquire()
        except StudyBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def waiting_on(plan, key: str) -> int:
    """How many nodes wait for node ``key``, directly or not (the search: also the
    ``use_search`` runs it will add): Dask starts the ready task with most first, so the
    search and a source run do not wait behind runs that nothing waits for."""
    waiting, frontier = set(), {key}
    while frontier:
        frontier = {other for other, node in plan.nodes.items() if set(node.needs) & frontier} - waiting
        waiting |= frontier
    extra = len(plan.waiting) if key == "search" or "search" in waiting else 0
    return len(waiting) + extra


class DaskExecutor:
    """Submits the plan's nodes as Dask tasks with their dependencies (see the module docstring)."""

    def __init__(self, client: Client, cluster: LocalCluster | None = None):
        self.client = client
        self.cluster = cluster
        self.token = uuid.uuid4().hex[:8]  # task keys unique to this facetransfer run

    @classmethod
    def start(cls, *, workers: int | None = None, scheduler: str | None = None) -> DaskExecutor:
        """Connect to ``scheduler`` or start a LocalCluster of ``workers`` processes."""
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as exc:
                raise FacetransferError(f"--scheduler {scheduler}: no Dask scheduler answered within {CONNECT_TIMEOUT_S} s ({_one_line(exc)})") from None
            cluster = None
        else:
            threads = max(1, cores() // workers)
            with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
                cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0", env=worker_env(threads)
                )
            client = Client(cluster)
        hosts: dict[str, int] = {}
        for address in client.scheduler_info(n_workers=-1)["workers"]:
            host = urlparse(address).hostname
            hosts[host] = hosts.get(host, 0) + 1
        client.register_plugin(ThreadLimits(hosts))
        return cls(client, cluster)

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def execute(self, study_run) -> None:
        plan, context = study_run.plan, study_run.context
        n_workers = len(self.client.scheduler_info(n_workers=-1)["workers"])
        say(f"dask: {n_workers} worker(s) at {self.client.scheduler.address}, dashboard {self.client.dashboard_link}")
        self.client.subscribe_topic(TOPIC, lambda event: say(f"started {event[1]['node']} on {event[1]['worker']}"))
        futures: dict = {}  # node key -> its task's future
        nodes: dict = {}  # task key -> (node, the node keys whose futures it was given)
        pending = as_completed()

        def submit(node) -> None:
            needs = [key for key in node.needs if key in futures]
            future = self.client.submit(
                run_node_task,
                node,
                context,
                *[futures[key] for key in needs],
                key=f"{node.key}-{self.token}",
                pure=False,
                retries=TASK_RETRIES,
                priority=waiting_on(plan, node.key),
            )
            futures[node.key], nodes[future.key] = future, (node, needs)
            pending.add(future)

        for key in plan.order():
            if key in plan.nodes:
                submit(plan.nodes[key])
        start = time.perf_counter()
        for future in pending:
            node, needs = nodes[future.key]
            if future.status == "finished":
                _, outcome, lines = future.result()
                for line in lines:
                    say(line)
            else:
                outcome = self._lost(node, future, [key for key in needs if futures[key].status == "error"], study_run)
            for new in study_run.finished(node, outcome):
                submit(new)
            n_done = sum(1 for f in futures.values() if f.done())
            say(f"progress: {n_done}/{len(futures)} done after {time.perf_counter() - start:.0f} s")
        study_run.fail_waiting(say)
        if "compare" in plan.study.stages:
            node = plan.compare_node()
            future = self.client.submit(run_node_task, node, context, key=f"compare-{self.token}", pure=False, retries=TASK_RETRIES)
            if future.exception() is None:
                _, outcome, lines = future.result()
                for line in lines:
                    say(line)
            else:
                outcome = self._lost(node, future, [], study_run)
            study_run.finished(node, outcome)
        self.client.unsubscribe_topic(TOPIC)

    def _lost(self, node, future, lost_needs: list[str], study_run) -> Outcome:
        """The outcome of a task that raised: a task it was given (``lost_needs``) was lost,
        or its own worker died on every try (``KilledWorker``), or the task itself failed
        after its retries. Nothing executes here: a node with a lost need fails at once."""
        if lost_needs:
            done = dict(study_run.outcomes)
            for key in lost_needs:
                need = study_run.plan.nodes[key]
                done.setdefault(key, Outcome(need.execution.stage, key, need.run.name if need.run else key, "failed"))
            return execute_node(node, study_run.context, done, say)  # fails at once: a need did not end ok
        exc = future.exception()
        error = _one_line(f"{type(exc).__name__}: {exc}")
        if node.run is not None:
            return fail_run(node.run, node.execution.out_dir, error, 0.0, say)
        say(f"FAILED {node.key}: {error}")
        return Outcome(node.key, node.execution.run_id, node.key, "failed", error=error)
