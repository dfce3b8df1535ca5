"""Study files: expansion (groups × grid × repeats), names, ids, run:<name>, overrides, errors."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import yaml

from facetransfer import params as P
from facetransfer import study as S
from facetransfer.errors import FacetransferError, ParamError

BASE = {
    "study": "tiny",
    "title": "Tiny study",
    "stages": ["finetune", "compare"],
    "defaults": {
        "seed": 3,
        "task": "gender",
        "data": {"dataset": "celeba", "synthetic": {"n": 40, "seed": 0, "size": 64}, "image_size": 32},
        "model": {"backbone": "compact", "weights": "none", "strategy": "full"},
        "train": {"epochs": 1, "batch_size": 8},
    },
}


def write(tmp_path, body, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def load(tmp_path, body, overrides=(), **kw):
    return S.load_study(write(tmp_path, body), overrides, **kw)


def with_(body=None, **changes):
    out = copy.deepcopy(body or BASE)
    out.update(copy.deepcopy(changes))
    return out


def transfer_body():
    """A source group and a grid that starts from the source's weights."""
    body = with_(grid={"train.learning_rate": [0.001, 0.0001], "model.strategy": ["frozen", "last_block"]})
    body["defaults"]["model"]["weights"] = "run:source"
    body["runs"] = [
        {"name": "source", "set": {"task": "age", "data.dataset": "utkface", "model.weights": "none", "model.strategy": "full"}},
        {"name": "scratch", "set": {"model.weights": "none", "model.strategy": "full"}},
    ]
    return body


def test_grid_expands_to_a_main_group_with_names_and_stable_ids(tmp_path):
    body = with_(grid={"train.learning_rate": [0.001, 0.0001], "train.optimizer": ["adam", "sgd"]})
    study = load(tmp_path, body)
    assert [r.name for r in study.runs] == [
        "main lr=0.001 optimizer=adam",
        "main lr=0.001 optimizer=sgd",
        "main lr=0.0001 optimizer=adam",
        "main lr=0.0001 optimizer=sgd",
    ]
    assert all(r.group == "main" for r in study.runs)
    lr = [r.params["train"]["learning_rate"] for r in study.runs]
    assert lr == [0.001, 0.001, 0.0001, 0.0001]
    for run in study.runs:
        assert run.params == P.resolve_run(run.params)  # fully resolved and valid
        assert run.run_id == P.run_id(run.params)
        assert run.params["name"] == run.name
    assert len({r.run_id for r in study.runs}) == 4
    again = load(tmp_path, body)
    assert [r.run_id for r in again.runs] == [r.run_id for r in study.runs]


def test_no_runs_and_no_grid_is_one_main_run(tmp_path):
    study = load(tmp_path, BASE)
    assert [r.name for r in study.runs] == ["main"]
    assert study.stages == ["finetune", "compare"]
    assert study.title == "Tiny study"


def test_groups_times_their_grid_times_repeats(tmp_path):
    body = with_(repeats=2)
    body["runs"] = [
        {"name": "a", "set": {"train.epochs": 2}, "grid": {"train.batch_size": [4, 8, 16]}},
        {"name": "b"},
    ]
    study = load(tmp_path, body)
    assert len(study.runs) == (3 + 1) * 2
    names = [r.name for r in study.runs]
    assert names[:2] == ["a batch=4 seed=3", "a batch=4 seed=4"]
    assert names[-2:] == ["b seed=3", "b seed=4"]
    assert [r.params["seed"] for r in study.runs[:2]] == [3, 4]
    assert all(r.params["train"]["epochs"] == 2 for r in study.runs if r.group == "a")
    assert all(r.params["train"]["epochs"] == 1 for r in study.runs if r.group == "b")
    assert "main" not in {r.group for r in study.runs}  # runs given and no top-level grid
    assert len({r.run_id for r in study.runs}) == 8


