"""Shared helpers of test_e2e.py and test_studies.py: stand-in data in the real dataset
layouts, local backbone weights files (ImageNet weights cannot be downloaded here), a
study's runs executed in-process (:func:`run_in_process`), and reading a study's run
folders after ``facetransfer run``.

Stand-in data is SYNTHETIC: faces drawn by ``facetransfer synth`` in the CelebA (Kaggle CSV)
and UTKFace layouts, and an Adience layout assembled from the synthetic UTKFace faces. Each
set carries ``SYNTHETIC.txt``, so every run on it is labelled synthetic.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from facetransfer import synthetic
from facetransfer.io import read_json

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params"
FACETRANSFER = Path(sys.executable).with_name("facetransfer")
ADIENCE_HEADER = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"
ADIENCE_GROUPS = ((0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100))
RUN_FILES = ("metrics.json", "history.csv", "predictions.csv", "splits.csv", "model.keras", "03_finetune.ipynb")
_UTK_NAME = re.compile(r"(\d+)_([01])_\d_\d+\.jpg\.chip\.jpg")

# Built in a fresh interpreter (the test process stays light). A .keras bundle nests one
# facetransfer model per backbone (weights none): model.weights copies by layer name.
_WEIGHTS_SCRIPT = """
import sys, keras
from facetransfer import models, params
out = sys.argv[1]
def model(backbone, size):
    cfg = {"data": {"dataset": "celeba", "root": out, "image_size": size}, "model": {"backbone": backbone, "weights": "none", "strategy": "full"}}
    built = models.build_model(params.resolve_run(cfg))
    built.name = backbone
    return built
def bundle(name, parts):
    inputs = [keras.Input(part.input_shape[1:]) for part in parts]
    keras.Model(inputs, [part(x)["gender"] for part, x in zip(parts, inputs)], name=name).save(f"{out}/{name}.keras")
keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(f"{out}/vgg16.weights.h5")
bundle("inceptionv3_resnet50v2", [model("inceptionv3", 75), model("resnet50v2", 75)])
bundle("compact_vgg16", [model("compact", 32), model("vgg16", 32)])
"""


def quiet_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def build_weights(out: Path) -> dict[str, Path]:
    """Randomly initialised no-top backbone weights, in the formats ``model.weights`` takes:
    a keras.applications ``.weights.h5`` file of VGG16, and ``.keras`` models bundling two
    backbones (weights are copied by layer name) for studies that give two backbones one
    ``model.weights``: InceptionV3 + ResNet50V2, compact + VGG16 (also the compact weights of
    the studies test_studies runs on the compact CNN)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", _WEIGHTS_SCRIPT, str(out)], check=True, env=quiet_env())
    return {
        "vgg16": out / "vgg16.weights.h5",
        "inceptionv3+resnet50v2": out / "inceptionv3_resnet50v2.keras",
        "compact+vgg16": out / "compact_vgg16.keras",
    }


def synth(layout: str, out: Path, *, n: int, seed: int = 0, size: int = 64) -> Path:
    """``facetransfer synth`` in-process (one worker: no spawned processes)."""
    return Path(synthetic.generate(layout, out, n=n, seed=seed, size=size, workers=1, progress=False)["root"])


def adience_group(age: int) -> str:
    """The Adience age text of the group holding ``age`` (gaps go to the nearest group)."""
    distances = [0 if lo <= age <= hi else min(abs(age - lo), abs(age - hi)) for lo, hi in ADIENCE_GROUPS]
    lo, hi = ADIENCE_GROUPS[distances.index(min(distances))]
    return f"({lo}, {hi})"


