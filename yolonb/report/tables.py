"""Tables of the report, built from `plan.json`, `results.csv` and the run folders of an output folder.

Every number shown comes from a file under the output folder; the published numbers come
from `plan.json`, which run_all.py copies from the grid files. HTML is built by hand so
that links can sit in cells, and every text from data (labels, class names, ids) is escaped.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .published import REFERENCE_ROW


@dataclass
class ReportData:
    """The contents of one output folder, read once."""

    out_dir: Path
    plan: dict[str, Any]
    results: pd.DataFrame
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return int(self.plan.get("seeds") or 1)

    def section(self, key: str) -> dict[str, Any] | None:
        for section in self.plan.get("sections", []):
            if section["key"] == key:
                return section
        return None

    def run_dir(self, run_id: str) -> Path:
        return self.out_dir / "runs" / run_id

    def history(self, run_id: str) -> pd.DataFrame | None:
        path = self.run_dir(run_id) / "history.csv"
        return pd.read_csv(path) if path.is_file() else None

    def pr_curves(self, run_id: str) -> dict[str, Any] | None:
        return _read_json(self.run_dir(run_id) / "pr_curves.json")

    def detections(self, run_id: str) -> list[dict[str, Any]] | None:
        return _read_json(self.run_dir(run_id) / "detections_sample.json")

    def finished_metrics(self) -> list[dict[str, Any]]:
        return [metrics for metrics in self.metrics.values() if metrics.get("status") == "finished"]

    def label(self, run_id: str) -> str:
        rows = self.results[self.results["run_id"] == run_id]
        return str(rows["label"].iloc[0]) if len(rows) else run_id


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_report_data(out_dir: str | Path) -> ReportData:
    """Read `plan.json`, `results.csv` and every run's `metrics.json` under `out_dir`.

    Raises:
        FileNotFoundError: `plan.json` or `results.csv` is missing (run run_all.py first).
    """
    out_dir = Path(out_dir)
    for name in ("plan.json", "results.csv"):
        if not (out_dir / name).is_file():
            raise FileNotFoundError(f"{out_dir / name} not found; run `python run_all.py --out {out_dir}` first")

    plan = json.loads((out_dir / "plan.json").read_text(encoding="utf-8"))
    results = pd.read_csv(out_dir / "results.csv", dtype={"run_id": str, "row": str, "label": str})
    metrics = {}
    for run_id in results["run_id"]:
        data = _read_json(out_dir / "runs" / run_id / "metrics.json")
        if isinstance(data, dict):
            metrics[run_id] = data
    return ReportData(out_dir=out_dir, plan=plan, results=results, metrics=metrics)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _row_runs(data: ReportData, run_ids: list[str]) -> pd.DataFrame:
    return data.results[data.results["run_id"].isin(run_ids)]


def _summary(data: ReportData, run_ids: list[str]) -> tuple[float | None, float | None, int, str]:
    """Return (mean mAP, std over seeds or None, finished run count, status) of one row's runs."""
    runs = _row_runs(data, run_ids)
    finished = runs[runs["status"] == "finished"]
    values = [float(v) for v in finished["map_voc07"] if _finite(v) is not None]
    if not values:
        status = "failed" if (runs["status"] == "failed").any() else "missing"
        return None, None, 0, status
    mean = sum(values) / len(values)
    std = pd.Series(values).std(ddof=1) if len(values) > 1 else None
    status = "finished" if len(values) == len(run_ids) else "partial"
    return mean, std, len(values), status


def section_table(data: ReportData, section_key: str, table_key: str) -> pd.DataFrame:
    """One row per table row: this run's mAP (mean over seeds), its spread, the published mAP, differences.

    Columns: row, label, map, std, n_runs, published, difference (map - published),
    vs_reference (map - the reference row's map), difference_within_spread,
    vs_reference_within_spread, beyond_post, context, status, citation, run_ids.
    mAP values are fractions in [0, 1] (VOC07 11-point AP at IoU 0.5).
    """
    section = data.section(section_key)
    if section is None:
        raise KeyError(f"section {section_key!r} is not in {data.out_dir / 'plan.json'}; run it with --sections")
    table = next((t for t in section["tables"] if t["key"] == table_key), None)
    if table is None:
        raise KeyError(f"table {table_key!r} not found in section {section_key!r}")

    reference_ids = _reference_run_ids(data)
    reference_mean, reference_std, _, _ = _summary(data, reference_ids)

    records = []
    for row in table["rows"]:
        mean, std, count, status = _summary(data, row["run_ids"])
        published = row.get("published")
        difference = mean - published if mean is not None and published is not None else None
        vs_reference = mean - reference_mean if mean is not None and reference_mean is not None else None
        is_reference = (row.get("ref") or row["id"]) == REFERENCE_ROW
        spread = max(x for x in (std, reference_std, 0.0) if x is not None)
        records.append({
            "row": row["id"], "label": row["label"], "map": mean, "std": std, "n_runs": count,
            "published": published, "difference": difference,
            "vs_reference": None if is_reference else vs_reference,
            "difference_within_spread": bool(std is not None and difference is not None and abs(difference) < std),
            "vs_reference_within_spread": bool(not is_reference and vs_reference is not None and spread > 0
                                               and abs(vs_reference) < spread),
            "beyond_post": bool(row.get("beyond_post")), "context": bool(row.get("context")),
            "is_reference": is_reference, "status": status, "citation": row.get("citation"),
            "run_ids": list(row["run_ids"]),
        })
    return pd.DataFrame.from_records(records)


