"""The published studies (params/*.yaml) as shipped: each one dry-runs to the expected runs
and cites its reported figures, and every distinct run of every study runs end to end on tiny
SYNTHETIC stand-in data in its own dataset layout, changed only through ``--set`` (the YAML
files are never edited); then mean ± std over repeats and over the five Adience folds.

What is not trained here, and why (the dry runs still resolve and check every run): the six
learning-rate trials of celeba30k_lr_trials, which are celeba30k_vgg16's four runs at other
learning rates; and ResNet50V2 in adience_celeba_transfer and adience_tuning, which run on the
compact CNN (``--set model.backbone=compact``): what those studies add is their wiring (a
CelebA run's weights into Adience runs; the search's choice into the tuned run), while
ResNet50V2 itself trains in adience_architectures. A ResNet50V2 run costs about 35 s of CPU
even on 100 images, and ``make test`` must stay within 15 minutes on 2 cores.

Runs execute in this process through the library calls 03_finetune makes
(``_studyutil.run_in_process``): a notebook execution costs a kernel start and a Keras
import, and the real notebooks are run end to end by tests/test_e2e.py.

Stand-ins (built once per module): synthetic faces in the CelebA layout (read as CelebA, and
as a CelebA30k copy: one CSV with a ``Male`` column beside the image folder), in the UTKFace
layout, and an Adience layout assembled from the UTKFace faces. ImageNet weights cannot be
downloaded here, so ``model.weights`` points at local files of randomly initialised
backbones. Every run: 1 epoch at 32 px (75 px where InceptionV3 runs).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from _studyutil import PARAMS, adience_from_utkface, build_weights, run_in_process, synth
from facetransfer import cli, compare
from facetransfer import study as S

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

STUDIES = {  # file: (runs, runs waiting for the search)
    "celeba30k_vgg16": (4, 0),
    "celeba30k_lr_trials": (8, 0),
    "adience_architectures": (3, 0),
    "adience_tuning": (0, 1),
    "adience_celeba_transfer": (3, 0),
    "utkface_age_gender": (2, 0),
    "demo": (10, 1),
}
TINY = ["train.epochs=1", "data.image_size=32"]


def header_numbers(path) -> set[float]:
    """Every number in the comment block at the top of a study file."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return {float(x) for x in re.findall(r"(?<![\w.])\d+\.\d+(?!\d)", "\n".join(lines))}


