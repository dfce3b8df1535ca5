"""Every figure the notebooks show.

Each function takes plain data (numpy arrays, pandas tables, dicts) and returns a
:class:`matplotlib.figure.Figure` built without pyplot, so nothing is shown or kept open
as a side effect: a notebook cell shows the figure it returns, and the caller may
``fig.savefig(...)`` it. ``synthetic=True`` adds a "SYNTHETIC DATA" subtitle and
watermark, so no figure of generated faces can be mistaken for a result on real faces.

When the data lacks what a figure needs (no ages in CelebA, no misclassified images), the
figure says so in words instead of failing, so a notebook runs unchanged on every dataset.

Class order is female, male everywhere (gender 1 = male).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from facetransfer.errors import FacetransferError

CLASS_NAMES = ("female", "male")
ADIENCE_GROUPS = ("0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100")
SYNTHETIC_LABEL = "SYNTHETIC DATA"
SYNTHETIC_NOTE = "SYNTHETIC DATA: generated faces, not real people"
# Columns of the records table that are not binary attributes.
NON_ATTRIBUTES = {"path", "gender", "age", "age_group", "subject", "source_split", "fold", "split", "row", "race"}
RED = "#c0392b"
PALETTE = ("#c0608f", "#3a75b0", "#5b9b5b", "#d08c2c", "#7f5fa8", "#4aa3a3", "#a0522d", "#777777")


# ---------------------------------------------------------------- helpers


def _figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (6.4, 4.0), **kw):
    """A pyplot-free figure and a 2-D array of its axes."""
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _finish(fig: Figure, title: str, synthetic: bool, *, watermark: bool = True) -> Figure:
    """Set the title; mark the figure when its data is synthetic (subtitle, and a
    watermark sized to stay inside the figure, so it never widens a saved figure)."""
    if synthetic:
        title = f"{title}\n{SYNTHETIC_NOTE}"
        if watermark:
            width, height = fig.get_size_inches()
            fig.text(0.5, 0.5, SYNTHETIC_LABEL, ha="center", va="center", rotation=25,
                     fontsize=min(44.0, 5.5 * width, 12.0 * height), color=RED, alpha=0.18, weight="bold", zorder=100)
    fig.suptitle(title, fontsize=11)
    return fig


def _message(title: str, text: str, *, synthetic: bool = False) -> Figure:
    """A small figure that states why there is nothing to plot (the subtitle still says
    SYNTHETIC DATA; there is nothing to watermark)."""
    fig, axes = _figure(size=(7.0, 1.3))
    ax = axes[0, 0]
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="#444444", style="italic", wrap=True)
    ax.set_axis_off()
    return _finish(fig, title, synthetic, watermark=False)


def _as_display(image) -> np.ndarray:
    """uint8 or float 0..255 (H, W[, C]) → something imshow shows as-is."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def _grid(n: int, ncols: int, cell: float = 1.7, extra_h: float = 0.9):
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = _figure(nrows, ncols, size=(cell * ncols, cell * nrows + extra_h))
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes.flat[:n]


def _check_lengths(**items) -> int:
    lengths = {k: len(v) for k, v in items.items() if v is not None}
    if len(set(lengths.values())) > 1:
        raise FacetransferError(f"plots: lengths differ: {lengths}; pass one entry per image")
    return next(iter(lengths.values()), 0)


def _label_column(table: pd.DataFrame, label: str | None) -> pd.Series:
    if label is not None:
        if label not in table:
            raise FacetransferError(f"plots: column {label!r} not in table; columns: {', '.join(map(str, table.columns))}")
        return table[label].astype(str)
    for name in ("Run", "label", "name", "run", "run_id"):
        if name in table:
            return table[name].astype(str)
    return pd.Series(table.index.astype(str), index=table.index)


def _degenerate(table: pd.DataFrame) -> np.ndarray:
    if "degenerate" not in table:
        return np.zeros(len(table), dtype=bool)
    return table["degenerate"].fillna(False).astype(bool).to_numpy()


def _ci_columns(table: pd.DataFrame, metric: str) -> tuple[str, str] | None:
    """CI columns ``<metric>_lo/_hi`` (``acc_lo/acc_hi`` for accuracy, as stats writes them)."""
    short = "acc" if metric == "accuracy" else metric
    for lo, hi in ((f"{metric}_lo", f"{metric}_hi"), (f"{short}_lo", f"{short}_hi"), ("lo", "hi")):
        if lo in table and hi in table:
            return lo, hi
    return None


def _mark_missing(ax, y, values) -> None:
    """Write "n/a" where a bar has no value (e.g. accuracy of an age regressor)."""
    for yi, v in zip(y, values, strict=True):
        if not np.isfinite(v):
            ax.text(0.005, yi, "n/a", va="center", fontsize=7, color="gray", transform=ax.get_yaxis_transform())


def _class_name(value, labels: Sequence[str] | None) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "unknown"
    if labels is not None and not isinstance(value, str) and float(value).is_integer():
        i = int(value)
        if 0 <= i < len(labels):
            return labels[i]
    if isinstance(value, (float, np.floating)):
        return f"{value:.1f}"
    return str(value)


# ---------------------------------------------------------------- data exploration


def sample_grid(images, captions: Sequence | None = None, *, ncols: int = 8, labels: Sequence[str] | None = CLASS_NAMES,
                title: str = "Sample images", synthetic: bool = False) -> Figure:
    """A grid of images; ``captions`` are strings or class indices (shown as ``labels``)."""
    n = _check_lengths(images=images, captions=captions)
    if n == 0:
        return _message(title, "no images to show", synthetic=synthetic)
    fig, axes = _grid(n, ncols)
    for i, ax in enumerate(axes):
        ax.imshow(_as_display(images[i]))
        ax.set_xticks([])
        ax.set_yticks([])
        if captions is not None:
            cap = captions[i]
            ax.set_title(cap if isinstance(cap, str) else _class_name(cap, labels), fontsize=8)
    return _finish(fig, title, synthetic)


def _counts_table(counts, column: str, labels: Sequence[str] | None) -> pd.DataFrame:
    """Split × class counts from records, a nested mapping or a crosstab."""
    if isinstance(counts, pd.DataFrame) and column in counts:
        split = counts["split"] if "split" in counts else pd.Series("all", index=counts.index)
        values = counts[column]
        if labels is not None:
            values = values.map(lambda v: _class_name(v, labels))
        table = pd.crosstab(split.rename("split"), values.rename(column))
    elif isinstance(counts, pd.DataFrame):
        table = counts
    elif isinstance(counts, Mapping) and counts and all(isinstance(v, Mapping) for v in counts.values()):
        table = pd.DataFrame(counts).T.fillna(0)
    elif isinstance(counts, Mapping):
        table = pd.DataFrame([counts], index=["all"])
    else:
        raise FacetransferError(f"plots.class_balance: expected records with a {column!r} column or a mapping of counts, got {type(counts).__name__}")
    order = [s for s in ("train", "val", "test") if s in table.index]
    table = table.loc[order + [s for s in table.index if s not in order]]
    if labels is not None:
        cols = [c for c in labels if c in table.columns]
        table = table[cols + [c for c in table.columns if c not in cols]]
    return table.astype(int)


