"""Data-efficiency curves (issue 15): compare.data_efficiency on a fake study folder in the
real layout, its figure, and the demo study's source/target separation."""

import functools

import numpy as np
import pandas as pd
import pytest

from facetransfer import compare, plots, stats
from facetransfer.io import atomic_write_csv, atomic_write_json
from facetransfer.params import resolve_run, run_id

N_TEST = 120
SIZES = {100: 140, 300: 300, None: 1600}  # train_size param -> training images used


def _run(study_dir, group, size, correct, y):
    params = resolve_run({"name": f"{group} train_size={size}", "data": {"dataset": "celeba", "synthetic": {"n": 2000}, "train_size": size},
                          "model": {"backbone": "compact", "weights": "none" if group == "scratch" else "run:abcdefabcdef",
                                    "strategy": "full" if group == "scratch" else group}})
    rid = run_id(params)
    y_pred = np.where(correct, y, 1 - y)
    frame = pd.DataFrame({"path": [f"/d/{i:04d}.jpg" for i in range(N_TEST)], "split": "test", "y_true": y, "prob": y_pred * 0.8 + 0.1, "y_pred": y_pred})
    atomic_write_csv(study_dir / "runs" / rid / "predictions.csv", frame)
    atomic_write_json(study_dir / "runs" / rid / "metrics.json", {"run_id": rid, "status": "ok", "params": params, "test": {"accuracy": float(correct.mean())},
                                                                  "data": {"split_counts": {"train": SIZES[size], "val": 200, "test": N_TEST}}})
    return {"run_id": rid, "name": params["name"], "group": group, "params": params}


@pytest.fixture
def curve_study(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, N_TEST)
    accuracy = {("scratch", 100): 0.55, ("scratch", 300): 0.7, ("scratch", None): 0.9,
                ("frozen", 100): 0.85, ("frozen", 300): 0.72, ("frozen", None): 0.75}
    study_dir = tmp_path / "demo"
    listed = [_run(study_dir, g, s, rng.random(N_TEST) < a, y) for (g, s), a in accuracy.items()]
    atomic_write_json(study_dir / "study.json", {"study": "demo", "runs": listed})
    return study_dir


def test_data_efficiency_lines_sizes_and_paired_tests(curve_study):
    table = compare.data_efficiency(curve_study)
    assert list(table.columns) == compare.EFFICIENCY_COLUMNS and len(table) == 6
    assert table.groupby("line")["n_train"].apply(list).to_dict() == {"frozen": [140, 300, 1600], "scratch": [140, 300, 1600]}
    scratch = table[table["line"] == "scratch"]
    assert scratch["p_value"].isna().all() and (scratch["verdict"] == "").all()
    frozen = table[table["line"] == "frozen"].set_index("n_train")
    preds = {r["run_id"]: compare.read_predictions(r) for _, r in compare.load_runs(curve_study).iterrows()}

    def hits(rid):
        p = preds[rid]
        return (p["y_true"] == p["y_pred"]).to_numpy()

    image = stats.unit(None, N_TEST)  # no subject column: images are the unit
    expected = [stats.bootstrap(None, hits(frozen.loc[n, "run_id"]) - hits(scratch.set_index("n_train").loc[n, "run_id"]).astype(float), unit=image).p_value
                for n in (140, 300, 1600)]
    assert np.allclose(frozen["p_value"], expected)
    assert np.allclose(frozen["p_holm"], stats.holm(expected))
    assert frozen.loc[140, "verdict"] == "frozen better than scratch (alpha 0.05)"
    assert frozen.loc[1600, "verdict"] == "frozen worse than scratch (alpha 0.05)"
    assert frozen.loc[300, "verdict"].startswith("not significantly different from scratch")
    assert (frozen["unit"] == "per image: no identities").all() and (frozen["test"] == "paired bootstrap, per image: no identities").all()
    k = int(hits(frozen.loc[140, "run_id"]).sum())
    assert (frozen.loc[140, "acc_lo"], frozen.loc[140, "acc_hi"]) == pytest.approx(stats.wilson_ci(k, N_TEST))
    shown = compare.format_data_efficiency(table)
    assert shown["Training images"].tolist()[-1] == "1,600 (all)" and "nan" not in shown.to_string().lower()
    fig = plots.data_efficiency(table, synthetic=True)
    assert "SYNTHETIC" in fig._suptitle.get_text() and len(fig.axes[0].get_lines()) >= 2


