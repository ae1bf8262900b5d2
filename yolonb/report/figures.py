"""Figures of the report; each function returns a matplotlib Figure and shows nothing itself."""

from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

DPI = 96


def _as_floats(values) -> np.ndarray:
    return np.array([np.nan if v is None or pd.isna(v) else float(v) for v in values], dtype=float)


def _axis_limit(*arrays: np.ndarray, margin: float = 0.15, minimum: float = 0.01) -> float:
    """Upper x limit that fits every finite value of `arrays` plus a relative margin."""
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
    if finite.size == 0:
        return 1.0
    return max(minimum, float(finite.max()) * (1 + margin))


def _label_bars(axes, positions: np.ndarray, values: np.ndarray, offset: float) -> None:
    for position, value in zip(positions, values):
        if np.isfinite(value):
            axes.text(value + offset, position, f"{value:.3f}", va="center", fontsize="small")


def map_vs_published(frame: pd.DataFrame, title: str, comparable: bool = True) -> Figure:
    """Horizontal bars of this run's mAP (std across seeds as an error bar) and the published mAP.

    Args:
        frame: a `tables.section_table` frame (columns label, map, std, published).
        title: the figure title.
        comparable: True when the runs used Pascal VOC, so both numbers share one axis.
            Otherwise this run's mAP gets its own autoscaled panel and the published mAP a
            second panel, because the values differ by an order of magnitude and mean different things.
    """
    labels = list(frame["label"])
    positions = np.arange(len(labels))
    ours = _as_floats(frame["map"])
    spread = np.nan_to_num(_as_floats(frame["std"]), nan=0.0)
    published = _as_floats(frame["published"])
    metric = "mAP (VOC07 11-point, IoU 0.5)"

    if comparable:
        figure, axes = plt.subplots(figsize=(10, 0.5 * len(labels) + 1.4), dpi=DPI, layout="constrained")
        height = 0.38
        limit = _axis_limit(ours + spread, published)
        axes.barh(positions - height / 2, ours, height, xerr=spread, label="this run", color="tab:blue")
        axes.barh(positions + height / 2, published, height, label="published (VOC2007 test)", color="tab:gray")
        _label_bars(axes, positions - height / 2, ours + spread, 0.01 * limit)
        _label_bars(axes, positions + height / 2, published, 0.01 * limit)
        axes.set_yticks(positions, labels)
        axes.invert_yaxis()
        axes.set_xlim(0, limit)
        axes.set_xlabel(metric)
        axes.set_title(title)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        return figure

    figure, (ours_axes, published_axes) = plt.subplots(
        1, 2, figsize=(11, 0.45 * len(labels) + 1.6), dpi=DPI, sharey=True, layout="constrained",
        gridspec_kw={"width_ratios": [1.4, 1.0]})
    ours_limit = _axis_limit(ours + spread)
    ours_axes.barh(positions, ours, 0.6, xerr=spread, color="tab:blue")
    _label_bars(ours_axes, positions, ours + spread, 0.01 * ours_limit)
    ours_axes.set_xlim(0, ours_limit)
    ours_axes.set_xlabel(metric)
    ours_axes.set_title("this run (own scale, this data set)", fontsize="medium")
    ours_axes.set_yticks(positions, labels)
    ours_axes.invert_yaxis()

    published_limit = _axis_limit(published)
    published_axes.barh(positions, published, 0.6, color="tab:gray")
    _label_bars(published_axes, positions, published, 0.01 * published_limit)
    for position, value in zip(positions, published):
        if not np.isfinite(value):
            published_axes.text(0.01 * published_limit, position, "not published", va="center",
                                fontsize="small", color="dimgray")
    published_axes.set_xlim(0, published_limit)
    published_axes.set_xlabel(metric)
    published_axes.set_title("published, VOC2007 test (not comparable)", fontsize="medium")
    figure.suptitle(title)
    return figure


