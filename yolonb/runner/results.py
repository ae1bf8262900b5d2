"""Collect run folders into `results.csv` and write `plan.json`, the two inputs of the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from yolonb.fileio import write_text

from .grids import Section
from .plan import PlannedRun

RESULT_COLUMNS = ["section", "row", "label", "run_id", "seed", "map_voc07", "map_area", "published",
                  "difference", "beyond_post", "context", "wall_time_s", "status", "error", "notebook", "log",
                  "html", "also_rows"]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def varying_fields(runs: list[PlannedRun]) -> list[str]:
    """Configuration fields whose value differs between the runs, in the configuration's order."""
    if not runs:
        return []
    names = list(runs[0].config)
    return [name for name in names if len({json.dumps(run.config.get(name)) for run in runs}) > 1]


def collect_results(runs: list[PlannedRun], out_dir: str | Path) -> pd.DataFrame:
    """Build one row per run from its folder and write `out_dir/results.csv` atomically.

    A run's status is "finished" when its metrics.json records it, else the status the runner
    recorded in run.json ("failed"), else "missing". mAP values are fractions in [0, 1].
    """
    out_dir = Path(out_dir)
    fields = varying_fields(runs)
    records = []
    for run in runs:
        metrics = _read_json(run.run_dir / "metrics.json") or {}
        runner = _read_json(run.run_dir / "run.json") or {}
        finished = metrics.get("status") == "finished"
        status = "finished" if finished else runner.get("status", "missing")
        map_voc07 = metrics.get("map_voc07") if finished else None
        wall = metrics.get("wall_time_s") if finished else runner.get("wall_time_s")

        record: dict[str, Any] = {
            "section": run.section, "row": run.row, "label": run.label, "run_id": run.run_id, "seed": run.seed,
            "map_voc07": map_voc07, "map_area": metrics.get("map_area") if finished else None,
            "published": run.published,
            "difference": (map_voc07 - run.published) if map_voc07 is not None and run.published is not None
            else None,
            "beyond_post": run.beyond_post, "context": run.context, "wall_time_s": wall, "status": status,
            "error": None if finished else (runner.get("error") or run.error),
            "notebook": _relative(run.output_notebook, out_dir), "log": _relative(run.log_path, out_dir),
            "html": _relative(run.html_path, out_dir), "also_rows": ";".join(run.extra_rows),
        }
        for name in fields:
            value = run.config.get(name)
            record[name] = json.dumps(value) if isinstance(value, (list, dict)) else value
        records.append(record)

    frame = pd.DataFrame.from_records(records, columns=RESULT_COLUMNS[:5] + fields + RESULT_COLUMNS[5:])
    _write_atomic(out_dir / "results.csv", frame.to_csv(index=False))
    return frame


def _relative(path: Path, out_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(out_dir.resolve()))
    except ValueError:
        return str(path)


def _write_atomic(path: Path, text: str) -> None:
    # The run folder's writer: fsync before the rename, a unique temporary name, and an
    # error that names `path`.
    write_text(path, text)


def write_plan(sections: list[Section], runs: list[PlannedRun], out_dir: str | Path, *, profile: str,
               data: str | None, seeds: int, device: str | None) -> Path:
    """Write `out_dir/plan.json`: the sections, tables and rows with the run ids of each row.

    The report reads the table layout and the published numbers from this file, so it
    needs nothing outside `out_dir`.
    """
    out_dir = Path(out_dir)
    run_ids: dict[str, list[str]] = {}
    for run in runs:
        for row_id in [run.row, *run.extra_rows]:
            run_ids.setdefault(row_id, []).append(run.run_id)

    plan = {"profile": profile, "data": data, "seeds": seeds, "device": device, "sections": []}
    for section in sections:
        tables = []
        for table in section.tables:
            rows = []
            for row in table.rows:
                rows.append({
                    "id": row.id, "label": row.label, "published": row.published, "source": row.source,
                    "citation": row.citation, "beyond_post": row.beyond_post, "context": row.context,
                    "ref": row.ref, "overrides": row.overrides, "run_ids": run_ids.get(row.run_row, []),
                })
            tables.append({"key": table.key, "caption": table.caption, "rows": rows})
        plan["sections"].append({"key": section.key, "title": section.title, "sources": section.sources,
                                 "tables": tables, "companion": list(section.companion)})

    path = out_dir / "plan.json"
    _write_atomic(path, json.dumps(plan, indent=2, ensure_ascii=False))
    return path
