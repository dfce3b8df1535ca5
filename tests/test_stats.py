import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from facetransfer import stats
from facetransfer.errors import FacetransferError


# ---------------------------------------------------------------- Wilson
def test_wilson_hand_worked():
    # z = 1.959964, p = 81/263 = 0.307985; centre = (p + z²/2n) / (1 + z²/n) = 0.310745,
    # half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n) = 0.055460 → (0.25529, 0.36621)
    lo, hi = stats.wilson_ci(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-3)
    assert hi == pytest.approx(0.3662, abs=1e-3)


@pytest.mark.parametrize("k, n, conf", [(0, 10, 0.95), (10, 10, 0.95), (3, 7, 0.9), (1745, 3000, 0.99), (500, 1000, 0.95)])
def test_wilson_matches_scipy(k, n, conf):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    lo, hi = stats.wilson_ci(k, n, conf)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


@pytest.mark.parametrize("k, n, conf", [(5, 0, 0.95), (11, 10, 0.95), (-1, 10, 0.95), (2.5, 10, 0.95), (5, 10, 1.0)])
def test_wilson_rejects_bad_input(k, n, conf):
    with pytest.raises(FacetransferError):
        stats.wilson_ci(k, n, conf)


# ---------------------------------------------------------------- point metrics
@pytest.fixture
def binary():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    prob = np.clip(0.35 * y + rng.random(400) * 0.65, 0, 1).round(2)  # ties on purpose
    return y, prob, (prob >= 0.5).astype(int)