def _run_style(index: int) -> dict[str, Any]:
    # tab20 contains ten hue pairs (dark, light): alternating solid and dashed lines separates the two
    # of a pair, and runs 21 to 40 reuse the colours with dash-dot and dotted lines.
    style = index % 2 + 2 * ((index // 20) % 2)
    return {"color": plt.get_cmap("tab20")(index % 20), "linestyle": ("-", "--", "-.", ":")[style]}


def _final_map(history: pd.DataFrame) -> float:
    evaluated = history["map_voc07"].dropna() if "map_voc07" in history else pd.Series(dtype=float)
    return float(evaluated.iloc[-1]) if len(evaluated) else math.nan


def training_curves(histories: dict[str, pd.DataFrame], final_map: dict[str, float] | None = None,
                    title: str = "") -> Figure:
    """Total training loss per epoch (left) and the final test mAP (right), one colour per run label.

    Args:
        histories: run label -> history.csv frame.
        final_map: run label -> final VOC07 mAP; a missing label takes the last evaluated
            value of its history.
        title: the figure title.
    """
    final_map = final_map or {}
    labels = list(histories)
    figure, (loss_axes, map_axes) = plt.subplots(
        1, 2, figsize=(13, max(4.0, 0.32 * len(labels) + 2.2)), dpi=DPI, layout="constrained",
        gridspec_kw={"width_ratios": [1.2, 1.0]})

    positive = True
    for index, label in enumerate(labels):
        history = histories[label]
        loss_axes.plot(history["epoch"], history["loss_total"], marker="o", markersize=3, label=label,
                       **_run_style(index))
        positive = positive and bool((history["loss_total"] > 0).all())
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss (total)")
    loss_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axes.grid(True, which="major", alpha=0.3)
    if positive:
        # Losses of different runs span about a decade, so a log axis keeps every run visible.
        # Eight labelled ticks per decade keep a range narrower than a decade readable.
        loss_axes.set_yscale("log")
        loss_axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)))
        loss_axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        loss_axes.yaxis.set_minor_formatter(NullFormatter())
    if labels:
        figure.legend(*loss_axes.get_legend_handles_labels(), loc="outside lower center", ncols=2,
                      fontsize="small")

    values = np.array([final_map.get(label, _final_map(histories[label])) for label in labels], dtype=float)
    positions = np.arange(len(labels))
    colours = [_run_style(index)["color"] for index in range(len(labels))]
    map_axes.barh(positions, values, 0.7, color=colours)
    limit = _axis_limit(values)
    _label_bars(map_axes, positions, values, 0.01 * limit)
    map_axes.set_xlim(0, limit)
    map_axes.set_yticks(positions, labels, fontsize="small")
    map_axes.invert_yaxis()
    map_axes.set_xlabel("final test mAP (VOC07)")
    if title:
        figure.suptitle(title)
    return figure


def loss_components(history: pd.DataFrame, title: str = "") -> Figure:
    """The objectness, classification, box and total loss per epoch of one run."""
    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=DPI)
    for column in ("loss_obj", "loss_cls", "loss_box", "loss_total"):
        axes.plot(history["epoch"], history[column], marker=".", label=column.removeprefix("loss_"))
    axes.set_xlabel("epoch")
    axes.set_ylabel("training loss")
    axes.set_title(title)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def class_ap_heatmap(frame: pd.DataFrame) -> Figure:
    """Heat map of per-class AP (rows: runs, columns: classes) with the value in each cell.

    The colour scale runs from 0 to the largest AP (at least 0.05), so short trainings with
    low AP still show contrast. Missing values stay blank.
    """
    values = frame.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmax = max(0.05, float(finite.max())) if finite.size else 1.0
    rows, columns = frame.shape
    figure, axes = plt.subplots(figsize=(max(7.0, 0.62 * columns + 5.5), 0.3 * rows + 2.0), dpi=DPI,
                                layout="constrained")
    colour_map = plt.get_cmap("viridis")
    image = axes.imshow(np.ma.masked_invalid(values), vmin=0, vmax=vmax, cmap=colour_map, aspect="auto")

    for row in range(rows):
        for column in range(columns):
            value = values[row, column]
            if not np.isfinite(value):
                continue
            # viridis turns light above about 60 % of its range, where black text reads better.
            colour = "black" if value / vmax > 0.6 else "white"
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)

    axes.set_xticks(np.arange(columns), [str(c) for c in frame.columns], rotation=45, ha="right")
    axes.set_yticks(np.arange(rows), [str(i) for i in frame.index], fontsize="small")
    figure.colorbar(image, ax=axes, label=f"AP (VOC07), colour scale 0 to {vmax:.2f}")
    return figure