def dry_run(path, capsys, *, results) -> list[dict]:
    """``facetransfer run <path> --dry-run``: exit status 0 and one JSON object per line."""
    assert cli.main(["run", str(path), "--dry-run", "--results", str(results)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("name", list(STUDIES))
def test_dry_run_lists_the_runs_and_the_reported_figures_match_runs(name, tmp_path, capsys):
    path = PARAMS / f"{name}.yaml"
    lines = dry_run(path, capsys, results=tmp_path)
    for line in lines:
        assert {"run_id", "notebook", "params"} <= set(line)
    runs = [line for line in lines if line["notebook"] == "03_finetune.ipynb"]
    pending = [r for r in runs if r.get("pending")]
    assert (len(runs) - len(pending), len(pending)) == STUDIES[name]
    assert all(re.fullmatch(r"[0-9a-f]{12}", r["run_id"]) for r in runs if not r.get("pending"))
    stages = [line["stage"] for line in lines if "stage" in line]
    declared = yaml.safe_load(path.read_text(encoding="utf-8"))["stages"]
    assert stages == [s for s in declared if s != "finetune"]
    reported = S.load_study(path, check_paths=False).reported
    figures = header_numbers(path)
    for item in reported:
        assert any(S.matches(r["params"], item["match"]) for r in runs), item
        for metric, value in item["metrics"].items():
            assert float(value) in figures, f"{name}: {metric} {value} is not cited in the header comment"
    if name != "demo":
        assert reported or name == "adience_tuning"


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """Stand-in data sets and local weights; ``data/celeba`` is where the transfer study's
    CelebA source run looks (its own relative ``data.root``, against the current folder)."""
    root = tmp_path_factory.mktemp("stand_in")
    celeba = synth("celeba", root / "data" / "celeba", n=120)
    utk = synth("utkface", root / "data" / "UTKFace", n=90)
    adience = adience_from_utkface(utk, root / "data" / "adience")
    return {"root": root, "celeba": celeba, "utkface": utk, "adience": adience, "weights": build_weights(root / "weights")}


def all_ok(runs: list[dict]) -> dict[str, dict]:
    """The runs by name; every one ended ok, on the synthetic stand-in of its own dataset."""
    assert runs
    for run in runs:
        metrics = run["metrics"]
        assert metrics is not None and metrics["status"] == "ok", (run["name"], metrics and metrics.get("error"))
        assert metrics["run_id"] == run["run_id"] and metrics["params"] == run["params"]
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["timing"]["epochs"] == 1
        assert metrics["data"]["synthetic"] is True
        assert metrics["data"]["dataset"] == run["params"]["data"]["dataset"]
    return {run["name"]: run for run in runs}


@pytest.mark.slow
def test_utkface_age_gender_with_repeats_mean_and_std_over_seeds(stand_in, tmp_path):
    # compact (weights none) and vgg16 (imagenet) share one model.weights here: a .keras
    # bundle of both backbones.
    sets = TINY + [f"data.root={stand_in['utkface']}", f"model.weights={stand_in['weights']['compact+vgg16']}", "repeats=2"]
    runs = all_ok(run_in_process(PARAMS / "utkface_age_gender.yaml", sets, tmp_path))
    assert sorted(runs) == ["compact seed=0", "compact seed=1", "vgg16 seed=0", "vgg16 seed=1"]
    for r in runs.values():
        test = r["metrics"]["test"]
        assert test["mae"] >= 0 and set(test["outputs"]) == {"gender", "age"}
        assert r["params"]["data"]["limit"] == 5000 and r["params"]["train"]["augment"]["flip"] is True
    assert runs["compact seed=1"]["metrics"]["test"] != runs["compact seed=0"]["metrics"]["test"]
    # 04_compare's "Repeats and folds" table
    table = compare.aggregate(compare.load_runs(tmp_path / "utkface_age_gender"), over="seed")
    assert sorted(table["n"]) == [2, 2] and table["seed"].tolist() == [[0, 1], [0, 1]]
    assert table["config"].str.contains("compact").sum() == 1
    for _, row in table.iterrows():
        backbone = "compact" if "compact" in row["config"] else "vgg16"
        accuracies = [runs[f"{backbone} seed={k}"]["metrics"]["test"]["accuracy"] for k in (0, 1)]
        assert row["Accuracy mean"] == pytest.approx(np.mean(accuracies)) and row["Accuracy std"] == pytest.approx(np.std(accuracies, ddof=1))
        assert row["MAE mean"] >= 0 and re.fullmatch(r"\d\.\d{3} ± \d\.\d{3} \(n=2\)", row["Accuracy"])


@pytest.mark.slow
def test_celeba30k_studies_run(stand_in, tmp_path):
    # The CelebA-layout stand-in is also a CelebA30k copy: one CSV with a Male column
    # beside the image folder.
    sets = TINY + [f"data.root={stand_in['celeba']}", f"model.weights={stand_in['weights']['vgg16']}"]
    runs = all_ok(run_in_process(PARAMS / "celeba30k_vgg16.yaml", sets, tmp_path))
    assert {r["params"]["data"]["dataset"] for r in runs.values()} == {"celeba30k"}
    grid = {(r["params"]["model"]["strategy"], r["params"]["train"]["learning_rate"]) for r in runs.values()}
    assert grid == {("frozen", 0.001), ("frozen", 0.0001), ("last_block", 0.001), ("last_block", 0.0001)}
    assert all(r["metrics"]["params"]["eval"]["subgroups"] == ["Young", "Eyeglasses", "Heavy_Makeup"] for r in runs.values())
    listed = run_in_process(PARAMS / "celeba30k_lr_trials.yaml", sets, tmp_path, only={"final_frozen", "final_finetuned"})
    assert len(listed) == 8 and sum(run["metrics"] is None for run in listed) == 6  # the trials: vgg16's runs at other rates
    finals = all_ok([run for run in listed if run["metrics"] is not None])
    assert sorted(finals) == ["final_finetuned", "final_frozen"]
    assert finals["final_finetuned"]["params"]["train"]["reduce_lr"]["factor"] == 0.2
    assert all(run["params"]["model"]["head"]["batch_norm"] is True for run in finals.values())


@pytest.mark.slow
def test_adience_architectures_runs(stand_in, tmp_path):
    # One model.weights for InceptionV3 and ResNet50V2 (the study cannot set it per group):
    # a .keras bundle of both; `defaults.` keeps hassner's own weights: none.
    sets = ["train.epochs=1", "data.image_size=75", f"data.root={stand_in['adience']}", f"defaults.model.weights={stand_in['weights']['inceptionv3+resnet50v2']}"]
    runs = all_ok(run_in_process(PARAMS / "adience_architectures.yaml", sets, tmp_path))
    assert set(runs) == {"hassner", "inceptionv3", "resnet50v2"}
    assert runs["hassner"]["params"]["model"]["weights"] == "none"
    assert runs["inceptionv3"]["params"]["model"]["weights"].endswith("inceptionv3_resnet50v2.keras")
    assert runs["hassner"]["metrics"]["data"]["quarantine_by_reason"] == {"no gender label": 1}  # the row with gender u


@pytest.mark.slow
def test_adience_celeba_transfer_runs(stand_in, tmp_path, monkeypatch):
    # The CelebA source run keeps its own data.root (data/celeba, relative to the current
    # folder); `defaults.` points the Adience runs at the Adience stand-in.
    monkeypatch.chdir(stand_in["root"])
    compact = stand_in["weights"]["compact+vgg16"]  # the compact CNN for ResNet50V2 (module docstring)
    sets = TINY + ["model.backbone=compact", f"defaults.data.root={stand_in['adience']}", f"defaults.model.weights={compact}"]
    runs = all_ok(run_in_process(PARAMS / "adience_celeba_transfer.yaml", sets, tmp_path))
    source = runs["celeba_gender"]
    assert source["params"]["data"]["dataset"] == "celeba" and source["params"]["data"]["root"] == str(stand_in["celeba"])
    assert source["metrics"]["data"]["split"]["source"] == "dataset"
    assert runs["adience_from_celeba"]["params"]["model"]["weights"] == f"run:{source['run_id']}"
    assert runs["adience_imagenet"]["params"]["model"]["weights"] == str(compact)
    assert {runs[n]["metrics"]["data"]["dataset"] for n in ("adience_imagenet", "adience_from_celeba")} == {"adience"}
    assert {r["params"]["model"]["backbone"] for r in runs.values()} == {"compact"}


@pytest.mark.slow
def test_adience_tuning_search_then_tuned_run(stand_in, tmp_path):
    sets = TINY + [
        f"data.root={stand_in['adience']}",
        "model.backbone=compact",  # for ResNet50V2 (module docstring)
        f"model.weights={stand_in['weights']['compact+vgg16']}",
        "search.sequential=[{key: model.head.dropout, values: [0.0, 0.5]}]",
        "search.set={train.epochs: 1}",
    ]
    runs = all_ok(run_in_process(PARAMS / "adience_tuning.yaml", sets, tmp_path))
    best = json.loads((tmp_path / "adience_tuning" / "search" / "best_params.json").read_text())["best"]
    assert best["model.head.dropout"] in (0.0, 0.5)
    assert runs["tuned"]["params"]["model"]["head"]["dropout"] == best["model.head.dropout"]
    assert len(list((tmp_path / "adience_tuning" / "search" / "trials").glob("*.json"))) == 2


@pytest.mark.slow
def test_demo_runs(tmp_path):
    sets = TINY + [
        "data.synthetic={n: 80, seed: 0, size: 64}",
        "search.sequential=[{key: model.head.dropout, values: [0.0, 0.3]}]",
        "search.set={train.epochs: 1}",
        "train.cpu_threads=null",  # in this process TensorFlow may already run: its thread count is fixed
    ]
    # the stand-in set is too small for the demo's 100 and 300 training images: one size
    demo = yaml.safe_load((PARAMS / "demo.yaml").read_text(encoding="utf-8"))
    for group in demo["runs"]:
        if "grid" in group:
            group["grid"] = {"data.train_size": [20]}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo), encoding="utf-8")
    runs = all_ok(run_in_process(tmp_path / "demo.yaml", sets, tmp_path))
    assert len(runs) == 5 and runs["source"]["params"]["task"] == "age" and runs["source"]["metrics"]["test"]["mae"] >= 0
    assert {r["metrics"]["data"]["split_counts"]["train"] for name, r in runs.items() if "train_size=20" in name} == {20}
    assert runs["tuned"]["params"]["model"]["weights"] == f"run:{runs['source']['run_id']}"