def class_balance(counts, *, column: str = "gender", labels: Sequence[str] | None = CLASS_NAMES,
                  title: str = "Class balance per split", synthetic: bool = False) -> Figure:
    """Grouped bars of class counts per split, each bar labelled with count and share.

    ``counts``: the records table (columns ``split`` and ``column``), a mapping
    ``{split: {class: n}}``, a mapping ``{class: n}`` or a split × class crosstab.
    """
    table = _counts_table(counts, column, labels)
    if table.empty:
        return _message(title, f"no {column} labels to count", synthetic=synthetic)
    fig, axes = _figure(size=(1.6 + 1.6 * len(table), 4.0))
    ax = axes[0, 0]
    x = np.arange(len(table))
    width = 0.8 / len(table.columns)
    totals = table.sum(axis=1).replace(0, 1)
    for j, cls in enumerate(table.columns):
        bars = ax.bar(x + (j - (len(table.columns) - 1) / 2) * width, table[cls], width,
                      label=str(cls), color=PALETTE[j % len(PALETTE)])
        shares = table[cls] / totals
        ax.bar_label(bars, labels=[f"{c}\n{s:.0%}" for c, s in zip(table[cls], shares, strict=True)], fontsize=8)
    ax.set_xticks(x, [f"{s}\n(n={t})" for s, t in zip(table.index, table.sum(axis=1), strict=True)])
    ax.set_ylabel("images")
    ax.set_xlabel("split")
    ax.margins(y=0.2)
    ax.legend(title=column)
    return _finish(fig, title, synthetic)


def binary_attributes(records: pd.DataFrame) -> list[str]:
    """Columns of ``records`` that hold 0/1 attributes (CelebA-type labels)."""
    out = []
    for col in records.columns:
        if col in NON_ATTRIBUTES:
            continue
        values = pd.to_numeric(records[col], errors="coerce")
        if values.notna().all() and len(values) and set(values.unique()) <= {0, 1}:
            out.append(col)
    return out


def attribute_correlation(records: pd.DataFrame, attributes: Sequence[str] | None = None, *,
                          title: str = "Correlation of binary attributes", synthetic: bool = False) -> Figure:
    """Heatmap of Pearson (phi) correlations between 0/1 attributes; gender included as ``male``."""
    import seaborn as sns

    attributes = list(attributes) if attributes is not None else binary_attributes(records)
    missing = [a for a in attributes if a not in records]
    if missing:
        raise FacetransferError(f"plots.attribute_correlation: attributes not in records: {', '.join(missing)}")
    frame = records[attributes].apply(pd.to_numeric, errors="coerce")
    if "gender" in records and "Male" not in attributes and records["gender"].notna().any():
        frame = frame.assign(male=pd.to_numeric(records["gender"], errors="coerce"))
    if frame.shape[1] < 2:
        return _message(title, "this dataset has fewer than two binary attributes: nothing to correlate", synthetic=synthetic)
    corr = frame.astype(float).corr()
    k = len(corr)
    side = min(14.0, 2.5 + 0.32 * k)
    fig, axes = _figure(size=(side + 1.2, side))
    sns.heatmap(corr, ax=axes[0, 0], vmin=-1, vmax=1, center=0, cmap="vlag", square=True,
                annot=k <= 12, fmt=".2f", annot_kws={"fontsize": 7},
                cbar_kws={"label": "correlation", "shrink": 0.7}, xticklabels=True, yticklabels=True)
    axes[0, 0].tick_params(labelsize=7 if k > 20 else 9)
    return _finish(fig, f"{title} (n={len(frame)})", synthetic)


def age_histogram(records: pd.DataFrame, *, bins=None, labels: Sequence[str] = CLASS_NAMES,
                  title: str = "Age distribution by gender", synthetic: bool = False) -> Figure:
    """Histogram of ages (years) by gender; Adience-type age groups as bars by gender."""
    has_age = "age" in records and pd.to_numeric(records["age"], errors="coerce").notna().any()
    has_group = "age_group" in records and records["age_group"].notna().any()
    if not has_age and not has_group:
        return _message(title, "this dataset has no ages", synthetic=synthetic)
    gender = records["gender"] if "gender" in records else pd.Series(pd.NA, index=records.index)
    fig, axes = _figure(size=(7.0, 4.0))
    ax = axes[0, 0]
    groups = [(labels[g], gender == g) for g in (0, 1)] + [("unknown", gender.isna())]
    if has_age:
        ages = pd.to_numeric(records["age"], errors="coerce")
        bins = np.arange(0, max(ages.max(), 1) + 5, 5) if bins is None else bins
        for j, (name, mask) in enumerate(groups):
            values = ages[mask.fillna(False).astype(bool)].dropna()
            if len(values):
                ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (n={len(values)})", color=PALETTE[j])
        ax.set_xlabel("age (years)")
    else:
        codes = pd.to_numeric(records["age_group"], errors="coerce")
        present = sorted(int(c) for c in codes.dropna().unique())
        x = np.arange(len(present))
        for j, (name, mask) in enumerate(groups[:2]):
            counts = codes[mask.fillna(False).astype(bool)].value_counts()
            ax.bar(x + (j - 0.5) * 0.4, [counts.get(c, 0) for c in present], 0.4, label=name, color=PALETTE[j])
        ax.set_xticks(x, [ADIENCE_GROUPS[c] if c < len(ADIENCE_GROUPS) else str(c) for c in present])
        ax.set_xlabel("age group (years)")
    ax.set_ylabel("images")
    ax.legend(title="gender")
    return _finish(fig, title, synthetic)