def pr_curves_figure(curves: dict[str, dict[str, Any]], max_classes: int = 20) -> Figure:
    """Precision-recall curves per class, one line per run.

    Args:
        curves: run label -> pr_curves.json contents (class -> {precision, recall}).
    """
    classes = []
    for run_curves in curves.values():
        for name in run_curves:
            if name not in classes:
                classes.append(name)
    classes = classes[:max_classes]
    columns = min(4, max(1, len(classes)))
    rows = max(1, math.ceil(len(classes) / columns))
    figure, axes_grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), dpi=DPI, squeeze=False)

    for index, axes in enumerate(axes_grid.flat):
        if index >= len(classes):
            axes.axis("off")
            continue
        name = classes[index]
        for label, run_curves in curves.items():
            curve = run_curves.get(name) or {}
            if curve.get("recall"):
                axes.plot(curve["recall"], curve["precision"], label=label)
        axes.set_title(str(name), fontsize="small")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.tick_params(labelsize="x-small")
    handles, labels = axes_grid.flat[0].get_legend_handles_labels()
    if handles:
        axes_grid.flat[0].legend(fontsize="x-small")
    figure.supxlabel("recall")
    figure.supylabel("precision")
    figure.tight_layout()
    return figure


def loss_shapes() -> Figure:
    """Plot the shapes of the losses, computed with the functions of yolonb.losses.focal.

    Top row: focal loss against p_t for several gamma (alpha 1) and for several alpha
    (gamma 2), and the poly term poly_scale (1 - p_t)^(gamma + poly_pow). Bottom row: the
    varifocal loss on negatives and positives, the quality focal loss for several IoU
    targets, and the DFL target on its two bins with the loss against the predicted mean.
    """
    from yolonb.losses.focal import (distribution_focal_loss, focal_loss, poly_focal_loss, quality_focal_loss,
                                     varifocal_loss)

    p = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    # Two-class softmax logits whose target-class probability is p.
    logits = torch.stack([torch.log(p), torch.log1p(-p)], dim=1)
    target = torch.zeros(len(p), dtype=torch.int64)
    figure, axes_grid = plt.subplots(2, 3, figsize=(14, 8.5), dpi=DPI, layout="constrained")
    axes = axes_grid.flat

    for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
        axes[0].plot(p, focal_loss(logits, target, alpha=1.0, gamma=gamma, reduction="none"), label=f"γ={gamma:g}")
    axes[0].set_title("focal loss, α=1")
    axes[0].set_xlabel("p_t")
    axes[0].set_ylabel("loss (nats)")
    axes[0].set_ylim(0, 5)

    for alpha in (0.25, 0.5, 0.75):
        axes[1].plot(p, focal_loss(logits, target, alpha=alpha, gamma=2.0, reduction="none"), label=f"α={alpha:g}")
    axes[1].set_title("focal loss, γ=2")
    axes[1].set_xlabel("p_t")

    focal = focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="none")
    for scale in (1.0, -1.0):
        for power in (1, 2, 3):
            poly = poly_focal_loss(logits, target, alpha=0.25, gamma=2.0, poly_scale=scale, poly_pow=power,
                                   reduction="none")
            axes[2].plot(p, poly - focal, label=f"scale={scale:g}, pow={power}",
                         linestyle="-" if scale > 0 else "--")
    axes[2].set_title("poly term added to focal (γ=2)")
    axes[2].set_xlabel("p_t")

    single = torch.logit(p).unsqueeze(1)
    for alpha in (0.25, 0.75):
        negative = varifocal_loss(single, torch.zeros_like(single), alpha=alpha, gamma=2.0, reduction="none")
        axes[3].plot(p, negative[:, 0], label=f"negative, α={alpha:g}")
    for quality in (0.5, 0.9):
        positive = varifocal_loss(single, torch.full_like(single, quality), alpha=0.75, gamma=2.0, reduction="none")
        axes[3].plot(p, positive[:, 0], linestyle="--", label=f"positive, IoU q={quality:g}")
    axes[3].set_title("varifocal loss")
    axes[3].set_xlabel("predicted score p")
    axes[3].set_ylabel("loss (nats)")
    axes[3].set_ylim(0, 3)

    for quality in (0.0, 0.5, 0.9):
        loss = quality_focal_loss(single, torch.full_like(single, quality), beta=2.0, reduction="none")
        axes[4].plot(p, loss[:, 0], label=f"IoU target q={quality:g}")
    axes[4].set_title("quality focal loss, β=2")
    axes[4].set_xlabel("predicted score p")
    axes[4].set_ylim(0, 3)

    for panel in axes[:5]:
        panel.legend(fontsize="small")
        panel.grid(True, alpha=0.3)
    _dfl_panel(axes[5], distribution_focal_loss)
    return figure


