"""Every figure renders on small fake inputs of the shapes the library produces."""

import io

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from facetransfer import plots  # noqa: E402
from facetransfer.errors import FacetransferError  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def no_open_pyplot_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a plot function left a pyplot figure open"


def render(fig) -> Figure:
    """Draw the figure to PNG bytes (catches errors that only show at draw time)."""
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.getvalue()[:4] == b"\x89PNG"
    return fig


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def suptitle(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def images(n, size=16):
    return RNG.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def records(n=40):
    gender = RNG.integers(0, 2, n)
    return pd.DataFrame({
        "path": [f"/d/{i:06d}.jpg" for i in range(n)],
        "gender": gender,
        "age": RNG.integers(1, 90, n).astype(float),
        "age_group": pd.array([pd.NA] * n, dtype="Int64"),
        "subject": pd.array([pd.NA] * n, dtype="string"),
        "split": RNG.choice(["train", "val", "test"], n),
        "Young": RNG.integers(0, 2, n),
        "Eyeglasses": RNG.integers(0, 2, n),
        "Smiling": (gender ^ RNG.integers(0, 2, n)),
    })


def test_sample_grid_one_axes_per_image_with_captions_and_watermark():
    fig = render(plots.sample_grid(images(5), [0, 1, 1, "x", 0], ncols=3, synthetic=True))
    axes = visible_axes(fig)
    assert len(axes) == 5
    assert [ax.get_title() for ax in axes] == ["female", "male", "male", "x", "female"]
    assert "SYNTHETIC DATA" in suptitle(fig)
    assert any(t.get_text() == "SYNTHETIC DATA" for t in fig.texts)


def test_sample_grid_without_synthetic_has_no_watermark_and_rejects_length_mismatch():
    fig = render(plots.sample_grid(images(2), ["a", "b"]))
    assert "SYNTHETIC" not in suptitle(fig)
    assert not [t for t in fig.texts if t.get_text() == "SYNTHETIC DATA"]
    with pytest.raises(FacetransferError, match="lengths differ"):
        plots.sample_grid(images(3), ["a"])


def test_class_balance_from_records_and_from_counts():
    recs = records()
    fig = render(plots.class_balance(recs))
    ax = fig.axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["train", "val", "test"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["female", "male"]
    heights = sorted(int(p.get_height()) for p in ax.patches)
    expected = sorted(pd.crosstab(recs["split"], recs["gender"]).to_numpy().ravel())
    assert heights == expected
    fig = render(plots.class_balance({"train": {"female": 3, "male": 5}, "test": {"female": 1, "male": 1}}))
    assert sorted(int(p.get_height()) for p in fig.axes[0].patches) == [1, 1, 3, 5]


def test_attribute_correlation_heatmap_and_no_attribute_message():
    recs = records()
    fig = render(plots.attribute_correlation(recs, synthetic=True))
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert names == ["Young", "Eyeglasses", "Smiling", "male"]
    assert plots.binary_attributes(recs) == ["Young", "Eyeglasses", "Smiling"]
    fig = render(plots.attribute_correlation(recs[["path", "gender", "age"]]))
    assert "fewer than two" in fig.axes[0].texts[0].get_text()
    with pytest.raises(FacetransferError, match="Bald"):
        plots.attribute_correlation(recs, ["Bald"])


def test_age_histogram_by_gender_groups_and_without_ages():
    recs = records()
    fig = render(plots.age_histogram(recs))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    n_f, n_m = int((recs.gender == 0).sum()), int((recs.gender == 1).sum())
    assert labels == [f"female (n={n_f})", f"male (n={n_m})"]
    adience = recs.drop(columns="age").assign(age_group=RNG.integers(0, 8, len(recs)))
    fig = render(plots.age_histogram(adience))
    assert fig.axes[0].get_xlabel() == "age group (years)"
    fig = render(plots.age_histogram(recs.drop(columns="age")))
    assert fig.axes[0].texts[0].get_text() == "this dataset has no ages"


def test_image_sizes_from_table_and_from_files(tmp_path):
    from PIL import Image

    fig = render(plots.image_sizes(pd.DataFrame({"width": [178, 178, 200], "height": [218, 218, 200]}), target=64))
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title() == "distinct sizes: 2"
    paths = []
    for i, (w, h) in enumerate([(30, 40), (30, 40), (50, 50)]):
        p = tmp_path / f"{i}.jpg"
        Image.new("RGB", (w, h)).save(p)
        paths.append(str(p))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    fig = render(plots.image_sizes(paths + [str(tmp_path / "bad.jpg")], limit=10))
    assert "n=3" in suptitle(fig) and "1 unreadable" in suptitle(fig)


def test_quarantine_table_counts_by_reason():
    q = pd.DataFrame({
        "path": ["/a/1.jpg", "/a/2.jpg", "/a/3.jpg"],
        "reason": ["bad name", "bad name", "cannot decode"],
        "stage": ["load", "load", "decode"],
    })
    table = plots.quarantine_table(q)
    assert list(table.columns) == ["stage", "reason", "count", "example"]
    assert table.to_dict("records")[0] == {"stage": "load", "reason": "bad name", "count": 2, "example": "1.jpg"}
    assert plots.quarantine_table([]).empty
    assert plots.quarantine_table([{"path": "x", "reason": "r"}])["count"].tolist() == [1]


def history(n=4, phases=("head", "fine_tune")):
    phase = [phases[0]] * (n // 2) + [phases[-1]] * (n - n // 2)
    return pd.DataFrame({
        "epoch": np.arange(1, n + 1), "phase": phase,
        "loss": np.linspace(1, 0.3, n), "val_loss": np.linspace(1.1, 0.5, n),
        "accuracy": np.linspace(0.5, 0.9, n), "val_accuracy": np.linspace(0.5, 0.8, n),
        "lr": [1e-3] * n, "seconds": [1.0] * n,
    })


def test_training_curves_loss_and_metric_panels_with_phase_boundary():
    fig = render(plots.training_curves(history()))
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()][:2] == ["train", "validation"]
    assert len(ax.get_lines()) == 3  # train, val, the phase boundary
    multi = pd.DataFrame({"epoch": [1, 2], "loss": [1, 0.5], "val_loss": [1, 0.6], "gender_loss": [0.6, 0.3],
                          "val_gender_accuracy": [0.6, 0.7], "age_mae": [9.0, 7.0], "val_age_mae": [10.0, 8.0]})
    fig = render(plots.training_curves(multi))
    assert [ax.get_title() for ax in fig.axes] == ["loss", "gender_accuracy", "age_mae"]


def test_confusion_matrix_counts_and_row_percentages():
    fig = render(plots.confusion_matrix([[8, 2], [1, 9]]))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["8\n80.0%", "2\n20.0%", "1\n10.0%", "9\n90.0%"]
    assert fig.axes[0].get_xlabel() == "predicted" and fig.axes[0].get_ylabel() == "true"
    assert fig.axes[0].get_title() == "n=20, accuracy 85.0%"
    with pytest.raises(FacetransferError, match="2x2"):
        plots.confusion_matrix(np.ones((3, 3)))


def test_misclassified_grid_captions_and_empty_case():
    fig = render(plots.misclassified_grid(images(3), [0, 1, 0], [1, 0, 1], [0.9, 0.2, 0.7], ncols=2))
    axes = visible_axes(fig)
    assert len(axes) == 3
    assert axes[0].get_title() == "true female\npred male (0.90)"
    fig = render(plots.misclassified_grid(images(0), [], [], []))
    assert "no misclassified" in fig.axes[0].texts[0].get_text()


def test_saliency_grid_pairs_image_and_overlay():
    fig = render(plots.saliency_grid(images(3), RNG.random((3, 4, 4)), ["a", "b", "c"], ncols=2))
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ["a", "saliency", "b", "saliency", "c", "saliency"]


def comparison():
    return pd.DataFrame({
        "name": ["frozen", "full", "scratch"],
        "accuracy": [0.8, 0.85, 0.5], "accuracy_lo": [0.75, 0.8, 0.45], "accuracy_hi": [0.85, 0.9, 0.55],
        "precision": [0.8, 0.84, 0.0], "recall": [0.79, 0.86, 0.0], "f1": [0.8, 0.85, 0.33],
        "train_seconds": [3.0, 12.5, 4.0], "degenerate": [False, False, True],
    })


def test_metric_bars_marks_degenerate_runs_in_red():
    fig = render(plots.metric_bars(comparison()))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["accuracy", "precision", "recall", "f1"]
    labels = ax.get_yticklabels()
    assert [t.get_text() for t in labels] == ["frozen", "full", "scratch (degenerate)"]
    assert labels[2].get_color() == plots.RED and labels[0].get_color() != plots.RED
    with pytest.raises(FacetransferError, match="mae"):
        plots.metric_bars(comparison(), metrics=["mae"])


def test_time_comparison_bars_in_seconds():
    fig = render(plots.time_comparison(comparison()))
    ax = fig.axes[0]
    assert [round(p.get_width(), 1) for p in ax.patches] == [3.0, 12.5, 4.0]
    assert ax.get_xlabel() == "train_seconds (s)"


def test_overlaid_curves_one_line_per_run():
    fig = render(plots.overlaid_curves({"a": history(), "b": history(3, ("full",))}))
    assert [ax.get_title() for ax in fig.axes] == ["val_loss", "val_accuracy"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["a", "b"]


def predictions(n=60):
    y = RNG.integers(0, 2, n)
    prob = np.clip(0.3 * y + 0.7 * RNG.random(n), 0, 1)
    return pd.DataFrame({"y_true": y, "prob": prob, "y_pred": (prob >= 0.5).astype(int),
                         "Young": RNG.integers(0, 2, n)})


def test_reliability_diagram_from_the_stats_table_single_and_overlaid():
    from facetransfer import stats

    pred = predictions()
    bins = stats.reliability_table(pred["y_true"], pred["prob"], n_bins=5)
    bins.attrs["ece"] = 0.05
    fig = render(plots.reliability_diagram(bins))
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["perfect calibration", "model (ECE 0.050)"]
    assert sum(p.get_height() for p in fig.axes[1].patches) == len(pred)
    fig = render(plots.reliability_diagram({"a": bins, "b": bins}))
    assert len(fig.axes[0].get_lines()) == 3
    with pytest.raises(FacetransferError, match="mean_confidence"):
        plots.reliability_diagram(pd.DataFrame({"x": [1]}))


def test_subgroup_bars_from_the_stats_table_per_group_and_per_run():
    from facetransfer import stats

    table = stats.subgroup_metrics(predictions(), "Young").sort_values("group")
    fig = render(plots.subgroup_bars(table))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Young = 0", "Young = 1"]
    assert [round(p.get_width(), 6) for p in ax.patches] == [round(a, 6) for a in table["accuracy"]]
    assert len(ax.lines) + len(ax.collections) > 0  # the CI error bars
    runs = pd.concat([table.assign(run="a"), table.assign(run="b")])
    fig = render(plots.subgroup_bars(runs))
    assert len(fig.axes[0].patches) == 4
    fig = render(plots.subgroup_bars(table.iloc[:0]))
    assert "no subgroups" in fig.axes[0].texts[0].get_text()


def test_search_step_steps_and_history():
    from facetransfer.search import SearchResult

    trials = pd.DataFrame({
        "step": [1, 1, 2, 2], "key": ["train.batch_size"] * 2 + ["train.learning_rate"] * 2,
        "value": ["16", "32", "0.001", "0.0003"], "score": [0.6, 0.7, 0.72, 0.65],
        "chosen": [False, True, True, False],
    })
    fig = render(plots.search_step(trials, "train.learning_rate"))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.001", "0.0003"]
    assert ax.get_title() == "chosen: 0.001"
    assert ax.patches[0].get_facecolor()[:3] == matplotlib.colors.to_rgb(plots.RED)
    result = SearchResult("sequential", "val.accuracy", trials, {"train.batch_size": 32}, 0.72)
    fig = render(plots.search_steps(result))
    assert [ax.get_xlabel() for ax in fig.axes] == ["train.batch_size", "train.learning_rate"]
    assert fig.axes[0].get_ylabel() == "val.accuracy"
    history = pd.DataFrame({"trial": [0, 1, 2], "score": [0.5, 0.4, 0.6]})
    fig = render(plots.search_history(SearchResult("optuna-tpe", "val.loss", history, {}, 0.4)))
    assert list(fig.axes[0].get_lines()[1].get_ydata()) == [0.5, 0.4, 0.4]  # lower loss is better
    fig = render(plots.search_history(history))
    assert list(fig.axes[0].get_lines()[1].get_ydata()) == [0.5, 0.5, 0.6]
    assert "no Optuna" in plots.search_history(None).axes[0].texts[0].get_text()
    with pytest.raises(FacetransferError, match="missing score"):
        plots.search_steps(trials.drop(columns="score"))


def test_tables_for_notebook_steps():
    prov = {"dataset": "celeba", "synthetic": True, "n_records": 10, "split_counts": {"train": 8}}
    html = plots.provenance_table(prov).to_html()
    assert "SYNTHETIC DATA" in html
    assert "train" in html and "celeba" in html
    assert "SYNTHETIC" not in plots.provenance_table({**prov, "synthetic": False}).to_html()
    table = plots.params_table({"seed": 0, "model": {"head": {"dense": [64]}}})
    assert table.to_dict("records") == [{"param": "seed", "value": "0"}, {"param": "model.head.dense", "value": "[64]"}]
    metrics = {"val": None, "test": {"accuracy": 0.8, "precision": {"female": 0.7, "male": 0.9},
                                     "recall": {"female": 0.9, "male": 0.7}, "f1": {"female": 0.8, "male": 0.8},
                                     "support": {"female": 5, "male": 5}, "confusion_matrix": [[1, 0], [0, 1]]}}
    assert plots.metrics_table(metrics).to_dict() == {"test": {"accuracy": 0.8}}
    report = plots.class_report(metrics["test"])
    assert list(report.index) == ["female", "male"] and report.loc["male", "precision"] == 0.9


def test_misclassified_rows_orders_by_confidence_and_by_age_error():
    pred = pd.DataFrame({"split": ["test"] * 4 + ["val"], "row": [0, 1, 2, 3, 4], "y_true": [0, 1, 1, 0, 0],
                         "prob": [0.6, 0.1, 0.8, 0.95, 0.99], "y_pred": [1, 0, 1, 1, 1]})
    pred["correct"] = pred["y_true"] == pred["y_pred"]
    rows = plots.misclassified_rows(pred, 5)
    assert rows["row"].tolist() == [3, 1, 0]
    assert np.allclose(rows["confidence"], [0.95, 0.9, 0.6])
    age = pd.DataFrame({"split": ["test"] * 3, "row": [0, 1, 2], "y_true": [30.0, 40, 50], "y_pred": [31.0, 60, 45]})
    age["abs_error"] = (age.y_true - age.y_pred).abs()
    assert plots.misclassified_rows(age, 2)["row"].tolist() == [1, 2]


def test_calibration_and_subgroup_table_from_predictions():
    pred = predictions().assign(split="test")
    pred["correct"] = pred["y_true"] == pred["y_pred"]
    fig = render(plots.calibration(pred, task="gender"))
    assert "ECE" in fig.axes[0].get_legend().get_texts()[1].get_text()
    table = plots.subgroup_table(pred, ["Young"], task="gender")
    assert set(table["group"]) == {0, 1} and table["n"].sum() == len(pred)
    assert table["gap"].iloc[0] == pytest.approx(table["accuracy"].max() - table["accuracy"].min())
    assert "age in years" in plots.calibration(pred, task="age").axes[0].texts[0].get_text()


def test_augmentation_examples_draws_from_the_training_feeder():
    img = images(1, size=32)[0]
    fig = render(plots.augmentation_examples(img, {"flip": True, "rotation": 0.1, "zoom": 0.1}, n=5))
    axes = visible_axes(fig)
    assert len(axes) == 6
    assert np.array_equal(axes[0].images[0].get_array(), img)
    drawn = [np.asarray(ax.images[0].get_array()) for ax in axes[1:]]
    assert all(d.shape == img.shape for d in drawn)
    assert any(not np.array_equal(d, img) for d in drawn)
    fig = render(plots.augmentation_examples(img, None))
    assert "off" in fig.axes[0].texts[0].get_text()


def test_overlaid_curves_give_each_task_its_own_row():
    age = pd.DataFrame({"epoch": [1, 2], "loss": [300.0, 200.0], "val_loss": [310.0, 250.0], "val_mae": [14.0, 12.0]})
    age.attrs["task"] = "age"
    gender = history()
    gender.attrs["task"] = "gender"
    fig = render(plots.overlaid_curves({"source": age, "a": gender, "b": gender}))
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["age: val_loss", "age: val_mae", "gender: val_loss", "gender: val_accuracy"]
    assert [line.get_label() for line in fig.axes[2].get_lines()] == ["a", "b"]


def test_small_tables_for_notebook_steps():
    from facetransfer.search import SearchResult
    from facetransfer.train import TrainResult

    result = TrainResult(history=history(), timings={"train_seconds": 3.21, "epoch_seconds": [1.0, 2.0],
                                                     "cache_seconds": 0.5, "feature_seconds": 0.0}, used_feature_cache=False)
    table = plots.timing_table(result).set_index("item")["value"]
    assert table["train_seconds"] == "3.21" and table["epochs"] == "2" and table["mean epoch seconds"] == "1.5"
    seq = SearchResult("sequential", "val.accuracy", pd.DataFrame({"score": [0.5, 0.6]}), {"train.batch_size": 32}, 0.6)
    summary = plots.search_summary([seq, None])
    assert summary.to_dict("records") == [{"method": "sequential", "metric": "val.accuracy", "trials": 2,
                                           "best score": 0.6, "chosen values": '{"train.batch_size": 32}'}]
    info = plots.info_table({"total": 10, "trainable_layers": ["a", "b"], "root": None})
    assert info["value"].tolist() == ["10", '["a", "b"]', "null"]
    assert "SYNTHETIC DATA" in plots.banner(True).data and plots.banner(False).data == ""


def write_run(study, name, *, synthetic=True, task="gender", history_file=True):
    """A finished run folder as artifacts.write_run leaves it (metrics.json, predictions, history)."""
    from facetransfer import io, params

    raw = {"name": name, "task": task, "model": {"backbone": "compact", "weights": "none", "strategy": "full"},
           "train": {"learning_rate": 0.001 if name == "a" else 0.0001}}
    raw["data"] = {"dataset": "celeba", "synthetic": {"n": 50}} if synthetic else {"dataset": "celeba", "root": "/data/celeba"}
    cfg = params.resolve_run(raw)
    run_id = params.run_id(cfg)
    run_dir = study / "runs" / run_id
    pred = predictions(40).assign(split="test", path=[f"/d/{i}.jpg" for i in range(40)])
    io.atomic_write_csv(run_dir / "predictions.csv", pred)
    if history_file:
        io.atomic_write_csv(run_dir / "history.csv", history())
    cm = [[int(((pred.y_true == t) & (pred.y_pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    io.atomic_write_json(run_dir / "metrics.json", {"run_id": run_id, "status": "ok", "params": cfg,
                                                    "test": {"accuracy": 0.5, "confusion_matrix": cm},
                                                    "timing": {"train_seconds": 1.0}})
    return run_id


def test_study_helpers_on_a_run_folder_layout(tmp_path):
    from facetransfer import compare

    write_run(tmp_path, "a")
    write_run(tmp_path, "b")
    runs = compare.load_runs(tmp_path)
    assert plots.study_is_synthetic(runs)
    overview = plots.runs_overview(runs)
    assert list(overview.columns) == ["run_id", "label", "status", "error", "train.learning_rate"]
    histories = plots.read_histories(runs)
    assert sorted(histories) == ["a", "b"] and histories["a"].attrs["task"] == "gender"
    fig = render(plots.run_calibration(runs))
    assert len(fig.axes[0].get_lines()) == 3  # the diagonal and one line per run
    gaps = compare.subgroup_gaps(runs, ["Young"])
    fig = render(plots.subgroup_bars(gaps, metric="gap accuracy"))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["Young"]
    assert len(fig.axes[0].patches) == 2


def test_real_data_study_is_not_synthetic_and_missing_history_is_an_error(tmp_path):
    from facetransfer import compare

    run_id = write_run(tmp_path, "a", synthetic=False, history_file=False)
    runs = compare.load_runs(tmp_path)
    assert not plots.study_is_synthetic(runs)
    with pytest.raises(FacetransferError, match=f"run {run_id} ended ok but .*history.csv is missing"):
        plots.read_histories(runs)


def test_misclassified_grid_shows_ages_in_years():
    fig = render(plots.misclassified_grid(images(1), [73.0], [41.5], labels=None, unit="y"))
    assert visible_axes(fig)[0].get_title() == "true 73.0 y\npred 41.5 y"


# ---------------------------------------------------------------- what a reader sees


def watermark(fig):
    return [t for t in fig.texts if t.get_text() == "SYNTHETIC DATA"]


def drawn(fig):
    """The figure drawn on an Agg canvas (layout done) and that canvas's renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas, canvas.get_renderer()


@pytest.mark.parametrize("make", [
    lambda: plots.class_balance(records(), synthetic=True),
    lambda: plots.sample_grid(images(16), ncols=8, synthetic=True),
    lambda: plots.time_comparison(comparison(), synthetic=True),
], ids=["class_balance", "sample_grid", "time_comparison"])
def test_watermark_stays_inside_the_figure(make):
    fig = render(make())
    [mark] = watermark(fig)
    canvas, renderer = drawn(fig)
    box = mark.get_window_extent(renderer)
    width, height = canvas.get_width_height()
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height  # a tight bbox is not widened by it


def test_message_figures_are_small_and_say_synthetic_without_a_watermark():
    fig = render(plots.age_histogram(records().drop(columns=["age", "age_group"]), synthetic=True))
    assert "no ages" in fig.axes[0].texts[0].get_text()
    assert "SYNTHETIC DATA" in suptitle(fig) and watermark(fig) == []
    assert fig.get_size_inches()[1] <= 1.5


def test_saliency_overlay_opacity_follows_the_map():
    heat = np.zeros((3, 4, 4))
    heat[0, 1, 2] = 0.4
    heat[1] -= 0.2  # nothing lowers P(predicted): a transparent overlay
    fig = render(plots.saliency_grid(images(3), heat, ncols=3, alpha=0.6))
    overlays = [ax.images[1] for ax in fig.axes if len(ax.images) == 2]
    first = np.asarray(overlays[0].get_alpha())
    assert first.max() == pytest.approx(0.6) and first[1, 2] == pytest.approx(0.6) and (first == 0).sum() == 15
    assert np.asarray(overlays[1].get_alpha()).max() == 0


def test_search_history_has_whole_trial_numbers_and_overlaid_calibration_keeps_its_legend_aside():
    fig = render(plots.search_history(pd.DataFrame({"trial": [0, 1], "score": [0.8, 0.9]})))
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
    from facetransfer import stats

    pred = predictions()
    bins = stats.reliability_table(pred["y_true"], pred["prob"], n_bins=5)
    fig = render(plots.reliability_diagram({"a": bins, "b": bins}))
    legend = fig.axes[0].get_legend()
    _, renderer = drawn(fig)
    assert legend.get_window_extent(renderer).x0 >= fig.axes[0].get_window_extent(renderer).x1  # beside, not over, the curves


def test_runs_overview_puts_what_a_run_is_before_its_data():
    runs = pd.DataFrame({
        "run_id": ["a", "b"], "label": ["a", "b"], "status": ["ok", "ok"], "error": [None, None],
        "data.dataset": ["celeba", "utkface"], "eval.subgroups": [("Young",), ("race",)], "seed": [0, 0],
        "train.learning_rate": [0.001, 0.01], "task": ["gender", "age"], "model.strategy": ["frozen", "full"],
    })
    assert list(plots.runs_overview(runs).columns) == [
        "run_id", "label", "status", "error", "task", "model.strategy", "train.learning_rate", "data.dataset", "eval.subgroups"]
