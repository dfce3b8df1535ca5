"""Study-file fuzzing: random mutations of a VALID study file (wrong types, unknown keys,
out-of-range numbers, missing sections, junk in grid / runs / set / search / reported, junk
``--set`` overrides, junk bytes) always end in a one-line FacetransferError naming where the
problem is, never in another exception, and never start work.

``facetransfer.study.load_study`` is called directly (the CLI's first step); a handful of
bad files also go through ``facetransfer run`` (in this process, and once as a subprocess).
The run-params level is fuzzed in tests/test_params_fuzz.py.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facetransfer import cli
from facetransfer import study as S
from facetransfer.errors import FacetransferError, ParamError

ROOT = Path(__file__).resolve().parents[1]

VALID = {
    "study": "fuzz",
    "title": "Fuzz",
    "description": "valid before mutation",
    "stages": ["explore", "search", "finetune", "compare"],
    "defaults": {
        "seed": 0,
        "task": "gender",
        "data": {"dataset": "celeba", "synthetic": {"n": 48, "seed": 0, "size": 64}, "image_size": 32, "split": {"fractions": [0.8, 0.1, 0.1]}},
        "model": {"backbone": "compact", "weights": "run:source", "strategy": "frozen", "head": {"dense": [8], "dropout": 0.1}},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 0.001, "early_stopping": {"patience": 1}},
        "eval": {"saliency": 0, "bootstrap": 50},
    },
    "grid": {"train.learning_rate": [0.001, 0.002], "model.strategy": ["frozen", "last_block"]},
    "runs": [
        {"name": "source", "set": {"model.weights": "none", "model.strategy": "full", "train.epochs": 2}},
        {"name": "scratch", "set": {"model.weights": "none", "model.strategy": "full"}, "grid": {"train.batch_size": [8, 16]}},
        {"name": "tuned", "use_search": True},
    ],
    "repeats": 1,
    "search": {
        "metric": "val.accuracy",
        "set": {"train.epochs": 1},
        "sequential": [{"key": "train.batch_size", "values": [8, 16]}],
        "optuna": {"n_trials": 2, "sampler": "tpe", "space": {"train.learning_rate": {"low": 0.0001, "high": 0.01, "log": True}}},
    },
    "reported": [{"match": {"train.learning_rate": 0.001}, "metrics": {"test.accuracy": 0.9}, "source": "a paper"}],
}

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10**9, max_value=10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["run:", "run:nobody", "imagenet", "/no/such/weights.keras", "last_n", "vgg16", "age", "adience", "1e-3", "~", "."]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=4), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=6), st.one_of(st.integers(-3, 3), st.text(max_size=4)), max_size=2),
)
# Where an error may say the problem is (see facetransfer.study's docstring).
LOCATION = re.compile(r"^params: (study\.|defaults\.|grid[.:]|runs[\[:]|search[.:\[]|reported[\[:]|--set )")


def paths(node, prefix=()):
    """Every key / index path in ``node`` (a study dict), parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from paths(value, prefix + (key,))


ALL_PATHS = list(paths(VALID))
def _get(node, path):
    for key in path:
        node = node[key]
    return node


MAPPINGS = [()] + [p for p in ALL_PATHS if isinstance(_get(VALID, p), dict)]


def where(path) -> str:
    """A path as the study's error messages spell it: runs[1].set.model.weights, study.repeats."""
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        else:
            out += f".{key}" if out else str(key)
    top = path[0] if path else ""
    if top in ("study", "title", "description", "stages", "repeats") or not path:
        return f"study.{out}" if out else "study"
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def load(folder: Path, body, overrides=(), *, raw: bytes | None = None):
    """load_study on ``body``: None when valid, else the one-line FacetransferError."""
    path = folder / "study.yaml"
    path.write_bytes(raw if raw is not None else yaml.safe_dump(body, allow_unicode=True, sort_keys=False).encode())
    try:
        S.load_study(path, list(overrides))
    except FacetransferError as exc:
        message = str(exc)
        assert message and "\n" not in message, message
        if isinstance(exc, ParamError):
            assert LOCATION.match(message) or message.startswith(f"params: {path}"), message
        else:
            assert str(path) in message or "--set" in message, message
        return exc
    return None


def test_the_base_study_is_valid(folder):
    assert load(folder, VALID) is None
    study = S.load_study(folder / "study.yaml")
    assert [r.name for r in study.runs][:2] == ["main lr=0.001 strategy=frozen", "main lr=0.001 strategy=last_block"]
    assert any(r.pending for r in study.runs)  # tuned waits for the search


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(path=st.sampled_from(ALL_PATHS), value=JUNK)
def test_junk_anywhere_is_a_one_line_error(folder, path, value):
    body = copy.deepcopy(VALID)
    _get(body, path[:-1])[path[-1]] = value
    exc = load(folder, body)
    if isinstance(exc, ParamError):
        assert names(exc, where(path)), f"{where(path)} = {value!r}: {exc}"


