import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from facetransfer import compare, metrics, stats
from facetransfer.errors import FacetransferError


@pytest.fixture
def binary():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    prob = np.clip(0.5 * y + 0.6 * rng.random(300) - 0.05, 0, 1)
    return y, prob, (prob >= 0.5).astype(int)


def test_point_metrics_are_scikit_learns(binary):
    y, prob, pred = binary
    assert metrics.accuracy(y, pred) == skm.accuracy_score(y, pred)
    assert metrics.f1_macro(y, pred) == skm.f1_score(y, pred, average="macro")
    assert metrics.roc_auc(y, prob) == skm.roc_auc_score(y, prob)
    assert metrics.mae(y * 30.0, prob * 30) == skm.mean_absolute_error(y * 30.0, prob * 30)
    assert (metrics.confusion_matrix(y, pred, 2) == skm.confusion_matrix(y, pred)).all()
    assert math.isnan(metrics.roc_auc(np.zeros(5), np.linspace(0, 1, 5)))


def test_calibration_table_is_calibration_curve(binary):
    y, prob, _ = binary
    table = metrics.calibration_table(y, prob, 5)
    prob_true, prob_pred = calibration_curve(y, prob, n_bins=5, strategy="uniform")
    filled = table[table["count"] > 0]
    assert filled["accuracy"].to_numpy() == pytest.approx(prob_true) and filled["mean_confidence"].to_numpy() == pytest.approx(prob_pred)
    assert table["count"].sum() == len(y)
    assert table.attrs["ece"] == pytest.approx(float(np.sum(filled["count"] / len(y) * np.abs(prob_true - prob_pred))))


@pytest.mark.parametrize(("k", "n"), [(0, 10), (81, 263), (10, 10)])
def test_wilson_is_scipys(k, n):
    ci = sps.binomtest(k, n).proportion_ci(method="wilson")
    assert stats.wilson_ci(k, n) == pytest.approx((ci.low, ci.high))
    with pytest.raises(FacetransferError):
        stats.wilson_ci(n + 1, n)


@pytest.mark.parametrize(("b", "c"), [(3, 9), (40, 20), (0, 0)])
def test_mcnemar_and_holm_are_statsmodels(b, c):
    a = np.array([True] * b + [False] * c + [True] * 50)
    other = np.array([False] * b + [True] * c + [True] * 50)
    got = stats.mcnemar(a, other)
    ref = sm_mcnemar([[50, b], [c, 0]], exact=b + c < 25, correction=True)
    assert (got["b"], got["c"]) == (b, c)
    assert got["p_value"] == pytest.approx(1.0 if b + c == 0 else ref.pvalue)
    p = [0.01, 0.04, 0.03, 0.2]
    assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_unit_says_what_it_resamples():
    assert stats.unit(None, 5).text == "per image: no identities"
    persons = stats.unit(["a", "a", "b", "c", "c", "c"])
    assert persons.per_person and persons.text == "per person, 3 persons" and persons.n_units == 3
    singles = stats.unit(["a", "b", "c"])
    assert not singles.per_person and "one test image" in singles.text
    asked = stats.unit(None, 4, requested="person")
    assert not asked.per_person and "no identities" in asked.note and "eval.unit: person" in asked.note
    with pytest.raises(FacetransferError, match="eval.unit"):
        stats.unit(None, 3, requested="people")


def test_bootstrap_per_image_matches_index_resampling_and_is_reproducible(binary):
    y, prob, pred = binary
    first = stats.bootstrap(metrics.f1_macro, y, pred, n_boot=50, seed=3)
    again = stats.bootstrap(metrics.f1_macro, y, pred, n_boot=50, seed=3)
    assert tuple(first) == tuple(again) and first.lo < first.point < first.hi
    mean_path = stats.bootstrap(None, (y == pred).astype(float), n_boot=50, seed=3)
    loop_path = stats.bootstrap(lambda c: float(np.mean(c)), (y == pred).astype(float), n_boot=50, seed=3)
    assert tuple(mean_path) == pytest.approx(tuple(loop_path))  # same draws, same numbers


def test_cluster_bootstrap_is_wider_when_persons_repeat():
    rng = np.random.default_rng(1)
    person = np.repeat(np.arange(60), 10)
    correct = (rng.random(60) < 0.8)[person].astype(float)  # a person is all right or all wrong
    per_image = stats.bootstrap(None, correct, n_boot=500, seed=0)
    per_person = stats.bootstrap(None, correct, unit=stats.unit(person), n_boot=500, seed=0)
    assert (per_person.hi - per_person.lo) > 2.5 * (per_image.hi - per_image.lo)
    assert per_person.unit == "per person, 60 persons"


