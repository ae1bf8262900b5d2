"""Write the section notebooks and report.ipynb without outputs.

Run `python notebooks/generate.py` after changing the text below; the notebooks are
committed as this script writes them (no outputs, no execution counts).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

RUN_CODE = """\
import logging

from yolonb.config import RunConfig, get_profile
from yolonb.engine import run_experiment

# The run's messages (data, device, mAP) go to stderr, which run_all.py keeps in run.log.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
run_config = RunConfig.from_dict(config) if config is not None else get_profile(profile, **overrides)
metrics = run_experiment(run_config, out_dir, progress=progress)"""

SHOW_CODE = """\
from yolonb.report import show_run

show_run(out_dir)"""

SECTIONS = {
    "reference": {
        "overrides": {"neck": "fpn"},
        "text": r"""# Baseline and reference: the original YOLO losses

The detector is a ResNet-18 YOLO in the style of new-YOLOv1_PyTorch: a backbone, an SPP
and SAM neck, and per cell one objectness logit, $C$ class logits and 4 box values. The
reference row of every table in the post uses three prediction heads (strides 8, 16 and
32) on an FPN neck, trained with the original losses:

- objectness: mean squared error between $\sigma(o)$ and the target (1 at an object's cell, else 0);
- classes: softmax cross-entropy $-\log p_t$ at the cells that hold an object;
- box: binary cross-entropy on the sub-cell offsets $t_x, t_y$ and squared error on
  $\log w, \log h$, weighted by $2 - \frac{\text{box area}}{\text{image area}}$.

The single-head model (one stride-32 head) is the baseline the multi-head variants
improved on. Set `overrides = {"neck": "single"}` below to train it.""",
    },
    "focal": {
        "overrides": {"neck": "fpn", "cls_loss": "focal", "alpha": 0.25, "gamma": 2.0},
        "text": r"""# 2.1 Focal loss

Focal loss (Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017) scales the
cross-entropy down for examples that are already classified well, so training focuses
on the hard ones:

$$\mathrm{FL}(p_t) = -\alpha\,(1 - p_t)^{\gamma}\,\log p_t,$$

where $p_t$ is the softmax probability of the true class at a positive cell. The post
applies it to the classification loss with $\gamma = 2$ and $\alpha \in \{0.75, 0.5,
0.25\}$ on the FPN, BiFPN and AugFPN necks. Beyond the post, the "modified" form also
penalises the other classes $i \ne t$ with
$-(1 - \alpha)\,p_i^{\gamma}\,\log(1 - p_i)$, with softmax or sigmoid probabilities.""",
    },
    "poly_focal": {
        "overrides": {"neck": "fpn", "cls_loss": "poly_focal", "alpha": 0.25, "gamma": 2.0,
                      "poly_scale": 1.0, "poly_pow": 1},
        "text": r"""# 2.2 Poly focal loss

PolyLoss (Leng et al., *PolyLoss: A Polynomial Expansion Perspective of Classification
Loss Functions*, ICLR 2022) adjusts the leading polynomial term of a loss. The Poly-1
form of focal loss adds $\epsilon\,(1 - p_t)^{\gamma + 1}$; the post generalises the
exponent:

$$\mathrm{PolyFL}(p_t) = -\alpha\,(1 - p_t)^{\gamma}\,\log p_t
  + s\,(1 - p_t)^{\gamma + k},$$

with poly_scale $s \in \{1, -1\}$ and poly_pow $k \in \{1, 2, 3\}$, on the FPN neck.""",
    },
    "varifocal": {
        "overrides": {"neck": "fpn", "cls_loss": "varifocal", "alpha": 0.25, "gamma": 2.0},
        "text": r"""# 2.3 Varifocal loss

Varifocal loss (Zhang et al., *VarifocalNet: An IoU-aware Dense Object Detector*,
CVPR 2021) trains the class score to predict the IoU $q$ of the predicted box with its
ground truth, and down-weights only the negatives:

$$\mathrm{VFL}(p, q) = -q\,\left(q \log p + (1 - q) \log(1 - p)\right) \quad \mathrm{for}\ q > 0,$$

$$\mathrm{VFL}(p, 0) = -\alpha\,p^{\gamma}\,\log(1 - p).$$

The post used $\alpha = 0.25$, $\gamma = 2$; the paper's default $\alpha = 0.75$ is run
beyond the post.""",
    },
    "dfl": {
        "overrides": {"neck": "fpn", "box_loss": "dfl", "reg_max": 16},
        "text": r"""# Distribution focal loss (DFL)

Generalized Focal Loss (Li et al., *Generalized Focal Loss: Learning Qualified and
Distributed Bounding Boxes for Dense Object Detection*, NeurIPS 2020) predicts each box
side as a discrete distribution over the bins $0, 1, \dots, n$ (reg_max $= n$, in
stride units). For a target $y$ between the bins $y_l = \lfloor y \rfloor$ and
$y_r = y_l + 1$, the loss acts on those two bins only:

$$\mathrm{DFL}(S_l, S_r) = -\left((y_r - y)\,\log S_l + (y - y_l)\,\log S_r\right).$$

The post has this heading only, so every row here goes beyond it: DFL with reg_max 8
and 16, and the full pairing with quality focal loss,
$\mathrm{QFL}(\sigma) = -|y - \sigma|^{\beta}\left((1 - y)\log(1 - \sigma) + y \log \sigma\right)$.""",
    },
}


def parameters_cell(section: str, overrides: dict) -> nbformat.NotebookNode:
    source = (
        "# Parameters: run_all.py replaces config, out_dir and progress. By hand, config = None\n"
        "# trains the smoke profile with the overrides below (a few seconds on a CPU).\n"
        "config = None  # a RunConfig.to_dict(), or None\n"
        "progress = True  # progress bars; run_all.py turns them off so run.html stays short\n"
        f"profile = {'smoke'!r}\n"
        f"overrides = {overrides!r}\n"
        f"out_dir = {('../reports/manual/' + section)!r}\n"
    )
    return new_code_cell(source, metadata={"tags": ["parameters"]})


def section_notebook(section: str, spec: dict) -> nbformat.NotebookNode:
    notebook = new_notebook()
    notebook.cells = [
        new_markdown_cell(spec["text"]),
        parameters_cell(section, spec["overrides"]),
        new_markdown_cell("Train and evaluate one configuration; this writes `metrics.json`, `history.csv`, "
                          "the precision-recall curves and the weights into `out_dir`."),
        new_code_cell(RUN_CODE),
        new_markdown_cell("## Result"),
        new_code_cell(SHOW_CODE),
    ]
    return _with_kernel(notebook)


REPORT_CELLS = [
    ("md", r"""# Focal Loss及其改进 — Focal Loss and its improvements

This page regenerates the tables of the blog post *Focal Loss及其改进* (lvsolo,
2024-10-24) from training runs of this repository. Each table gives the mAP of this
run next to the published mAP on the Pascal VOC2007 test set, their difference, the
difference to the reference row of this report, and a link to the executed notebook
of each run. Rows marked "beyond the post" are configurations the post does not
report."""),
    ("parameters", '# Parameters: run_all.py passes the output folder.\nout_dir = "../reports"\n'),
    ("code", "from yolonb.report import load_report_data, show_notice\n\nreport = load_report_data(out_dir)\n"
             "show_notice(report)"),
    ("md", "## Baseline and reference\n\nThe single-head baseline and the three-head FPN reference with the "
           "original losses. The reference is one run, repeated in every table below."),
    ("code", 'from yolonb.report import show_section\n\nshow_section(report, "reference")'),
    ("md", r"""## 2.1 Focal loss

$\mathrm{FL}(p_t) = -\alpha\,(1 - p_t)^{\gamma}\,\log p_t$ on the classification loss
(Lin et al., ICCV 2017), $\gamma = 2$, for the FPN, BiFPN and AugFPN necks. The
modified rows add $-(1 - \alpha)\,p_i^{\gamma}\log(1 - p_i)$ for the other classes."""),
    ("code", 'show_section(report, "focal")'),
    ("md", r"""## 2.2 Poly focal loss

$\mathrm{FL}(p_t) + s\,(1 - p_t)^{\gamma + k}$ (Leng et al., ICLR 2022, Poly-1 with the
exponent generalised), $s \in \{1, -1\}$, $k \in \{1, 2, 3\}$."""),
    ("code", 'from yolonb.report import show_poly_minima\n\nshow_section(report, "poly_focal")\n'
             'show_poly_minima(report)'),
    ("md", r"""## 2.3 Varifocal loss

IoU-aware class targets $q$ for positives and $-\alpha\,p^{\gamma}\log(1 - p)$ for
negatives (Zhang et al., CVPR 2021)."""),
    ("code", 'show_section(report, "varifocal")'),
    ("md", r"""## Distribution focal loss (DFL)

The post has this heading only. Box sides as distributions over reg_max + 1 bins, the
loss on the two bins around the target (Li et al., NeurIPS 2020), and the full
Generalized Focal Loss pairing with quality focal loss."""),
    ("code", 'show_section(report, "dfl")'),
    ("md", "## The shapes of the losses\n\nComputed with the loss functions the runs train with "
           "(`yolonb.losses.focal`)."),
    ("code", "from yolonb.report import show_loss_shapes\n\nshow_loss_shapes()"),
    ("md", "## Training curves"),
    ("code", "from yolonb.report import show_training_curves\n\nshow_training_curves(report)"),
    ("md", "## AP per class"),
    ("code", "from yolonb.report import show_class_ap\n\nshow_class_ap(report)"),
    ("md", "## Precision-recall curves of the reference and the best run"),
    ("code", "from yolonb.report import show_pr_curves\n\nshow_pr_curves(report)"),
    ("md", "## Test images with detections\n\nGround truth dashed green, detections of the best run in red."),
    ("code", "from yolonb.report import show_detections\n\nshow_detections(report)"),
    ("md", "## Provenance"),
    ("code", "from yolonb.report import show_provenance\n\nshow_provenance(report)"),
]


def report_notebook() -> nbformat.NotebookNode:
    notebook = new_notebook()
    for kind, source in REPORT_CELLS:
        if kind == "md":
            notebook.cells.append(new_markdown_cell(source))
        elif kind == "parameters":
            notebook.cells.append(new_code_cell(source, metadata={"tags": ["parameters"]}))
        else:
            notebook.cells.append(new_code_cell(source))
    return _with_kernel(notebook)


def _with_kernel(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    # Fixed cell ids keep the committed files identical from one generation to the next.
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"
    return notebook


def main() -> None:
    for section, spec in SECTIONS.items():
        nbformat.write(section_notebook(section, spec), HERE / f"{section}.ipynb")
    nbformat.write(report_notebook(), HERE / "report.ipynb")


if __name__ == "__main__":
    main()
