"""compare.py on fake study folders written in the real layout (results/<study>/...)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from facetransfer import compare, metrics, stats
from facetransfer.errors import FacetransferError
from facetransfer.io import atomic_write_csv, atomic_write_json
from facetransfer.params import deep_merge, resolve_run, run_id

N_TEST = 200
BASE = {"data": {"dataset": "celeba", "synthetic": {"n": 300}}, "train": {"epochs": 2}, "eval": {"bootstrap": 200}}


def make_params(**sections) -> dict:
    return resolve_run(deep_merge(BASE, sections))


def write_run(study_dir, params, *, y_true=None, prob=None, extra=None, status="ok", seconds=30.0,
              predictions=True, test_metrics=None, paths=None):
    """A run folder as the runner leaves it; metrics computed with scikit-learn."""
    rid = run_id(params)
    run_dir = study_dir / "runs" / rid
    metrics = {"run_id": rid, "status": status, "params": params, "timing": {"train_seconds": seconds}}
    if status != "ok":
        metrics["error"] = "RuntimeError: boom"
        atomic_write_json(run_dir / "metrics.json", metrics)
        return rid
    if test_metrics is None:
        y_pred = (prob >= 0.5).astype(int)
        test_metrics = {
            "accuracy": skm.accuracy_score(y_true, y_pred),
            "f1_macro": skm.f1_score(y_true, y_pred, average="macro"),
            "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
            "degenerate": bool(len(np.unique(y_pred)) < 2),  # as metrics.degenerate flags a one-class predictor
        }
    metrics["test"] = test_metrics
    if predictions:
        paths = paths if paths is not None else [f"/data/img/{i:06d}.jpg" for i in range(len(y_true))]
        frame = pd.DataFrame({"path": paths, "split": "test", "y_true": y_true, "prob": prob, "y_pred": (prob >= 0.5).astype(int)})
        for col, values in (extra or {}).items():
            frame[col] = values
        val = frame.head(7).assign(split="val", path=lambda f: f["path"] + ".val", y_pred=1 - frame["y_pred"].head(7))
        atomic_write_csv(run_dir / "predictions.csv", pd.concat([val, frame], ignore_index=True))
    atomic_write_json(run_dir / "metrics.json", metrics)
    return rid


@pytest.fixture
def study(tmp_path):
    """Run A (good), run B (degenerate: all female), run F (failed), run M (listed, not run)."""
    rng = np.random.default_rng(42)
    y = rng.integers(0, 2, N_TEST)
    correct = rng.random(N_TEST) < 0.9
    prob_a = np.where(correct == (y == 1), 0.55 + 0.45 * rng.random(N_TEST), 0.45 * rng.random(N_TEST))
    prob_b = 0.45 * rng.random(N_TEST)
    extra = {"race": rng.choice(["a", "b", "c"], N_TEST), "age": rng.integers(10, 80, N_TEST), "Young": rng.integers(0, 2, N_TEST)}
    study_dir = tmp_path / "results" / "fake"
    pa = make_params(name="frozen", model={"strategy": "frozen"}, eval={"subgroups": ["race"]})
    pb = make_params(name="last_block", model={"strategy": "last_block"}, train={"learning_rate": 0.01})
    pf = make_params(name="full", model={"strategy": "full"})
    pm = make_params(name="pending", model={"backbone": "resnet50v2"})
    ids = {
        "A": write_run(study_dir, pa, y_true=y, prob=prob_a, extra=extra, seconds=75.0),
        "B": write_run(study_dir, pb, y_true=y, prob=prob_b, extra=extra),
        "F": write_run(study_dir, pf, status="failed"),
        "M": run_id(pm),
    }
    acc_a = skm.accuracy_score(y, (prob_a >= 0.5).astype(int))
    reported = [
        {"match": {"model.strategy": "frozen"}, "metrics": {"test.accuracy": round(acc_a + 0.004, 4)}, "source": "report A"},
        {"match": {"model.strategy": "last_block", "train.learning_rate": 0.01}, "metrics": {"test.accuracy": 0.97}, "source": "report B"},
        {"match": {"model.backbone": "resnet50v2"}, "metrics": {"test.accuracy": 0.9}, "source": "nobody ran it"},
    ]
    listed = [{"run_id": ids[k], "name": p["name"], "params": p} for k, p in (("A", pa), ("B", pb), ("M", pm))]
    atomic_write_json(study_dir / "study.json", {"study": "fake", "runs": listed, "reported": reported})
    return {"dir": study_dir, "ids": ids, "y": y, "prob_a": prob_a, "prob_b": prob_b, "extra": extra, "acc_a": acc_a}


def row(frame, rid):
    return frame[frame["run_id"] == rid].iloc[0]


def test_load_runs(study):
    runs = compare.load_runs(study["dir"])
    ids = study["ids"]
    assert runs["run_id"].tolist() == [ids["A"], ids["B"], ids["M"], ids["F"]]  # study.json order, then folders
    assert dict(zip(runs["run_id"], runs["status"], strict=True)) == {ids["A"]: "ok", ids["B"]: "ok", ids["M"]: "missing", ids["F"]: "failed"}
    assert row(runs, ids["F"])["error"] == "RuntimeError: boom"
    assert row(runs, ids["M"])["name"] == "pending"
    assert row(runs, ids["A"])["model.strategy"] == "frozen"
    assert row(runs, ids["A"])["model.head.dense"] == (256,)
    assert row(runs, ids["A"])["test.accuracy"] == pytest.approx(study["acc_a"])
    assert row(runs, ids["A"])["n_test"] == N_TEST
    assert "model.backbone" in compare.param_columns(runs) and "test.accuracy" not in compare.param_columns(runs)
    assert runs.attrs["study"] == "fake" and len(runs.attrs["reported"]) == 3
    with pytest.raises(FacetransferError, match="does not exist"):
        compare.load_runs(study["dir"] / "nope")


def test_comparison_table(study):
    runs = compare.load_runs(study["dir"])
    table = compare.comparison_table(runs)
    ids, y = study["ids"], study["y"]
    a = row(table, ids["A"])
    pred_a = (study["prob_a"] >= 0.5).astype(int)
    k = int((pred_a == y).sum())
    assert a["n_test"] == N_TEST  # the val rows of predictions.csv are not counted
    assert a["accuracy"] == pytest.approx(k / N_TEST)
    assert (a["acc_lo"], a["acc_hi"]) == pytest.approx(stats.wilson_ci(k, N_TEST))
    assert a["f1"] == pytest.approx(skm.f1_score(y, pred_a, average="macro"))
    assert a["f1_lo"] < a["f1"] < a["f1_hi"]
    assert a["auc"] == pytest.approx(skm.roc_auc_score(y, study["prob_a"]))
    assert a["precision"] == pytest.approx(skm.precision_score(y, pred_a, average="macro"))
    assert a["train_seconds"] == 75.0 and not a["degenerate"] and math.isnan(a["mae"])
    b = row(table, ids["B"])
    pred_b = (study["prob_b"] >= 0.5).astype(int)
    assert b["degenerate"] and b["f1"] == pytest.approx(row(runs, ids["B"])["test.f1_macro"])
    assert b["precision"] == pytest.approx(skm.precision_score(y, pred_b, average="macro", zero_division=0))
    assert row(table, ids["F"])["status"] == "failed" and "boom" in row(table, ids["F"])["note"]
    assert row(table, ids["M"])["status"] == "missing"

    shown = compare.format_comparison(table)
    assert "Accuracy (95 % CI)" in shown.columns and not any(c.startswith("MAE") for c in shown.columns)
    assert shown.loc[table["run_id"] == ids["A"], "Training time"].item() == "1 min 15 s"
    html = compare.style_comparison(table).to_html()
    assert html.count("#f8d7da") >= 1 and "last_block" in html


def test_reported_vs_reproduced(study):
    runs = compare.load_runs(study["dir"])
    table = compare.reported_vs_reproduced(runs)
    assert len(table) == 3
    first, second, third = (table.iloc[i] for i in range(3))
    assert first["run_id"] == study["ids"]["A"] and first["verdict"] == "consistent"
    assert first["ours"] == pytest.approx(study["acc_a"])
    assert first["difference"] == pytest.approx(study["acc_a"] - first["published"])
    assert first["published n"] == "unknown" and "published n unknown" in first["note"]
    assert second["verdict"] == "lower" and second["ours"] < 0.7
    assert third["verdict"] == "no matching ok run" and math.isnan(third["ours"])
    assert first["unit"] == "per image: no identities"
    shown = compare.dashes(table)  # what 04_compare shows: no NaN, no None
    assert shown.iloc[2]["ours"] == "—" and not shown.astype(str).apply(lambda c: c.str.contains("nan|None")).any().any()
    by_name = compare.reported_vs_reproduced(runs, [{"match": {"name": "frozen"}, "metrics": {"test.f1_macro": 0.5}}])
    assert by_name["run_id"].tolist() == [study["ids"]["A"]] and by_name["verdict"].tolist() == ["higher"]
    with pytest.raises(FacetransferError, match="93.97"):
        compare.reported_vs_reproduced(runs, [{"match": {"seed": 0}, "metrics": {"test.accuracy": 93.97}}])
    with pytest.raises(FacetransferError, match="model.bakbone"):
        compare.reported_vs_reproduced(runs, [{"match": {"model.bakbone": "vgg16"}, "metrics": {"test.accuracy": 0.9}}])


def test_reported_interval_includes_the_published_sampling_error(study):
    """Published 0.90 on 100 images vs ours: the interval widens by the published SE
    sqrt(p(1-p)/n) (normal approximation), so a figure outside our own interval can be
    consistent."""
    runs = compare.load_runs(study["dir"])
    table = compare.comparison_table(runs[runs["status"] == "ok"])
    a = row(table, study["ids"]["A"])
    published = round(a["acc_hi"] + 0.01, 3)
    entry = {"match": {"model.strategy": "frozen"}, "metrics": {"test.accuracy": published}}
    unknown = compare.reported_vs_reproduced(runs, [entry], table=table).iloc[0]
    known = compare.reported_vs_reproduced(runs, [{**entry, "n_test": 100}], table=table).iloc[0]
    assert unknown["verdict"] == "lower" and known["verdict"] == "consistent" and known["published n"] == "100"
    z = sps.norm.ppf(0.975)
    se = math.hypot((a["acc_hi"] - a["acc_lo"]) / (2 * z), math.sqrt(published * (1 - published) / 100))
    lo = float(known["difference CI"].strip("[]").split(",")[0])
    assert lo == pytest.approx(a["accuracy"] - published - z * se, abs=1e-4)


def test_one_matching_rule_for_the_report_and_compare(study):
    """``{name: group}`` selects the runs of that study group, in 04_compare and the report alike."""
    from facetransfer import report

    runs = compare.load_runs(study["dir"])
    picked = compare.match_reported(runs, {"name": "frozen"})
    assert runs.loc[picked, "run_id"].tolist() == [study["ids"]["A"]]
    html = report._reported_section(study["dir"], [{"match": {"name": "frozen"}, "metrics": {"test.accuracy": 0.5}, "source": "x"}])
    assert "frozen" in html and "higher" in html and "nan" not in html.lower()


def test_pairwise_mcnemar(study):
    y = study["y"]
    # run C saw a different test set (the first half): it cannot be paired with A or B
    pc = make_params(name="other", seed=5)
    rid_c = write_run(study["dir"], pc, y_true=y[:100], prob=study["prob_a"][:100])
    table = compare.pairwise_mcnemar(study["dir"])
    assert len(table) == 1
    pair = table.iloc[0]
    assert {pair["run_a"], pair["run_b"]} == {study["ids"]["A"], study["ids"]["B"]}
    ok_a = (study["prob_a"] >= 0.5).astype(int) == y
    ok_b = (study["prob_b"] >= 0.5).astype(int) == y
    b, c = int(np.sum(ok_a & ~ok_b)), int(np.sum(~ok_a & ok_b))
    assert (pair["b_count"], pair["c_count"]) == (b, c)
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    assert pair["p_value"] == pytest.approx(sps.chi2.sf(stat, 1))
    assert pair["p_holm"] == pytest.approx(pair["p_value"])  # one comparison
    assert pair["verdict"].startswith("frozen is significantly")
    reasons = {e["run_id"]: e["reason"] for e in table.attrs["excluded"]}
    assert "same test set" in reasons[rid_c] and "failed" in reasons[study["ids"]["F"]]


def test_calibration_and_subgroups(study):
    runs = compare.load_runs(study["dir"])
    run_a = row(runs, study["ids"]["A"])
    y, prob, extra = study["y"], study["prob_a"], study["extra"]
    cal = compare.calibration_table(run_a, n_bins=5)
    assert cal["count"].sum() == N_TEST
    assert cal.attrs["ece"] == pytest.approx(metrics.expected_calibration_error(y, prob, 5))
    assert cal.attrs["ece_lo"] <= cal.attrs["ece"] <= cal.attrs["ece_hi"] and cal.attrs["unit"] == "per image: no identities"
    sub = compare.subgroup_table(run_a, "race")
    frame = pd.DataFrame({"race": extra["race"], "ok": (prob >= 0.5).astype(int) == y})
    expected = frame.groupby("race")["ok"].mean()
    assert dict(zip(sub["group"], sub["accuracy"], strict=True)) == pytest.approx(expected.to_dict())
    gap = compare.gap_table(sub).set_index("metric").loc["accuracy"]
    assert gap["gap"] == pytest.approx(expected.max() - expected.min()) and gap["lo"] < gap["gap"] < gap["hi"]
    bands = compare.subgroup_table(study["dir"] / "runs" / study["ids"]["A"], "age_band")
    assert bands["n"].sum() == N_TEST and set(bands["group"]) <= {"0-19", "20-29", "30-39", "40-49", "50-59", "60+"}
    gaps = compare.subgroup_gaps(runs)  # default: each run's eval.subgroups (A: race; B: none)
    assert set(gaps["run_id"]) == {study["ids"]["A"]} and gaps.set_index("metric").loc["accuracy", "gap"] == pytest.approx(gap["gap"])
    with pytest.raises(FacetransferError, match="'glasses'"):
        compare.subgroup_table(run_a, "glasses")


def test_run_without_predictions_uses_confusion_matrix(tmp_path):
    study_dir = tmp_path / "s"
    cm = [[80, 20], [10, 90]]
    rid = write_run(study_dir, make_params(), predictions=False, test_metrics={"accuracy": 0.85, "f1_macro": 0.849, "recall_macro": 0.85, "confusion_matrix": cm})
    table = compare.comparison_table(compare.load_runs(study_dir))
    r = row(table, rid)
    assert r["accuracy"] == pytest.approx(170 / 200) and (r["acc_lo"], r["acc_hi"]) == pytest.approx(stats.wilson_ci(170, 200))
    assert r["f1"] == 0.849 and math.isnan(r["f1_lo"]) and "no predictions.csv" in r["note"]
    assert r["recall"] == pytest.approx((0.8 + 0.9) / 2)


def test_age_run_mae_and_degenerate_flag(tmp_path):
    study_dir = tmp_path / "age"
    rng = np.random.default_rng(0)
    ages = rng.integers(1, 90, 150).astype(float)
    guess = ages + rng.normal(0, 6, 150)
    params = resolve_run({"task": "age", "data": {"dataset": "utkface", "synthetic": {"n": 300}}, "eval": {"bootstrap": 200}})
    rid = run_id(params)
    run_dir = study_dir / "runs" / rid
    atomic_write_csv(run_dir / "predictions.csv", pd.DataFrame({"path": [f"p{i}" for i in range(150)], "split": "test", "y_true": ages, "y_pred": guess}))
    atomic_write_json(run_dir / "metrics.json", {"run_id": rid, "status": "ok", "params": params, "test": {"mae": 5.0, "degenerate": True}, "timing": {"train_seconds": 3.0}})
    r = row(compare.comparison_table(compare.load_runs(study_dir)), rid)
    assert r["mae"] == pytest.approx(skm.mean_absolute_error(ages, guess))
    assert r["mae_lo"] < r["mae"] < r["mae_hi"] and math.isnan(r["accuracy"])
    assert r["degenerate"]  # the flag in metrics.json wins
    shown = compare.format_comparison(compare.comparison_table(compare.load_runs(study_dir)))
    assert any(c.startswith("MAE") for c in shown.columns)


@pytest.mark.parametrize("over", ["seed", "data.split.test_fold"])
def test_aggregate_repeats_and_folds(tmp_path, over):
    study_dir = tmp_path / "agg"
    rng = np.random.default_rng(1)
    expected = {}
    for backbone in ("vgg16", "resnet50v2"):
        accs = []
        for k in range(3):
            if over == "seed":
                params = make_params(seed=k, model={"backbone": backbone})
            else:
                params = resolve_run({"data": {"dataset": "adience", "root": "/data/adience", "split": {"source": "folds", "test_fold": k}},
                                      "model": {"backbone": backbone}})
            acc = float(rng.uniform(0.8, 0.95))
            accs.append(acc)
            write_run(study_dir, params, predictions=False, seconds=10.0 + k,
                      test_metrics={"accuracy": acc, "f1_macro": acc - 0.01, "confusion_matrix": [[10 * (k + 1), 0], [0, 10]]})
        expected[backbone] = accs
    if over == "seed":  # a failed repeat is counted, not averaged
        write_run(study_dir, make_params(seed=9, model={"backbone": "vgg16"}), status="failed")
    table = compare.aggregate(compare.load_runs(study_dir), over=over)
    assert len(table) == 2
    for backbone, accs in expected.items():
        r = table[table["config"] == f"model.backbone={backbone}"].iloc[0]
        assert r["n"] == 3 and r[over] == [0, 1, 2]
        assert r["Accuracy mean"] == pytest.approx(np.mean(accs))
        assert r["Accuracy std"] == pytest.approx(np.std(accs, ddof=1))
        assert r["Training time (s) mean"] == pytest.approx(11.0)
        assert r["Accuracy"].endswith("(n=3)")
        assert (r["Accuracy lo"], r["Accuracy hi"]) == pytest.approx(sps.t.interval(0.95, 2, loc=np.mean(accs), scale=sps.sem(accs)))
        if over == "data.split.test_fold":  # folds of 20, 30, 40 test images: the pooled mean beside the plain one
            assert r["Accuracy weighted"] == pytest.approx(np.average(accs, weights=[20, 30, 40]))
        else:
            assert "Accuracy weighted" not in r or pd.isna(r["Accuracy weighted"])
    not_ok = dict(zip(table["config"], table["n_not_ok"], strict=True))
    assert not_ok == {"model.backbone=vgg16": int(over == "seed"), "model.backbone=resnet50v2": 0}
    with pytest.raises(FacetransferError, match="not a run param"):
        compare.aggregate(compare.load_runs(study_dir), over="fold")


def test_age_group_run_multiclass_calibration(tmp_path):
    study_dir = tmp_path / "groups"
    rng = np.random.default_rng(2)
    n = 240
    y = rng.integers(0, 8, n)
    logits = rng.normal(0, 1, (n, 8))
    logits[np.arange(n), y] += 2.0
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    params = resolve_run({"task": "age_group", "data": {"dataset": "adience", "root": "/data/adience", "split": {"source": "folds"}},
                          "eval": {"bootstrap": 100}})
    rid = run_id(params)
    frame = pd.DataFrame({"path": [f"p{i}" for i in range(n)], "split": "test", "y_true": y, "y_pred": prob.argmax(1), "prob": prob.max(1)})
    for k in range(8):
        frame[f"prob_{k}"] = prob[:, k]
    atomic_write_csv(study_dir / "runs" / rid / "predictions.csv", frame)
    atomic_write_json(study_dir / "runs" / rid / "metrics.json", {"run_id": rid, "status": "ok", "params": params, "timing": {"train_seconds": 1.0}})
    runs = compare.load_runs(study_dir)
    r = row(compare.comparison_table(runs), rid)
    assert r["f1"] == pytest.approx(skm.f1_score(y, prob.argmax(1), average="macro"))
    assert r["recall"] == pytest.approx(skm.recall_score(y, prob.argmax(1), average="macro"))
    assert math.isnan(r["auc"])
    cal = compare.calibration_table(row(runs, rid))
    assert cal.attrs["ece"] == pytest.approx(metrics.expected_calibration_error(y, prob))


def test_paired_comparisons_every_metric_per_person_with_holm(tmp_path):
    """Three gender runs and two age runs on the same test images of 40 persons: every pair,
    every metric, resampling persons; Holm over the pairs of each metric (statsmodels)."""
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(7)
    n = 200
    y = rng.integers(0, 2, n)
    subject = np.repeat(np.arange(40), 5)
    study_dir = tmp_path / "pairs"
    for k, quality in enumerate((0.9, 0.85, 0.6)):
        correct = rng.random(n) < quality
        prob = np.where(correct == (y == 1), 0.55 + 0.45 * rng.random(n), 0.45 * rng.random(n))
        write_run(study_dir, make_params(seed=k), y_true=y, prob=prob, extra={"subject": subject})
    ages = rng.uniform(1, 80, n)
    for k, noise in enumerate((3.0, 9.0)):
        params = resolve_run({"task": "age", "seed": k, "data": {"dataset": "utkface", "synthetic": {"n": 300}}, "eval": {"bootstrap": 200}})
        frame = pd.DataFrame({"path": [f"/a/{i}" for i in range(n)], "split": "test", "y_true": ages, "y_pred": ages + rng.normal(0, noise, n)})
        atomic_write_csv(study_dir / "runs" / run_id(params) / "predictions.csv", frame)
        atomic_write_json(study_dir / "runs" / run_id(params) / "metrics.json", {"run_id": run_id(params), "status": "ok", "params": params, "test": {}})
    table = compare.paired_comparisons(compare.load_runs(study_dir))
    gender = table[table["metric"] != "MAE"]
    assert sorted(gender["metric"].value_counts().items()) == [("AUC", 3), ("F1", 3), ("accuracy", 3)]
    assert (gender["unit"] == "per person, 40 persons").all()
    mae = table[table["metric"] == "MAE"].iloc[0]
    assert mae["unit"] == "per image: no identities" and mae["lo"] <= mae["difference"] <= mae["hi"]
    assert mae["difference"] == pytest.approx(mae["a value"] - mae["b value"])
    for _, part in table.groupby("metric"):
        assert part["p_holm"].to_numpy() == pytest.approx(multipletests(part["p_value"], method="holm")[1])
    acc = gender[gender["metric"] == "accuracy"]
    assert acc["difference"].to_numpy() == pytest.approx((acc["a value"] - acc["b value"]).to_numpy())
    assert acc["p_holm"].min() < 0.05 and acc["verdict"].str.contains("is better").any()  # the 0.6 run is worse
    shown = compare.format_paired(table)
    assert not shown.astype(str).apply(lambda c: c.str.contains("nan|None")).any().any()
    mcnemar = compare.pairwise_mcnemar(study_dir)
    assert mcnemar.empty and all("McNemar assumes independent images" in e["reason"] for e in mcnemar.attrs["excluded"] if "McNemar" in e["reason"])


def test_person_level_statistics_asked_for_without_identities_say_so(tmp_path):
    study_dir = tmp_path / "noid"
    y = np.random.default_rng(3).integers(0, 2, 60)
    rid = write_run(study_dir, make_params(eval={"unit": "person", "bootstrap": 50}), y_true=y, prob=np.where(y == 1, 0.8, 0.3))
    r = row(compare.comparison_table(compare.load_runs(study_dir)), rid)
    assert r["unit"] == "per image: no identities"
    assert "person-level statistics asked for (eval.unit: person), but no identities" in r["note"]
