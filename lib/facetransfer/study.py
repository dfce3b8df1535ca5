"""Study files: validate ``params/<study>.yaml`` and expand it into runs.

A study names the runs of ``03_finetune`` and the study-level stages around them::

    study: demo                      # results go to results/<study>/ (default: the file name)
    title: "..."                     # default: the study name
    description: "..."
    stages: [explore, search, finetune, compare]   # default: explore, finetune, compare
    defaults: {seed: 0, data: {...}, model: {...}, train: {...}}   # shared run params
    grid: {train.learning_rate: [0.001, 0.0001], model.strategy: [frozen, last_block]}
    runs:                            # named groups of runs
      - {name: source, set: {task: age, data.dataset: utkface}, grid: {...}}
      - {name: tuned, use_search: true}
    repeats: 1                       # every configuration with seeds seed, seed+1, ... (same split)
    search: {...}                    # the 02_search spec (see facetransfer.search)
    reported: [{match: {train.learning_rate: 0.001}, metrics: {test.accuracy: 0.94}, source: "..."}]

Expansion. A top-level ``grid``, or the absence of ``runs``, makes a group named ``main``
(defaults x grid); it comes first. Every group expands to the cartesian product of its own
``grid`` (in the order the keys are written), times ``repeats``; a study expands to at most
``MAX_RUNS`` (1000) runs. The params of one run are built in this order, later steps winning:

1. ``defaults`` (nested, or dotted keys), then ``--set defaults.<key>=...`` overrides;
2. the search's chosen values, for a group with ``use_search: true`` (only the keys the
   search tuned, read from ``results/<study>/search/best_params.json`` after the search stage);
3. the group's ``set`` (a dotted key sets exactly that value: a mapping given for a whole
   section such as ``model.head`` REPLACES that section, schema defaults filling the rest);
4. the grid values;
5. ``--set <key>=<value>`` overrides (every run);
6. validation by :func:`facetransfer.params.resolve_run`; ``name`` becomes the run name;
   a relative ``data.root`` or weights file becomes absolute (against the current folder);
7. repeat ``k`` adds ``k`` to ``seed``: the initial weights, the batch order and augmentation
   change, the split and ``data.limit``'s subset do not (they follow ``data.split.seed``, fixed
   for the study unless a grid or group sets it), so ``repeats: N`` measures training variance
   on ONE test set and the repeats pair image by image. To vary the split on purpose, grid
   over ``data.split.seed`` (its runs are named ``split_seed=<k>``);
8. ``model.weights: run:<name>`` becomes ``run:<run id>`` of that run of the study (a bare
   12-hex id is kept as it is). A group name with several runs is matched by repeat index.

The run name is the group name plus the grid values (``main lr=0.001 strategy=frozen``) plus
``seed=<seed>`` when ``repeats`` > 1. The run id is :func:`facetransfer.params.run_id`: it
identifies the trained model — the params that change training (not the name, ``eval.*`` or
``data.root``), the data's fingerprint (:func:`facetransfer.params.data_fingerprint`: label
files and file list, so a moved data folder keeps its runs), the Keras backend and the
resolved precision policy (``train.mixed_precision: auto`` is float32 on a CPU and
mixed_float16 on a GPU: two ids).

Overrides (``facetransfer run --set KEY=VALUE``, value parsed as YAML):
``<run key>`` (every run and the study's base params), ``defaults.<run key>`` (the defaults,
so a group's own ``set`` still wins), ``repeats`` / ``stages`` / ``title`` / ``description``
(also spelled ``study.<key>``) and ``search.<key>`` (one key of the search spec).

Every problem is a one-line :class:`ParamError` naming where it is (``grid.train.learnin_rate``,
``runs[1].set.model.weights``, ``study.stages``, ``--set train.epochs``) before any run starts.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facetransfer import params as P
from facetransfer.errors import FacetransferError, ParamError

STAGES = ("explore", "search", "finetune", "compare")
DEFAULT_STAGES = ("explore", "finetune", "compare")
NOTEBOOKS = {
    "explore": "01_explore.ipynb",
    "search": "02_search.ipynb",
    "finetune": "03_finetune.ipynb",
    "compare": "04_compare.ipynb",
}
STUDY_KEYS = ("study", "title", "description", "stages", "defaults", "grid", "runs", "repeats", "search", "reported")
GROUP_KEYS = ("name", "set", "grid", "use_search")
REPORTED_KEYS = ("match", "metrics", "source", "n_test")
OVERRIDABLE_STUDY_KEYS = ("repeats", "stages", "title", "description")
MAIN_GROUP = "main"
MAX_RUNS = 1000
LABELS = {"learning_rate": "lr", "batch_size": "batch", "data.split.seed": "split_seed"}  # by last part or whole key
_HEX_ID = re.compile(r"[0-9a-f]{12}")
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class Group:
    """One named group of runs: defaults ⊕ ``set`` × ``grid``."""

    name: str
    where: str  # "runs[0]" for a listed group, "" for main
    set: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    use_search: bool = False

    def key(self, part: str) -> str:
        return f"{self.where}.{part}" if self.where else part


@dataclass
class Run:
    """One execution of ``03_finetune``."""

    name: str
    group: str
    repeat: int
    params: dict  # fully resolved
    run_id: str | None  # None while it waits for the search stage
    use_search: bool = False
    depends_on: list[str] = field(default_factory=list)  # study run ids its weights come from
    notebook: str = NOTEBOOKS["finetune"]
    origin: dict = field(default_factory=dict, repr=False)  # dotted key -> where it was set

    @property
    def pending(self) -> bool:
        return self.run_id is None

    def to_json(self) -> dict:
        out = {"run_id": self.run_id, "name": self.name, "group": self.group, "repeat": self.repeat, "notebook": self.notebook, "params": self.params}
        if self.use_search:
            out["use_search"] = True
        if self.depends_on:
            out["depends_on"] = list(self.depends_on)
        return out


@dataclass
class Study:
    """A validated study file and its expanded runs."""

    name: str
    title: str
    description: str
    stages: list[str]
    repeats: int
    groups: list[Group]
    defaults: dict  # raw nested defaults, `defaults.` overrides applied
    run_overrides: dict  # dotted -> value, applied to every run
    search: dict | None
    reported: list[dict]
    path: Path
    sha1: str
    overrides: list[str]
    runs: list[Run] = field(default_factory=list)
    base_params: dict | None = None  # resolved defaults (explore's data, search's base)
    base_depends_on: list[str] = field(default_factory=list)
    search_best: dict | None = None

    def apply_search(self, best: Mapping, *, check_paths: bool = True) -> None:
        """Re-expand the runs with the search's chosen values (``use_search`` groups)."""
        self.search_best = searched_values(self.search, best)
        self.runs = expand(self, check_paths=check_paths)

    def run_by_id(self, run_id: str) -> Run:
        for run in self.runs:
            if run.run_id == run_id:
                return run
        raise KeyError(run_id)