def names(exc: ParamError, location: str) -> bool:
    """The error points at ``location``: the same key, a key inside it or around it, or (for
    errors between runs: a weights cycle, two identical runs) the runs it concerns."""
    key = exc.key
    related = key.startswith(location) or location.startswith(key) or location.rsplit(".", 1)[-1] in str(exc)
    return related or "weights form a cycle" in str(exc) or "have identical params" in str(exc)


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: where(p))
def test_a_missing_piece_is_a_one_line_error_or_a_default(folder, path):
    body = copy.deepcopy(VALID)
    del _get(body, path[:-1])[path[-1]]
    exc = load(folder, body)
    if isinstance(exc, ParamError) and not isinstance(path[-1], int):
        assert names(exc, where(path)), f"without {where(path)}: {exc}"


@FUZZ
@given(path=st.sampled_from(MAPPINGS), name=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Z")), min_size=1, max_size=10).filter(lambda s: "." not in s))
def test_an_unknown_key_is_named(folder, path, name):
    body = copy.deepcopy(VALID)
    mapping = _get(body, path)
    if name in mapping or path[-1:] == ("metrics",):  # reported metrics: any name of a figure
        return
    mapping[name] = 1
    exc = load(folder, body)
    location = f"{where(path)}.{name}" if path else f"study.{name}"
    if path and path[0] == "defaults" and len(path) == 1 and S.P.is_known_key(name):
        return  # a real run param, set to 1: maybe valid
    assert exc is not None, f"unknown key {location!r} was accepted"
    parent = where(path) if path else "study"
    assert f"params: {location}:" in str(exc) or (f"params: {parent}:" in str(exc) and "allowed" in str(exc)), str(exc)


OVERRIDE_KEYS = st.one_of(
    st.sampled_from(["train.epochs", "train.learning_rate", "model.strategy", "data.image_size", "seed", "repeats", "stages", "title", "description",
                     "study.repeats", "defaults.train.epochs", "defaults.model.weights", "search.metric", "search.sequential", "name", "defaults.name", "grid", "runs"]),
    st.text(max_size=12),
)


@FUZZ
@given(overrides=st.lists(st.tuples(OVERRIDE_KEYS, JUNK), min_size=1, max_size=3))
def test_junk_set_overrides_are_one_line_errors(folder, overrides):
    texts = [f"{key}={yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix('...').strip()}" for key, value in overrides]
    load(folder, VALID, texts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
def test_junk_bytes_are_one_line_errors(folder, raw):
    load(folder, None, raw=raw)


def test_junk_appended_to_a_valid_file_is_a_one_line_error(folder):
    text = yaml.safe_dump(VALID, sort_keys=False).encode()
    for tail in (b"\n  bad indent: [1\n", b"\ndefaults: {}\n", b"\xff\xfe\x00", b"\n:\n", b"\n- a list item\n"):
        assert load(folder, None, raw=text + tail) is not None


@pytest.mark.parametrize(("change", "key"), [({"repeats": 10**9}, "study.repeats"), ({"repeats": 126}, "study.repeats"),
                                             ({"grid": {"train.batch_size": list(range(1, 1001))}}, "study.runs")])
def test_a_huge_study_is_refused_at_once(folder, change, key):
    """Out-of-range sizes: refused before expanding (10**9 repeats would never finish)."""
    exc = load(folder, {**VALID, **change})
    assert exc is not None and str(exc).startswith(f"params: {key}: the study expands to ") and f"at most {S.MAX_RUNS}" in str(exc)
    assert load(folder, {**VALID, "repeats": 125}) is None  # 8 runs x 125 = 1000: allowed


# --------------------------------------------------------------------------- the CLI

BAD = {
    "wrong type": (("defaults", "train", "epochs"), "three", "defaults.train.epochs"),
    "unknown key": (("defaults", "model", "head", "neurons"), [8], "defaults.model.head.neurons"),
    "out of range": (("runs", 1, "set", "train.learning_rate"), -1.0, "runs[1].set.train.learning_rate"),
    "missing section": (("defaults", "data"), None, "defaults.data"),
    "junk in grid": (("grid", "train.learning_rate"), "0.001", "grid.train.learning_rate"),
    "junk in runs": (("runs", 0, "name"), ["source"], "runs[0].name"),
    "junk in set": (("runs", 1, "set", "model.strategy"), "frozn", "runs[1].set.model.strategy"),
    "bad repeats": (("repeats",), 0, "study.repeats"),
}


def _bad_study(folder: Path, case: str) -> Path:
    path, value, _ = BAD[case]
    body = copy.deepcopy(VALID)
    if value is None:
        del _get(body, path[:-1])[path[-1]]
    else:
        _get(body, path[:-1])[path[-1]] = value
    out = folder / f"{case.replace(' ', '_')}.yaml"
    out.write_text(yaml.safe_dump(body, sort_keys=False))
    return out


@pytest.mark.parametrize("case", list(BAD))
def test_cli_says_one_line_and_starts_nothing(tmp_path, capsys, case):
    path = _bad_study(tmp_path, case)
    results = tmp_path / "results"
    for extra in (["--dry-run"], []):
        assert cli.main(["run", str(path), "--results", str(results), *extra]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, err
        assert err.startswith("facetransfer: error: params: ") and BAD[case][2] in err, err
        assert not results.exists()


def test_console_script_prints_one_stderr_line(tmp_path):
    path = _bad_study(tmp_path, "junk in grid")
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "facetransfer"), "run", str(path), "--dry-run", "--results", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and "grid.train.learning_rate" in done.stderr
    assert not (tmp_path / "r").exists()