def _dfl_panel(axes, distribution_focal_loss, reg_max: int = 8, target_value: float = 3.4) -> None:
    # Predicted distributions that put mass w on bin 3 and 1 - w on bin 4 have the mean
    # 4 - w; the loss is lowest where that mean equals the target (w = 4 - 3.4 = 0.6).
    weights = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    probabilities = torch.full((len(weights), reg_max + 1), 1e-6, dtype=torch.float64)
    probabilities[:, 3] = weights
    probabilities[:, 4] = 1 - weights
    logits = torch.log(probabilities)
    target = torch.full((len(weights),), target_value, dtype=torch.float64)
    loss = distribution_focal_loss(logits, target, reduction="none")

    left = math.floor(target_value)
    bins = np.arange(reg_max + 1)
    target_mass = np.zeros(reg_max + 1)
    target_mass[left] = left + 1 - target_value
    target_mass[left + 1] = target_value - left
    bars = axes.bar(bins, target_mass, color="tab:gray", alpha=0.6, label=f"target mass, y={target_value:g}")
    axes.set_xlabel("bin index (bars) / predicted mean 3w + 4(1 − w) (red)")
    axes.set_ylabel("target mass")
    axes.set_xticks(bins)
    axes.set_xlim(1.5, 5.5)
    axes.axvline(target_value, color="black", linestyle=":", linewidth=1)
    twin = axes.twinx()
    (line,) = twin.plot(4 - weights.numpy(), loss.numpy(), color="tab:red", label="DFL, mass w on bin 3")
    twin.set_ylabel("DFL (nats)")
    twin.tick_params(axis="y", colors="tab:red")
    # Headroom above both the bars and the curve keeps the legend clear of them.
    axes.set_ylim(0, 1.0)
    twin.set_ylim(0, float(loss.max()) * 1.45)
    axes.set_title("distribution focal loss, two bins")
    axes.legend([bars, line], [bars.get_label(), line.get_label()], fontsize="small", loc="upper right")


def _box_patch(box, **style):
    return plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, **style)


def _class_name(classes: Sequence[str], label: int) -> str:
    return str(classes[label]) if 0 <= label < len(classes) else str(label)


def detections_figure(samples: Sequence[dict[str, Any]], classes: Sequence[str], score_threshold: float = 0.3,
                      max_images: int = 4, title: str = "", max_detections: int = 4) -> Figure:
    """Test images with ground truth (dashed green, class below the box) and detections (red, class and score).

    Args:
        samples: detections_sample.json entries (boxes in original-image pixels).
        classes: class names indexed by label.
        score_threshold: detections below this score are not drawn.
        max_images: images drawn, from the start of `samples`.
        title: the figure title.
        max_detections: detections drawn per image, highest scores first.
    """
    from PIL import Image

    samples = list(samples)[:max_images]
    # Two images per row keep the figure within a notebook's width, so labels are not scaled down.
    columns = min(2, max(1, len(samples)))
    rows = max(1, math.ceil(len(samples) / columns))
    figure, axes_list = plt.subplots(rows, columns, figsize=(5.0 * columns, 5.2 * rows), dpi=DPI, squeeze=False,
                                     layout="constrained")
    for axes in list(axes_list.flat)[len(samples):]:
        axes.axis("off")
    for axes, sample in zip(axes_list.flat, samples):
        try:
            with Image.open(sample["image_path"]) as image:
                axes.imshow(image.convert("RGB"))
        except OSError:
            axes.set_xlim(0, sample["width"])
            axes.set_ylim(sample["height"], 0)
            axes.text(0.5, 0.5, "image not found", transform=axes.transAxes, ha="center")

        for box, label in zip(sample.get("gt_boxes", []), sample.get("gt_labels", [])):
            axes.add_patch(_box_patch(box, edgecolor="lime", linestyle="--", linewidth=1.2))
            axes.text(box[0], box[3], _class_name(classes, int(label)), color="lime", fontsize=6, va="top",
                      bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "edgecolor": "none"})

        detections = [(float(score), box, int(label)) for box, score, label
                      in zip(sample.get("boxes", []), sample.get("scores", []), sample.get("labels", []))
                      if score >= score_threshold]
        detections.sort(key=lambda item: item[0], reverse=True)
        for score, box, label in detections[:max_detections]:
            axes.add_patch(_box_patch(box, edgecolor="red", linewidth=1.2))
            axes.text(box[0], box[1], f"{_class_name(classes, label)} {score:.2f}", color="white", fontsize=6,
                      va="bottom", bbox={"facecolor": "red", "alpha": 0.7, "pad": 0.5, "edgecolor": "none"})
        drawn = min(len(detections), max_detections)
        axes.set_title(f"{sample.get('image_id', '')}: {drawn} of {len(detections)} detections ≥ {score_threshold:g}",
                       fontsize="small")
        axes.axis("off")
    if title:
        figure.suptitle(title)
    return figure
