"""Hyperparameter search on the validation split (never the test split).

Two searches, both over dotted run-params keys:

- :func:`sequential_search` — the Adience study's procedure: tune one key at a time
  (batch size → learning rate → neurons → dropout), carrying each best value forward.
- :func:`optuna_search` — random or TPE search through Optuna over a declared space.

A trial trains on the train split and scores on the validation split. Each finished
trial is saved as ``<out_dir>/trials/<trial_id>.json`` (atomically), so a killed search
resumes without re-training finished trials. The best values are written to
``<out_dir>/best_params.json`` for later runs of the study (``use_search: true``).

The search spec (the study file's ``search:`` section)::

    search:
      metric: val.accuracy          # or val.loss / val.mae / val.f1_macro
      set: {train.epochs: 3}        # applied to the base params for every trial
      sequential:
        - {key: train.batch_size, values: [16, 32, 64]}
        - {key: train.learning_rate, values: [0.001, 0.0003]}
      fan_out: false                # true: on a Dask cluster, a step's values train as concurrent tasks
      optuna:
        n_trials: 8
        sampler: tpe                # or random
        n_startup_trials: 2         # TPE's random start-up trials; default n_trials // 3, at least 1
        parallel: 1                 # trials at a time (default 1: one after another, reproducible)
        space:
          train.learning_rate: {low: 1.0e-5, high: 1.0e-2, log: true}
          model.head.dropout: {low: 0.0, high: 0.5}
          model.head.dense: {choices: [[256], [512, 256]]}
      use: sequential               # what feeds `use_search` runs: sequential | optuna | best
                                    # (default: sequential when the spec has steps, else optuna)

Concurrency. With ``fan_out: true`` and a Dask cluster at hand (``DASK_SCHEDULER_ADDRESS``,
which every worker of ``facetransfer run --workers N`` / ``--scheduler ADDRESS`` sets, so the
search notebook's kernel sees it) the values of one sequential step train as concurrent Dask
tasks. Off by default: a trial task waits for a worker to finish the run it is on (measured on
the demo, 2 workers busy with runs: the sequential search took 178 s against 55 s in its own
kernel), so it pays only where workers are idle (a cluster larger than the ready runs). The step's winner is
chosen once all have finished, in the values' order, as serially, with the serial numbers
when ``train.cpu_threads`` is set (the worker's threads draw from Python's global ``random``;
training draws from it nothing: :func:`facetransfer.runtime.private_default_seeds`, and fit's
batch order is the feeders'). ``search.optuna.parallel: N`` (N > 1) runs N Optuna workers that share a
``JournalStorage`` file (``<out_dir>/optuna.journal``): N Dask tasks on that cluster, or, without
one, the same N workers one after another here (said on one line). A killed parallel search
resumes from the journal: its finished trials count, the trials it left running are told
failed, and only the rest run. Parallel TPE is not reproducible trial by trial (which trial
sees which finished ones depends on timing); ``parallel: 1`` is.

Both searches score a trial on the model training returns (with early stopping's
``restore_best_weights``: the restored best epoch), ``val.loss`` and ``val.accuracy`` alike.
A value that cannot learn with the others (:class:`facetransfer.params.CannotLearn`, e.g. batch
size 1 into a BatchNorm head) is skipped by the sequential search with its reason, printed and
kept in ``SearchResult.skipped`` and ``best_params.json``; it never trains and is never chosen.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facetransfer import params as P
from facetransfer.errors import FacetransferError, ParamError
from facetransfer.io import atomic_write_json, read_json

METRICS = {
    # name: (key in the val metrics dict, higher is better)
    "val.accuracy": ("accuracy", True),
    "val.f1_macro": ("f1_macro", True),
    "val.loss": ("loss", False),
    "val.mae": ("mae", False),
}
SPEC_KEYS = ("metric", "set", "sequential", "fan_out", "optuna", "use")
USES = ("sequential", "optuna", "best")
OPTUNA_KEYS = ("n_trials", "sampler", "n_startup_trials", "space", "seed", "parallel")
# Trials start before any other ready task of the cluster: the search's notebook, and the runs
# that use its choice, wait for them (a study's own tasks have priorities up to its node count).
TRIAL_PRIORITY = 1_000_000
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"  # Dask's own variable for the scheduler a Client() connects to
JOURNAL = "optuna.journal"
CONNECT_TIMEOUT_S = 30


@dataclass
class SearchResult:
    method: str
    metric: str
    trials: pd.DataFrame
    best: dict  # dotted key -> value
    best_score: float
    best_params: dict = field(default_factory=dict)  # fully resolved
    skipped: list = field(default_factory=list)  # [{key, value, reason}]: values that cannot learn


def gives_trials_to_a_cluster(spec: Mapping | None) -> bool:
    """Whether a search (its spec as the study file gives it, defaults as :func:`validate_spec`
    sets them) submits trials as Dask tasks: ``fan_out``, or Optuna ``parallel`` > 1. Never
    raises: an invalid spec is :func:`validate_spec`'s to report, in the search notebook."""
    spec = spec or {}
    parallel = (spec.get("optuna") or {}).get("parallel", 1)
    return spec.get("fan_out", False) is True or (isinstance(parallel, int) and not isinstance(parallel, bool) and parallel > 1)


