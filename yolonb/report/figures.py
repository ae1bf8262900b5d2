"""Figures of the report; each function returns a matplotlib Figure and shows nothing itself."""

from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

DPI = 96


def map_vs_published(frame: pd.DataFrame, title: str) -> Figure:
    """Grouped horizontal bars: this run's mAP (with its std as an error bar) and the published mAP.

    Args:
        frame: a `tables.section_table` frame (columns label, map, std, published).
    """
    labels = list(frame["label"])
    positions = np.arange(len(labels))
    height = 0.38
    ours = np.array([np.nan if v is None else float(v) for v in frame["map"]], dtype=float)
    spread = np.array([0.0 if v is None or pd.isna(v) else float(v) for v in frame["std"]], dtype=float)
    published = np.array([np.nan if v is None else float(v) for v in frame["published"]], dtype=float)

    figure, axes = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.2), dpi=DPI)
    axes.barh(positions - height / 2, ours, height, xerr=spread, label="this run", color="tab:blue")
    axes.barh(positions + height / 2, published, height, label="published (VOC2007 test)", color="tab:gray")
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()
    axes.set_xlabel("mAP (VOC07 11-point, IoU 0.5)")
    axes.set_xlim(0, 1)
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def training_curves(histories: dict[str, pd.DataFrame]) -> Figure:
    """Total training loss per epoch and test mAP where evaluated, one line per run label."""
    figure, (loss_axes, map_axes) = plt.subplots(1, 2, figsize=(11, 4), dpi=DPI)
    for label, history in histories.items():
        loss_axes.plot(history["epoch"], history["loss_total"], label=label)
        evaluated = history.dropna(subset=["map_voc07"])
        if len(evaluated):
            map_axes.plot(evaluated["epoch"], evaluated["map_voc07"], marker="o", label=label)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss (total)")
    loss_axes.set_yscale("log")
    map_axes.set_xlabel("epoch")
    map_axes.set_ylabel("test mAP (VOC07)")
    if histories:
        loss_axes.legend(fontsize="x-small")
    figure.tight_layout()
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
    """Heat map of per-class AP (rows: runs, columns: classes); missing values stay blank."""
    values = frame.to_numpy(dtype=float)
    figure, axes = plt.subplots(figsize=(max(6, 0.55 * frame.shape[1] + 4), 0.35 * frame.shape[0] + 1.8), dpi=DPI)
    image = axes.imshow(np.ma.masked_invalid(values), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axes.set_xticks(np.arange(frame.shape[1]), [str(c) for c in frame.columns], rotation=60, ha="right")
    axes.set_yticks(np.arange(frame.shape[0]), [str(i) for i in frame.index], fontsize="small")
    figure.colorbar(image, ax=axes, label="AP (VOC07)")
    figure.tight_layout()
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

    Panels: focal loss against p_t for several gamma (alpha 1) and for several alpha
    (gamma 2); the poly term poly_scale (1 - p_t)^(gamma + poly_pow); the varifocal weight
    on negatives and the loss on positives; the DFL target on its two bins.
    """
    from yolonb.losses.focal import distribution_focal_loss, focal_loss, poly_focal_loss, varifocal_loss

    p = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    # Two-class softmax logits whose target-class probability is p.
    logits = torch.stack([torch.log(p), torch.log1p(-p)], dim=1)
    target = torch.zeros(len(p), dtype=torch.int64)
    figure, axes = plt.subplots(1, 5, figsize=(20, 3.8), dpi=DPI)

    for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
        axes[0].plot(p, focal_loss(logits, target, alpha=1.0, gamma=gamma, reduction="none"), label=f"γ={gamma:g}")
    axes[0].set_title("focal loss, α=1")
    axes[0].set_xlabel("p_t")
    axes[0].set_ylim(0, 5)
    axes[0].legend(fontsize="x-small")

    for alpha in (0.25, 0.5, 0.75):
        axes[1].plot(p, focal_loss(logits, target, alpha=alpha, gamma=2.0, reduction="none"), label=f"α={alpha:g}")
    axes[1].set_title("focal loss, γ=2")
    axes[1].set_xlabel("p_t")
    axes[1].legend(fontsize="x-small")

    focal = focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="none")
    for scale in (1.0, -1.0):
        for power in (1, 2, 3):
            poly = poly_focal_loss(logits, target, alpha=0.25, gamma=2.0, poly_scale=scale, poly_pow=power,
                                   reduction="none")
            axes[2].plot(p, poly - focal, label=f"scale={scale:g}, pow={power}",
                         linestyle="-" if scale > 0 else "--")
    axes[2].set_title("poly term added to focal (γ=2)")
    axes[2].set_xlabel("p_t")
    axes[2].legend(fontsize="x-small")

    single = torch.logit(p).unsqueeze(1)
    for alpha in (0.25, 0.75):
        negative = varifocal_loss(single, torch.zeros_like(single), alpha=alpha, gamma=2.0, reduction="none")
        axes[3].plot(p, negative[:, 0], label=f"negative, α={alpha:g}")
    for quality in (0.5, 0.9):
        positive = varifocal_loss(single, torch.full_like(single, quality), alpha=0.75, gamma=2.0, reduction="none")
        axes[3].plot(p, positive[:, 0], linestyle="--", label=f"positive, IoU q={quality:g}")
    axes[3].set_title("varifocal loss")
    axes[3].set_xlabel("predicted score p")
    axes[3].set_ylim(0, 3)
    axes[3].legend(fontsize="x-small")

    _dfl_panel(axes[4], distribution_focal_loss)
    figure.tight_layout()
    return figure


def _dfl_panel(axes, distribution_focal_loss, reg_max: int = 8, target_value: float = 3.4) -> None:
    # Predicted distributions that put mass w on bin 3 and 1 - w on bin 4: the loss is
    # lowest where w equals the target's weight on bin 3 (4 - 3.4 = 0.6).
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
    axes.bar(bins, target_mass, color="tab:gray", alpha=0.6, label=f"target mass, y={target_value:g}")
    axes.set_xlabel("bin (top axis: mass on bin 3)")
    axes.set_ylabel("target mass")
    twin = axes.twinx()
    twin.plot(3 + (1 - weights.numpy()), loss.numpy(), color="tab:red", label="DFL vs mass split")
    twin.set_ylabel("DFL (nats)")
    axes.set_title("distribution focal loss, two bins")
    axes.legend(fontsize="x-small", loc="upper left")


def detections_figure(samples: Sequence[dict[str, Any]], classes: Sequence[str], score_threshold: float = 0.3,
                      max_images: int = 4, title: str = "") -> Figure:
    """Test images with ground truth (dashed green) and detections above `score_threshold` (red)."""
    from PIL import Image

    samples = list(samples)[:max_images]
    figure, axes_list = plt.subplots(1, max(1, len(samples)), figsize=(4 * max(1, len(samples)), 4), dpi=DPI,
                                     squeeze=False)
    for axes, sample in zip(axes_list.flat, samples):
        try:
            with Image.open(sample["image_path"]) as image:
                axes.imshow(image.convert("RGB"))
        except OSError:
            axes.set_xlim(0, sample["width"])
            axes.set_ylim(sample["height"], 0)
            axes.text(0.5, 0.5, "image not found", transform=axes.transAxes, ha="center")
        for box in sample.get("gt_boxes", []):
            axes.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                         edgecolor="lime", linestyle="--", linewidth=1.2))
        for box, score, label in zip(sample.get("boxes", []), sample.get("scores", []), sample.get("labels", [])):
            if score < score_threshold:
                continue
            axes.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                         edgecolor="red", linewidth=1.2))
            name = classes[label] if 0 <= label < len(classes) else str(label)
            axes.text(box[0], box[1], f"{name} {score:.2f}", color="white", fontsize=7,
                      bbox={"facecolor": "red", "alpha": 0.7, "pad": 1, "edgecolor": "none"})
        axes.set_title(str(sample.get("image_id", "")), fontsize="small")
        axes.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