def test_no_curve_is_an_empty_table_and_a_message_figure(tmp_path):
    study_dir = tmp_path / "s"
    atomic_write_json(study_dir / "study.json", {"study": "s", "runs": []})
    (study_dir / "runs").mkdir()
    table = compare.data_efficiency(study_dir)
    assert table.empty and list(table.columns) == compare.EFFICIENCY_COLUMNS
    assert "no run group varies data.train_size" in plots.data_efficiency(table).axes[0].texts[0].get_text()


def test_index_opens_with_the_answer_above_the_tables(curve_study):
    from facetransfer import report

    text = report.render(curve_study).read_text()
    head = text.index("<h2>The answer at a glance</h2>")
    assert head < text.index("<h2>Summary</h2>") < text.index("<h2>Runs</h2>")
    answer = text[head:text.index("<h2>Summary</h2>")]
    assert answer.count('<img class="headline"') == 2  # accuracy per run + the data-efficiency curve
    assert "Best run (gender, test accuracy, 95% interval): <b>scratch train_size=None</b>" in answer
    assert "frozen at 140 images: frozen better than scratch (alpha 0.05)" in answer
    assert "nan" not in answer.replace("base64", "").lower().split("data:image")[0]
    table = compare.best_and_equivalent(curve_study)
    pairs = compare.paired_comparisons(compare.load_runs(curve_study))
    pairs = pairs[pairs["metric"] == "accuracy"]
    best = table["best"]["Run"]
    worse = pairs[((pairs["a"] == best) | (pairs["b"] == best)) & (pairs["p_holm"] < 0.05)]
    label_to_id = dict(zip(table["table"]["Run"], table["table"]["run_id"], strict=True))
    expected = set(table["table"]["Run"]) - {best} - set(worse["a"]) - set(worse["b"])
    assert set(table["equivalent"]["run_id"]) == {label_to_id[label] for label in expected}


@functools.cache
def _demo_runs():
    from _studyutil import PARAMS
    from facetransfer.study import load_study

    study = load_study(PARAMS / "demo.yaml")
    source = next(r for r in study.runs if r.name == "source")
    targets = [r for r in study.runs if r.name != "source"]
    return source, targets


def test_demo_source_never_sees_the_target_label_or_its_data():
    from facetransfer.data import TASK_OUTPUTS

    source, targets = _demo_runs()
    p = source.params
    assert "gender" not in TASK_OUTPUTS[p["task"]] and {"Male", "gender"}.isdisjoint(p["data"]["attributes"] + p["eval"]["subgroups"])
    assert p["model"]["weights"] == "none" and p["train"]["augment"]
    for run in targets:
        t = run.params["data"]
        assert t["synthetic"]["seed"] != p["data"]["synthetic"]["seed"]  # people are drawn from (seed, person index)
        assert (t["dataset"], t["synthetic"]["seed"]) != (p["data"]["dataset"], p["data"]["synthetic"]["seed"])
    assert p["data"]["synthetic"]["n"] >= 3 * max(r.params["data"]["synthetic"]["n"] for r in targets)


def _row_hashes(prepared, split=None):
    import hashlib

    rows = prepared.records["row"] if split is None else prepared.rows(split)
    return {hashlib.sha1(prepared.cache.images[int(r)].tobytes()).hexdigest() for r in rows}


def test_no_target_test_image_is_in_the_source_data(tmp_path):
    """The demo's source and target sets, scaled down (same layouts and seeds, 32 px): no
    decoded target test image appears among the source's images; the same check finds the
    overlap when the source is the target's own set."""
    from facetransfer import data

    source, targets = _demo_runs()

    def small(params, n):
        cfg = {**params, "data": {**params["data"], "image_size": 32, "train_size": None}}
        cfg["data"]["synthetic"] = {**cfg["data"]["synthetic"], "n": n, "size": 32}
        return data.prepare(cfg, tmp_path, progress=False)

    target = small(targets[0].params, 160)
    test_images = _row_hashes(target, "test")
    assert test_images and not test_images & _row_hashes(small(source.params, 160))
    assert test_images <= _row_hashes(target)
