"""Run params: the schema, defaults and validation.

Params are the only configuration. :func:`resolve_run` takes a (possibly partial) nested
dict, checks every key and value against :data:`RUN_SCHEMA`, fills the defaults and
returns the fully resolved params. Any problem raises :class:`ParamError` whose one-line
message names the dotted key and the allowed values, before any work starts.

The schema is data, so the README's params reference and the error messages come from
the same place (:func:`describe`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facetransfer.errors import ParamError

TASKS = ("gender", "age", "age_group", "age_gender")
DATASETS = ("celeba", "celeba30k", "utkface", "adience", "folder")
SYNTHETIC_LAYOUTS = ("celeba", "utkface")
KERAS_BACKBONES = ("vgg16", "resnet50v2", "inceptionv3", "mobilenetv2", "efficientnetb0")
CUSTOM_BACKBONES = ("hassner", "compact")
BACKBONES = KERAS_BACKBONES + CUSTOM_BACKBONES
# Input side in px each backbone was designed for; `data.image_size: null` uses it.
DEFAULT_INPUT_SIZE = {
    "vgg16": 224,
    "resnet50v2": 224,
    "inceptionv3": 299,
    "mobilenetv2": 224,
    "efficientnetb0": 224,
    "hassner": 227,
    "compact": 128,
}
STRATEGIES = ("frozen", "last_block", "last_n", "full")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
ACTIVATIONS = ("relu", "elu", "gelu", "swish", "tanh")
POOLINGS = ("flatten", "gap")
SPLIT_SOURCES = ("random", "dataset", "folds")
NEAR_DUPLICATES = ("count", "group")  # data.split.near_duplicates (facetransfer.near_duplicates)
CROPS = ("center", "pad")
BATCHNORM_MODES = ("frozen", "train")  # model.batchnorm (models.strategies)
FEATURE_PRECISIONS = ("float32", "bfloat16")  # train.feature_precision (features.at_precision)

# Which datasets carry which labels (folder: whatever columns its spec names).
TASK_DATASETS = {
    "gender": DATASETS,
    "age": ("utkface", "folder"),
    "age_group": ("adience", "folder"),
    "age_gender": ("utkface", "folder"),
}


def _fmt(values) -> str:
    return ", ".join("null" if v is None else str(v) for v in values)


def did_you_mean(key: str, allowed) -> str:
    """``" (did you mean train.epochs?)"`` for the allowed key closest to ``key``, else ``""``.

    Compared on full dotted paths, so ``epochs`` finds ``train.epochs`` too.
    """
    match = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


@dataclass
class Field:
    """One leaf of the schema."""

    kind: str  # "int" | "float" | "bool" | "str" | "choice" | "list" | "any"
    default: Any = None
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    nullable: bool = False
    item: Field | None = None  # for lists
    check: Callable[[str, Any], None] | None = None
    doc: str = ""

    def allowed(self) -> str:
        if self.kind == "choice":
            return f"one of {_fmt(self.choices)}"
        if self.kind in ("int", "float"):
            lo = "" if self.min is None else (f"> {self.min}" if self.min_exclusive else f">= {self.min}")
            hi = "" if self.max is None else f"<= {self.max}"
            rng = " and ".join(x for x in (lo, hi) if x)
            word = "an integer" if self.kind == "int" else "a number"
            return f"{word}{' ' + rng if rng else ''}{' or null' if self.nullable else ''}"
        if self.kind == "list":
            return f"a list of {self.item.allowed() if self.item else 'values'}"
        if self.kind == "bool":
            return "true or false" + (" or null" if self.nullable else "")
        if self.kind == "str":
            return "a string" + (" or null" if self.nullable else "")
        return "any value"

    def validate(self, key: str, value: Any) -> Any:
        if value is None:
            if self.nullable or (self.kind == "choice" and None in self.choices):
                return None
            raise ParamError(key, f"must not be null; allowed: {self.allowed()}")
        if self.kind == "choice":
            if value not in self.choices:
                raise ParamError(key, f"{value!r} is not allowed; allowed: {self.allowed()}")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ParamError(key, f"{value!r} is not {self.allowed()}")
        elif self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParamError(key, f"{value!r} is not {self.allowed()}")
            self._range(key, value)
        elif self.kind == "float":
            # PyYAML reads 1e-3 (no dot) as a string: accept strings that are plain numbers.
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ParamError(key, f"{value!r} is not {self.allowed()}") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamError(key, f"{value!r} is not {self.allowed()}")
            value = float(value)
            if not math.isfinite(value):
                raise ParamError(key, f"{value!r} is not {self.allowed()}")
            self._range(key, value)
        elif self.kind == "str":
            if not isinstance(value, str) or not value:
                raise ParamError(key, f"{value!r} is not {self.allowed()}")
        elif self.kind == "list":
            if not isinstance(value, (list, tuple)):
                raise ParamError(key, f"{value!r} is not {self.allowed()}")
            value = [self.item.validate(f"{key}[{i}]", v) for i, v in enumerate(value)] if self.item else list(value)
        if self.check is not None:
            self.check(key, value)
        return value

    def _range(self, key: str, value: float) -> None:
        bad = (self.min is not None and (value <= self.min if self.min_exclusive else value < self.min)) or (
            self.max is not None and value > self.max
        )
        if bad:
            raise ParamError(key, f"{value!r} is out of range; allowed: {self.allowed()}")


@dataclass
class Section:
    """A mapping of named fields/sections. ``optional`` sections may be null (= off)."""

    fields: dict[str, Field | Section]
    optional: bool = False
    enabled_by_default: bool = True
    doc: str = ""
    open_keys: bool = False  # accept keys not in `fields` (values kept as given)

    def defaults(self) -> dict | None:
        if self.optional and not self.enabled_by_default:
            return None
        return {k: (f.defaults() if isinstance(f, Section) else copy.deepcopy(f.default)) for k, f in self.fields.items()}

    def validate(self, key: str, value: Any) -> dict | None:
        if value is None:
            if self.optional:
                return None
            raise ParamError(key or "params", "must be a mapping, not null")
        if value is True and self.optional:
            value = {}
        if not isinstance(value, Mapping):
            raise ParamError(key or "params", f"must be a mapping (got {type(value).__name__})")
        unknown = [k for k in value if k not in self.fields]
        if unknown and not self.open_keys:
            k = unknown[0]
            where = f"{key}.{k}" if key else str(k)
            candidates = [f"{key}.{name}" if key else name for name in self.fields] + known_keys()
            raise ParamError(where, f"unknown key{did_you_mean(where, candidates)}; allowed keys here: {_fmt(self.fields)}")
        out = {}
        for name, spec in self.fields.items():
            sub = f"{key}.{name}" if key else name
            if isinstance(spec, Section):
                if name in value:
                    out[name] = spec.validate(sub, value[name])
                else:
                    out[name] = spec.defaults()
                    if out[name] is not None:
                        out[name] = spec.validate(sub, out[name])
            else:
                out[name] = spec.validate(sub, value[name] if name in value else copy.deepcopy(spec.default))
        for k in unknown:
            out[k] = value[k]
        return out


def _check_fractions(key: str, value: list) -> None:
    if len(value) != 3 or any(v < 0 for v in value) or abs(sum(value) - 1.0) > 1e-6 or value[0] <= 0:
        raise ParamError(key, f"{value!r} must be three fractions train, val, test (train > 0) summing to 1")


def _check_weights(key: str, value: str) -> None:
    if value in ("imagenet", "none"):
        return
    if value.startswith("run:"):
        if len(value) <= 4:
            raise ParamError(key, "run: needs a run id or run name, e.g. run:3f2a9c1b0d4e")
        return
    if not (value.endswith(".h5") or value.endswith(".keras") or value.endswith(".weights.h5")):
        raise ParamError(key, f"{value!r} is not allowed; allowed: imagenet, none, a weights file (.h5/.keras), or run:<run_id>")


def F(kind: str, default=None, **kw) -> Field:
    return Field(kind, default, **kw)


RUN_SCHEMA = Section(
    {
        "name": F("str", None, nullable=True, doc="human label of the run (not part of its id)"),
        "seed": F("int", 0, min=0, doc="seeds the initial weights, the batch order and augmentation; repeats add 1, 2, ... (the split has its own seed, data.split.seed)"),
        "task": F("choice", "gender", choices=TASKS),
        "data": Section(
            {
                "dataset": F("choice", "celeba", choices=DATASETS, doc="loader / on-disk layout"),
                "root": F("str", None, nullable=True, doc="dataset folder; null with `synthetic` set"),
                "synthetic": Section(
                    {
                        "n": F("int", 2000, min=1),
                        "seed": F("int", 0, min=0),
                        "size": F("int", 128, min=32, max=512),
                    },
                    optional=True,
                    enabled_by_default=False,
                    doc="generate a SYNTHETIC set in the dataset's real layout (celeba, utkface)",
                ),
                "image_size": F("int", None, min=32, max=512, nullable=True, doc="model input px; null = the backbone's default"),
                "crop": F("choice", "center", choices=CROPS, doc="center: crop the central square; pad: letterbox"),
                "limit": F("int", None, min=1, nullable=True, doc="use a stratified subset of this many records (seeded by data.split.seed)"),
                "train_size": F("int", None, min=1, nullable=True, doc="train on a stratified subset of this many TRAINING images (drawn with the split seed; smaller sizes are subsets of larger ones); val and test stay as split"),
                "frontal": F("bool", None, nullable=True, doc="adience: true reads fold_frontal_*, false fold_*; null: fold_frontal_* when present, else fold_*"),
                "attributes": F("list", [], item=F("str"), doc="extra label columns to keep for subgroup metrics"),
                "folder": Section(
                    {
                        "csv": F("str", "labels.csv"),
                        "path_column": F("str", "path"),
                        "gender_column": F("str", None, nullable=True),
                        "male_value": F("any", 1),
                        "female_value": F("any", 0),
                        "age_column": F("str", None, nullable=True),
                        "age_group_column": F("str", None, nullable=True),
                        "subject_column": F("str", None, nullable=True),
                    },
                    optional=True,
                    enabled_by_default=False,
                    doc="the `folder` dataset: a CSV of image paths and label columns",
                ),
                "split": Section(
                    {
                        "source": F("choice", "random", choices=SPLIT_SOURCES, doc="random: seeded stratified; dataset: the dataset's own partition; folds: Adience folds (test = one fold, train and val from the other four)"),
                        "fractions": F("list", [0.8, 0.1, 0.1], item=F("float", min=0.0, max=1.0), check=_check_fractions, doc="train, val, test; folds: val takes val / (train + val) of the four training folds"),
                        "test_fold": F("int", 0, min=0, max=4, doc="folds: which fold is the test set"),
                        "seed": F("int", 0, min=0, doc="seeds the split and data.limit's subset; the same for every repeat, so repeats share one test set"),
                        "near_duplicates": F(
                            "choice",
                            "count",
                            choices=NEAR_DUPLICATES,
                            doc="count: near-duplicate images on two sides of an image-level split are counted and listed; group: each near-duplicate cluster is kept on one side (source random)",
                        ),
                    }
                ),
            }
        ),
        "model": Section(
            {
                "backbone": F("choice", "vgg16", choices=BACKBONES),
                "weights": F("str", "imagenet", check=_check_weights, doc="imagenet | none | path to a weights file | run:<run_id or name>"),
                "strategy": F("choice", "frozen", choices=STRATEGIES),
                "last_n": F("int", None, min=1, nullable=True, doc="with strategy last_n: how many layers of the backbone train"),
                "batchnorm": F(
                    "choice",
                    "frozen",
                    choices=BATCHNORM_MODES,
                    doc="backbone BatchNorm layers in a trained block: frozen = inference mode, pretrained statistics and scale kept (the Keras fine-tuning advice; with weights none there are none to keep: they train); train = they train with their block",
                ),
                "head": Section(
                    {
                        "pooling": F("choice", "gap", choices=POOLINGS),
                        "dense": F("list", [256], item=F("int", min=1)),
                        "activation": F("choice", "relu", choices=ACTIVATIONS),
                        "batch_norm": F("bool", False),
                        "dropout": F("float", 0.0, min=0.0, max=0.95),
                        "l2": F("float", 0.0, min=0.0),
                    }
                ),
            }
        ),
        "train": Section(
            {
                "optimizer": F("choice", "adam", choices=OPTIMIZERS),
                "learning_rate": F("float", 1e-3, min=0.0, min_exclusive=True, max=10.0),
                "momentum": F("float", 0.9, min=0.0, max=0.999),
                "batch_size": F("int", 32, min=1, max=4096),
                "epochs": F("int", 10, min=1, max=10000),
                "early_stopping": Section(
                    {
                        "monitor": F("str", "val_loss"),
                        "patience": F("int", 3, min=0),
                        "min_delta": F("float", 0.0, min=0.0),
                        "restore_best_weights": F("bool", True),
                    },
                    optional=True,
                    enabled_by_default=False,
                ),
                "reduce_lr": Section(
                    {
                        "monitor": F("str", "val_loss"),
                        "factor": F("float", 0.2, min=0.0, min_exclusive=True, max=0.99),
                        "patience": F("int", 2, min=0),
                        "min_lr": F("float", 1e-7, min=0.0),
                    },
                    optional=True,
                    enabled_by_default=False,
                ),
                "class_weight": F("choice", None, choices=(None, "balanced")),
                "two_phase": Section(
                    {
                        "head_epochs": F("int", 2, min=1),
                        "learning_rate": F("float", 1e-5, min=0.0, min_exclusive=True, max=10.0),
                    },
                    optional=True,
                    enabled_by_default=False,
                    doc="train the head with the base frozen, then apply `strategy` at this learning rate",
                ),
                "augment": Section(
                    {
                        "flip": F("bool", True),
                        "rotation": F("float", 0.0, min=0.0, max=0.5),
                        "zoom": F("float", 0.0, min=0.0, max=0.5),
                    },
                    optional=True,
                    enabled_by_default=False,
                ),
                "loss_weights": Section({"gender": F("float", 1.0, min=0.0), "age": F("float", 0.05, min=0.0)}),
                "mixed_precision": F("choice", "auto", choices=("auto", "on", "off")),
                "xla": F("bool", False),
                "cpu_threads": F(
                    "int",
                    None,
                    min=1,
                    nullable=True,
                    doc="intra-op threads of the CPU kernels (TensorFlow, PyTorch); float sums depend on it: set it for the same numbers serially and on Dask workers; null = every core serially, the worker's share on Dask",
                ),
                "feature_cache": F("bool", True, doc="train on cached frozen-prefix features when possible"),
                "feature_precision": F(
                    "choice",
                    "float32",
                    choices=FEATURE_PRECISIONS,
                    doc="arithmetic of the one-time frozen-prefix extraction; bfloat16 is about 2x faster on CPUs with AVX512-BF16/AMX, features within about 1 % (trained layers stay float32)",
                ),
            }
        ),
        "eval": Section(
            {
                "subgroups": F("list", [], item=F("str"), doc="record columns to report metrics by (e.g. race, Young)"),
                "n_misclassified": F("int", 16, min=0),
                "saliency": F("int", 8, min=0, doc="occlusion maps for this many misclassified test images"),
                "bootstrap": F("int", 1000, min=0),
                "min_group": F("int", 20, min=1, doc="subgroups with fewer test images are listed as too small and not ranked"),
                "unit": F("choice", "auto", choices=("auto", "person", "image"), doc="what intervals and paired tests resample: auto = persons where some person has several test images, else images"),
            }
        ),
    }
)


class CannotLearn(ParamError):
    """Valid values that together cannot learn (e.g. batch size 1 into a BatchNorm head).

    A search skips such a trial with this reason instead of failing (search.py)."""


def _cross_checks(p: dict) -> None:
    d, m, t = p["data"], p["model"], p["train"]
    if d["synthetic"] is not None:
        if d["dataset"] not in SYNTHETIC_LAYOUTS:
            raise ParamError("data.synthetic", f"synthetic data exists for {_fmt(SYNTHETIC_LAYOUTS)}, not {d['dataset']}")
        if d["root"] is not None:
            raise ParamError("data.root", "must be null when data.synthetic is set (the set is generated under results/_synthetic)")
    elif d["root"] is None:
        raise ParamError("data.root", "is required (a dataset folder), or set data.synthetic to generate a synthetic set")
    if d["dataset"] == "folder" and d["folder"] is None:
        raise ParamError("data.folder", "is required with dataset folder (csv, path_column and label columns)")
    if p["task"] not in ("gender",) and d["dataset"] not in TASK_DATASETS[p["task"]]:
        raise ParamError("task", f"{p['task']!r} needs labels that {d['dataset']} does not have; datasets with them: {_fmt(TASK_DATASETS[p['task']])}")
    if d["split"]["source"] == "dataset" and d["dataset"] != "celeba":
        raise ParamError("data.split.source", f"'dataset' (the dataset's own partition) exists for celeba only, not {d['dataset']}; allowed here: random, folds" if d["dataset"] == "adience" else f"'dataset' exists for celeba only; allowed for {d['dataset']}: random")
    if d["split"]["source"] == "folds" and d["dataset"] != "adience":
        raise ParamError("data.split.source", f"'folds' exists for adience only, not {d['dataset']}")
    if d["split"]["near_duplicates"] == "group" and d["split"]["source"] != "random":
        raise ParamError("data.split.near_duplicates", f"'group' needs data.split.source random: the {d['split']['source']} split's test side is fixed by the dataset; allowed here: count (they are counted and listed)")
    if m["strategy"] == "last_n" and m["last_n"] is None:
        raise ParamError("model.last_n", "is required with strategy last_n (an integer >= 1)")
    if m["strategy"] != "last_n" and m["last_n"] is not None:
        raise ParamError("model.last_n", f"is only used with strategy last_n (strategy is {m['strategy']})")
    if m["backbone"] in CUSTOM_BACKBONES and m["weights"] == "imagenet":
        raise ParamError("model.weights", f"no ImageNet weights exist for the custom CNN {m['backbone']!r}; allowed: none, a weights file, run:<run_id>")
    if m["weights"] == "none" and m["strategy"] != "full":
        raise ParamError("model.strategy", f"{m['strategy']!r} freezes random weights (model.weights is none); use full, or pretrained weights")
    if m["head"]["batch_norm"] and t["batch_size"] == 1:
        raise CannotLearn(
            "train.batch_size",
            "1 with model.head.batch_norm: true cannot learn (a batch of one has zero variance, so BatchNorm outputs its beta whatever the image); allowed: batch_size >= 2, or model.head.batch_norm: false",
        )
    for key in ("early_stopping", "reduce_lr"):
        sec = t[key]
        if sec is not None and sec["monitor"] not in ("val_loss", "loss") and not sec["monitor"].startswith("val_"):
            raise ParamError(f"train.{key}.monitor", f"{sec['monitor']!r} is not a logged metric; use val_loss or a val_<metric>")


def resolve_run(raw: Mapping | None) -> dict:
    """Validate ``raw`` against the schema and return the fully resolved params."""
    p = RUN_SCHEMA.validate("", raw or {})
    _cross_checks(p)
    return p


def image_size(resolved: Mapping) -> int:
    """The model input / image cache side for resolved params."""
    return resolved["data"]["image_size"] or DEFAULT_INPUT_SIZE[resolved["model"]["backbone"]]


# Params that do not change the trained model: not part of the run id (``eval.*`` changes
# re-evaluate the saved model; ``data.root`` is replaced by the data's fingerprint).
NOT_IN_RUN_ID = ("name", "eval", "data.root")
LABEL_SUFFIXES = (".txt", ".csv")  # label, partition, identity and fold files of every layout


def data_fingerprint(data: Mapping) -> str:
    """What identifies a data set, whatever folder it is in (resolved ``data`` params).

    Synthetic data is generated from its spec (layout, n, seed, size: the same spec gives the
    same bytes), so the spec stands in for it, also before it is generated. Real data: SHA-1
    of the bytes of its label files (``.txt``/``.csv`` anywhere under ``data.root``) and of the
    sorted list of every file's path relative to the root with its size; no image is read, so
    a moved or copied folder keeps its fingerprint. A root that does not exist (a dry run on
    a machine without the data) is identified by its path.
    """
    h = hashlib.sha1()
    if data["synthetic"] is not None:
        h.update(json.dumps({"synthetic": data["dataset"], **data["synthetic"]}, sort_keys=True).encode())
        return "synthetic:" + h.hexdigest()[:16]
    root = Path(data["root"])
    if not root.is_dir():
        return f"missing:{root}"
    files = sorted((path.relative_to(root).as_posix(), path) for path in root.rglob("*") if path.is_file())
    for relative, path in files:
        h.update(f"{relative}\0{path.stat().st_size}\n".encode())
        if path.suffix.lower() in LABEL_SUFFIXES:
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def precision_policy(mixed_precision: str) -> str:
    """The dtype policy ``train.mixed_precision`` resolves to on this machine (see runtime)."""
    from facetransfer import runtime

    return runtime.dtype_policy(mixed_precision)


def identity(resolved: Mapping, *, fingerprints: dict | None = None) -> dict:
    """What the run id hashes: the params that change training (not ``name``, ``eval.*``,
    ``data.root``, nor ``train.mixed_precision`` itself, nor ``train.cpu_threads`` when null), the data's fingerprint, the Keras backend and the resolved precision policy.

    ``fingerprints``: a memo ``{data.root: fingerprint}`` shared by the runs of one study.
    """
    import keras

    body = copy.deepcopy({k: v for k, v in resolved.items() if k not in NOT_IN_RUN_ID})
    body["data"].pop("root")
    body["train"].pop("mixed_precision")  # replaced by the policy it resolves to here
    if body["train"]["cpu_threads"] is None:
        body["train"].pop("cpu_threads")  # the default keeps the ids of runs that do not set it
    memo = {} if fingerprints is None else fingerprints
    data = resolved["data"]
    key = json.dumps([data["dataset"], data["synthetic"], data["root"]], sort_keys=True)
    if key not in memo:
        memo[key] = data_fingerprint(resolved["data"])
    return {
        "params": body,
        "data_fingerprint": memo[key],
        "backend": keras.backend.backend(),
        "precision": precision_policy(resolved["train"]["mixed_precision"]),
    }


def run_id(resolved: Mapping, *, fingerprints: dict | None = None) -> str:
    """Short stable hash of :func:`identity`: same id, same trained model (same machine kind)."""
    blob = json.dumps(identity(resolved, fingerprints=fingerprints), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """``set_dotted(p, "train.learning_rate", 1e-4)``; creates sections on the way."""
    parts = dotted.split(".")
    cur = d
    for part in parts[:-1]:
        if not isinstance(cur.get(part), dict):
            cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value


def get_dotted(d: Mapping, dotted: str, default: Any = KeyError) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            if default is KeyError:
                raise KeyError(dotted)
            return default
        cur = cur[part]
    return cur


def is_known_key(dotted: str) -> bool:
    """True when ``dotted`` names a field or section of the run schema."""
    spec: Field | Section = RUN_SCHEMA
    for part in dotted.split("."):
        if not isinstance(spec, Section) or part not in spec.fields:
            return False
        spec = spec.fields[part]
    return True


def known_keys(section: Section | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the run schema (sections and fields), e.g. ``train.epochs``."""
    keys = []
    for name, spec in (section or RUN_SCHEMA).fields.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.append(key)
        if isinstance(spec, Section):
            keys.extend(known_keys(spec, key))
    return keys


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """Recursive merge; ``over`` wins. Returns a new dict."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def flatten(d: Mapping, prefix: str = "") -> dict:
    """``{"train": {"epochs": 3}}`` → ``{"train.epochs": 3}`` (lists kept as values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


@dataclass
class _Row:
    key: str
    default: Any
    allowed: str
    doc: str = field(default="")


def describe(section: Section = RUN_SCHEMA, prefix: str = "") -> list[_Row]:
    """Every field of the schema as (dotted key, default, allowed values, doc)."""
    rows = []
    for name, spec in section.fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(spec, Section):
            if spec.optional:
                state = "on" if spec.enabled_by_default else "null (off)"
                rows.append(_Row(key, state, "a mapping or null", spec.doc))
            rows.extend(describe(spec, key))
        else:
            rows.append(_Row(key, spec.default, spec.allowed(), spec.doc))
    return rows


def format_reference() -> str:
    """The params reference as a Markdown table (``python -m facetransfer.params``)."""
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for row in describe():
        default = json.dumps(row.default) if not isinstance(row.default, str) else row.default
        lines.append(f"| `{row.key}` | `{default}` | {row.allowed} | {row.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_reference())
