"""What the notebooks show: each function displays tables (HTML) and figures in the running kernel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, display

from yolonb.data import VOC_CLASSES

from . import figures
from .published import PIPELINE_CITATION, POST_CITATION, PUBLISHED_TEST_SET, PUBLISHED_TRAINING, REFERENCE_ROW
from .tables import (ReportData, class_ap_frame, escape_text, poly_minimum_frame, provenance_frame, section_table,
                     simple_table_html, table_html)

_STYLE = """<style>
.yolonb-table { border-collapse: collapse; margin: 0.6em 0 1.2em 0; font-size: 0.92em; }
.yolonb-table caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: 0.3em; }
.yolonb-table th, .yolonb-table td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
.yolonb-table th { background: #f2f2f2; }
.yolonb-notice { border-left: 4px solid #d9822b; background: #fff6ec; padding: 0.5em 0.8em; }
</style>"""


def _show_figure(figure) -> None:
    display(figure)
    plt.close(figure)


def show_run(out_dir: str | Path) -> None:
    """Show one run's headline metrics, per-class AP and loss curves (the end of each section notebook)."""
    out_dir = Path(out_dir)
    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    summary = pd.DataFrame([{
        "run_id": metrics.get("run_id"), "mAP (VOC07)": metrics.get("map_voc07"),
        "mAP (area)": metrics.get("map_area"), "wall time (s)": metrics.get("wall_time_s"),
        "device": metrics.get("device"),
    }])
    display(HTML(_STYLE + simple_table_html(summary, caption="Result of this run")))

    per_class = metrics.get("per_class_ap") or {}
    n_gt = metrics.get("n_gt") or {}
    frame = pd.DataFrame([{"class": name, "AP (VOC07)": ap, "ground truths": n_gt.get(name)}
                          for name, ap in per_class.items()])
    display(HTML(simple_table_html(frame, caption="AP per class (test split)")))

    history_path = out_dir / "history.csv"
    if history_path.is_file():
        _show_figure(figures.loss_components(pd.read_csv(history_path), title="training losses per epoch"))


def show_notice(data: ReportData) -> None:
    """Show the data set, the profile and, unless the data is Pascal VOC, that the numbers are not comparable."""
    display(HTML(_STYLE))
    finished = data.finished_metrics()
    if not finished:
        display(HTML('<p class="yolonb-notice">No run has finished yet, so the tables below have no numbers.</p>'))
        return
    data_info = finished[0].get("data") or {}
    name = escape_text(data_info.get("name", "unknown"))
    text = (f"<p>Data set: <strong>{name}</strong> ({data_info.get('n_train_images')} training and "
            f"{data_info.get('n_test_images')} test images), profile <strong>"
            f"{escape_text(data.plan.get('profile'))}</strong>, {len(data.results)} runs. Training: "
            f"{escape_text(training_text(finished[0].get('config')))} (published: {PUBLISHED_TRAINING}). "
            f"Backbone: {escape_text(backbone_text(finished[0].get('backbone')))}.</p>")
    if data.seeds == 1:
        text += ("<p>Each configuration was trained once (one seed), so differences of a few hundredths "
                 "of mAP between rows may be noise; <code>run_all.py --seeds 3</code> shows the spread.</p>")
    if not data_info.get("is_voc"):
        text += (f'<p class="yolonb-notice">These runs did not use {PUBLISHED_TEST_SET}, so their mAP '
                 f"<strong>cannot be compared with the published numbers</strong>; the published column is "
                 f"shown for orientation only. Compare rows against the reference row of the same report "
                 f"instead (the \"vs reference\" column).</p>")
    display(HTML(text))


_OPTIMIZER_NAMES = {"sgd": "SGD", "adamw": "AdamW"}


def training_text(config: dict | None) -> str:
    """Describe a run's schedule: input size, epochs, batch size, optimizer and learning rate.

    The runs of one report share these settings because the grids vary only losses and
    necks, so the first finished run's configuration describes all of them.
    """
    keys = ("input_size", "epochs", "batch_size", "optimizer", "lr")
    if not config or any(config.get(key) is None for key in keys):
        return "unknown"

    optimizer = config["optimizer"]
    text = (f"{config['input_size']} pixels, {config['epochs']} epochs, batch {config['batch_size']}, "
            f"{_OPTIMIZER_NAMES.get(optimizer, optimizer)} at lr {float(config['lr']):g}")
    sizes = config.get("multiscale_sizes") or []
    if sizes:
        text += f", multi-scale {min(sizes)} to {max(sizes)} pixels"
    return text


def backbone_text(backbone: dict | None) -> str:
    """Describe how the runs' ResNet-18 started (ImageNet weights, crop pretraining or from scratch) and what stayed fixed."""
    init = (backbone or {}).get("init")
    if init == "imagenet":
        text = "ResNet-18 with torchvision's ImageNet weights, as in the published recipe"
    elif init == "crops":
        info = backbone.get("pretraining") or {}
        crops, background = info.get("crops") or 0, info.get("background_crops") or 0
        text = (f"ResNet-18 pretrained to classify {crops - background} object crops and {background} background "
                f"crops of the training split ({info.get('epochs')} epochs, {info.get('seconds')} s once per data "
                f"set, held-out crop accuracy {info.get('val_accuracy')}), in place of the published recipe's "
                "ImageNet weights")
    else:
        text = "ResNet-18 trained from scratch (no ImageNet weights)"

    frozen = (backbone or {}).get("frozen_stages") or 0
    if frozen:
        stages = ("the stem", "layer1", "layer2", "layer3", "layer4")[:frozen]
        listed = stages[0] if frozen == 1 else ", ".join(stages[:-1]) + " and " + stages[-1]
        text += f"; {listed} kept fixed during detection training"
    return text


def _is_voc(data: ReportData) -> bool:
    """Return True when the finished runs used Pascal VOC, the only data whose mAP compares with the post."""
    finished = data.finished_metrics()
    return bool(finished and (finished[0].get("data") or {}).get("is_voc"))


def show_section(data: ReportData, section_key: str) -> None:
    """Show every table of one section with its mAP figure, or a note when the section was not run."""
    section = data.section(section_key)
    if section is None:
        display(HTML(f"<p><em>Section {escape_text(section_key)} was not run; add it with "
                     f"<code>--sections {escape_text(section_key)}</code>.</em></p>"))
        return

    for table in section["tables"]:
        frame = section_table(data, section_key, table["key"])
        display(HTML(_STYLE + table_html(data, frame, caption=table["caption"])))
        if frame["map"].notna().any() or frame["published"].notna().any():
            _show_figure(figures.map_vs_published(frame, table["caption"], comparable=_is_voc(data)))

    sources = sorted({row["citation"] for table in section["tables"] for row in table["rows"] if row["citation"]})
    if sources:
        display(HTML("<p>Published numbers: " + "; ".join(escape_text(s) for s in sources)
                     + f". mAP on {PUBLISHED_TEST_SET} (11-point AP at IoU 0.5).</p>"))
    if data.seeds > 1:
        display(HTML("<p>≈ marks a difference smaller than the standard deviation across seeds.</p>"))

    companion = section.get("companion") or []
    if companion:
        frame = pd.DataFrame([{"configuration": item["label"], "published mAP": item["published"]}
                              for item in companion])
        display(HTML(simple_table_html(frame, caption=f"Further published numbers ({PIPELINE_CITATION}), "
                                                      f"not run here")))


def show_poly_minima(data: ReportData) -> None:
    """Show where the loss of one positive is lowest for each poly focal row, and what that means for training."""
    frame = poly_minimum_frame(data)
    if frame.empty:
        return

    classes = ((data.finished_metrics() or [{}])[0].get("data") or {}).get("classes") or []
    low = frame[frame["p_t_min"] < 0.999]
    text = ("<p>Why a negative poly_scale can undo the class head: the table gives where the loss of one "
            "positive is lowest, as a function of the true class's probability p<sub>t</sub>, computed with "
            "<code>poly_focal_loss</code> on 2,000 values of p<sub>t</sub>.")
    if not low.empty:
        lowest = ", ".join(f"{value:.3f}" for value in low["p_t_min"])
        text += (f" For {len(low)} of the {len(frame)} rows it is lowest at p<sub>t</sub> = {lowest}, not 1. "
                 "From there up to the p<sub>t</sub> in the column \"loss rises up to\", the loss grows with "
                 "p<sub>t</sub>, so gradient descent lowers the true class's probability of a positive instead "
                 "of raising it")
        if classes and (low["p_t_min"] < 1.0 / len(classes)).any():
            text += f", down to below the {1.0 / len(classes):.3f} of a uniform guess over {len(classes)} classes"
        text += ". Above that p<sub>t</sub> the loss falls again towards 0 at p<sub>t</sub> = 1."

        trained = low.dropna(subset=["final_cls_loss"])
        if not trained.empty and ((trained["final_cls_loss"] - trained["loss_min"]).abs() < 0.05).all():
            text += (" The runs agree: their class loss in the last epoch is within 0.05 of the loss at the "
                     "minimum.")
        published = low["published"].dropna()
        if not published.empty:
            text += (f" The post's rows with these settings reach {published.min():.4f} to {published.max():.4f} "
                     "on VOC, and the post does not give its formula.")
            voc_guess = 1.0 / len(VOC_CLASSES)
            if (low["p_t_min"] > voc_guess).all():
                text += (f" With the {len(VOC_CLASSES)} VOC classes these minima lie above a uniform guess "
                         f"({voc_guess:.3f}), so the same loss may do less harm there.")
        if (frame["p_t_min_alpha_on_poly"] >= 0.999).all():
            text += (" Multiplying the poly term by alpha as well is a form without the minimum: every row's "
                     "minimum would then be at p<sub>t</sub> = 1.")
    text += "</p>"

    rises_up_to = [f"{turn:.3f}" if minimum < 0.999 else "–"
                   for minimum, turn in zip(frame["p_t_min"], frame["p_t_turn"])]
    table = pd.DataFrame({
        "configuration": frame["label"],
        "alpha": [f"{value:g}" for value in frame["alpha"]],
        "poly_scale": [f"{value:g}" for value in frame["poly_scale"]],
        "poly_pow": [f"{value:g}" for value in frame["poly_pow"]],
        "p_t at the minimum": [f"{value:.3f}" for value in frame["p_t_min"]],
        "loss there": [f"{value:.3f}" for value in frame["loss_min"]],
        "loss rises up to": rises_up_to,
        "p_t at the minimum, alpha on the poly term too": [f"{value:.3f}" for value in frame["p_t_min_alpha_on_poly"]],
        "class loss, last epoch": frame["final_cls_loss"],
        "mAP (VOC07), this run": frame["map"],
    })
    display(HTML(_STYLE + text + simple_table_html(table, caption="Minimum of the poly focal loss of a positive")))


def show_loss_shapes() -> None:
    """Show the shapes of the focal, poly, varifocal and distribution focal losses."""
    _show_figure(figures.loss_shapes())


def _section_run_ids(data: ReportData) -> list[tuple[str, list[str]]]:
    """(section key, run ids) in plan order; runs of no planned section come last under "other"."""
    groups: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    keys = [section["key"] for section in data.plan.get("sections", [])]
    if "section" in data.results:
        for key in keys:
            run_ids = [str(r) for r in data.results.loc[data.results["section"] == key, "run_id"]]
            groups.append((key, run_ids))
            seen.update(run_ids)
    others = [str(r) for r in data.results["run_id"] if str(r) not in seen]
    if others:
        groups.append(("other", others))
    return groups


def show_training_curves(data: ReportData, max_runs: int | None = None) -> None:
    """Show training loss per epoch and final test mAP, one figure per section with every run of it.

    Args:
        data: the report data.
        max_runs: at most this many runs per figure (None: all); a note names how many were left out.
    """
    reference_ids = [str(r) for r in data.results.loc[data.results["row"] == REFERENCE_ROW, "run_id"]]
    figure_count = 0
    for key, run_ids in _section_run_ids(data):
        # Each section's figure also draws the reference run, the baseline every table compares with.
        ordered = run_ids + [r for r in reference_ids if r not in run_ids]
        histories, final_map = {}, {}
        for run_id in ordered:
            history = data.history(run_id)
            metrics = data.metrics.get(run_id) or {}
            if history is None or not len(history) or metrics.get("status") != "finished":
                continue
            label = data.label(run_id) + (" (reference)" if run_id in reference_ids and run_id not in run_ids else "")
            histories[label] = history
            if metrics.get("map_voc07") is not None:
                final_map[label] = float(metrics["map_voc07"])
        if not histories:
            continue

        total = len(histories)
        if max_runs is not None and total > max_runs:
            histories = dict(list(histories.items())[:max_runs])
            display(HTML(f"<p><em>Section {escape_text(key)}: {max_runs} of {total} runs drawn.</em></p>"))
        _show_figure(figures.training_curves(histories, final_map=final_map, title=f"section {key}"))
        figure_count += 1
    if not figure_count:
        display(HTML("<p><em>No training history found.</em></p>"))


def show_class_ap(data: ReportData) -> None:
    """Show the per-class AP of every finished run as a heat map."""
    frame = class_ap_frame(data)
    if frame.empty:
        display(HTML("<p><em>No finished run.</em></p>"))
        return
    _show_figure(figures.class_ap_heatmap(frame))


def best_run(data: ReportData) -> str | None:
    """Id of the finished run with the highest VOC07 mAP."""
    finished = data.results[data.results["status"] == "finished"].dropna(subset=["map_voc07"])
    if finished.empty:
        return None
    return str(finished.sort_values("map_voc07", ascending=False)["run_id"].iloc[0])


def reference_run(data: ReportData) -> str | None:
    """Id of the first finished run of the reference row."""
    rows = data.results[(data.results["row"] == REFERENCE_ROW) & (data.results["status"] == "finished")]
    return str(rows["run_id"].iloc[0]) if len(rows) else None


def show_pr_curves(data: ReportData) -> None:
    """Show the precision-recall curves of the reference run and of the best run, per class."""
    curves: dict[str, Any] = {}
    for name, run_id in (("reference", reference_run(data)), ("best", best_run(data))):
        if run_id is None:
            continue
        run_curves = data.pr_curves(run_id)
        if run_curves:
            curves[f"{name}: {data.label(run_id)}"] = run_curves
    if not curves:
        display(HTML("<p><em>No precision-recall curves found.</em></p>"))
        return
    _show_figure(figures.pr_curves_figure(curves))


def show_detections(data: ReportData) -> None:
    """Show the first test images with the detections of the best run."""
    run_id = best_run(data)
    samples = data.detections(run_id) if run_id else None
    if not samples:
        display(HTML("<p><em>No detections found.</em></p>"))
        return
    classes = (data.metrics[run_id].get("data") or {}).get("classes") or []
    _show_figure(figures.detections_figure(samples, classes, title=f"best run: {data.label(run_id)}"))


def show_provenance(data: ReportData) -> None:
    """Show where the numbers come from: data set, classes, versions, commit, and each run's wall time."""
    finished = data.finished_metrics()
    first = finished[0] if finished else {}
    data_info = first.get("data") or {}
    versions = first.get("versions") or {}
    facts = [
        ("data set", data_info.get("name")), ("data root", data_info.get("root")),
        ("fingerprint", data_info.get("fingerprint")),
        ("training images / objects", f"{data_info.get('n_train_images')} / {data_info.get('n_train_objects')}"),
        ("test images / objects", f"{data_info.get('n_test_images')} / {data_info.get('n_test_objects')}"),
        ("classes", ", ".join(str(c) for c in data_info.get("classes") or [])),
        ("is Pascal VOC", "yes" if data_info.get("is_voc") else "no"), ("profile", data.plan.get("profile")),
        ("seeds", data.seeds), ("device", first.get("device")), ("training", training_text(first.get("config"))),
        ("backbone", backbone_text(first.get("backbone"))),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("git commit", first.get("git_commit")), ("published numbers", POST_CITATION),
    ]
    frame = pd.DataFrame(facts, columns=["item", "value"])
    display(HTML(_STYLE + simple_table_html(frame, caption="Provenance")))
    display(HTML(simple_table_html(provenance_frame(data), caption="Runs", digits=1)))