# ----------------------------------------------------------------------------------------
# reading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error or a duplicated key is one line naming the file."""
    if not path.is_file():
        raise FacetransferError(f"{path}: study file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FacetransferError(f"{path}: not UTF-8 text (byte {exc.start}); save the study file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise FacetransferError(f"{path}:{where}: not valid YAML: {problem}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=2"`` → ``("train.epochs", 2)`` (the value parsed as YAML)."""
    key, sep, value = str(text).partition("=")
    key = key.strip()
    if not sep or not key:
        raise FacetransferError(f"--set {text!r}: expected DOTTED.KEY=VALUE, e.g. --set train.epochs=2")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        raise FacetransferError(f"--set {key}: {value!r} is not a YAML value") from None


# ----------------------------------------------------------------------------------------
# validation of the study file's own keys


def _need_mapping(key: str, value: Any, *, allow_none: bool = True) -> dict:
    if value is None and allow_none:
        return {}
    if not isinstance(value, Mapping):
        raise ParamError(key, f"must be a mapping (got {type(value).__name__})")
    return dict(value)


def _need_str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParamError(key, f"{value!r} is not a non-empty string")
    return value


def _check_run_key(key: str, dotted: Any) -> None:
    if not isinstance(dotted, str) or not P.is_known_key(dotted):
        hint = P.did_you_mean(dotted, P.known_keys())
        raise ParamError(key, f"is not a run param{hint} (see the params reference: python -m facetransfer.params)")
    if dotted == "name":
        raise ParamError(key, "the run name is set by the study (group name + grid values)")


def _check_dotted_mapping(where: str, mapping: Mapping) -> dict:
    for dotted in mapping:
        _check_run_key(f"{where}.{dotted}", dotted)
    return dict(mapping)


def _check_grid(where: str, grid: Any) -> dict:
    grid = _need_mapping(where, grid)
    for dotted, values in grid.items():
        _check_run_key(f"{where}.{dotted}", dotted)
        if not isinstance(values, list) or not values:
            raise ParamError(f"{where}.{dotted}", f"must be a non-empty list of values (got {values!r})")
    return grid


def _check_stages(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ParamError("study.stages", f"must be a non-empty list; allowed: {', '.join(STAGES)}")
    for stage in value:
        if stage not in STAGES:
            raise ParamError("study.stages", f"{stage!r} is not allowed; allowed: {', '.join(STAGES)}")
    if len(set(value)) != len(value):
        raise ParamError("study.stages", f"{value!r} names a stage twice")
    return [s for s in STAGES if s in value]


def _check_repeats(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError("study.repeats", f"{value!r} is not an integer >= 1")
    return value


def _check_groups(raw_runs: Any, top_grid: dict) -> list[Group]:
    groups = []
    if top_grid or raw_runs is None:
        groups.append(Group(MAIN_GROUP, "", grid=top_grid))
    if raw_runs is None:
        return groups
    if not isinstance(raw_runs, list) or not raw_runs:
        raise ParamError("study.runs", "must be a non-empty list of groups {name, set, grid, use_search}")
    for i, item in enumerate(raw_runs):
        where = f"runs[{i}]"
        item = _need_mapping(where, item, allow_none=False)
        _reject_unknown_keys(where, item, GROUP_KEYS)
        if "name" not in item:
            raise ParamError(f"{where}.name", "is required (a short label for the group)")
        name = _need_str(f"{where}.name", item["name"])
        use_search = item.get("use_search", False)
        if not isinstance(use_search, bool):
            raise ParamError(f"{where}.use_search", f"{use_search!r} is not true or false")
        group = Group(
            name,
            where,
            set=_check_dotted_mapping(f"{where}.set", _need_mapping(f"{where}.set", item.get("set"))),
            grid=_check_grid(f"{where}.grid", item.get("grid")),
            use_search=use_search,
        )
        if any(g.name == name for g in groups):
            raise ParamError(f"{where}.name", f"{name!r} names two groups; group names must be unique")
        groups.append(group)
    return groups


def _reject_unknown_keys(where: str, mapping: dict, allowed) -> None:
    """ParamError naming the first key of ``mapping`` that is not in ``allowed``."""
    for key in mapping:
        if key not in allowed:
            hint = P.did_you_mean(key, allowed)
            raise ParamError(f"{where}.{key}", f"unknown key{hint}; allowed keys here: {', '.join(allowed)}")


def _check_size(groups: list[Group], repeats: int) -> None:
    """At most MAX_RUNS runs: more is a typo in a grid or in repeats, not a study."""
    n = sum(math.prod(len(values) for values in g.grid.values()) for g in groups) * repeats
    if n > MAX_RUNS:
        key = "study.repeats" if repeats > 1 and n // repeats <= MAX_RUNS else "study.runs"
        raise ParamError(key, f"the study expands to {n} runs (groups x grid x repeats {repeats}); allowed: at most {MAX_RUNS}")


def _check_reported(value: Any) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ParamError("study.reported", "must be a list of {match, metrics, source}")
    out = []
    for i, item in enumerate(value):
        where = f"reported[{i}]"
        item = _need_mapping(where, item, allow_none=False)
        _reject_unknown_keys(where, item, REPORTED_KEYS)
        match = _need_mapping(f"{where}.match", item.get("match"), allow_none=False)
        for dotted in match:
            if not isinstance(dotted, str) or not P.is_known_key(dotted):
                raise ParamError(f"{where}.match.{dotted}", "is not a run param (name or a dotted params key)")
        metrics = _need_mapping(f"{where}.metrics", item.get("metrics"), allow_none=False)
        if not metrics:
            raise ParamError(f"{where}.metrics", "must name at least one metric, e.g. test.accuracy: 0.94")
        for name, number in metrics.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ParamError(f"{where}.metrics.{name}", f"{number!r} is not a number")
        source = item.get("source", "")
        if not isinstance(source, str):
            raise ParamError(f"{where}.source", f"{source!r} is not a string")
        n_test = item.get("n_test")
        if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
            raise ParamError(f"{where}.n_test", f"{n_test!r} must be the published test-set size, an integer >= 1 (leave it out when unknown)")
        out.append({"match": match, "metrics": metrics, "source": source, **({"n_test": n_test} if n_test is not None else {})})
    return out


def _nest(where: str, mapping: Mapping) -> dict:
    """Nested run params from a mapping that may also use dotted keys."""
    out: dict = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ParamError(f"{where}.{key}", "keys must be strings")
        if "." in key:
            _check_run_key(f"{where}.{key}", key)
            P.set_dotted(out, key, copy.deepcopy(value))
        else:
            out[key] = copy.deepcopy(value)
    if "name" in out:
        raise ParamError(f"{where}.name", "the run name is set by the study (group name + grid values)")
    return out


def _split_overrides(overrides: Sequence[str]) -> tuple[dict, dict, dict, dict]:
    """Sort ``--set`` overrides into run, defaults, study and search overrides."""
    run, defaults, study, search = {}, {}, {}, {}
    for text in overrides:
        key, value = parse_override(text)
        bare = key[len("study."):] if key.startswith("study.") else key
        if bare in OVERRIDABLE_STUDY_KEYS:
            study[bare] = value
        elif key.startswith("search."):
            search[key[len("search."):]] = value
        elif key.startswith("defaults."):
            _check_run_key(f"--set {key}", key[len("defaults."):])
            defaults[key[len("defaults."):]] = value
        elif P.is_known_key(key) and key != "name":
            run[key] = value
        else:
            candidates = P.known_keys() + [f"defaults.{k}" for k in P.known_keys()] + list(OVERRIDABLE_STUDY_KEYS)
            raise ParamError(
                f"--set {key}",
                f"unknown key{P.did_you_mean(key, candidates)}; allowed: a run param (python -m facetransfer.params), defaults.<run param>, "
                f"search.<key>, or one of {', '.join(OVERRIDABLE_STUDY_KEYS)}",
            )
    return run, defaults, study, search


def load_study(path, overrides: Sequence[str] = (), *, check_paths: bool = True) -> Study:
    """Read, validate and expand a study file; every problem is a one-line error.

    ``check_paths``: a ``data.root`` (without ``data.synthetic``) or weights file that does
    not exist is an error; with ``False`` (dry runs) the check is left to the caller.
    """
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise FacetransferError(f"{path}: a study file must be a mapping with keys {', '.join(STUDY_KEYS)}")
    _reject_unknown_keys("study", raw, STUDY_KEYS)
    run_over, defaults_over, study_over, search_over = _split_overrides(list(overrides))
    raw = {**raw, **study_over}

    name = _need_str("study.study", raw.get("study", path.stem))
    if not _STUDY_NAME.fullmatch(name):
        raise ParamError("study.study", f"{name!r} must be a folder name: letters, digits, _ . - (no spaces or slashes)")
    defaults = _nest("defaults", _need_mapping("study.defaults", raw.get("defaults")))
    for dotted, value in defaults_over.items():
        P.set_dotted(defaults, dotted, value)
    search = raw.get("search")
    if search is not None or search_over:
        search = {**_need_mapping("study.search", search), **search_over}
    stages = _check_stages(raw.get("stages", list(DEFAULT_STAGES)))
    groups = _check_groups(raw.get("runs"), _check_grid("grid", raw.get("grid")))
    if "search" in stages and search is None:
        raise ParamError("study.search", "is required with the search stage (the 02_search spec)")
    for group in groups:
        if group.use_search and "search" not in stages:
            raise ParamError(group.key("use_search"), "needs the search stage: add search to study.stages")
    study = Study(
        name=name,
        title=_need_str("study.title", raw.get("title", name)),
        description=str(raw.get("description") or ""),
        stages=stages,
        repeats=_check_repeats(raw.get("repeats", 1)),
        groups=groups,
        defaults=defaults,
        run_overrides=run_over,
        search=search,
        reported=_check_reported(raw.get("reported")),
        path=path.resolve(),
        sha1=hashlib.sha1(path.read_bytes()).hexdigest(),
        overrides=list(overrides),
    )
    _check_size(groups, study.repeats)
    study.runs = expand(study, check_paths=check_paths)
    if "explore" in stages or "search" in stages:
        study.base_params, study.base_depends_on = _base_params(study, check_paths=check_paths)
    if "search" in stages:
        _validate_search(study)
    return study


# ----------------------------------------------------------------------------------------
# expansion


def searched_values(search: Mapping | None, best: Mapping) -> dict:
    """The values a search chose for the keys it tuned (not its fixed ``set`` budget)."""
    tuned = set()
    for step in (search or {}).get("sequential") or []:
        tuned.add(step["key"])
    tuned.update(((search or {}).get("optuna") or {}).get("space") or {})
    return {k: v for k, v in dict(best).items() if k in tuned}


def _apply(raw: dict, origin: dict, values: Mapping, label: str) -> None:
    for dotted, value in values.items():
        P.set_dotted(raw, dotted, copy.deepcopy(value))
        for key in [k for k in origin if k == dotted or k.startswith(dotted + ".")]:
            del origin[key]
        origin[dotted] = label


def _where(origin: Mapping, key: str) -> str:
    """Where the value of ``key`` (an error's key) was set: ``runs[1].set.model.weights`` ..."""
    plain = re.sub(r"\[\d+\]$", "", key)
    parts = plain.split(".")
    for n in range(len(parts), 0, -1):
        label = origin.get(".".join(parts[:n]))
        if label is not None:
            return f"{label} {key}" if label == "--set" else f"{label}.{key}"
    return f"defaults.{key}"


def _message(exc: ParamError) -> str:
    prefix = f"params: {exc.key}: "
    text = str(exc)
    return text[len(prefix):] if text.startswith(prefix) else text


def _resolve(raw: dict, origin: Mapping, run_name: str) -> dict:
    try:
        return P.resolve_run(raw)
    except ParamError as exc:
        raise ParamError(_where(origin, exc.key), f"{_message(exc)} (run {run_name!r})") from None


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _labels(keys: Sequence[str]) -> dict[str, str]:
    short = {k: LABELS.get(k, LABELS.get(k.split(".")[-1], k.split(".")[-1])) for k in keys}
    counts: dict[str, int] = {}
    for label in short.values():
        counts[label] = counts.get(label, 0) + 1
    return {k: (label if counts[label] == 1 else k) for k, label in short.items()}


def _absolute_paths(params: dict) -> None:
    """Relative ``data.root`` / weights files become absolute (notebooks run in their run folder)."""
    root = params["data"]["root"]
    if root is not None:
        params["data"]["root"] = os.path.abspath(os.path.expanduser(root))
    weights = params["model"]["weights"]
    if weights not in ("imagenet", "none") and not weights.startswith("run:"):
        params["model"]["weights"] = os.path.abspath(os.path.expanduser(weights))


def _check_paths(params: Mapping, origin: Mapping, run_name: str) -> None:
    root = params["data"]["root"]
    if params["data"]["synthetic"] is None and root is not None and not os.path.exists(root):
        raise ParamError(
            _where(origin, "data.root"),
            f"{root} does not exist (run {run_name!r}); point it at your {params['data']['dataset']} copy, e.g. --set data.root=/path/to/it",
        )
    weights = params["model"]["weights"]
    if weights not in ("imagenet", "none") and not weights.startswith("run:") and not os.path.exists(weights):
        raise ParamError(_where(origin, "model.weights"), f"weights file {weights} does not exist (run {run_name!r})")


def _check_model(params: dict, origin: Mapping, run_name: str) -> None:
    """``facetransfer.models.check_model_params`` where the models package provides it."""
    if importlib.util.find_spec("facetransfer.models") is None:
        return
    check = getattr(importlib.import_module("facetransfer.models"), "check_model_params", None)
    if check is None:
        return
    try:
        check(params)
    except ParamError as exc:
        raise ParamError(_where(origin, exc.key), f"{_message(exc)} (run {run_name!r})") from None


def _weights_ref(params: Mapping) -> str | None:
    weights = params["model"]["weights"]
    return weights[len("run:"):] if weights.startswith("run:") else None


def _find_ref(runs: list[Run], ref: str, me: Run) -> int:
    by_name = [i for i, r in enumerate(runs) if r.name == ref]
    if len(by_name) == 1:
        return by_name[0]
    in_group = [i for i, r in enumerate(runs) if r.group == ref]
    same_repeat = [i for i in in_group if runs[i].repeat == me.repeat]
    if len(in_group) == 1:
        return in_group[0]
    if len(same_repeat) == 1:
        return same_repeat[0]
    key = _where(me.origin, "model.weights")
    if not in_group:
        names = ", ".join(sorted({r.name for r in runs}))
        raise ParamError(key, f"run:{ref} names no run of this study (run {me.name!r}); runs: {names}")
    names = ", ".join(runs[i].name for i in in_group)
    raise ParamError(key, f"run:{ref} is ambiguous (run {me.name!r}): group {ref!r} has runs {names}; name one of them")


def _assign_ids(runs: list[Run]) -> None:
    """Replace ``run:<name>`` by ``run:<id>`` in dependency order, then hash every run
    (:func:`facetransfer.params.run_id`: training params, data fingerprint, backend, precision)."""
    state: dict[int, str] = {}
    fingerprints: dict = {}  # one fingerprint per data set for the whole study

    def visit(i: int, chain: list[str]) -> None:
        if state.get(i) == "done":
            return
        run = runs[i]
        if state.get(i) == "visiting":
            cycle = " -> ".join(chain)
            raise ParamError(_where(run.origin, "model.weights"), f"weights form a cycle: {cycle}")
        state[i] = "visiting"
        ref = _weights_ref(run.params)
        pending = run.use_search and run.pending
        if ref is not None and not _HEX_ID.fullmatch(ref):
            j = _find_ref(runs, ref, run)
            visit(j, chain + [runs[j].name])
            if runs[j].pending:
                pending = True
            else:
                run.params["model"]["weights"] = f"run:{runs[j].run_id}"
                run.depends_on = [runs[j].run_id]
        run.run_id = None if pending else P.run_id(run.params, fingerprints=fingerprints)
        state[i] = "done"

    for i in range(len(runs)):
        visit(i, [runs[i].name])
    ids = {r.run_id for r in runs if not r.pending}
    for run in runs:
        ref = _weights_ref(run.params)
        if ref is not None and _HEX_ID.fullmatch(ref) and ref in ids and not run.depends_on:
            run.depends_on = [ref]


def _raw_run(study: Study, group: Group, values: Mapping) -> tuple[dict, dict]:
    raw = copy.deepcopy(study.defaults)
    origin = {k: "defaults" for k in P.flatten(raw)}
    if group.use_search and study.search_best is not None:
        _apply(raw, origin, study.search_best, "search")
    _apply(raw, origin, group.set, group.key("set"))
    _apply(raw, origin, values, group.key("grid"))
    _apply(raw, origin, study.run_overrides, "--set")
    return raw, origin


def expand(study: Study, *, check_paths: bool = True) -> list[Run]:
    """The study's runs: groups × grid × repeats, validated, with ids."""
    runs: list[Run] = []
    for group in study.groups:
        keys = list(group.grid)
        labels = _labels(keys)
        for combo in itertools.product(*(group.grid[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            base_name = " ".join([group.name] + [f"{labels[k]}={_fmt_value(v)}" for k, v in values.items()])
            raw, origin = _raw_run(study, group, values)
            resolved = _resolve(raw, origin, base_name)
            resolved["name"] = base_name
            _absolute_paths(resolved)
            if check_paths:
                _check_paths(resolved, origin, base_name)
            _check_model(resolved, origin, base_name)
            for k in range(study.repeats):
                params = copy.deepcopy(resolved)
                params["seed"] = resolved["seed"] + k
                name = base_name if study.repeats == 1 else f"{base_name} seed={params['seed']}"
                params["name"] = name
                pending = group.use_search and study.search_best is None
                runs.append(Run(name, group.name, k, params, None if pending else "?", group.use_search, origin=origin))
    names: set[str] = set()
    for run in runs:
        if run.name in names:
            raise ParamError("study.runs", f"two runs are named {run.name!r}; make the group names or grid values differ")
        names.add(run.name)
    _assign_ids(runs)
    by_id: dict[str, Run] = {}
    for run in runs:
        if run.pending:
            continue
        other = by_id.get(run.run_id)
        if other is not None and not (run.use_search or other.use_search):
            raise ParamError(
                "study.runs", f"runs {other.name!r} and {run.name!r} have identical params (run id {run.run_id}); drop one or make them differ"
            )
        by_id.setdefault(run.run_id, run)
    return runs


def _base_params(study: Study, *, check_paths: bool) -> tuple[dict, list[str]]:
    """The resolved defaults (with overrides): 01_explore's data and 02_search's base."""
    raw = copy.deepcopy(study.defaults)
    origin = {k: "defaults" for k in P.flatten(raw)}
    _apply(raw, origin, study.run_overrides, "--set")
    params = _resolve(raw, origin, "the study defaults, used by explore/search")
    _absolute_paths(params)
    if check_paths:
        _check_paths(params, origin, "the study defaults")
    depends_on: list[str] = []
    ref = _weights_ref(params)
    if ref is not None and not _HEX_ID.fullmatch(ref):
        me = Run("the study defaults", "", 0, params, None, origin=origin)
        target = study.runs[_find_ref(study.runs, ref, me)]
        if target.pending:
            raise ParamError(_where(origin, "model.weights"), f"run:{ref} waits for the search itself; the study defaults cannot start from it")
        params["model"]["weights"] = f"run:{target.run_id}"
        depends_on = [target.run_id]
    elif ref is not None and ref in {r.run_id for r in study.runs}:
        depends_on = [ref]
    return params, depends_on


def _validate_search(study: Study) -> None:
    if importlib.util.find_spec("facetransfer.search") is None:
        return
    from facetransfer import search as S

    validate = getattr(S, "validate_spec", None)
    if validate is not None:
        validate(study.search, study.base_params)


def execution_order(study: Study) -> list[str]:
    """Run ids in an order where every run comes after the runs its weights come from."""
    order: list[str] = []
    runs = {r.run_id: r for r in study.runs if not r.pending}

    def visit(run_id: str) -> None:
        if run_id in order or run_id not in runs:
            return
        for dep in runs[run_id].depends_on:
            visit(dep)
        order.append(run_id)

    for run in study.runs:
        if not run.pending:
            visit(run.run_id)
    return order


def dependencies(study: Study, run_ids: Sequence[str]) -> list[str]:
    """``run_ids`` and every study run they depend on, in execution order."""
    runs = {r.run_id: r for r in study.runs if not r.pending}
    need: set[str] = set()
    todo = [i for i in run_ids if i in runs]
    while todo:
        run_id = todo.pop()
        if run_id in need:
            continue
        need.add(run_id)
        todo.extend(d for d in runs[run_id].depends_on if d in runs)
    return [i for i in execution_order(study) if i in need]


def matches(run_params: Mapping, match: Mapping) -> bool:
    """THE rule tying a ``reported`` entry to runs (the report and 04_compare use it):
    every key of ``match`` has that value in ``run_params`` (nested, or flat with dotted
    keys; numbers compared as numbers, lists as lists). ``name`` matches the run of that
    name or the runs of the study group of that name (their names are the group name
    followed by the grid values and the seed); ``run_id`` the run."""
    for dotted, want in match.items():
        have = run_params[dotted] if dotted in run_params else P.get_dotted(run_params, dotted, None)
        if dotted == "name" and isinstance(have, str):
            if not (have == want or have.startswith(f"{want} ")):
                return False
        elif isinstance(want, (int, float)) and isinstance(have, (int, float)) and not isinstance(want, bool) and not isinstance(have, bool):
            if float(want) != float(have):
                return False
        elif (list(have) if isinstance(have, (list, tuple)) else have) != (list(want) if isinstance(want, (list, tuple)) else want):
            return False
    return True