@pytest.mark.slow
def test_adience_five_folds_mean_and_std_over_folds(stand_in, tmp_path):
    study = tmp_path / "adience_folds.yaml"
    defaults = {
        "task": "gender",
        "data": {"dataset": "adience", "root": str(stand_in["adience"]), "image_size": 32, "split": {"source": "folds"}},
        "model": {"backbone": "compact", "weights": "none", "strategy": "full", "head": {"dense": [16]}},
        "train": {"epochs": 1, "batch_size": 16},
    }
    body = {"study": "adience_folds", "stages": ["finetune", "compare"], "defaults": defaults, "grid": {"data.split.test_fold": [0, 1, 2, 3, 4]}}
    study.write_text(yaml.safe_dump(body))
    runs = all_ok(run_in_process(study, [], tmp_path)).values()
    assert sorted(r["params"]["data"]["split"]["test_fold"] for r in runs) == [0, 1, 2, 3, 4]
    rows = [line.split("\t") for f in stand_in["adience"].glob("fold_frontal_*_data.txt") for line in f.read_text().splitlines()[1:]]
    assert sum(r["metrics"]["test"]["n"] for r in runs) == sum(row[4] in ("m", "f") for row in rows)  # each face tested once
    table = compare.aggregate(compare.load_runs(tmp_path / "adience_folds"), over="data.split.test_fold")
    (row,) = table.to_dict("records")
    assert row["n"] == 5 and row["data.split.test_fold"] == [0, 1, 2, 3, 4]
    accuracies = [r["metrics"]["test"]["accuracy"] for r in runs]
    assert row["Accuracy mean"] == pytest.approx(np.mean(accuracies)) and row["Accuracy std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert row["Accuracy"].endswith("(n=5)") and " ± " in row["Accuracy"]
    # the real 04_compare, executed by the runner on these run folders, averages over the folds
    assert cli.main(["run", str(study), "--results", str(tmp_path), "--set", "stages=[compare]", "--no-report"]) == 0
    notebook = json.loads((tmp_path / "adience_folds" / "compare" / "04_compare.ipynb").read_text(encoding="utf-8"))
    shown = json.dumps([c.get("outputs") for c in notebook["cells"]], ensure_ascii=False)
    (injected,) = [c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert row["Accuracy"] in shown and 'aggregate_over = "data.split.test_fold"' in "".join(injected["source"])