def test_point_metrics_match_sklearn(binary):
    y, prob, pred = binary
    assert stats.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert stats.f1_macro(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert stats.f1_macro(y, pred, (0, 1)) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert stats.roc_auc(y, prob) == pytest.approx(skm.roc_auc_score(y, prob))
    p, r = stats.macro_precision_recall(y, pred, (0, 1))
    assert p == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert r == pytest.approx(skm.recall_score(y, pred, average="macro"))
    np.testing.assert_array_equal(stats.confusion_matrix(y, pred, (0, 1)), skm.confusion_matrix(y, pred, labels=[0, 1]))
    ages, guess = y * 30.0 + 20, prob * 60
    assert stats.mae(ages, guess) == pytest.approx(skm.mean_absolute_error(ages, guess))


def test_multiclass_f1_and_undefined_cases():
    yt, yp = np.array([0, 1, 2, 2, 1, 0, 3]), np.array([0, 2, 2, 2, 1, 1, 0])
    assert stats.f1_macro(yt, yp) == pytest.approx(skm.f1_score(yt, yp, average="macro"))
    # one class only: AUC undefined; F1 over fixed labels undefined; precision of the
    # never-predicted class undefined (NaN, not 0)
    assert math.isnan(stats.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(stats.f1_macro([0, 0, 0], [0, 0, 0], (0, 1)))
    scores = stats.per_class_scores([0, 1, 1, 0], [0, 0, 0, 0], (0, 1))
    assert math.isnan(scores.loc[1, "precision"]) and scores.loc[1, "recall"] == 0.0
    with pytest.raises(FacetransferError, match="expected labels"):
        stats.confusion_matrix([0, 2], [0, 1], (0, 1))


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_reproducible_and_contains_point(binary):
    y, prob, pred = binary
    a = stats.bootstrap_ci(stats.f1_macro, y, pred, n_boot=300, seed=7)
    b = stats.bootstrap_ci(stats.f1_macro, y, pred, n_boot=300, seed=7)
    c = stats.bootstrap_ci(stats.f1_macro, y, pred, n_boot=300, seed=8)
    assert tuple(a) == tuple(b) and tuple(a) != tuple(c)
    point, lo, hi = a
    assert point == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert lo < point < hi
    assert a.n_used == a.n_boot == 300


def test_bootstrap_is_paired():
    # resampling rows together: a model scored against its own labels is always perfect
    y = np.random.default_rng(0).integers(0, 2, 50)
    point, lo, hi = stats.bootstrap_ci(stats.accuracy, y, y.copy(), n_boot=200)
    assert point == lo == hi == 1.0


def test_bootstrap_agrees_with_scipy_percentile():
    x = np.random.default_rng(1).normal(10.0, 2.0, 300)
    ours = stats.bootstrap_ci(np.mean, x, n_boot=4000, seed=0)
    ref = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    se = 2.0 / math.sqrt(300)
    assert ours.lo == pytest.approx(ref.low, abs=0.1 * se)
    assert ours.hi == pytest.approx(ref.high, abs=0.1 * se)


def test_bootstrap_skips_undefined_resamples():
    # one positive among 20: about (19/20)^20 = 36 % of resamples miss it and their AUC
    # is undefined; they are skipped and counted, not turned into numbers
    y = np.array([1] + [0] * 19)
    prob = np.linspace(0.9, 0.0, 20)
    ci = stats.bootstrap_ci(stats.roc_auc, y, prob, n_boot=1000, seed=0)
    assert ci.point == 1.0
    assert 0.55 * 1000 < ci.n_used < 0.75 * 1000
    assert ci.lo == ci.hi == 1.0
    none = stats.bootstrap_ci(stats.roc_auc, np.ones(5), np.linspace(0, 1, 5), n_boot=50)
    assert none.n_used == 0 and math.isnan(none.point) and math.isnan(none.lo)
    zero = stats.bootstrap_ci(stats.accuracy, y, y, n_boot=0)
    assert zero.point == 1.0 and math.isnan(zero.hi)
    with pytest.raises(FacetransferError, match="same length"):
        stats.bootstrap_ci(stats.accuracy, y, y[:5])


# ---------------------------------------------------------------- McNemar and Holm
def _pairs(b, c, both_right=30, both_wrong=5):
    a = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    o = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(a), np.array(o)


@pytest.mark.parametrize("b, c", [(3, 9), (0, 6), (12, 12), (20, 4)])
def test_mcnemar_exact_matches_binomtest(b, c):
    res = stats.mcnemar(*_pairs(b, c))
    assert (res["b"], res["c"]) == (b, c)
    assert res["method"] == "exact binomial"
    assert res["p_value"] == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue)


@pytest.mark.parametrize("b, c", [(20, 5), (40, 60), (15, 35)])
def test_mcnemar_chi2_with_continuity(b, c):
    res = stats.mcnemar(*_pairs(b, c))
    expected_stat = (abs(b - c) - 1) ** 2 / (b + c)
    assert res["method"].startswith("chi-square")
    assert res["statistic"] == pytest.approx(expected_stat)
    assert res["p_value"] == pytest.approx(sps.chi2.sf(expected_stat, 1))


def test_mcnemar_no_discordant_pairs():
    res = stats.mcnemar(*_pairs(0, 0))
    assert res["p_value"] == 1.0 and res["b"] == res["c"] == 0


def test_holm_hand_worked():
    # sorted 0.01, 0.03, 0.04, 0.5 → ×4, ×3, ×2, ×1 = 0.04, 0.09, 0.08, 0.5 → running max
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(adjusted, [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_allclose(stats.holm([0.3, 0.6]), [0.6, 0.6])
    assert stats.holm([0.9, 0.8]).max() == 1.0


def test_mcnemar_all_pairs_holm_and_verdict():
    rng = np.random.default_rng(0)
    truth_good = rng.random(300) < 0.92
    correct = {"good": truth_good, "same": truth_good.copy(), "bad": rng.random(300) < 0.6}
    table = stats.mcnemar_all_pairs(correct)
    assert len(table) == 3
    np.testing.assert_allclose(table["p_holm"], stats.holm(table["p_value"]))
    same = table[(table["a"] == "good") & (table["b"] == "same")].iloc[0]
    assert same["p_value"] == 1.0 and same["verdict"].startswith("no significant")
    bad = table[(table["a"] == "good") & (table["b"] == "bad")].iloc[0]
    assert bad["p_holm"] < 0.001 and bad["verdict"].startswith("good is significantly")


# ---------------------------------------------------------------- calibration
def test_ece_known_cases():
    # perfectly calibrated: P(male) = 0.8 for all, and 80 % are male
    assert stats.expected_calibration_error([1] * 8 + [0] * 2, [0.8] * 10) == pytest.approx(0.0)
    # maximally wrong: certain "male" for females
    assert stats.expected_calibration_error([0] * 5, [1.0] * 5) == pytest.approx(1.0)
    # hand-worked: bin [0.1, 0.2): conf 0.1, 1/2 male → 0.4 × 2/4; bin [0.9, 1]: 0.9 vs 1 → 0.1 × 2/4
    assert stats.expected_calibration_error([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.25)
    # multiclass max-prob: top probs 0.6 (right), 0.7 (wrong), 0.9 (right), 0.9 (right)
    prob = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05]])
    # bins: [0.6,0.7): 0.6 vs 1 → 0.4/4; [0.7,0.8): 0.7 vs 0 → 0.7/4; [0.9,1]: 0.9 vs 1 → 0.1 × 2/4
    assert stats.expected_calibration_error([0, 0, 2, 0], prob) == pytest.approx((0.4 + 0.7 + 0.2) / 4)


def test_reliability_table_bins():
    prob = np.array([0.0, 0.05, 0.1, 0.55, 0.999, 1.0])
    table = stats.reliability_table([0, 0, 1, 1, 1, 1], prob, n_bins=10)
    assert list(table.columns) == ["bin", "lo", "hi", "count", "mean_confidence", "accuracy"]
    assert table["count"].tolist() == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert table.loc[9, "mean_confidence"] == pytest.approx(0.9995)
    assert table.loc[0, "accuracy"] == 0.0 and math.isnan(table.loc[2, "accuracy"])
    with pytest.raises(FacetransferError, match=r"\[0, 1\]"):
        stats.reliability_table([0, 1], [0.2, 1.2])
    with pytest.raises(FacetransferError, match="y_true in"):
        stats.reliability_table([0, 2], [0.2, 0.3])


# ---------------------------------------------------------------- subgroups
def test_subgroup_metrics_and_gap():
    frame = pd.DataFrame(
        {
            "race": ["a"] * 6 + ["b"] * 4 + [None] * 2,
            "y_true": [1, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0],
            "y_pred": [1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1],
            "prob": [0.9, 0.8, 0.1, 0.2, 0.7, 0.3, 0.4, 0.2, 0.3, 0.6, 0.9, 0.8],
        }
    )
    table = stats.subgroup_metrics(frame, "race", prob="prob")
    assert table["group"].tolist() == ["a", "b", stats.MISSING_GROUP]
    assert table["n"].tolist() == [6, 4, 2]
    assert table["accuracy"].tolist() == [1.0, 0.25, 0.5]
    lo, hi = stats.wilson_ci(1, 4)
    assert (table.loc[1, "acc_lo"], table.loc[1, "acc_hi"]) == (lo, hi)
    assert table.loc[1, "f1_macro"] == pytest.approx(skm.f1_score([1, 0, 1, 0], [0, 0, 0, 1], average="macro"))
    assert table.attrs["gap"]["accuracy"] == pytest.approx(0.75)
    assert (table.attrs["best"], table.attrs["worst"]) == ("a", "b")
    with pytest.raises(FacetransferError, match="'sex'"):
        stats.subgroup_metrics(frame, "sex")


def test_subgroup_metrics_age_only():
    frame = pd.DataFrame({"band": ["y", "y", "o", "o"], "age_true": [20, 24, 60, 70], "age_pred": [22, 24, 50, 75.0]})
    table = stats.subgroup_metrics(frame, "band", y_true=None, y_pred=None, age_true="age_true", age_pred="age_pred")
    assert dict(zip(table["group"], table["mae"], strict=True)) == {"y": 1.0, "o": 7.5}
    assert table.attrs["gap"]["mae"] == 6.5 and table.attrs["best"] == "y"


def test_age_band_and_mean_std():
    bands = stats.age_band([5, 20, 29, 35, 61, np.nan])
    assert bands.astype(object).where(bands.notna(), None).tolist() == ["0-19", "20-29", "20-29", "30-39", "60+", None]
    values = [0.91, 0.93, 0.90]
    mean, std, n = stats.mean_std(values)
    assert (mean, std, n) == (pytest.approx(np.mean(values)), pytest.approx(np.std(values, ddof=1)), 3)
    assert stats.format_mean_std(values) == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} (n=3)"
    assert math.isnan(stats.mean_std([0.5])[1])
    with pytest.raises(FacetransferError, match="non-finite"):
        stats.mean_std([0.5, float("nan")])
