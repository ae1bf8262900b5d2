"""Tests of the report: tables from fake run folders, published numbers, escaping, self-contained HTML."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from yolonb.config import get_profile
from yolonb.report.display import training_text
from yolonb.report.html import local_references, notebook_to_html
from yolonb.report.published import PUBLISHED_TRAINING
from yolonb.report.tables import (load_report_data, poly_loss_minimum, poly_minimum_frame, provenance_frame,
                                  section_table, table_html)
from yolonb.runner.grids import load_grids
from yolonb.runner.plan import PlannedRun, plan_runs
from yolonb.runner.results import collect_results, write_plan

REPO = Path(__file__).resolve().parents[1]
POST = REPO.parent / "shared" / "reference" / "focal-loss-blog.md"
EVIL_CLASS = "<script>alert(1)</script>"
CLASSES = ["circle", EVIL_CLASS]

# A 1x1 red PNG.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def _resolve(overrides: dict, seed: int) -> tuple[dict, str]:
    config = {"neck": "fpn", "cls_loss": "ce", "alpha": 0.25, **overrides, "seed": seed}
    return config, hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _fake_map(run: PlannedRun) -> float:
    # Distinct, known values: the reference scores 0.5, every other row 0.4 + 0.01 * its position.
    if run.row == "reference/fpn":
        return 0.5 + 0.02 * run.seed
    return 0.4 + 0.01 * (sum(map(ord, run.row)) % 10) + 0.01 * run.seed


def _write_run(run: PlannedRun, image: Path, map_voc07: float) -> None:
    folder = run.run_dir
    folder.mkdir(parents=True)
    metrics = {
        "run_id": run.run_id, "status": "finished", "map_voc07": map_voc07, "map_area": map_voc07 + 0.01,
        "per_class_ap": {"circle": map_voc07, EVIL_CLASS: None}, "per_class_ap_area": {"circle": map_voc07},
        "n_gt": {"circle": 3, EVIL_CLASS: 0}, "final_losses": {"obj": 1, "cls": 1, "box": 1, "total": 3},
        "wall_time_s": 12.5, "train_time_s": 10.0, "eval_time_s": 2.5, "train_images_per_s": 40.0,
        "device": "cpu", "versions": {"python": "3.x", "torch": "2.x"}, "git_commit": None,
        "config": run.config, "assign_rule": "center3",
        "data": {"name": "synthetic", "root": "/data", "fingerprint": "abc123", "classes": CLASSES,
                 "n_train_images": 16, "n_test_images": 8, "n_train_objects": 40, "n_test_objects": 20,
                 "is_voc": False},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text("epoch,lr,loss_obj,loss_cls,loss_box,loss_total,map_voc07,epoch_time_s\n"
                                        "1,0.001,2,2,2,6,,1.0\n2,0.001,1,1,1,3,%s,1.0\n" % map_voc07)
    curve = {"precision": [1.0, 0.8, 0.5], "recall": [0.1, 0.5, 0.9]}
    (folder / "pr_curves.json").write_text(json.dumps({"circle": curve, EVIL_CLASS: {"precision": [], "recall": []}}))
    sample = [{"image_id": "img<1>", "image_path": str(image), "width": 32, "height": 32,
               "boxes": [[2, 2, 20, 20]], "scores": [0.9], "labels": [1], "gt_boxes": [[3, 3, 21, 21]],
               "gt_labels": [1]}]
    (folder / "detections_sample.json").write_text(json.dumps(sample))


def _fake_reports(tmp_path: Path, seeds: int = 1, sections: list[str] | None = None) -> Path:
    from PIL import Image

    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 200, 200)).save(image)
    out = tmp_path / "reports"
    grids = load_grids()
    if sections:
        grids = [s for s in grids if s.key in sections]
    runs = plan_runs(grids, seeds, _resolve, out, REPO / "notebooks")
    for run in runs:
        _write_run(run, image, _fake_map(run))
    write_plan(grids, runs, out, profile="smoke", data=None, seeds=seeds, device="cpu")
    collect_results(runs, out)
    return out


def test_section_table_numbers(tmp_path):
    out = _fake_reports(tmp_path)
    data = load_report_data(out)
    frame = section_table(data, "focal", "fpn").set_index("row")

    reference = frame.loc["focal/reference"]
    assert reference["map"] == pytest.approx(0.5)
    assert reference["published"] == 0.7149
    assert reference["difference"] == pytest.approx(0.5 - 0.7149)
    assert reference["is_reference"]

    results = data.results.set_index("row")
    row = frame.loc["focal/fpn_alpha_0.25"]
    expected = float(results.loc["focal/fpn_alpha_0.25", "map_voc07"])
    assert row["map"] == pytest.approx(expected)
    assert row["published"] == 0.7121
    assert row["difference"] == pytest.approx(expected - 0.7121)
    assert row["vs_reference"] == pytest.approx(expected - 0.5)
    assert not row["beyond_post"]
    assert frame.loc["focal/fpn_modified_sigmoid", "beyond_post"]
    assert frame.loc["focal/fpn_modified_sigmoid", "published"] == 0.7195

    html = table_html(data, section_table(data, "focal", "fpn"), caption="MultiHeadFPN + focal loss")
    assert "(beyond the post)" in html
    assert f"{expected:.4f}" in html
    assert f"{expected - 0.7121:+.4f}" in html
    run_id = results.loc["focal/fpn_alpha_0.25", "run_id"]
    assert f'href="runs/{run_id}/run.html"' in html


def test_runs_table_names_pretraining(tmp_path):
    out = _fake_reports(tmp_path, sections=["dfl"])
    data = load_report_data(out)
    payer, loader = data.results["run_id"].iloc[0], data.results["run_id"].iloc[-1]
    for run_id, from_cache in ((payer, False), (loader, True)):
        path = out / "runs" / run_id / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["backbone"] = {"init": "crops", "pretraining": {"seconds": 156.2, "from_cache": from_cache}}
        path.write_text(json.dumps(metrics))

    frame = provenance_frame(load_report_data(out)).set_index("run_id")

    assert frame.loc[payer, "of which backbone pretraining (s)"] == pytest.approx(156.2)
    assert frame.loc[loader, "of which backbone pretraining (s)"] == 0.0
    others = frame.drop(index=[payer, loader])
    assert others["of which backbone pretraining (s)"].isna().all()


def test_seeds_show_spread(tmp_path):
    out = _fake_reports(tmp_path, seeds=2, sections=["reference", "varifocal"])
    data = load_report_data(out)
    frame = section_table(data, "varifocal", "varifocal").set_index("row")

    # Reference seeds score 0.50 and 0.52: mean 0.51, sample std 0.02 / sqrt(2).
    assert frame.loc["varifocal/reference", "map"] == pytest.approx(0.51)
    assert frame.loc["varifocal/reference", "std"] == pytest.approx(0.02 / 2 ** 0.5)
    assert frame.loc["varifocal/reference", "n_runs"] == 2

    # The other rows' seeds differ by 0.01, so their std is about 0.0071 and their distance to
    # the reference (at least 0.01 + ...) is compared against the larger spread of the two.
    row = frame.loc["varifocal/alpha_0.25"]
    assert row["std"] == pytest.approx(0.01 / 2 ** 0.5)
    assert row["vs_reference_within_spread"] == (abs(row["vs_reference"]) < 0.02 / 2 ** 0.5)
    html = table_html(data, section_table(data, "varifocal", "varifocal"))
    assert "mean ± std of 2 seeds" in html
    assert f"{0.51:.4f} ± {0.02 / 2 ** 0.5:.4f}" in html
    assert "seed 1" in html


def _post_tables(text: str) -> dict[str, float]:
    numbers = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"0\.\d{4}", cells[1]):
            numbers.setdefault(cells[0], float(cells[1]))
    return numbers


def test_published_numbers_match_post():
    if not POST.is_file():
        pytest.skip(f"the post is not beside the checkout at {POST}")
    post = _post_tables(POST.read_text(encoding="utf-8"))
    assert post["FPN/MultiHeadFPN"] == 0.7149

    # The grid label names the configuration in words; map each post row to its grid row.
    expected = {
        "Loss/MultiHeadFPNFocalloss alpha=0.75": "focal/fpn_alpha_0.75",
        "Loss/MultiHeadFPNFocalloss alpha=0.5": "focal/fpn_alpha_0.5",
        "Loss/MultiHeadFPNFocalloss alpha=0.25": "focal/fpn_alpha_0.25",
        "Loss/MultiHeadBiFPNFocalLoss alpha=0.5": "focal/bifpn_alpha_0.5",
        "Loss/MultiHeadBiFPNFocalLoss alpha=0.25": "focal/bifpn_alpha_0.25",
        "Loss/MultiHeadAugFPNFocalLoss alpha=0.5": "focal/augfpn_alpha_0.5",
        "Loss/MultiHeadAugFPNFocalLoss alpha=0.25": "focal/augfpn_alpha_0.25",
        "Loss/MultiHeadFPNPolyLossFL poly_scale=1 poly_pow=1": "poly_focal/scale_1_pow_1",
        "Loss/MultiHeadFPNPolyLossFL poly_scale=1 poly_pow=2": "poly_focal/scale_1_pow_2",
        "Loss/MultiHeadFPNPolyLossFL poly_scale=1 poly_pow=3": "poly_focal/scale_1_pow_3",
        "Loss/MultiHeadFPNPolyLossFL poly_scale=-1 poly_pow=1": "poly_focal/scale_-1_pow_1",
        "Loss/MultiHeadFPNPolyLossFL poly_scale=-1 poly_pow=2": "poly_focal/scale_-1_pow_2",
        "Loss/MultiHeadFPNPolyLossFL poly_scale=-1 poly_pow=3": "poly_focal/scale_-1_pow_3",
        "Loss/MultiHeadFPNVariLossFL alpha=0.25 gamma=2": "varifocal/alpha_0.25",
        "FPN/MultiHeadFPN": "reference/fpn",
    }
    rows = {row.id: row for section in load_grids() for table in section.tables for row in table.rows}
    assert set(post) == set(expected)
    for post_label, row_id in expected.items():
        assert rows[row_id].published == post[post_label], row_id
        assert rows[row_id].citation == "lvsolo, Focal Loss及其改进, 2024-10-24"
        assert not rows[row_id].beyond_post

    post_rows = {row_id for row_id in expected.values()}
    for row_id, row in rows.items():
        if row.ref is None and row_id not in post_rows:
            assert row.beyond_post or row.context, f"{row_id} is not in the post but not marked"


def test_markdown_images_embedded(tmp_path):
    (tmp_path / "figure.png").write_bytes(PNG)
    notebook = new_notebook()
    notebook.cells = [new_markdown_cell("![a figure](figure.png)"), new_code_cell("1 + 1")]
    nbformat.write(notebook, tmp_path / "page.ipynb")

    html_path = notebook_to_html(tmp_path / "page.ipynb", tmp_path / "page.html")
    moved = tmp_path / "elsewhere" / "page.html"
    moved.parent.mkdir()
    shutil.move(html_path, moved)
    (tmp_path / "figure.png").unlink()

    html = moved.read_text(encoding="utf-8")
    assert "data:image/png;base64," in html
    assert local_references(html) == []


def test_report_html_self_contained(tmp_path):
    pytest.importorskip("yolonb.losses.focal")
    from yolonb.runner.cli import build_report

    out = _fake_reports(tmp_path, sections=["reference", "varifocal"])
    assert build_report(out, REPO / "notebooks")

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(out / "report.html", moved / "report.html")
    html = (moved / "report.html").read_text(encoding="utf-8")

    assert local_references(html) == []
    assert len(re.findall(r'src="data:image/png;base64,', html)) >= 6
    assert "Focal Loss及其改进 — Focal Loss and its improvements" in html
    assert EVIL_CLASS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "cannot be compared with the published numbers" in html
    assert "0.7149" in html
    assert "0.6729" in html
    assert "Section focal was not run" in html
    # Inputs are hidden: no code cell source appears.
    assert "load_report_data(out_dir)" not in html
    order = [html.index(title) for title in ("Baseline and reference", "2.1 Focal loss", "2.2 Poly focal loss",
                                             "2.3 Varifocal loss", "Distribution focal loss (DFL)", "Provenance")]
    assert order == sorted(order)


def test_training_text_names_the_schedule():
    config = {"input_size": 224, "epochs": 4, "batch_size": 16, "optimizer": "adamw", "lr": 2e-3,
              "multiscale_sizes": []}

    assert training_text(config) == "224 pixels, 4 epochs, batch 16, AdamW at lr 0.002"
    assert training_text(None) == "unknown"


def test_published_training_matches_voc_profile():
    # The report's "published" schedule and the profile that reproduces it must not drift apart.
    voc = get_profile("voc")

    single_scale = training_text(voc.replace(multiscale_sizes=()).to_dict())

    assert voc.multiscale_sizes
    assert f"{single_scale}, with multi-scale training" == PUBLISHED_TRAINING


def test_poly_minimum_negative_scale():
    # By hand, -0.25 (1 - p)^2 ln p - (1 - p)^3 is lowest near p = 0.1355, where it is
    # 0.373455 - 0.646093 = -0.272638.
    p_min, loss_min, p_turn = poly_loss_minimum(0.25, 2.0, -1.0, 1.0)

    assert p_min == pytest.approx(0.1355, abs=0.001)
    assert loss_min == pytest.approx(-0.272638, abs=1e-4)
    assert p_turn == 1.0


def test_poly_minimum_turns_below_one():
    # With poly_pow 2 the loss peaks near p = 0.778 and falls again towards 0 at p = 1.
    p_min, _, p_turn = poly_loss_minimum(0.25, 2.0, -1.0, 2.0)

    assert p_min == pytest.approx(0.1075, abs=0.001)
    assert p_turn == pytest.approx(0.778, abs=0.002)


def test_poly_minimum_at_one():
    assert poly_loss_minimum(0.25, 2.0, 1.0, 1.0)[0] == 1.0
    assert poly_loss_minimum(0.25, 2.0, -1.0, 1.0, alpha_on_poly=True)[0] == 1.0


def test_poly_minimum_frame_rows(tmp_path):
    out = _fake_reports(tmp_path, sections=["poly_focal"])
    frame = poly_minimum_frame(load_report_data(out)).set_index("label")

    assert len(frame) == 6
    negative = frame.loc["MultiHeadFPN poly focal poly_scale=-1 poly_pow=3"]
    assert negative["p_t_min"] == pytest.approx(0.0885, abs=0.001)
    assert negative["p_t_min_alpha_on_poly"] == 1.0
    assert negative["published"] == 0.7212
    # The fake runs' metrics.json give a class loss of 1 in the last epoch.
    assert negative["final_cls_loss"] == 1.0
    assert frame.loc["MultiHeadFPN poly focal poly_scale=1 poly_pow=3", "p_t_min"] == 1.0
