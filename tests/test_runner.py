"""Tests of run_all.py's runner: papermill parameters, failures, the run cache and the grids."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import nbformat
import papermill
import pytest

from helpers import write_notebook
from yolonb.runner.cli import _run_summary, main
from yolonb.runner.execute import execute_notebook
from yolonb.runner.grids import GridError, load_grids, load_section, select_sections

REPO = Path(__file__).resolve().parents[1]

TRICKY = {
    "text": "it's a \"quoted\" key=value",
    "nothing": None,
    "classes": ["red light", "green", "<script>alert(1)</script>"],
    "lr": 1e-3,
    "flag": True,
    "off": False,
    "count": 3,
    "nested": {"a": [1, 2.5, None]},
    "backslash": "C:\\data\\voc",
    "unicode": "Focal Loss及其改进",
}




# A stand-in for run_experiment: it writes the metrics.json of a finished run.
WRITE_METRICS = """\
import json, pathlib
folder = pathlib.Path(out_dir)
folder.mkdir(parents=True, exist_ok=True)
metrics = {"run_id": folder.name, "status": "finished", "map_voc07": config["alpha"], "map_area": 0.5,
           "wall_time_s": 1.0}
(folder / "metrics.json").write_text(json.dumps(metrics))
print("trained", folder.name)"""


def _fake_resolve(overrides: dict, seed: int) -> tuple[dict, str]:
    config = {"alpha": 0.25, "neck": "fpn", **overrides, "seed": seed}
    run_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return config, run_id


def _grid(folder: Path, rows: list[dict], notebook: str = "section.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    grid = {
        "section": "demo", "title": "Demo", "notebook": notebook,
        "sources": {"post": "lvsolo, Focal Loss及其改进, 2024-10-24"},
        "tables": [{"key": "main", "caption": "demo table", "rows": rows}],
    }
    (folder / "demo.yaml").write_text(json.dumps(grid), encoding="utf-8")
    return folder


def test_parameters_reach_notebook_intact(tmp_path, caplog):
    notebook = write_notebook(tmp_path / "echo.ipynb",
                              "import json, pathlib\npathlib.Path(out_dir, 'echo.json').write_text(json.dumps(config))")
    with caplog.at_level(logging.WARNING, logger="papermill"):
        execute_notebook(notebook, tmp_path / "out.ipynb", {"config": TRICKY, "out_dir": str(tmp_path)},
                         tmp_path / "log.txt")

    echoed = json.loads((tmp_path / "echo.json").read_text())
    assert echoed == TRICKY
    assert isinstance(echoed["lr"], float)
    assert echoed["nothing"] is None
    assert echoed["flag"] is True
    assert not [r for r in caplog.records if "unknown parameter" in r.getMessage().lower()]


@pytest.mark.parametrize("name", ["reference", "focal", "poly_focal", "varifocal", "dfl"])
def test_section_notebook_declares_parameters(name):
    path = REPO / "notebooks" / f"{name}.ipynb"
    parameters = papermill.inspect_notebook(str(path))
    assert "config" in parameters
    assert "out_dir" in parameters
    assert parameters["config"]["default"] == "None"

    notebook = nbformat.read(path, as_version=4)
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells) == 1
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None
    assert any("run_experiment(" in cell.source for cell in notebook.cells)


def test_report_notebook_declares_out_dir():
    parameters = papermill.inspect_notebook(str(REPO / "notebooks" / "report.ipynb"))
    assert list(parameters) == ["out_dir"]


def test_failed_runs_and_cache(tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    later_cell = "print('this cell must not run')"
    write_notebook(notebooks / "good.ipynb", WRITE_METRICS)
    write_notebook(notebooks / "raises.ipynb", "raise ValueError('boom in the notebook')", later_cell)
    write_notebook(notebooks / "magic.ipynb", "%not_a_real_magic", later_cell)

    grids = tmp_path / "grids"
    _grid(grids, [{"key": "good", "label": "good <b>row</b>", "overrides": {"alpha": 0.5},
                   "published": 0.7, "source": "post"}], notebook="good.ipynb")
    for name in ("raises", "magic"):
        bad = {"section": name, "title": name, "notebook": f"{name}.ipynb", "sources": {},
               "tables": [{"key": "t", "caption": "", "rows": [{"key": "r", "label": name,
                                                                  "overrides": {"neck": name}}]}]}
        (grids / f"{name}.yaml").write_text(json.dumps(bad))

    out = tmp_path / "reports"
    argv = ["--grids", str(grids), "--notebooks", str(notebooks), "--out", str(out), "--no-report"]
    assert main(argv, resolve=_fake_resolve) == 1
    stderr = capsys.readouterr().err

    results = {row["row"]: row for row in _read_csv(out / "results.csv")}
    assert results["demo/good"]["status"] == "finished"
    assert float(results["demo/good"]["map_voc07"]) == 0.5
    assert abs(float(results["demo/good"]["difference"]) - (0.5 - 0.7)) < 1e-12

    for name, expected in (("raises", "ValueError"), ("magic", "UsageError")):
        record = results[f"{name}/r"]
        assert record["status"] == "failed"
        assert expected in record["error"]
        executed = out / record["notebook"]
        assert str(executed) in stderr
        assert str(out / record["log"]) in stderr
        assert expected in (out / record["log"]).read_text()
        cells = nbformat.read(executed, as_version=4).cells
        # An exception is an "error" output; IPython prints an unknown magic's UsageError on stderr.
        failing = [c for c in cells if c.cell_type == "code" and any(
            o.get("output_type") == "error" or o.get("name") == "stderr" for o in c.outputs)]
        assert len(failing) == 1
        last = [c for c in cells if c.cell_type == "code" and c.source == later_cell][0]
        assert last.execution_count is None
        assert last.outputs == []
        assert (out / record["html"]).is_file()

    # Second pass: the finished run is cached and its notebook untouched.
    good_notebook = out / results["demo/good"]["notebook"]
    before = good_notebook.stat().st_mtime_ns
    assert main(argv + ["--sections", "demo"], resolve=_fake_resolve) == 0
    assert "1 runs planned, 1 cached, 0 to execute" in capsys.readouterr().out
    assert good_notebook.stat().st_mtime_ns == before

    assert main(argv + ["--sections", "demo", "--dry-run"], resolve=_fake_resolve) == 0
    listing = capsys.readouterr().out
    assert "cached" in listing
    assert "demo/good" in listing


def test_force_runs_again(tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "section.ipynb", WRITE_METRICS)
    grids = _grid(tmp_path / "grids", [{"key": "a", "label": "a", "overrides": {"alpha": 0.3}}])
    out = tmp_path / "reports"
    argv = ["--grids", str(grids), "--notebooks", str(notebooks), "--out", str(out), "--no-report"]

    assert main(argv, resolve=_fake_resolve) == 0
    run_dir = next((out / "runs").iterdir())
    (run_dir / "stale.txt").write_text("left from an earlier run")
    assert main(argv + ["--force"], resolve=_fake_resolve) == 0
    assert "0 cached, 1 to execute" in capsys.readouterr().out
    assert not (run_dir / "stale.txt").exists()
    assert (run_dir / "metrics.json").is_file()


def test_options_rejected(tmp_path, capsys):
    assert main(["--jobs", "0", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "--jobs 0 is invalid" in capsys.readouterr().err
    assert main(["--seeds", "0", "--dry-run", "--out", str(tmp_path)]) == 2
    assert main(["--sections", "nonsense", "--dry-run", "--out", str(tmp_path)], resolve=_fake_resolve) == 2
    assert "unknown section(s) ['nonsense']" in capsys.readouterr().err


def test_seeds_plan_one_run_each(tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "section.ipynb", WRITE_METRICS)
    grids = _grid(tmp_path / "grids", [{"key": "a", "label": "a", "overrides": {"alpha": 0.3}}])
    out = tmp_path / "reports"
    assert main(["--grids", str(grids), "--notebooks", str(notebooks), "--out", str(out), "--seeds", "3",
                 "--dry-run"], resolve=_fake_resolve) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["seeds"] == 3
    assert len(plan["sections"][0]["tables"][0]["rows"][0]["run_ids"]) == 3


def test_real_grids_structure():
    sections = load_grids()
    keys = [section.key for section in sections]
    assert keys == ["reference", "focal", "poly_focal", "varifocal", "dfl"]
    by_key = {section.key: section for section in sections}
    for key in keys[1:]:
        for table in by_key[key].tables:
            assert table.rows[0].run_row == "reference/fpn"
            assert table.rows[0].published == 0.7149

    focal_rows = [row for table in by_key["focal"].tables for row in table.rows if row.ref is None]
    assert len(focal_rows) == 9
    assert sum(row.beyond_post for row in focal_rows) == 2
    assert all(row.beyond_post for table in by_key["dfl"].tables for row in table.rows if row.ref is None)

    selected = select_sections(sections, ["varifocal"])
    assert [section.key for section in selected] == ["reference", "varifocal"]


def test_grid_rows_are_valid_configs():
    from yolonb.config import get_profile

    for section in load_grids():
        for table in section.tables:
            for row in table.rows:
                get_profile("smoke", **row.overrides)


def test_grid_errors_name_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("section: x\ntitle: x\nnotebook: x.ipynb\ntables:\n  - key: t\n    rows:\n"
                    "      - {key: a, label: a, published: 71.5, source: post}\nsources: {post: p}\n")
    with pytest.raises(GridError, match=r"bad\.yaml.*published=71\.5.*fraction"):
        load_section(path)

    path.write_text("section: x\ntitle: x\nnotebook: x.ipynb\ntables:\n  - key: t\n    rows:\n"
                    "      - {key: a, ref: nowhere/row}\n")
    with pytest.raises(GridError, match=r"refers to 'nowhere/row'"):
        load_grids(tmp_path)


def _read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_summary_names_backbone_pretraining(tmp_path):
    pretraining = {"seconds": 74.3, "from_cache": False}
    metrics = {"map_voc07": 0.22154, "backbone": {"init": "crops", "pretraining": pretraining}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    run = SimpleNamespace(run_dir=tmp_path, wall_time_s=139.4)

    assert _run_summary(run) == "mAP 0.2215, 139 s (including 74 s of backbone pretraining, once per data set)"

    pretraining["from_cache"] = True
    (tmp_path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    assert _run_summary(run) == "mAP 0.2215, 139 s"