def _read_sizes(paths: Sequence[str], limit: int, seed: int) -> tuple[pd.DataFrame, int, int]:
    from PIL import Image

    paths = list(paths)
    total = len(paths)
    if total > limit:
        pick = np.random.default_rng(seed).choice(total, size=limit, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    rows, unreadable = [], 0
    for p in paths:
        try:
            with Image.open(p) as im:
                rows.append(im.size)
        except (OSError, ValueError):
            unreadable += 1
    return pd.DataFrame(rows, columns=["width", "height"]), total, unreadable


def image_sizes(sizes, *, target: int | None = None, limit: int = 2000, seed: int = 0,
                title: str = "Image sizes on disk", synthetic: bool = False) -> Figure:
    """Width × height of the files (point size = count) and the aspect ratios.

    ``sizes``: a table with ``width`` and ``height`` columns, or image paths (headers are
    read; above ``limit`` files a seeded sample is read and the title says so).
    ``target`` marks the model's input side.
    """
    note = ""
    if isinstance(sizes, pd.DataFrame) and {"width", "height"} <= set(sizes.columns):
        table = sizes[["width", "height"]]
    else:
        paths = sizes["path"].tolist() if isinstance(sizes, pd.DataFrame) else list(sizes)
        table, total, unreadable = _read_sizes(paths, limit, seed)
        if total > limit:
            note += f"; a seeded sample of {limit} of {total} files"
        if unreadable:
            note += f"; {unreadable} unreadable (see the quarantine table)"
    if table.empty:
        return _message(title, "no readable images", synthetic=synthetic)
    counts = table.value_counts().rename("n").reset_index()
    fig, axes = _figure(1, 2, size=(10.0, 4.0))
    ax = axes[0, 0]
    ax.scatter(counts["width"], counts["height"], s=20 + 300 * counts["n"] / counts["n"].max(), alpha=0.6, color=PALETTE[1])
    xs = list(counts["width"]) + ([target] if target is not None else [])
    middle = (min(xs) + max(xs)) / 2
    for _, row in counts.nlargest(3, "n").iterrows():
        right_half = row.width > middle or len(set(xs)) == 1  # label towards the inside of the axes
        ax.annotate(f"{row.width}×{row.height} (n={row.n})", (row.width, row.height), fontsize=8,
                    xytext=(-8 if right_half else 8, 8), textcoords="offset points", ha="right" if right_half else "left")
    if target is not None:
        ax.scatter([target], [target], marker="x", s=80, color=RED, label=f"model input {target}×{target}")
        ax.legend(fontsize=8, loc="lower right")
    ax.margins(0.25)  # room for the point sizes and their labels
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title(f"distinct sizes: {len(counts)}")
    ax = axes[0, 1]
    ax.hist(table["width"] / table["height"], bins=20, color=PALETTE[2])
    ax.set_xlabel("aspect ratio (width / height)")
    ax.set_ylabel("images")
    ax.set_title("aspect ratio")
    return _finish(fig, f"{title} (n={len(table)}{note})", synthetic)


def augmentation_examples(image, augment: Mapping | None, *, n: int = 7, seed: int = 0,
                          title: str = "Training augmentation", synthetic: bool = False) -> Figure:
    """The original image and ``n`` draws of the training augmentation (``train.augment``).

    The draws come from the training feeder itself, so the figure shows exactly what
    the model sees.
    """
    if augment is None:
        return _message(title, "train.augment is off: training images are used as they are", synthetic=synthetic)
    from facetransfer.feeder import BatchFeeder

    original = _as_display(image)
    stack = np.repeat(original[None], n, axis=0)
    feeder = BatchFeeder(stack, np.arange(n), None, batch_size=n, shuffle=False, seed=seed, augment=dict(augment))
    batch = feeder[0]
    drawn = np.asarray(batch[0] if isinstance(batch, tuple) else batch)
    images = [original, *drawn]
    captions = ["original"] + [f"draw {i + 1}" for i in range(n)]
    fig = sample_grid(images, captions, ncols=min(8, n + 1), labels=None, title=title, synthetic=synthetic)
    cfg = ", ".join(f"{k}={v}" for k, v in augment.items())
    fig.supxlabel(f"train.augment: {cfg}", fontsize=9)
    return fig


def quarantine_table(quarantine) -> pd.DataFrame:
    """Counts of quarantined inputs by stage and reason, with one example path each.

    ``quarantine``: a table with ``path`` and ``reason`` (and ``stage``) columns, or a
    list of ``{"path", "reason"}`` dicts. Empty in, an empty table with the same columns out.
    """
    frame = pd.DataFrame(list(quarantine)) if not isinstance(quarantine, pd.DataFrame) else quarantine
    columns = ["stage", "reason", "count", "example"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    missing = {"path", "reason"} - set(frame.columns)
    if missing:
        raise FacetransferError(f"plots.quarantine_table: quarantine needs columns path, reason; missing {', '.join(sorted(missing))}")
    frame = frame.assign(stage=frame["stage"] if "stage" in frame else "")
    table = (frame.groupby(["stage", "reason"], sort=False)["path"]
             .agg(count="size", example=lambda s: Path(str(s.iloc[0])).name)
             .reset_index()
             .sort_values("count", ascending=False, kind="stable")
             .reset_index(drop=True))
    return table[columns]


# ---------------------------------------------------------------- one run


_NOT_METRICS = {"epoch", "phase", "lr", "learning_rate", "seconds", "time"}


def _metric_bases(history: pd.DataFrame) -> list[str]:
    """``loss`` first, then every metric logged for train and/or val (per-output losses left out)."""
    names = [c[4:] if c.startswith("val_") else c for c in history.columns]
    has_loss = "loss" in names
    bases = []
    for col, base in zip(history.columns, names, strict=True):
        if base in _NOT_METRICS or base in bases or not pd.api.types.is_numeric_dtype(history[col]):
            continue
        if has_loss and base.endswith("_loss"):
            continue
        bases.append(base)
    return sorted(bases, key=lambda b: b != "loss")


def _epochs(history: pd.DataFrame) -> np.ndarray:
    if "epoch" in history and history["epoch"].is_monotonic_increasing and history["epoch"].is_unique:
        return history["epoch"].to_numpy()
    return np.arange(1, len(history) + 1)


def _mark_phases(ax, history: pd.DataFrame, x: np.ndarray) -> None:
    if "phase" not in history or history["phase"].nunique() < 2:
        return
    phase = history["phase"].astype(str).to_numpy()
    starts = [0] + [i for i in range(1, len(phase)) if phase[i] != phase[i - 1]]
    for k, i in enumerate(starts):
        if k:
            ax.axvline((x[i - 1] + x[i]) / 2, color="gray", linestyle="--", linewidth=1)
        ax.text(x[i], 1.0, f" {phase[i]}", transform=ax.get_xaxis_transform(), va="bottom", fontsize=8, color="gray")


def training_curves(history: pd.DataFrame, *, title: str = "Training curves", synthetic: bool = False) -> Figure:
    """Loss and each metric per epoch, train vs validation; training phases marked."""
    if history is None or len(history) == 0:
        return _message(title, "no epochs were trained", synthetic=synthetic)
    bases = _metric_bases(history)
    x = _epochs(history)
    fig, axes = _figure(1, len(bases), size=(4.2 * len(bases), 3.8))
    for ax, base in zip(axes.flat, bases, strict=True):
        for col, style, name in ((base, "-o", "train"), (f"val_{base}", "-s", "validation")):
            if col in history:
                ax.plot(x, history[col], style, markersize=3, label=name)
        _mark_phases(ax, history, x)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(base)
        ax.set_title(base, pad=14)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, title, synthetic)


def confusion_matrix(cm, labels: Sequence[str] = CLASS_NAMES, *, title: str = "Confusion matrix (test)",
                     synthetic: bool = False) -> Figure:
    """Counts and row percentages (rows = true class, columns = predicted class)."""
    import seaborn as sns

    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise FacetransferError(f"plots.confusion_matrix: expected a {len(labels)}x{len(labels)} matrix for labels {', '.join(labels)}, got shape {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    annot = np.array([[f"{int(c)}\n{s:.1%}" for c, s in zip(crow, srow, strict=True)] for crow, srow in zip(cm, share, strict=True)])
    side = max(4.0, 2.4 + 0.7 * len(labels))
    fig, axes = _figure(size=(side + 1.2, side))
    ax = axes[0, 0]
    sns.heatmap(share, ax=ax, annot=annot, fmt="", cmap="Blues", vmin=0, vmax=1, square=True,
                xticklabels=labels, yticklabels=labels, cbar_kws={"label": "share of the true class"})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else float("nan")
    ax.set_title(f"n={total}, accuracy {acc:.1%}")
    return _finish(fig, title, synthetic)


def misclassified_grid(images, true, pred, prob=None, *, labels: Sequence[str] | None = CLASS_NAMES, ncols: int = 8,
                       unit: str = "", title: str = "Misclassified test images", synthetic: bool = False) -> Figure:
    """Images with their true and predicted labels and P(predicted class).

    ``labels=None`` shows the values themselves (age in years, with ``unit``)."""
    n = _check_lengths(images=images, true=true, pred=pred, prob=prob)
    if n == 0:
        return _message(title, "no misclassified images", synthetic=synthetic)
    captions = []
    for i in range(n):
        suffix = f" {unit}" if unit and labels is None else ""
        cap = f"true {_class_name(true[i], labels)}{suffix}\npred {_class_name(pred[i], labels)}{suffix}"
        if prob is not None:
            cap += f" ({float(prob[i]):.2f})"
        captions.append(cap)
    return sample_grid(images, captions, ncols=ncols, labels=None, title=title, synthetic=synthetic)


def saliency_grid(images, heatmaps, captions: Sequence[str] | None = None, *, ncols: int = 4, alpha: float = 0.75,
                  title: str = "Occlusion saliency", synthetic: bool = False) -> Figure:
    """Each image beside its saliency map overlaid (red = occluding this region hurts most).

    The overlay's opacity follows the map (up to ``alpha`` at its maximum), so regions
    that do not matter stay visible as they are."""
    n = _check_lengths(images=images, heatmaps=heatmaps, captions=captions)
    if n == 0:
        return _message(title, "no images to explain", synthetic=synthetic)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = _figure(nrows, 2 * ncols, size=(3.2 * ncols, 1.8 * nrows + 0.9))
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, ncols)
        img = _as_display(images[i])
        heat = np.nan_to_num(np.asarray(heatmaps[i], dtype=float)).clip(min=0)
        weight = heat / heat.max() if heat.max() > 0 else heat
        left, right = axes[r, 2 * c], axes[r, 2 * c + 1]
        left.imshow(img)
        right.imshow(img)
        right.imshow(weight, cmap="jet", vmin=0, vmax=1, alpha=alpha * weight,
                     extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5), interpolation="bilinear")
        left.set_title(captions[i] if captions is not None else f"image {i + 1}", fontsize=8)
        right.set_title("saliency", fontsize=8)
    return _finish(fig, title, synthetic)