def test_repeats_vary_the_training_seed_not_the_split(tmp_path):
    """Repeats measure training variance on ONE test set; a grid over data.split.seed varies the split on purpose."""
    study = load(tmp_path, with_(repeats=3))
    assert [r.params["seed"] for r in study.runs] == [3, 4, 5]
    assert {r.params["data"]["split"]["seed"] for r in study.runs} == {0}
    body = with_(repeats=2, grid={"data.split.seed": [0, 1]})
    body["defaults"]["data"]["split"] = {"seed": 0}
    varied = load(tmp_path, body)
    assert [(r.params["data"]["split"]["seed"], r.params["seed"]) for r in varied.runs] == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert varied.runs[0].name == "main split_seed=0 seed=3"


def test_top_level_grid_and_groups_together(tmp_path):
    study = load(tmp_path, transfer_body())
    assert [r.group for r in study.runs] == ["main"] * 4 + ["source", "scratch"]


def test_group_set_replaces_a_whole_section_and_dotted_keys_set_one_value(tmp_path):
    body = with_()
    body["defaults"]["model"]["head"] = {"dense": [32, 16], "batch_norm": True}
    body["runs"] = [{"name": "h", "set": {"model.head": {"dropout": 0.5}}}, {"name": "d", "set": {"model.head.dropout": 0.5}}]
    h, d = load(tmp_path, body).runs
    assert h.params["model"]["head"]["batch_norm"] is False  # the section was replaced
    assert h.params["model"]["head"]["dense"] == P.RUN_SCHEMA.fields["model"].fields["head"].fields["dense"].default
    assert d.params["model"]["head"]["batch_norm"] is True
    assert d.params["model"]["head"]["dense"] == [32, 16]


def test_weights_run_name_becomes_that_runs_id_and_orders_execution(tmp_path):
    study = load(tmp_path, transfer_body())
    source = next(r for r in study.runs if r.name == "source")
    for run in study.runs:
        if run.group == "main":
            assert run.params["model"]["weights"] == f"run:{source.run_id}"
            assert run.depends_on == [source.run_id]
            assert run.run_id == P.run_id(run.params)
    assert source.params["model"]["weights"] == "none"
    order = S.execution_order(study)
    assert order[0] == source.run_id
    assert sorted(order) == sorted(r.run_id for r in study.runs)


def test_a_changed_source_changes_the_dependent_ids(tmp_path):
    first = load(tmp_path, transfer_body())
    body = transfer_body()
    body["runs"][0]["set"]["train.epochs"] = 5
    second = load(tmp_path, body)
    assert first.runs[0].run_id != second.runs[0].run_id
    assert first.runs[-1].run_id == second.runs[-1].run_id  # scratch does not depend on source


def test_weights_reference_pairs_repeats(tmp_path):
    body = transfer_body()
    body["repeats"] = 2
    study = load(tmp_path, body)
    sources = {r.repeat: r for r in study.runs if r.group == "source"}
    for run in study.runs:
        if run.group == "main":
            assert run.depends_on == [sources[run.repeat].run_id]


def test_bare_run_id_is_kept(tmp_path):
    body = with_()
    body["defaults"]["model"].update({"weights": "run:0123456789ab", "strategy": "frozen"})
    (run,) = load(tmp_path, body).runs
    assert run.params["model"]["weights"] == "run:0123456789ab"
    assert run.depends_on == []