def adience_from_utkface(utk_root: Path, out: Path, *, per_user: int = 3) -> Path:
    """An Adience layout of the synthetic UTKFace faces: users of ``per_user`` faces of one
    gender, a female and a male user per pair, pairs dealt round-robin to the five frontal
    folds (so every fold holds both genders); images are
    ``aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>``. The last row of
    fold 0 has gender ``u`` (kept by the loader, quarantined for the gender task)."""
    faces: dict[str, list] = {"f": [], "m": []}
    for path in sorted(utk_root.glob("*.jpg.chip.jpg")):
        match = _UTK_NAME.fullmatch(path.name)
        faces["m" if match[2] == "0" else "f"].append((path, int(match[1])))  # UTKFace: 0 = male
    users = {g: [items[i : i + per_user] for i in range(0, len(items) - per_user + 1, per_user)] for g, items in faces.items()}
    folds: list[list[str]] = [[ADIENCE_HEADER] for _ in range(5)]
    face_id = 0
    for pair in range(min(len(users["f"]), len(users["m"]))):
        for gender in ("f", "m"):
            user = f"{pair:02d}{gender}user@N00"
            (out / "aligned" / user).mkdir(parents=True)
            for path, age in users[gender][pair]:
                face_id += 1
                original = f"{face_id:05d}_{path.stem.split('.')[0][-8:]}.jpg"
                shutil.copyfile(path, out / "aligned" / user / f"landmark_aligned_face.{face_id}.{original}")
                folds[pair % 5].append(f"{user}\t{original}\t{face_id}\t{adience_group(age)}\t{gender}\t0\t0\t64\t64\t0\t0\t90")
    folds[0][-1] = re.sub(r"\t[mf]\t", "\tu\t", folds[0][-1], count=1)
    for i, lines in enumerate(folds):
        (out / f"fold_frontal_{i}_data.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    marker = (utk_root / synthetic.SYNTHETIC_MARKER).read_text(encoding="utf-8")
    (out / synthetic.SYNTHETIC_MARKER).write_text("Adience layout assembled by the tests from:\n" + marker, encoding="utf-8")
    return out


def study_runs(study_dir: Path) -> list[dict]:
    """``study.json``'s runs, each with its ``metrics.json`` (None when missing)."""
    info = read_json(study_dir / "study.json")
    out = []
    for run in info["runs"]:
        path = study_dir / "runs" / run["run_id"] / "metrics.json"
        out.append({**run, "metrics": read_json(path) if path.is_file() else None})
    return out


def run_in_process(path, sets, results, *, only=None) -> list[dict]:
    """A study's runs executed in this process: what ``facetransfer run`` does, without the
    notebooks and their kernels. The study is loaded with the ``--set`` overrides ``sets``;
    ``train.run_config`` (the library calls 03_finetune makes, in its order) executes every
    run (``only``: the runs of these names, and the runs their weights come from), a run
    after the run its weights come from; a search stage is 02_search's sequential
    search (``search.sequential_search`` + ``write_best``) after the runs it starts from, and
    its chosen values go to the ``use_search`` runs. Returns the runs as study.json lists
    them, each with its metrics.json (None for a run that did not run)."""
    from facetransfer import search, train
    from facetransfer import study as S

    st = S.load_study(path, list(sets))
    study_dir = Path(results) / st.name
    done: set[str] = set()

    def execute(run_ids) -> None:
        for run_id in run_ids:
            if run_id not in done:
                run = st.run_by_id(run_id)
                train.run_config(run.params, study_dir / "runs" / run_id, results_root=results, run_id=run_id, verbose=0)
                done.add(run_id)

    if "search" in st.stages:
        execute(S.dependencies(st, st.base_depends_on))
        result = search.sequential_search(st.base_params, st.search, out_dir=study_dir / "search", results_root=results, verbose=0)
        search.write_best(study_dir / "search", result)
        st.apply_search(result.best)
    if "finetune" in st.stages:
        execute(S.execution_order(st) if only is None else S.dependencies(st, [run.run_id for run in st.runs if run.name in only]))
    runs = [run.to_json() for run in st.runs]
    for run in runs:
        path = study_dir / "runs" / str(run["run_id"]) / "metrics.json"
        run["metrics"] = read_json(path) if path.is_file() else None
    return runs