def reliability_diagram(table, *, title: str = "Reliability diagram", synthetic: bool = False) -> Figure:
    """Observed frequency vs mean predicted probability per bin, and the bin counts.

    ``table`` (or ``{name: table}`` to overlay runs) has one row per bin with the mean
    predicted probability (``mean_confidence``, as :func:`facetransfer.metrics.calibration_table`
    writes it, or ``confidence``), the observed frequency (``accuracy``) and ``count``.
    An ``ece`` entry in ``table.attrs`` goes into the legend (with ``ece_lo``/``ece_hi``
    and ``unit`` where present).
    """
    tables = dict(table) if isinstance(table, Mapping) else {"": table}
    overlaid = len(tables) > 1
    fig, axes = _figure(2, 1, size=(8.4 if overlaid else 5.2, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top, bottom = axes[0, 0], axes[1, 0]
    top.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    width = 0.8 / max(1, len(tables)) / 10
    for j, (name, t) in enumerate(tables.items()):
        x_col = _pick_column(t, ("mean_confidence", "confidence", "mean_prob"), "reliability_diagram")
        y_col = _pick_column(t, ("accuracy", "frequency", "observed"), "reliability_diagram")
        t = t[t["count"] > 0] if "count" in t else t
        label = name or "model"
        if "ece" in t.attrs:
            ci = f" [{t.attrs['ece_lo']:.3f}, {t.attrs['ece_hi']:.3f}], {t.attrs['unit']}" if np.isfinite(t.attrs.get("ece_lo", np.nan)) else ""
            label += f" (ECE {t.attrs['ece']:.3f}{ci})"
        color = PALETTE[(j + 1) % len(PALETTE)]
        top.plot(t[x_col], t[y_col], "-o", color=color, label=label)
        if "count" in t:
            bottom.bar(t[x_col] + (j - (len(tables) - 1) / 2) * width, t["count"], width, color=color)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed frequency")
    if overlaid:  # beside the plot: one line per run would hide the curves
        top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    bottom.set_xlabel("mean predicted probability")
    bottom.set_ylabel("images")
    return _finish(fig, title, synthetic)


def _pick_column(table: pd.DataFrame, names: Sequence[str], where: str) -> str:
    for name in names:
        if name in table:
            return name
    raise FacetransferError(f"plots.{where}: table needs one of the columns {', '.join(names)}; has {', '.join(map(str, table.columns))}")


def subgroup_bars(table: pd.DataFrame, *, metric: str | None = None, title: str | None = None,
                  synthetic: bool = False) -> Figure:
    """One bar per subgroup (``attribute = group``) with its CI and n; a ``run`` / ``Run``
    column gives one bar per run. ``metric`` defaults to accuracy (mae for age-only tables).

    Takes :func:`facetransfer.compare.subgroups` tables, and
    :func:`facetransfer.compare.subgroup_gaps` tables (``metric="gap"``: one bar per
    attribute and metric, with the gap's interval).
    """
    if metric is None:
        metric = "accuracy" if table is not None and "accuracy" in table else "mae"
    title = title or f"{metric} by subgroup (test)"
    if table is None or len(table) == 0:
        return _message(title, "no subgroups (set eval.subgroups)", synthetic=synthetic)
    if metric not in table:
        raise FacetransferError(f"plots.subgroup_bars: metric {metric!r} not in table; columns: {', '.join(map(str, table.columns))}")
    if pd.to_numeric(table[metric], errors="coerce").isna().all():
        return _message(title, f"no {metric} to show (every subgroup too small or one class; see the table)", synthetic=synthetic)
    group_col = next((c for c in ("group", "value", "subgroup") if c in table), None)
    if group_col is None and "attribute" not in table:
        raise FacetransferError(f"plots.subgroup_bars: table needs a group or attribute column; has {', '.join(map(str, table.columns))}")
    if group_col is None:
        label = table["attribute"].astype(str) + (" " + table["metric"].astype(str) if "metric" in table else "")
    elif "attribute" in table:
        label = table["attribute"].astype(str) + " = " + table[group_col].astype(str)
    else:
        label = table[group_col].astype(str)
    run_col = next((c for c in ("run", "Run") if c in table), None)
    frame = table.assign(_label=label.to_numpy(), _run=table[run_col].astype(str).to_numpy() if run_col else "")
    runs = list(dict.fromkeys(frame["_run"]))
    groups = list(dict.fromkeys(frame["_label"]))
    ci = _ci_columns(frame, metric)
    height = 0.8 / len(runs)
    fig, axes = _figure(size=(9.0, 1.6 + len(groups) * (0.25 + 0.2 * len(runs))))
    ax = axes[0, 0]
    for j, run in enumerate(runs):
        part = frame[frame["_run"] == run].drop_duplicates("_label").set_index("_label")
        exists = np.isin(groups, part.index)
        part = part.reindex(groups)
        values = pd.to_numeric(part[metric], errors="coerce").to_numpy(dtype=float)
        y = np.arange(len(groups)) + (j - (len(runs) - 1) / 2) * height
        xerr = None
        if ci is not None:
            xerr = np.vstack([values - part[ci[0]].to_numpy(dtype=float), part[ci[1]].to_numpy(dtype=float) - values]).clip(min=0)
        bars = ax.barh(y, np.nan_to_num(values), height, xerr=xerr, capsize=2, label=run or None, color=PALETTE[(j + 1) % len(PALETTE)])
        _mark_missing(ax, y[exists], values[exists])
        if "n" in part:
            ax.bar_label(bars, labels=[f"{v:.3f} (n={int(k)})" if pd.notna(k) else "" for v, k in zip(values, part["n"], strict=True)],
                         fontsize=7, padding=3)
    ax.set_yticks(np.arange(len(groups)), groups)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    if np.nanmax(pd.to_numeric(frame[metric], errors="coerce").to_numpy(dtype=float)) <= 1:
        ax.set_xlim(0, 1.25 if "n" in frame else 1.0)
    if len(runs) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, title, synthetic)


# ---------------------------------------------------------------- comparing runs


def metric_bars(table: pd.DataFrame, *, metrics: Sequence[str] | None = None, label: str | None = None,
                title: str = "Test metrics by run", synthetic: bool = False) -> Figure:
    """Grouped bars of each metric per run with confidence intervals; degenerate runs in red.

    ``table``: one row per run; CIs from ``<metric>_lo`` / ``<metric>_hi`` columns; a
    boolean ``degenerate`` column marks runs that predict one class only.
    """
    if table is None or len(table) == 0:
        return _message(title, "no runs to compare", synthetic=synthetic)
    if metrics is None:
        metrics = [m for m in ("accuracy", "precision", "recall", "f1", "f1_macro") if m in table]
    missing = [m for m in metrics if m not in table]
    if missing or not metrics:
        raise FacetransferError(f"plots.metric_bars: metrics {', '.join(missing) or '(none)'} not in table; columns: {', '.join(map(str, table.columns))}")
    names = _label_column(table, label)
    bad = _degenerate(table)
    width = 0.8 / len(metrics)
    y = np.arange(len(table))
    fig, axes = _figure(size=(10.0, 1.6 + len(table) * (0.25 + 0.16 * len(metrics))))
    ax = axes[0, 0]
    for j, m in enumerate(metrics):
        values = pd.to_numeric(table[m], errors="coerce").to_numpy(dtype=float)
        ci = _ci_columns(table, m)
        xerr = None
        if ci is not None:
            lo = pd.to_numeric(table[ci[0]], errors="coerce").to_numpy(dtype=float)
            hi = pd.to_numeric(table[ci[1]], errors="coerce").to_numpy(dtype=float)
            xerr = np.vstack([values - lo, hi - values]).clip(min=0)
        ax.barh(y + (j - (len(metrics) - 1) / 2) * width, np.nan_to_num(values), width, xerr=xerr, capsize=2,
                label=m, color=PALETTE[(j + 1) % len(PALETTE)], edgecolor=[RED if b else "none" for b in bad])
        _mark_missing(ax, y + (j - (len(metrics) - 1) / 2) * width, values)
    ax.set_yticks(y, [f"{n} (degenerate)" if b else n for n, b in zip(names, bad, strict=True)])
    for tick, b in zip(ax.get_yticklabels(), bad, strict=True):
        if b:
            tick.set_color(RED)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("score on the test split")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="x", alpha=0.3)
    return _finish(fig, title, synthetic)