def _clustered_null(n_studies: int, n_persons: int = 100, seed: int = 1):
    """Two equally good models whose errors are correlated within persons: each person is
    easy or hard for each model (a random effect), 1-15 images per person."""
    rng = np.random.default_rng(seed)
    rejected_person = rejected_mcnemar = 0
    for study in range(n_studies):
        person = np.repeat(np.arange(n_persons), rng.integers(1, 16, size=n_persons))
        ease_a, ease_b = (rng.normal(0, 1.5, n_persons)[person] for _ in range(2))
        right_a = rng.random(len(person)) < 1 / (1 + np.exp(-(1.0 + ease_a)))
        right_b = rng.random(len(person)) < 1 / (1 + np.exp(-(1.0 + ease_b)))
        test = stats.bootstrap(None, right_a.astype(float) - right_b, unit=stats.unit(person), n_boot=499, seed=study)
        rejected_person += test.p_value < 0.05
        rejected_mcnemar += stats.mcnemar(right_a, right_b)["p_value"] < 0.05
    return rejected_person / n_studies, rejected_mcnemar / n_studies


def test_person_level_test_holds_its_level_where_image_level_mcnemar_does_not():
    person_rate, mcnemar_rate = _clustered_null(300)
    print(f"\nclustered null, 300 simulated studies, alpha 5 %: person-level paired bootstrap rejects {person_rate:.1%}, "
          f"image-level McNemar rejects {mcnemar_rate:.1%}")
    assert person_rate <= 0.07
    assert mcnemar_rate >= 2 * max(person_rate, 0.05)


def test_versus_published_verdicts():
    ours = stats.BootstrapCI(0.90, 0.88, 0.92, n_used=0, n_boot=0, conf=0.95)
    close = stats.versus_published(ours, 0.925, 3000, n_ours=1000, fraction=True)
    unknown = stats.versus_published(ours, 0.925, None, n_ours=1000, fraction=True)
    assert close["verdict"] == "lower" and unknown["verdict"] == "lower" and "unknown" in unknown["note"]
    assert stats.versus_published(ours, 0.93, 50, n_ours=1000, fraction=True)["verdict"] == "consistent"
    assert stats.versus_published(ours, 0.80, 3000, n_ours=1000, fraction=True)["verdict"] == "higher"