def validate_spec(spec: Mapping | None, base_params: Mapping) -> dict:
    """Check a search spec; return it with defaults. One-line ParamError on any problem."""
    spec = dict(spec or {})
    for key in spec:
        if key not in SPEC_KEYS:
            raise ParamError(f"search.{key}", f"unknown key{P.did_you_mean(key, SPEC_KEYS)}; allowed keys here: {', '.join(SPEC_KEYS)}")
    spec.setdefault("metric", "val.accuracy")
    spec.setdefault("fan_out", False)
    if not isinstance(spec["fan_out"], bool):
        raise ParamError("search.fan_out", f"{spec['fan_out']!r} is not true or false (on a Dask cluster, a sequential step's values as concurrent tasks)")
    if not isinstance(spec["metric"], str) or spec["metric"] not in METRICS:
        raise ParamError("search.metric", f"{spec['metric']!r} is not allowed; allowed: {', '.join(METRICS)}")
    if not isinstance(spec.get("set") or {}, Mapping):
        raise ParamError("search.set", "must be a mapping of run params, e.g. {train.epochs: 3}")
    spec["set"] = dict(spec.get("set") or {})
    for key in spec["set"]:
        _check_run_key(f"search.set.{key}", key)
    try:
        base = trial_params(base_params, spec["set"])
    except ParamError as exc:
        raise ParamError(f"search.set.{exc.key}", str(exc).removeprefix(f"params: {exc.key}: ")) from None
    steps = spec.get("sequential") or []
    if not isinstance(steps, list):
        raise ParamError("search.sequential", "must be a list of {key, values}")
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise ParamError(f"search.sequential[{i}]", "must be a mapping with exactly: key, values")
        for name in [*step, "key", "values"]:
            if name not in ("key", "values") or name not in step:
                why = "is required" if name in ("key", "values") else "unknown key; allowed keys here: key, values"
                raise ParamError(f"search.sequential[{i}].{name}", why)
        _check_run_key(f"search.sequential[{i}].key", step["key"])
        if not isinstance(step["values"], list) or not step["values"]:
            raise ParamError(f"search.sequential[{i}].values", "must be a non-empty list")
    spec["sequential"] = steps
    opt = spec.get("optuna")
    if opt is not None:
        if not isinstance(opt, Mapping):
            raise ParamError("search.optuna", "must be a mapping: n_trials, sampler, space")
        for key in opt:
            if key not in OPTUNA_KEYS:
                raise ParamError(f"search.optuna.{key}", f"unknown key{P.did_you_mean(key, OPTUNA_KEYS)}; allowed keys here: {', '.join(OPTUNA_KEYS)}")
        if opt.get("sampler", "tpe") not in ("tpe", "random"):
            raise ParamError("search.optuna.sampler", f"{opt.get('sampler')!r} is not allowed; allowed: tpe, random")
        n = opt.get("n_trials", 8)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ParamError("search.optuna.n_trials", f"{n!r} is not an integer >= 1")
        k = opt.get("n_startup_trials", max(1, n // 3))
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ParamError("search.optuna.n_startup_trials", f"{k!r} is not an integer >= 0")
        parallel = opt.get("parallel", 1)
        if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
            raise ParamError("search.optuna.parallel", f"{parallel!r} is not an integer >= 1 (trials at a time; 1: one after another)")
        opt = spec["optuna"] = {**opt, "n_trials": n, "sampler": opt.get("sampler", "tpe"), "n_startup_trials": k, "parallel": parallel}
        space = opt.get("space") or {}
        if not isinstance(space, Mapping) or not space:
            raise ParamError("search.optuna.space", "must be a mapping naming at least one param")
        for key, dist in space.items():
            _check_run_key(f"search.optuna.space.{key}", key)
            if parallel > 1 and key.startswith("data.") and key != "data.train_size":
                # the parallel workers' data is prepared before they start, with the `set` values (see _parallel_optuna)
                raise ParamError(f"search.optuna.space.{key}", "with search.optuna.parallel > 1 the space may hold no data key but data.train_size; use parallel: 1 or a sequential step")
            _check_distribution(f"search.optuna.space.{key}", key, dist, base)
    use = spec.setdefault("use", "sequential" if steps else "optuna")
    if use not in USES:
        raise ParamError("search.use", f"{use!r} is not allowed; allowed: {', '.join(USES)}")
    if (use == "sequential" and not steps) or (use == "optuna" and opt is None) or (use == "best" and not steps and opt is None):
        raise ParamError("search.use", f"{use!r} needs the search it names in the spec (sequential steps and/or an optuna part)")
    # Every value a trial can take must make valid run params (or be a value that cannot
    # learn, which the search skips with its reason): check before any work.
    for i, step in enumerate(steps):
        for value in step["values"]:
            try:
                trial_params(base, {step["key"]: value})
            except P.CannotLearn:
                continue
            except ParamError as exc:
                raise ParamError(f"search.sequential[{i}].values", f"{value!r}: {exc}") from None
    return spec


def sampler_description(opt: Mapping) -> str:
    """How the Optuna search of a validated ``spec["optuna"]`` samples, as it really runs:
    "TPE after K random trials", or "random" (the random sampler, or TPE that never leaves
    its random start-up phase)."""
    n, k = opt["n_trials"], opt["n_startup_trials"]
    if opt["sampler"] == "random":
        return f"random ({n} trials)"
    if n <= k:
        # https://optuna.readthedocs.io/en/stable/reference/samplers/generated/optuna.samplers.TPESampler.html : the first n_startup_trials are sampled at random.
        return f"random ({n} trials; TPE would start after {k} random trials)"
    return f"TPE after {k} random trials ({n} trials)"


def _check_run_key(where: str, key: Any) -> None:
    if not isinstance(key, str) or not P.is_known_key(key):
        raise ParamError(where, f"{key!r} is not a run param (see the params reference in the README)")


def _check_distribution(where: str, key: str, dist: Any, base: Mapping) -> None:
    """An Optuna distribution: ``{low, high[, log]}`` or ``{choices}``, every end a valid value."""
    if not isinstance(dist, Mapping) or not ({"low", "high"} <= set(dist) or "choices" in dist):
        raise ParamError(where, "must be {low, high[, log]} or {choices: [...]}")
    allowed = ("choices",) if "choices" in dist else ("low", "high", "log")
    for name in dist:
        if name not in allowed:
            raise ParamError(f"{where}.{name}", f"unknown key{P.did_you_mean(name, allowed)}; allowed keys here: {', '.join(allowed)}")
    if "choices" in dist:
        values = dist["choices"]
        if not isinstance(values, list) or not values:
            raise ParamError(f"{where}.choices", "must be a non-empty list")
    else:
        low, high, log = dist["low"], dist["high"], dist.get("log", False)
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ParamError(f"{where}.{name}", f"{value!r} is not a finite number")
        if not isinstance(log, bool):
            raise ParamError(f"{where}.log", f"{log!r} is not true or false")
        if not low < high or (log and low <= 0):
            raise ParamError(where, f"low {low!r} must be below high {high!r}" + (" and > 0 (log: true)" if log else ""))
        values = [low, high]
    for value in values:
        try:
            trial_params(base, {key: value})
        except ParamError as exc:
            raise ParamError(where, f"{value!r}: {exc}") from None


def trial_params(base: Mapping, overrides: Mapping[str, Any]) -> dict:
    """Resolved params of ``base`` with dotted ``overrides`` applied."""
    raw = P.deep_merge(base, {})
    for key, value in overrides.items():
        P.set_dotted(raw, key, value)
    return P.resolve_run(raw)


def _data_key(cfg: Mapping) -> str:
    return json.dumps({"data": cfg["data"], "task": cfg["task"], "seed": cfg["seed"], "backbone": cfg["model"]["backbone"]}, sort_keys=True, default=str)


class _Trials:
    """Runs trials, caching prepared data by data params and trial results on disk."""

    def __init__(self, out_dir: Path, results_root: Path, metric: str, verbose):
        self.out_dir = Path(out_dir)
        self.results_root = Path(results_root)
        self.metric = metric
        self.verbose = verbose
        self._data: dict[str, Any] = {}
        self._fingerprints: dict = {}  # data fingerprints, computed once per data set

    def cached(self, cfg: dict) -> Path:
        """Where the trial of ``cfg`` is (or will be) saved."""
        return self.out_dir / "trials" / f"{P.run_id(cfg, fingerprints=self._fingerprints)}.json"

    def score(self, cfg: dict) -> dict:
        path = self.cached(cfg)
        if path.exists():
            return read_json(path)
        result = self._train(cfg)
        result["trial_id"] = path.stem
        atomic_write_json(path, result)
        return result

    def data(self, cfg: dict):
        """The prepared data of ``cfg``, prepared once per data params."""
        from facetransfer import data as D

        key = _data_key(cfg)
        if key not in self._data:
            self._data[key] = D.prepare(cfg, self.results_root)
        return self._data[key]

    def _train(self, cfg: dict) -> dict:
        from facetransfer import evaluate, models, train

        data = self.data(cfg)
        start = time.perf_counter()
        train.configure(cfg)  # seed first: the initial weights must not depend on the trials before
        model = models.build_model(cfg, results_root=self.results_root)
        trial_dir = self.out_dir / "trials" / P.run_id(cfg, fingerprints=self._fingerprints)
        result = train.fit(model, data, cfg, trial_dir, results_root=self.results_root, verbose=self.verbose)
        val = evaluate.evaluate_split(model, data, cfg, "val")
        hist = result.history
        # val.loss of the model fit returned (restored best weights), the model val.accuracy scores.
        loss = float(model.evaluate(data.feeder("val", batch_size=cfg["train"]["batch_size"]), verbose=0, return_dict=True)["loss"])
        name, _ = METRICS[self.metric]
        score = loss if name == "loss" else float(val[name])
        return {"score": score, "val": val, "val_loss": loss, "epochs_run": int(len(hist)), "seconds": time.perf_counter() - start}

    def score_all(self, cfgs: list[dict], client) -> list[dict]:
        """:meth:`score` of every config, in order: as concurrent tasks on ``client``'s Dask
        cluster (each caches its trial as :meth:`score` does), or one after another without one."""
        if client is None:
            return [self.score(cfg) for cfg in cfgs]
        for cfg in cfgs:  # prepared here first (on disk): building a synthetic set or decoding
            if not self.cached(cfg).exists():  # many images starts processes, which a Dask worker (a daemon) cannot
                self.data(cfg)
        # verbose 0: no Keras progress bars from many workers on one console
        futures = [client.submit(_score_task, cfg, self.out_dir, self.results_root, self.metric, 0, pure=False, priority=TRIAL_PRIORITY) for cfg in cfgs]
        return client.gather(futures)


def _score_task(cfg: dict, out_dir: Path, results_root: Path, metric: str, verbose) -> dict:
    """One trial as a Dask task."""
    return _worker_trials(out_dir, results_root, metric, verbose).score(cfg)


@functools.cache
def _worker_trials(out_dir: Path, results_root: Path, metric: str, verbose) -> _Trials:
    """This process's trials runner (a Dask worker's): its prepared data serves every trial it runs."""
    return _Trials(out_dir, results_root, metric, verbose)


@contextmanager
def dask_client():
    """A client of the Dask cluster at $DASK_SCHEDULER_ADDRESS, else None (no Dask imported)."""
    address = os.environ.get(SCHEDULER_ENV)
    if not address:
        yield None
        return
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise FacetransferError(f"${SCHEDULER_ENV}={address}: no Dask scheduler answered within {CONNECT_TIMEOUT_S} s ({type(exc).__name__})") from None
    try:
        yield client
    finally:
        client.close()


def _better(metric: str, a: float, b: float | None) -> bool:
    if b is None:
        return True
    return a > b if METRICS[metric][1] else a < b


def sequential_search(base_params: Mapping, spec: Mapping, *, out_dir, results_root, verbose="auto") -> SearchResult:
    """Tune each key of ``spec['sequential']`` in turn, carrying the best value forward."""
    spec = validate_spec(spec, base_params)
    trials = _Trials(out_dir, results_root, spec["metric"], verbose)
    best: dict[str, Any] = dict(spec["set"])
    rows, skipped = [], []
    best_score = None
    with dask_client() if spec["fan_out"] else contextlib.nullcontext() as client:
        for step_no, step in enumerate(spec["sequential"], start=1):
            values, cfgs = [], []
            for value in step["values"]:
                try:
                    cfgs.append(trial_params(base_params, {**best, step["key"]: value}))
                    values.append(value)
                except P.CannotLearn as exc:
                    skipped.append({"key": step["key"], "value": value, "reason": str(exc)})
                    print(f"[search] skip {step['key']}={json.dumps(value)}: {exc}", flush=True)
            step_best, step_score = None, None
            for value, res in zip(values, trials.score_all(cfgs, client), strict=True):  # the step's values are independent trials
                rows.append({"step": step_no, "key": step["key"], "value": json.dumps(value), "score": res["score"], "val_loss": res["val_loss"], "epochs": res["epochs_run"], "seconds": res["seconds"], "trial_id": res["trial_id"]})
                if _better(spec["metric"], res["score"], step_score):
                    step_best, step_score = value, res["score"]
            if step_score is None:
                raise ParamError(f"search.sequential[{step_no - 1}].values", f"no value of {step['key']} can learn with the values chosen before it: {skipped[-1]['reason']}")
            best[step["key"]] = step_best
            best_score = step_score
            rows_step = [r for r in rows if r["step"] == step_no]
            for r in rows_step:
                r["chosen"] = r["value"] == json.dumps(step_best)
    table = pd.DataFrame(rows)
    score = float("nan") if best_score is None else best_score
    return SearchResult("sequential", spec["metric"], table, best, score, trial_params(base_params, best), skipped)


def optuna_search(base_params: Mapping, spec: Mapping, *, out_dir, results_root, verbose=0) -> SearchResult:
    """Random or TPE search with Optuna over ``spec['optuna']['space']``; ``parallel`` trials
    at a time through a shared journal file when ``search.optuna.parallel`` > 1."""
    import optuna

    spec = validate_spec(spec, base_params)
    opt = spec["optuna"]
    if opt is None:
        raise ParamError("search.optuna", "is not set in this study")
    seed = int(opt.get("seed", base_params.get("seed", 0) or 0))
    method = f"optuna: {sampler_description(opt)}" + (f", {opt['parallel']} at a time" if opt["parallel"] > 1 else "")
    print(f"[optuna] {method}", flush=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if opt["parallel"] == 1:
        study = optuna.create_study(direction=_direction(spec), sampler=_sampler(opt, seed))
        _optimize(study, opt["n_trials"], base_params, spec, _Trials(out_dir, results_root, spec["metric"], verbose))
    else:
        study = _parallel_optuna(base_params, spec, seed, out_dir=out_dir, results_root=results_root, verbose=verbose)
    done = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
    rows = [{"trial": t.number, **_shown(_values(t.params, spec)), "score": t.value, "seconds": t.user_attrs["seconds"], "trial_id": t.user_attrs["trial_id"]} for t in done]
    best = {**spec["set"], **_values(study.best_trial.params, spec)}
    return SearchResult(method, spec["metric"], pd.DataFrame(rows), best, float(study.best_value), trial_params(base_params, best))


def _direction(spec: Mapping) -> str:
    return "maximize" if METRICS[spec["metric"]][1] else "minimize"


def _sampler(opt: Mapping, seed: int, *, parallel: bool = False):
    """The spec's sampler; in parallel, TPE treats the trials still running as their worst
    value (``constant_liar``) so that concurrent workers do not propose the same values."""
    import optuna

    if opt["sampler"] == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=opt["n_startup_trials"], constant_liar=parallel)
    return optuna.samplers.RandomSampler(seed=seed)


def _values(suggested: Mapping, spec: Mapping) -> dict:
    """Run-param values of an Optuna trial's params (categorical choices travel as JSON text)."""
    space = spec["optuna"]["space"]
    return {key: json.loads(value) if "choices" in space[key] else value for key, value in suggested.items()}


def _shown(values: Mapping) -> dict:
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in values.items()}


def _optimize(study, n_trials: int, base_params: Mapping, spec: Mapping, trials: _Trials) -> None:
    """``n_trials`` trials of ``study`` in this process, one text line each (readable in the
    notebook and the report); each trial is scored through the trial cache."""
    opt = spec["optuna"]

    def objective(trial):
        suggested = {}
        for key, dist in opt["space"].items():
            if "choices" in dist:
                suggested[key] = trial.suggest_categorical(key, [json.dumps(c) for c in dist["choices"]])
            elif isinstance(dist["low"], int) and isinstance(dist["high"], int):
                suggested[key] = trial.suggest_int(key, dist["low"], dist["high"], log=bool(dist.get("log")))
            else:
                suggested[key] = trial.suggest_float(key, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))
        res = trials.score(trial_params(base_params, {**spec["set"], **_values(suggested, spec)}))
        trial.set_user_attr("seconds", res["seconds"])
        trial.set_user_attr("trial_id", res["trial_id"])
        return res["score"]

    def progress(study, trial):
        print(f"[optuna] trial {trial.number + 1}/{opt['n_trials']}: {spec['metric']} {trial.value:.4f} (best {study.best_value:.4f})", flush=True)

    study.optimize(objective, n_trials=n_trials, callbacks=[progress])