def time_comparison(table: pd.DataFrame, *, column: str | None = None, label: str | None = None,
                    title: str = "Training time by run", synthetic: bool = False) -> Figure:
    """Horizontal bars of training seconds per run (``train_seconds`` by default)."""
    if table is None or len(table) == 0:
        return _message(title, "no runs to compare", synthetic=synthetic)
    column = column or _pick_column(table, ("train_seconds", "training_time", "seconds"), "time_comparison")
    names = _label_column(table, label)
    bad = _degenerate(table)
    seconds = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    fig, axes = _figure(size=(7.5, 1.3 + 0.4 * len(table)))
    ax = axes[0, 0]
    y = np.arange(len(table))
    bars = ax.barh(y, seconds, color=[RED if b else PALETTE[1] for b in bad])
    ax.bar_label(bars, labels=[f"{s:.1f} s" for s in seconds], fontsize=8, padding=3)
    ax.set_yticks(y, names)
    for tick, b in zip(ax.get_yticklabels(), bad, strict=True):
        if b:
            tick.set_color(RED)
    ax.invert_yaxis()
    ax.set_xlabel(f"{column} (s)")
    ax.margins(x=0.15)
    return _finish(fig, title, synthetic)


def _default_curve_metrics(histories: Mapping[str, pd.DataFrame]) -> list[str]:
    metrics: list[str] = []
    for h in histories.values():
        for base in _metric_bases(h):
            col = f"val_{base}"
            if col in h and col not in metrics:
                metrics.append(col)
    return sorted(metrics, key=lambda m: m != "val_loss")[:3]