def _reference_run_ids(data: ReportData) -> list[str]:
    for section in data.plan.get("sections", []):
        for table in section["tables"]:
            for row in table["rows"]:
                if (row.get("ref") or row["id"]) == REFERENCE_ROW:
                    return list(row["run_ids"])
    return []


def _number(value: Any, digits: int = 4, signed: bool = False) -> str:
    value = _finite(value)
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _links(data: ReportData, run_ids: list[str]) -> str:
    parts = []
    for run_id in run_ids:
        runs = _row_runs(data, [run_id])
        seed = int(runs["seed"].iloc[0]) if len(runs) else 0
        status = str(runs["status"].iloc[0]) if len(runs) else "missing"
        text = f"seed {seed}" if data.seeds > 1 else "notebook"
        if status != "finished":
            text += f" ({status})"
        href = f"runs/{run_id}/run.html"
        parts.append(f'<a href="{html.escape(href, quote=True)}" title="run {html.escape(run_id)}">'
                     f"{html.escape(text)}</a>")
    return ", ".join(parts) or "–"


def table_html(data: ReportData, frame: pd.DataFrame, caption: str = "") -> str:
    """Render a `section_table` as an HTML table with links to the run notebooks.

    With several seeds the mAP shows as mean ± standard deviation, and a difference
    smaller than the spread across seeds is marked with "≈".
    """
    seeds = data.seeds
    ours = "mAP (VOC07), this run" if seeds == 1 else f"mAP (VOC07), mean ± std of {seeds} seeds"
    header = ["Configuration", ours, "Published mAP (VOC2007 test)", "Difference", "vs reference", "Run notebook"]
    lines = ['<table class="yolonb-table">']
    if caption:
        lines.append(f"<caption>{html.escape(caption)}</caption>")
    lines.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>")

    for record in frame.to_dict("records"):
        label = html.escape(str(record["label"]))
        if record["beyond_post"]:
            label += " <em>(beyond the post)</em>"
        if record["context"]:
            label += " <em>(context)</em>"
        if record["is_reference"]:
            label = f"<strong>{label}</strong> <em>(reference)</em>"

        value = _number(record["map"])
        if record["std"] is not None and _finite(record["std"]) is not None:
            value += f" ± {_number(record['std'])}"
        if record["status"] in ("failed", "missing", "partial"):
            value += f" <em>({html.escape(record['status'])})</em>"

        difference = _number(record["difference"], signed=True)
        if record["difference_within_spread"]:
            difference = "≈ " + difference
        vs_reference = _number(record["vs_reference"], signed=True)
        if record["vs_reference_within_spread"]:
            vs_reference = "≈ " + vs_reference

        cells = [label, value, _number(record["published"]), difference, vs_reference,
                 _links(data, record["run_ids"])]
        lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")

    lines.append("</tbody></table>")
    return "\n".join(lines)


def escape_text(value: Any) -> str:
    """Escape any value for HTML text."""
    return html.escape(str(value))


