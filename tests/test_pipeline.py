"""The whole pipeline on the smoke profile: section notebooks through papermill, then report.html."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import ONE_ROW_GRID

REPO = Path(__file__).resolve().parents[1]


def _run_all(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "run_all.py"), "--profile", "smoke", "--device", "cpu",
               "--out", str(out), *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)


def _table_numbers(html: str, caption: str) -> list[str]:
    start = html.index(f"<caption>{caption}</caption>")
    table = html[start:html.index("</table>", start)]
    return re.findall(r"<td>(\d\.\d{4})", table)




def test_pipeline_one_run(tmp_path):
    # The smallest real pipeline: one smoke training through its notebook, then the report.
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "reference.yaml").write_text(ONE_ROW_GRID, encoding="utf-8")
    out = tmp_path / "reports"
    result = _run_all(out, "--grids", str(grids))
    assert result.returncode == 0, result.stderr[-3000:]

    html = (out / "report.html").read_text(encoding="utf-8")
    numbers = _table_numbers(html, "The FPN reference")
    assert len(numbers) == 2
    assert numbers[1] == "0.7149"
    assert 'src="data:image/png;base64,' in html
    assert "Section focal was not run" in html
    (log,) = (out / "runs").glob("*/run.log")
    assert "finished: mAP(VOC07)" in log.read_text(encoding="utf-8")


def _one_row_per_table(source: Path, target: Path) -> list[str]:
    """Copy the grid files, keeping the shared reference and the first own row of each table."""
    target.mkdir()
    captions = []
    for grid_path in sorted(source.glob("*.yaml")):
        grid = yaml.safe_load(grid_path.read_text(encoding="utf-8"))
        for table in grid["tables"]:
            own_rows = [row for row in table["rows"] if "ref" not in row and not row.get("context")]
            shared_rows = [row for row in table["rows"] if "ref" in row]
            table["rows"] = shared_rows + own_rows[:1]
            captions.append(table["caption"])
        (target / grid_path.name).write_text(yaml.safe_dump(grid, allow_unicode=True), encoding="utf-8")
    return captions


def test_pipeline_every_notebook(tmp_path):
    # Every section notebook runs through papermill (one row per table), then the report.
    grids = tmp_path / "grids"
    captions = _one_row_per_table(REPO / "grids", grids)
    out = tmp_path / "reports"
    result = _run_all(out, "--grids", str(grids))
    assert result.returncode == 0, result.stderr[-3000:]

    html = (out / "report.html").read_text(encoding="utf-8")
    assert len(captions) == 7
    for caption in captions:
        numbers = _table_numbers(html, caption)
        # At least one row with this run's mAP beside its published number.
        assert len(numbers) >= 2, caption
    assert "(failed)" not in html
    with open(out / "results.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert {row["section"] for row in rows} == {"reference", "focal", "poly_focal", "varifocal", "dfl"}
    assert all(row["status"] == "finished" for row in rows)
    for row in rows:
        assert (out / row["html"]).is_file()


@pytest.mark.slow
def test_pipeline_one_section(tmp_path):
    out = tmp_path / "reports"
    start = time.perf_counter()
    result = _run_all(out, "--sections", "reference")
    assert result.returncode == 0, result.stderr[-3000:]
    first = time.perf_counter() - start

    html = (out / "report.html").read_text(encoding="utf-8")
    numbers = _table_numbers(html, "The single-head baseline and the three-head FPN reference")
    # Two rows, each with this run's mAP and the published one.
    assert len(numbers) == 4
    assert "0.6709" in numbers
    assert "0.7149" in numbers
    with open(out / "results.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["status"] for row in rows] == ["finished", "finished"]
    for row in rows:
        assert (out / row["html"]).is_file()

    # Run again: every run is cached, only the report is rebuilt.
    start = time.perf_counter()
    again = _run_all(out, "--sections", "reference")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 runs planned, 2 cached, 0 to execute" in again.stdout
    assert time.perf_counter() - start < first


@pytest.mark.slow
def test_pipeline_every_section(tmp_path):
    out = tmp_path / "reports"
    result = _run_all(out)
    assert result.returncode == 0, result.stderr[-3000:]

    html = (out / "report.html").read_text(encoding="utf-8")
    captions = ["The single-head baseline and the three-head FPN reference", "MultiHeadFPN + focal loss",
                "MultiHeadBiFPN + focal loss", "MultiHeadAugFPN + focal loss", "MultiHeadFPN + poly focal loss",
                "MultiHeadFPN + varifocal loss", "MultiHeadFPN + distribution focal loss"]
    for caption in captions:
        numbers = _table_numbers(html, caption)
        assert numbers, caption
    assert "(failed)" not in html
    assert "(missing)" not in html