def _subgroup_predictions(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = np.clip(0.6 * y + 0.5 * rng.random(n) - 0.05, 0, 1)
    frame = pd.DataFrame({"y_true": y, "prob": prob, "y_pred": (prob >= 0.5).astype(int),
                          "subject": rng.integers(0, 70, n), "group": rng.choice(["a", "b"], n)})
    frame.loc[:9, "group"] = "tiny"
    makeup = (frame["y_true"] == 0) & (frame.index % 2 == 0)
    frame["Heavy_Makeup"] = np.where(makeup, 1, 0)  # all of group 1 is female: one class
    return frame


def test_subgroup_table_small_groups_one_class_and_gap_interval():
    frame = _subgroup_predictions()
    table = compare.subgroups(frame, ["group", "Heavy_Makeup"], "gender", min_group=20, n_boot=200)
    tiny = table[table["group"] == "tiny"].iloc[0]
    assert tiny["status"] == "too small (n < 20)"
    makeup = table[(table["attribute"] == "Heavy_Makeup") & (table["group"] == "1")].iloc[0]
    assert makeup["one_class"] and math.isnan(makeup["f1_macro"]) and math.isnan(makeup["auc"])
    shown = compare.format_subgroups(table)
    assert (shown.loc[makeup.name, ["f1_macro (95 % CI)", "auc (95 % CI)"]] == "n/a (one class)").all()
    a = table[(table["attribute"] == "group") & (table["group"] == "a")].iloc[0]  # per-group F1 and AUC carry intervals
    assert a["f1_lo"] <= a["f1_macro"] <= a["f1_hi"] and a["auc_lo"] <= a["auc"] <= a["auc_hi"]
    assert a["f1_macro"] == pytest.approx(skm.f1_score(frame.loc[frame["group"] == "a", "y_true"], frame.loc[frame["group"] == "a", "y_pred"], average="macro"))
    assert shown.loc[a.name, "f1_macro (95 % CI)"] == f"{a['f1_macro']:.3f} [{a['f1_lo']:.3f}, {a['f1_hi']:.3f}]"
    assert not shown.astype(str).apply(lambda c: c.str.contains("nan|None")).any().any()
    gaps = compare.gap_table(table).set_index(["attribute", "metric"])
    ranked = table[(table["attribute"] == "group") & (table["status"] == "ranked")]
    acc = gaps.loc[("group", "accuracy")]
    assert acc["gap"] == pytest.approx(ranked["accuracy"].max() - ranked["accuracy"].min()) and acc["lo"] <= acc["gap"] <= acc["hi"]
    f1 = gaps.loc[("group", "f1_macro")]
    assert f1["gap"] == pytest.approx(ranked["f1_macro"].max() - ranked["f1_macro"].min()) and f1["lo"] <= f1["gap"] <= f1["hi"]
    assert "one class" in gaps.loc[("Heavy_Makeup", "auc"), "note"] and math.isnan(gaps.loc[("Heavy_Makeup", "auc"), "gap"])
    assert table.attrs["unit"].startswith("per person")


def test_subgroups_all_too_small_give_one_line_not_a_crash():
    frame = _subgroup_predictions(n=30)
    table = compare.subgroups(frame, ["group"], "gender", min_group=50, n_boot=50)
    assert (table["status"] != "ranked").all()
    line = compare.subgroup_summary(table)
    assert line.startswith("No subgroup gap") and "too small" in line


def test_mean_std_and_t_interval():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert stats.t_interval([1.0, 2.0, 3.0]) == pytest.approx(sps.t.interval(0.95, 2, loc=2.0, scale=1 / math.sqrt(3)))
    assert stats.format_mean_std([0.5]) == "0.500 (n=1)"


def test_resampled_metrics_equal_scikit_learn_on_every_resample(binary):
    """The vectorised bootstrap forms give scikit-learn's number for every weighted resample."""
    y, prob, pred = binary
    rng = np.random.default_rng(5)
    weights = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=25)
    f1 = metrics.f1_macro_resampled(y, pred, weights)
    auc = metrics.roc_auc_resampled(y, np.round(prob, 1), weights)  # rounded: ties
    ece = metrics.ece_resampled(y, prob, weights, 5)
    for i, w in enumerate(weights):
        rows = np.repeat(np.arange(len(y)), w)
        assert f1[i] == pytest.approx(skm.f1_score(y[rows], pred[rows], average="macro"))
        assert auc[i] == pytest.approx(skm.roc_auc_score(y[rows], np.round(prob, 1)[rows]))
        assert ece[i] == pytest.approx(metrics.expected_calibration_error(y[rows], prob[rows], 5))
    fast = stats.bootstrap(metrics.f1_macro, y, pred, n_boot=40, seed=2, resampled=metrics.f1_macro_resampled)
    slow = stats.bootstrap(metrics.f1_macro, y, pred, n_boot=40, seed=2)
    assert tuple(fast) == pytest.approx(tuple(slow)) and fast.p_value == pytest.approx(slow.p_value)


def test_too_few_persons_give_no_interval_rather_than_a_false_one():
    """Two persons cannot carry a bootstrap: the interval and the test are left out (NaN)."""
    ci = stats.bootstrap(None, np.r_[np.ones(6), np.zeros(6)], unit=stats.unit(["a"] * 6 + ["b"] * 6), n_boot=100)
    assert ci.point == 0.5 and math.isnan(ci.lo) and math.isnan(ci.hi) and math.isnan(ci.p_value) and ci.n_used == 0


def test_age_gender_subgroups_with_too_few_persons_format_without_crashing():
    """Every group too small and only 3 persons: no interval anywhere, and the table and
    the one-line summary still render (a crash here once failed a whole study run)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"y_true": rng.integers(0, 2, 12), "prob": rng.random(12), "age_true": rng.uniform(1, 80, 12),
                          "age_pred": rng.uniform(1, 80, 12), "race": rng.choice(["a", "b", "c"], 12), "subject": np.repeat([1, 2, 3], 4)})
    frame["y_pred"] = (frame["prob"] >= 0.5).astype(int)
    table = compare.subgroups(frame, ["race"], "age_gender", n_boot=50)
    shown = compare.format_subgroups(table)
    assert {"accuracy (95 % CI)", "f1_macro (95 % CI)", "auc (95 % CI)", "MAE (95 % CI)"} <= set(shown.columns)
    assert compare.subgroup_summary(table).startswith("No subgroup gap: race accuracy: fewer than two groups with n >= 20")