def simple_table_html(frame: pd.DataFrame, caption: str = "", digits: int = 4) -> str:
    """Render a DataFrame as an HTML table, every cell escaped and floats to `digits` decimals."""
    lines = ['<table class="yolonb-table">']
    if caption:
        lines.append(f"<caption>{html.escape(caption)}</caption>")
    lines.append("<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns) + "</tr></thead>")
    lines.append("<tbody>")
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            if isinstance(value, float):
                text = _number(value, digits)
            else:
                text = "–" if value is None else str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def provenance_frame(data: ReportData) -> pd.DataFrame:
    """Build the Runs table: id, row, seed, status, device, wall time, backbone pretraining and throughput.

    The pretraining column gives the seconds for the run that trained the shared backbone,
    0 for runs that loaded it from the cache, and a dash for runs without crop pretraining.
    """
    records = []
    for record in data.results.to_dict("records"):
        metrics = data.metrics.get(record["run_id"], {})
        pretraining = (metrics.get("backbone") or {}).get("pretraining") or {}
        paid = None
        if pretraining:
            paid = 0.0 if pretraining.get("from_cache") else pretraining.get("seconds")
        records.append({
            "run_id": record["run_id"], "row": record["row"], "seed": record["seed"], "status": record["status"],
            "device": metrics.get("device"), "wall time (s)": _finite(record.get("wall_time_s")),
            "of which backbone pretraining (s)": _finite(paid),
            "train images/s": _finite(metrics.get("train_images_per_s")),
        })
    return pd.DataFrame.from_records(records, columns=["run_id", "row", "seed", "status", "device", "wall time (s)",
                                                       "of which backbone pretraining (s)", "train images/s"])


def class_ap_frame(data: ReportData) -> pd.DataFrame:
    """Per-class VOC07 AP: one row per finished run (indexed by its label), one column per class."""
    rows = {}
    for record in data.results.to_dict("records"):
        metrics = data.metrics.get(record["run_id"])
        if not metrics or metrics.get("status") != "finished":
            continue
        label = str(record["label"]) + (f" (seed {record['seed']})" if data.seeds > 1 else "")
        rows[label] = {name: (math.nan if ap is None else float(ap))
                       for name, ap in (metrics.get("per_class_ap") or {}).items()}
    return pd.DataFrame.from_dict(rows, orient="index")


# The grid of true-class probabilities on which the poly focal loss is minimised.
_POLY_GRID_POINTS = 2000


def poly_loss_minimum(alpha: float, gamma: float, poly_scale: float, poly_pow: float,
                      alpha_on_poly: bool = False) -> tuple[float, float, float]:
    """Find where the poly focal loss of one positive is lowest, for p_t on a grid in (0, 1].

    The loss depends on the logits only through the true class's probability p_t, so two
    classes with logits (log p_t, log(1 - p_t)) cover every case. `alpha_on_poly`
    multiplies the poly term by alpha as well, which is the same as minimising with alpha 1.

    Returns:
        (p_t at the minimum, the loss there, the p_t of the highest loss above the minimum).
        Between the two p_t values the loss grows with p_t, so gradient descent lowers the
        true class's probability. For a loss that is lowest at p_t = 1, both p_t values are 1.
    """
    import torch

    from yolonb.losses.focal import poly_focal_loss

    p_t = torch.linspace(1.0 / _POLY_GRID_POINTS, 1.0, _POLY_GRID_POINTS, dtype=torch.float64)
    logits = torch.stack([p_t.log(), (1.0 - p_t).clamp_min(1e-12).log()], dim=1)
    target = torch.zeros(len(p_t), dtype=torch.int64)
    losses = poly_focal_loss(logits, target, alpha=1.0 if alpha_on_poly else alpha, gamma=gamma,
                             poly_scale=poly_scale, poly_pow=poly_pow, reduction="none")
    if alpha_on_poly:
        losses = alpha * losses

    best = int(torch.argmin(losses))
    turn = best + int(torch.argmax(losses[best:]))
    return float(p_t[best]), float(losses[best]), float(p_t[turn])


def poly_minimum_frame(data: ReportData, section_key: str = "poly_focal") -> pd.DataFrame:
    """Tabulate, per poly focal row of the section, where its loss is lowest with and without alpha on the poly term.

    Columns: label, alpha, poly_scale, poly_pow, p_t_min, loss_min, p_t_turn (see
    `poly_loss_minimum`), p_t_min_alpha_on_poly, final_cls_loss (the class loss of the
    last epoch, mean over the row's finished runs), map, published.
    """
    section = data.section(section_key)
    records = []
    for table in (section or {}).get("tables", []):
        for row in table["rows"]:
            overrides = row.get("overrides") or {}
            if overrides.get("cls_loss") != "poly_focal":
                continue
            alpha, gamma = float(overrides.get("alpha", 0.25)), float(overrides.get("gamma", 2.0))
            scale, power = float(overrides.get("poly_scale", 1.0)), float(overrides.get("poly_pow", 1.0))
            p_min, loss_min, p_turn = poly_loss_minimum(alpha, gamma, scale, power)
            p_min_alpha, _, _ = poly_loss_minimum(alpha, gamma, scale, power, alpha_on_poly=True)
            mean, _, _, _ = _summary(data, row["run_ids"])
            class_losses = [_finite((data.metrics.get(run_id) or {}).get("final_losses", {}).get("cls"))
                            for run_id in row["run_ids"]]
            class_losses = [value for value in class_losses if value is not None]
            records.append({"label": row["label"], "alpha": alpha, "poly_scale": scale, "poly_pow": power,
                            "p_t_min": p_min, "loss_min": loss_min, "p_t_turn": p_turn,
                            "p_t_min_alpha_on_poly": p_min_alpha,
                            "final_cls_loss": sum(class_losses) / len(class_losses) if class_losses else None,
                            "map": mean, "published": row.get("published")})
    columns = ["label", "alpha", "poly_scale", "poly_pow", "p_t_min", "loss_min", "p_t_turn", "p_t_min_alpha_on_poly",
               "final_cls_loss", "map", "published"]
    return pd.DataFrame.from_records(records, columns=columns)