def overlaid_curves(histories: Mapping[str, pd.DataFrame], *, metrics: Sequence[str] | None = None,
                    title: str = "Validation curves of all runs", synthetic: bool = False) -> Figure:
    """One panel per validation metric, one line per run.

    Histories whose ``attrs["task"]`` differ (e.g. an age source run beside gender runs)
    get a row of panels each, so losses on different scales never share an axis.
    ``metrics`` default: ``val_loss`` and up to two other validation metrics per task.
    """
    histories = {k: v for k, v in histories.items() if v is not None and len(v)}
    if not histories:
        return _message(title, "no training histories", synthetic=synthetic)
    by_task: dict[str, dict[str, pd.DataFrame]] = {}
    for name, h in histories.items():
        by_task.setdefault(str(h.attrs.get("task", "")), {})[name] = h
    rows = [(task, hs, list(metrics) if metrics is not None else _default_curve_metrics(hs)) for task, hs in by_task.items()]
    ncols = max(max(len(m) for _, _, m in rows), 1)
    fig, axes = _figure(len(rows), ncols, size=(4.8 * ncols, 3.8 * len(rows)))
    for r, (task, hs, ms) in enumerate(rows):
        for ax in axes[r, len(ms):]:
            ax.set_axis_off()
        for ax, m in zip(axes[r], ms, strict=False):
            for j, (name, h) in enumerate(hs.items()):
                if m in h:
                    ax.plot(_epochs(h), h[m], "-o", markersize=3, label=name, color=PALETTE[j % len(PALETTE)])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(m)
            ax.set_title(f"{task}: {m}" if task else m)
            ax.grid(alpha=0.3)
        if ms:
            axes[r, len(ms) - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, title, synthetic)


# ---------------------------------------------------------------- search


def _value_label(value) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, float):
        text = f"{value:g}"
        return text if any(ch in text for ch in ".einf") else f"{text}.0"
    return str(value)


def _trials(result) -> tuple[pd.DataFrame, str | None]:
    """(trials table, metric name) from a SearchResult or a bare trials table."""
    if isinstance(result, pd.DataFrame):
        return result, None
    return result.trials, result.metric


def _draw_step(ax, part: pd.DataFrame, key: str, metric: str) -> None:
    chosen = part["chosen"].fillna(False).astype(bool).to_numpy() if "chosen" in part else np.zeros(len(part), bool)
    x = np.arange(len(part))
    scores = part["score"].to_numpy(dtype=float)
    bars = ax.bar(x, scores, color=[RED if c else PALETTE[1] for c in chosen])
    ax.bar_label(bars, labels=[f"{s:.3f}" for s in scores], fontsize=8)
    ax.set_xticks(x, [_value_label(v) for v in part["value"]])
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.margins(y=0.15)
    if chosen.any():
        ax.set_title(f"chosen: {_value_label(part['value'].to_numpy()[chosen][0])}", fontsize=9)


def _check_trials(trials: pd.DataFrame, needed: Sequence[str], where: str) -> None:
    missing = [c for c in needed if c not in trials]
    if missing:
        raise FacetransferError(f"plots.{where}: trials need columns {', '.join(needed)}; missing {', '.join(missing)}")


def search_step(result, key: str, *, title: str | None = None, synthetic: bool = False) -> Figure:
    """Score of each value tried for ``key`` in a sequential search; the chosen value in red.

    ``result``: a :class:`facetransfer.search.SearchResult` or its ``trials`` table.
    """
    trials, metric = _trials(result)
    title = title or f"Search step: {key}"
    _check_trials(trials, ("key", "value", "score"), "search_step")
    part = trials[trials["key"] == key]
    if part.empty:
        return _message(title, f"no trials for {key}", synthetic=synthetic)
    fig, axes = _figure(size=(1.8 + 1.1 * len(part), 3.8))
    _draw_step(axes[0, 0], part, key, metric or "score")
    return _finish(fig, title, synthetic)


def search_steps(result, *, title: str = "Sequential search: each step keeps the best value (red)",
                 synthetic: bool = False) -> Figure:
    """One panel per step of a sequential search (see :func:`search_step`)."""
    trials, metric = _trials(result)
    if trials is None or len(trials) == 0:
        return _message(title, "no sequential search steps", synthetic=synthetic)
    _check_trials(trials, ("key", "value", "score"), "search_steps")
    keys = list(dict.fromkeys(trials["key"]))
    widths = [max(2, (trials["key"] == k).sum()) for k in keys]
    fig, axes = _figure(1, len(keys), size=(1.6 * len(keys) + 0.9 * sum(widths), 3.8),
                        gridspec_kw={"width_ratios": widths})
    for i, (ax, key) in enumerate(zip(axes.flat, keys, strict=True)):
        _draw_step(ax, trials[trials["key"] == key], key, metric or "score")
        if i:
            ax.set_ylabel("")
    return _finish(fig, title, synthetic)