def _parallel_optuna(base_params: Mapping, spec: Mapping, seed: int, *, out_dir, results_root, verbose):
    """``parallel`` Optuna workers sharing ``<out_dir>/optuna.journal``: Dask tasks on the
    cluster at $DASK_SCHEDULER_ADDRESS, else one after another in this process. Resumes the
    journal's study of this spec: its finished trials count; those a killed search left
    running are told failed. Returns the study, every worker done."""
    import optuna

    opt = spec["optuna"]
    journal = Path(out_dir) / JOURNAL
    journal.parent.mkdir(parents=True, exist_ok=True)
    name = _study_name(base_params, spec, seed)
    study = optuna.create_study(study_name=name, storage=_journal_storage(journal), direction=_direction(spec), load_if_exists=True)
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    left = max(0, opt["n_trials"] - finished)
    shares = [n for n in (left // opt["parallel"] + (i < left % opt["parallel"]) for i in range(opt["parallel"])) if n]
    # Each worker's sampler seed: the spec's seed, the journal's length (a resumed search does
    # not re-propose the values of the run it resumes) and the worker's number.
    seeds = [int(s) for s in np.random.SeedSequence([seed, len(study.trials)]).generate_state(len(shares))]
    args = (journal, name, base_params, spec, out_dir, results_root)
    print(f"[optuna] {finished} of {opt['n_trials']} trials already in {journal}; {left} to run by {len(shares)} worker(s)", flush=True)
    start = time.perf_counter()
    with dask_client() as client:
        if client is None and shares:
            print(f"[optuna] no Dask cluster (${SCHEDULER_ENV} unset: facetransfer run --workers/--scheduler sets it): the {len(shares)} workers run one after another here", flush=True)
            for n, worker_seed in zip(shares, seeds, strict=True):
                _optuna_worker(n, worker_seed, *args, verbose)
        elif shares:
            _Trials(out_dir, results_root, spec["metric"], verbose).data(trial_params(base_params, spec["set"]))  # see _Trials.score_all
            client.gather([client.submit(_optuna_worker, n, worker_seed, *args, 0, pure=False, priority=TRIAL_PRIORITY) for n, worker_seed in zip(shares, seeds, strict=True)])  # 0: see score_all
    print(f"[optuna] {left} trials in {time.perf_counter() - start:.1f} s", flush=True)
    return optuna.load_study(study_name=name, storage=_journal_storage(journal))


def _optuna_worker(n_trials: int, seed: int, journal: Path, name: str, base_params: Mapping, spec: Mapping, out_dir, results_root, verbose) -> None:
    """One parallel Optuna worker (a Dask task, or a call here): ``n_trials`` trials of the
    journal's study, with its own seeded sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=_journal_storage(journal), sampler=_sampler(spec["optuna"], seed, parallel=True))
    _optimize(study, n_trials, base_params, spec, _worker_trials(Path(out_dir), Path(results_root), spec["metric"], verbose))


def _journal_storage(path: Path):
    """Optuna's journal storage on a file every worker sees (its own lock serialises writes)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def _study_name(base_params: Mapping, spec: Mapping, seed: int) -> str:
    """The journal's study of this search: a changed space, sampler, metric, base or seed is a
    new study; ``n_trials`` and ``parallel`` are not (a resumed search may run more trials, on
    more or fewer workers)."""
    opt = {k: v for k, v in spec["optuna"].items() if k not in ("n_trials", "parallel")}
    what = json.dumps({"base": base_params, "set": spec["set"], "metric": spec["metric"], "optuna": opt, "seed": seed}, sort_keys=True, default=str)
    return "search-" + hashlib.sha1(what.encode()).hexdigest()[:12]


def chosen(spec: Mapping, sequential: SearchResult | None, optuna: SearchResult | None) -> SearchResult:
    """The result that feeds ``use_search`` runs, as ``search.use`` says: ``sequential``,
    ``optuna``, or ``best`` (the better best score of the two under the search metric)."""
    use = spec.get("use") or ("sequential" if spec.get("sequential") else "optuna")
    have = {"sequential": sequential, "optuna": optuna}
    if use in have:
        if have[use] is None:
            raise ParamError("search.use", f"{use!r}: that search did not run")
        return have[use]
    ran = [r for r in (sequential, optuna) if r is not None and len(r.trials)]
    if not ran:
        raise ParamError("search.use", "'best': no search ran a trial")
    return max(ran, key=lambda r: r.best_score if METRICS[r.metric][1] else -r.best_score)


def write_best(out_dir, result: SearchResult) -> Path:
    """Write ``best_params.json`` (dotted best values, score, method, skipped values) atomically."""
    path = Path(out_dir) / "best_params.json"
    body = {"method": result.method, "metric": result.metric, "score": result.best_score, "best": result.best, "skipped": result.skipped}
    atomic_write_json(path, body)
    return path


def load_best(path) -> dict:
    """The dotted best values written by :func:`write_best`."""
    path = Path(path)
    if not path.exists():
        raise ParamError("use_search", f"no search result at {path}: run the study's search stage first")
    return dict(read_json(path)["best"])