def one_line_error(exc_info, *needles):
    message = str(exc_info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_weights_cycle_and_unknown_name_are_errors(tmp_path):
    body = with_()
    body["defaults"]["model"]["strategy"] = "frozen"
    body["runs"] = [
        {"name": "a", "set": {"model.weights": "run:b"}},
        {"name": "b", "set": {"model.weights": "run:a"}},
    ]
    with pytest.raises(ParamError) as exc:
        load(tmp_path, body)
    one_line_error(exc, "runs[", ".set.model.weights", "cycle", "a -> b -> a")
    body["runs"] = [{"name": "a", "set": {"model.weights": "run:nobody"}}]
    with pytest.raises(ParamError) as exc:
        load(tmp_path, body)
    one_line_error(exc, "runs[0].set.model.weights", "run:nobody names no run")


def test_ambiguous_group_reference_is_an_error(tmp_path):
    body = transfer_body()
    body["runs"][0]["grid"] = {"train.epochs": [1, 2]}
    with pytest.raises(ParamError) as exc:
        load(tmp_path, body)
    one_line_error(exc, "defaults.model.weights", "ambiguous", "source epochs=1")


def test_set_overrides_apply_after_group_values(tmp_path):
    body = with_()
    body["runs"] = [{"name": "a", "set": {"train.epochs": 4}}, {"name": "b", "set": {"train.batch_size": 4}}]
    study = load(tmp_path, body, ["train.epochs=7", "train.learning_rate=1e-4"])
    assert [r.params["train"]["epochs"] for r in study.runs] == [7, 7]
    assert all(r.params["train"]["learning_rate"] == 0.0001 for r in study.runs)
    study = load(tmp_path, body, ["defaults.train.epochs=7"])
    assert [r.params["train"]["epochs"] for r in study.runs] == [4, 7]


def test_study_level_overrides(tmp_path):
    study = load(tmp_path, BASE, ["repeats=3", "study.stages=[finetune]", "title=Other"])
    assert len(study.runs) == 3
    assert study.stages == ["finetune"]
    assert study.title == "Other"
    assert study.overrides == ["repeats=3", "study.stages=[finetune]", "title=Other"]


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    (tmp_path / "data" / "faces").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    body = with_()
    body["defaults"]["data"] = {"dataset": "utkface", "root": "data/faces"}
    (run,) = load(tmp_path, body).runs
    assert run.params["data"]["root"] == str(tmp_path / "data" / "faces")


def test_explore_and_search_get_the_resolved_defaults(tmp_path):
    body = transfer_body()
    body["stages"] = ["explore", "search", "finetune"]
    body["search"] = {"metric": "val.accuracy", "sequential": [{"key": "train.batch_size", "values": [4, 8]}]}
    body["runs"].append({"name": "tuned", "use_search": True})
    study = load(tmp_path, body)
    source = next(r for r in study.runs if r.name == "source")
    assert study.base_params["model"]["weights"] == f"run:{source.run_id}"
    assert study.base_depends_on == [source.run_id]
    assert study.base_params["data"]["synthetic"]["n"] == 40
    tuned = study.runs[-1]
    assert tuned.pending and tuned.run_id is None
    assert S.execution_order(study) == [source.run_id] + [r.run_id for r in study.runs if r.group in ("main", "scratch")]
    # the search's values for the keys it tuned; its fixed trial budget (set) is not applied
    study.apply_search({"train.batch_size": 4, "train.epochs": 2})
    tuned = study.runs[-1]
    assert not tuned.pending
    assert tuned.params["train"]["batch_size"] == 4
    assert tuned.params["train"]["epochs"] == 1
    assert tuned.run_id == P.run_id(tuned.params)


def test_reported_matching(tmp_path):
    body = transfer_body()
    body["reported"] = [{"match": {"name": "scratch"}, "metrics": {"test.accuracy": 0.9}, "source": "paper"}]
    study = load(tmp_path, body)
    hits = [r.name for r in study.runs if S.matches(r.params, study.reported[0]["match"])]
    assert hits == ["scratch"]
    match = {"train.learning_rate": 0.0001, "model.strategy": "frozen"}
    assert [r.name for r in study.runs if S.matches(r.params, match)] == ["main lr=0.0001 strategy=frozen"]


def test_check_model_params_is_called_for_every_run(tmp_path, monkeypatch):
    models = importlib.import_module("facetransfer.models")
    seen = []

    def check(cfg):
        seen.append(cfg["name"])
        if cfg["train"]["batch_size"] == 16:
            raise ParamError("train.batch_size", "too large for this backbone")

    monkeypatch.setattr(models, "check_model_params", check, raising=False)
    body = with_(grid={"train.batch_size": [4, 16]})
    with pytest.raises(ParamError) as exc:
        load(tmp_path, body)
    one_line_error(exc, "grid.train.batch_size", "too large", "main batch=16")
    assert seen == ["main batch=4", "main batch=16"]


def bad(body_changes=None, mutate=None):
    body = copy.deepcopy(BASE)
    body.update(copy.deepcopy(body_changes or {}))
    if mutate:
        mutate(body)
    return body


BAD_STUDIES = [
    ("unknown top-level key", bad({"grdi": {}}), "study.grdi"),
    ("grid over an unknown param", bad({"grid": {"train.learnin_rate": [0.1]}}), "grid.train.learnin_rate"),
    ("grid values not a list", bad({"grid": {"train.epochs": 3}}), "grid.train.epochs"),
    ("grid value not allowed", bad({"grid": {"model.backbone": ["vgg19"]}}), "grid.model.backbone"),
    ("unknown stage", bad({"stages": ["explore", "train"]}), "study.stages"),
    ("stages not a list", bad({"stages": "finetune"}), "study.stages"),
    ("repeats zero", bad({"repeats": 0}), "study.repeats"),
    ("repeats not int", bad({"repeats": "two"}), "study.repeats"),
    ("defaults not a mapping", bad({"defaults": [1, 2]}), "study.defaults"),
    ("defaults bad value", bad(mutate=lambda b: b["defaults"]["train"].update(learning_rate=-1)), "defaults.train.learning_rate"),
    ("defaults unknown key", bad(mutate=lambda b: b["defaults"]["train"].update(epoch=2)), "defaults.train.epoch"),
    ("defaults name", bad(mutate=lambda b: b["defaults"].update(name="x")), "defaults.name"),
    ("group unknown key", bad({"runs": [{"name": "a", "sett": {}}]}), "runs[0].sett"),
    ("group unknown param", bad({"runs": [{"name": "a", "set": {"model.backbon": "vgg16"}}]}), "runs[0].set.model.backbon"),
    ("group bad value", bad({"runs": [{"name": "a", "set": {"train.epochs": 0}}]}), "runs[0].set.train.epochs"),
    ("group without name", bad({"runs": [{"set": {}}]}), "runs[0].name"),
    ("groups with one name", bad({"runs": [{"name": "a"}, {"name": "a", "set": {"seed": 1}}]}), "runs[1].name"),
    ("group grid unknown", bad({"runs": [{"name": "a", "grid": {"x.y": [1]}}]}), "runs[0].grid.x.y"),
    ("runs not a list", bad({"runs": {"name": "a"}}), "study.runs"),
    ("identical runs", bad({"runs": [{"name": "a"}, {"name": "b"}]}), "study.runs"),
    ("search stage without search", bad({"stages": ["search", "finetune"]}), "study.search"),
    ("use_search without the stage", bad({"runs": [{"name": "t", "use_search": True}]}), "runs[0].use_search"),
    ("search not a mapping", bad({"search": [1]}), "study.search"),
    ("search spec unknown key", bad({"stages": ["search"], "search": {"sequentail": []}}), "search.sequentail"),
    ("reported unknown match key", bad({"reported": [{"match": {"foo": 1}, "metrics": {"test.accuracy": 0.9}}]}), "reported[0].match.foo"),
    ("reported metric not a number", bad({"reported": [{"match": {}, "metrics": {"test.accuracy": "high"}}]}), "reported[0].metrics.test.accuracy"),
    ("missing dataset root", bad(mutate=lambda b: b["defaults"].update(data={"dataset": "utkface", "root": "/no/such/faces"})), "defaults.data.root"),
    ("missing weights file", bad(mutate=lambda b: b["defaults"]["model"].update(weights="/no/such.h5", strategy="frozen")), "defaults.model.weights"),
    ("bad study name", bad({"study": "my study"}), "study.study"),
]


@pytest.mark.parametrize("what,body,key", BAD_STUDIES, ids=[b[0] for b in BAD_STUDIES])
def test_bad_study_is_one_line_naming_the_key(tmp_path, what, body, key):
    with pytest.raises(FacetransferError) as exc:
        load(tmp_path, body)
    one_line_error(exc, key)


@pytest.mark.parametrize(
    "override,key",
    [("train.learnin_rate=0.1", "--set train.learnin_rate"), ("train.epochs=0", "--set train.epochs"), ("repeats=-1", "study.repeats"), ("defaults.foo=1", "--set defaults.foo"), ("noequals", "--set 'noequals'")],
)
def test_bad_override_is_one_line_naming_the_key(tmp_path, override, key):
    with pytest.raises(FacetransferError) as exc:
        load(tmp_path, BASE, [override])
    one_line_error(exc, key)


def test_missing_root_is_not_checked_when_asked_not_to(tmp_path):
    body = bad(mutate=lambda b: b["defaults"].update(data={"dataset": "utkface", "root": "/no/such/faces"}))
    (run,) = load(tmp_path, body, check_paths=False).runs
    assert run.params["data"]["root"] == "/no/such/faces"


def test_yaml_problems_name_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("study: x\ngrid: [1, 2\n")
    with pytest.raises(FacetransferError) as exc:
        S.load_study(path)
    one_line_error(exc, "broken.yaml", "line", "not valid YAML")
    path.write_text("study: x\nrepeats: 1\nrepeats: 2\n")
    with pytest.raises(FacetransferError) as exc:
        S.load_study(path)
    one_line_error(exc, "duplicate key 'repeats'", "line 3")
    with pytest.raises(FacetransferError) as exc:
        S.load_study(tmp_path / "absent.yaml")
    one_line_error(exc, "absent.yaml", "not found")


def test_study_name_defaults_to_the_file_name(tmp_path):
    body = {k: v for k, v in BASE.items() if k != "study"}
    study = S.load_study(write(tmp_path, body, name="my_study.yaml"))
    assert study.name == "my_study"
    assert study.sha1 and study.path.name == "my_study.yaml"


SHIPPED = sorted((Path(__file__).parents[1] / "params").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_studies_expand(path):
    study = S.load_study(path, check_paths=False)
    assert study.name == path.stem
    ids = [r.run_id for r in study.runs if not r.pending]
    assert study.runs and len(ids) == len(set(ids))
    for run in study.runs:
        assert run.params["name"] == run.name


TYPOS = [
    ("--set", None, ["train.epoch=3"], "did you mean train.epochs?"),
    ("--set, section missing", None, ["epochs=3"], "did you mean train.epochs?"),
    ("--set defaults", None, ["defaults.train.epoch=3"], "did you mean train.epochs?"),
    ("YAML defaults", bad(mutate=lambda b: b["defaults"]["train"].update(epoch=2)), [], "did you mean train.epochs?"),
    ("YAML grid", bad({"grid": {"train.learnin_rate": [0.1]}}), [], "did you mean train.learning_rate?"),
    ("group key", bad({"runs": [{"name": "a", "sett": {}}]}), [], "did you mean set?"),
    ("group param", bad({"runs": [{"name": "a", "set": {"model.backbon": "vgg16"}}]}), [], "did you mean model.backbone?"),
    ("study key", bad({"repeat": 2}), [], "did you mean repeats?"),
    ("search key", bad({"stages": ["search"], "search": {"sequentail": []}}), [], "did you mean sequential?"),
]


@pytest.mark.parametrize("what,body,overrides,hint", TYPOS, ids=[t[0] for t in TYPOS])
def test_unknown_keys_suggest_the_closest_allowed_key(tmp_path, what, body, overrides, hint):
    with pytest.raises(FacetransferError) as exc:
        load(tmp_path, body or BASE, overrides)
    one_line_error(exc, hint)