def search_history(result, *, higher_is_better: bool | None = None, title: str = "Optuna search",
                   synthetic: bool = False) -> Figure:
    """Score of each trial in order, with the best so far.

    ``result``: a SearchResult (its metric decides the direction) or a trials table
    (then ``higher_is_better`` defaults to True). ``None`` (no search run) → a note.
    """
    if result is None:
        return _message(title, "no Optuna search (the study's search section has no optuna part)", synthetic=synthetic)
    trials, metric = _trials(result)
    if trials is None or len(trials) == 0:
        return _message(title, "no trials", synthetic=synthetic)
    _check_trials(trials, ("score",), "search_history")
    if higher_is_better is None:
        from facetransfer.search import METRICS

        higher_is_better = METRICS[metric][1] if metric in METRICS else True
    x = trials["trial"].to_numpy() if "trial" in trials else np.arange(len(trials))
    scores = trials["score"].to_numpy(dtype=float)
    best = np.fmax.accumulate(scores) if higher_is_better else np.fmin.accumulate(scores)
    fig, axes = _figure(size=(6.4, 3.8))
    ax = axes[0, 0]
    ax.plot(x, scores, "o", label="trial", color=PALETTE[1])
    ax.step(x, best, where="post", color=RED, label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric or "score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, title, synthetic)


# ---------------------------------------------------------------- notebook steps
#
# One call per notebook step: these take the library's own objects (PreparedData,
# Evaluation.predictions, resolved params) and return a table or a figure.


def _text(value) -> str:
    """A table cell as text: None as null, containers as JSON (so one column has one type)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def task_labels(task: str) -> tuple[str, ...] | None:
    """Class names of a task's main output (None for age in years)."""
    return {"gender": CLASS_NAMES, "age_gender": CLASS_NAMES, "age_group": ADIENCE_GROUPS, "age": None}[task]


def provenance_table(provenance: Mapping):
    """The data's provenance as a two-column table; a red SYNTHETIC banner as its caption.

    An entry with a ``summary`` (near duplicates) shows that line; its details are in
    ``metrics.json`` and in :func:`near_duplicates_table`.
    """
    rows = [(k, _text(v["summary"] if isinstance(v, Mapping) and "summary" in v else v)) for k, v in provenance.items()]
    table = pd.DataFrame(rows, columns=["item", "value"])
    styler = table.style.format(escape="html").hide(axis="index")  # paths and reasons are user text
    if provenance.get("synthetic"):
        styler = styler.set_caption(f"⚠ {SYNTHETIC_NOTE}: every number below comes from procedurally drawn faces").set_table_styles(
            [{"selector": "caption", "props": f"color: {RED}; font-weight: bold; font-size: 1.2em; text-align: left;"}])
    return styler


def near_duplicates_table(prepared):
    """The near-duplicate clusters the split puts on two sides, one row each; the caption says
    what kind of split it is and what was found (or why nothing was checked)."""
    table = prepared.near_duplicates_crossing()
    summary = prepared.near_duplicates_summary()
    caption = f"Split: {prepared.split_kind()}. {summary[:1].upper()}{summary[1:]}."
    return table.style.hide(axis="index").set_caption(caption).set_table_styles([{"selector": "caption", "props": "text-align: left;"}])


def params_table(cfg: Mapping) -> pd.DataFrame:
    """Resolved params as dotted key → value rows."""
    from facetransfer.params import flatten

    return pd.DataFrame([(k, _text(v)) for k, v in flatten(cfg).items()], columns=["param", "value"])


def info_table(info: Mapping) -> pd.DataFrame:
    """Any flat or nested dict (e.g. ``models.trainable_summary``) as item → value rows."""
    from facetransfer.params import flatten

    return pd.DataFrame([(k, _text(v)) for k, v in flatten(info).items()], columns=["item", "value"])


def metrics_table(metrics: Mapping) -> pd.DataFrame:
    """Scalar metrics of each split side by side (``Evaluation.metrics``: {"val": {...}, "test": {...}}),
    with the training baseline of the degenerate rule (``baseline.*``); a missing value is an em dash."""
    from facetransfer.params import flatten

    columns = {}
    for split, values in metrics.items():
        if values:
            flat = flatten({k: v for k, v in values.items() if k == "baseline" or not isinstance(v, (dict, list))})
            columns[split] = {k: v for k, v in flat.items() if isinstance(v, (int, float, bool, str)) or v is None}
    table = pd.DataFrame(columns)
    return table.astype(object).where(table.notna(), "—")


def class_report(split_metrics: Mapping) -> pd.DataFrame:
    """Precision, recall, F1 and support per class of one split's metrics."""
    keys = [k for k in ("precision", "recall", "f1", "support") if isinstance(split_metrics.get(k), Mapping)]
    if not keys:
        return pd.DataFrame(columns=["precision", "recall", "f1", "support"])
    table = pd.DataFrame({k: split_metrics[k] for k in keys})
    table.index.name = "class"
    return table


def _caption(row, labels) -> str:
    text = _class_name(row["gender"], CLASS_NAMES) if "gender" in row else ""
    if "age" in row and pd.notna(row["age"]):
        text += f", {row['age']:.0f} y"
    elif "age_group" in row and pd.notna(row["age_group"]):
        text += f", {_class_name(row['age_group'], ADIENCE_GROUPS)}"
    return text.strip(", ")


def sample_images(data, *, n: int = 16, split: str = "train", seed: int = 0, ncols: int = 8) -> Figure:
    """A seeded sample of one split's cached images with their labels."""
    recs = data.records[data.records["split"] == split]
    picked = recs.sample(n=min(n, len(recs)), random_state=seed)
    images = data.cache.images[picked["row"].to_numpy()] if len(picked) else []
    captions = [_caption(row, CLASS_NAMES) for _, row in picked.iterrows()]
    title = f"{len(picked)} random {split} images ({data.image_size}x{data.image_size} px, as the model sees them)"
    return sample_grid(images, captions, ncols=ncols, title=title, synthetic=bool(data.dataset.synthetic))


def misclassified_rows(predictions: pd.DataFrame, n: int, *, split: str = "test") -> pd.DataFrame:
    """The ``n`` worst predictions of ``split``: wrong classes, most confident first
    (column ``confidence`` = the probability given to the wrong class); for age in
    years, the largest absolute errors."""
    part = predictions[predictions["split"] == split]
    if "correct" in part:
        part = part[~part["correct"].astype(bool)]
        binary = "prob_0" not in part
        conf = np.where(part["y_pred"] == 1, part["prob"], 1 - part["prob"]) if binary else part["prob"]
        part = part.assign(confidence=conf).sort_values("confidence", ascending=False, kind="stable")
    elif "abs_error" in part:
        part = part.sort_values("abs_error", ascending=False, kind="stable")
    else:
        raise FacetransferError("plots.misclassified_rows: predictions need a 'correct' or an 'abs_error' column (from evaluate_run)")
    return part.head(n)


def misclassified_examples(data, predictions: pd.DataFrame, *, task: str, n: int = 16, split: str = "test",
                           ncols: int = 8) -> Figure:
    """The worst ``split`` predictions (see :func:`misclassified_rows`) with their images."""
    picked = misclassified_rows(predictions, n, split=split)
    images = data.cache.images[picked["row"].to_numpy()] if len(picked) else []
    what = "largest age errors" if "confidence" not in picked else "misclassified images, most confident first"
    return misclassified_grid(images, picked["y_true"].tolist(), picked["y_pred"].tolist(),
                              picked["confidence"].tolist() if "confidence" in picked else None,
                              labels=task_labels(task), unit="y", ncols=ncols, title=f"{split}: {what}",
                              synthetic=bool(data.dataset.synthetic))


def saliency_examples(model, data, predictions: pd.DataFrame, *, task: str, n: int = 8, split: str = "test",
                      progress: bool = True) -> Figure:
    """Occlusion maps (:func:`facetransfer.saliency.occlusion_map`) of the worst ``split`` predictions."""
    title = f"Occlusion saliency of {split} errors: regions whose hiding lowers P(predicted class) most"
    synthetic = bool(data.dataset.synthetic)
    if task == "age":
        return _message(title, "occlusion saliency explains class outputs; this task predicts age in years", synthetic=synthetic)
    if n == 0:
        return _message(title, "eval.saliency is 0", synthetic=synthetic)
    from tqdm import tqdm  # text bars: readable in papermill output and the HTML report

    from facetransfer.saliency import occlusion_map

    picked = misclassified_rows(predictions, n, split=split)
    images = data.cache.images[picked["row"].to_numpy()] if len(picked) else []
    output = "age_group" if task == "age_group" else "gender"
    heat = [occlusion_map(model, img, output=output) for img in tqdm(images, desc="saliency", disable=not progress)]
    labels = task_labels(task)
    captions = [f"true {_class_name(t, labels)}, pred {_class_name(p, labels)}" for t, p in zip(picked["y_true"], picked["y_pred"], strict=True)]
    return saliency_grid(images, heat, captions, title=title, synthetic=synthetic)


def calibration(predictions: pd.DataFrame, *, task: str, split: str = "test", n_bins: int = 10, n_boot: int = 1000,
                unit: str = "auto", synthetic: bool = False) -> Figure:
    """Reliability diagram of ``split`` with its ECE and the ECE's interval
    (:func:`facetransfer.compare.calibration`, the one calibration table)."""
    from facetransfer.compare import calibration as calibration_of

    title = f"Calibration on {split}"
    if task == "age":
        return _message(title, "calibration needs class probabilities; this task predicts age in years", synthetic=synthetic)
    part = predictions[predictions["split"] == split]
    if part.empty:
        return _message(title, f"no {split} predictions", synthetic=synthetic)
    table = calibration_of(part, task, n_bins=n_bins, n_boot=n_boot, unit=unit)
    return reliability_diagram({f"{split} ({table.attrs['what']})": table}, title=title, synthetic=synthetic)


def timing_table(result) -> pd.DataFrame:
    """Where the training time went (a :class:`facetransfer.train.TrainResult`)."""
    t = result.timings
    epochs = list(t.get("epoch_seconds") or [])
    rows = [
        ("train_seconds", round(float(t["train_seconds"]), 2)),
        ("epochs", len(epochs)),
        ("mean epoch seconds", round(float(np.mean(epochs)), 2) if epochs else None),
        ("image cache seconds", round(float(t.get("cache_seconds", 0.0)), 2)),
        ("feature extraction seconds", round(float(t.get("feature_seconds", 0.0)), 2)),
        ("trained on cached features", bool(result.used_feature_cache)),
    ]
    return pd.DataFrame([(k, _text(v)) for k, v in rows], columns=["item", "value"])


def search_summary(results: Sequence) -> pd.DataFrame:
    """One row per search that ran (``None`` entries are skipped): method, metric,
    trials, best score and the chosen values."""
    rows = [{"method": r.method, "metric": r.metric, "trials": len(r.trials), "best score": r.best_score,
             "chosen values": json.dumps(r.best)} for r in results if r is not None]
    return pd.DataFrame(rows, columns=["method", "metric", "trials", "best score", "chosen values"])


# ---------------------------------------------------------------- 04_compare steps


def study_is_synthetic(runs: pd.DataFrame) -> bool:
    """True when any run of the study (a :func:`facetransfer.compare.load_runs` table) used synthetic data."""
    cols = [c for c in runs.columns if c.startswith("data.synthetic")]
    return bool(cols) and bool(runs[cols].notna().any(axis=None))


def banner(synthetic: bool, text: str = "every figure and number below comes from procedurally drawn faces"):
    """A red HTML banner for synthetic data (an empty one otherwise)."""
    from IPython.display import HTML

    if not synthetic:
        return HTML("")
    return HTML(f'<div style="border: 3px solid {RED}; color: {RED}; padding: 8px; font-weight: bold; font-size: 1.2em">'
                f"⚠ {SYNTHETIC_NOTE}: {text}.</div>")


def runs_overview(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with their status and only the params that differ between them (task,
    model and train params first, then data and eval)."""
    from facetransfer.compare import param_columns

    def key(v):
        return json.dumps(v, sort_keys=True, default=str)

    varying = [c for c in param_columns(runs) if runs[c].map(key).nunique() > 1]
    rank = {"task": 0, "model": 1, "train": 2, "seed": 3, "data": 4, "eval": 5}  # what a run is first, then its data
    varying.sort(key=lambda c: rank.get(c.split(".")[0], 6))
    cols = [c for c in ("run_id", "label", "status", "error") if c in runs] + varying
    return runs[cols]


def read_histories(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{label: history}`` from the ``history.csv`` of every run that ended ok, with
    ``attrs["task"]`` set. An ok run always has one (``metrics.json`` is written last), so
    a missing file is an error naming the run folder."""
    out = {}
    for _, run in runs[runs["status"] == "ok"].iterrows():
        path = Path(run["run_dir"]) / "history.csv"
        if not path.is_file():
            raise FacetransferError(f"run {run['run_id']} ended ok but {path} is missing; re-run it with --force")
        h = pd.read_csv(path)
        h.attrs["task"] = run.get("task", "")
        out[str(run.get("label", run["run_id"]))] = h
    return out


def run_calibration(runs: pd.DataFrame, *, n_bins: int = 10, synthetic: bool = False) -> Figure:
    """Reliability diagrams of every ok gender run, overlaid (:func:`facetransfer.compare.calibration_table`)."""
    from facetransfer.compare import calibration_table

    title = "Calibration of P(male) on the test split"
    ok = runs[(runs["status"] == "ok") & runs["task"].isin(["gender", "age_gender"])] if "task" in runs else runs.iloc[:0]
    tables = {str(run["label"]): calibration_table(run, n_bins=n_bins) for _, run in ok.iterrows()}
    if not tables:
        return _message(title, "no finished gender runs", synthetic=synthetic)
    return reliability_diagram(tables, title=title, synthetic=synthetic)


# ---------------------------------------------------------------- data efficiency (issue 15)


def data_efficiency(table: pd.DataFrame, *, title: str = "Test accuracy against the number of training images",
                    synthetic: bool = False) -> Figure:
    """One line per strategy: test accuracy with its interval against the training images used
    (log axis). A filled marker: significantly different from the baseline at that size
    (``compare.data_efficiency``'s Holm-corrected paired test); open: not significant.
    """
    if table is None or len(table) == 0:
        return _message(title, "no run group varies data.train_size: no data-efficiency curve", synthetic=synthetic)
    fig, axes = _figure(size=(7.6, 4.4))
    ax = axes[0, 0]
    baseline = table.attrs.get("baseline")
    alpha = table.attrs.get("alpha", 0.05)
    lines = sorted(table["line"].unique(), key=lambda name: (name != baseline, name))
    for k, name in enumerate(lines):
        part = table[table["line"] == name].sort_values("n_train")
        x = part["n_train"].to_numpy(dtype=float) * (1.0 + 0.03 * (k - (len(lines) - 1) / 2))  # side by side
        acc = part["accuracy"].to_numpy(dtype=float)
        err = np.vstack([acc - part["acc_lo"].to_numpy(dtype=float), part["acc_hi"].to_numpy(dtype=float) - acc]).clip(min=0)
        colour = "#555555" if name == baseline else PALETTE[k % len(PALETTE)]
        label = f"{name} (baseline)" if name == baseline else name
        ax.errorbar(x, acc, yerr=err, color=colour, marker="o", mfc="white", capsize=3, linewidth=1.6, label=label,
                    linestyle="--" if name == baseline else "-")
        significant = pd.to_numeric(part["p_holm"], errors="coerce").to_numpy(dtype=float) < alpha
        if significant.any():
            ax.plot(x[significant], acc[significant], linestyle="none", marker="o", markersize=8, color=colour, zorder=3)
    sizes = sorted(table["n_train"].unique())
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale); validation and test images fixed")
    ax.set_ylabel(f"test accuracy ({len(table['n'].unique()) == 1 and int(table['n'].iloc[0]) or 'n'} images, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=f"filled: differs from {baseline} (Holm p < {alpha:g})" if baseline else None, title_fontsize=8)
    return _finish(fig, title, synthetic)
