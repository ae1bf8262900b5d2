"""Expand grid rows into planned runs: one resolved configuration and run id per row and seed."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .grids import Row, Section, run_rows

logger = logging.getLogger(__name__)

# (row overrides, seed) -> (configuration as a dict, run id)
Resolver = Callable[[dict[str, Any], int], tuple[dict[str, Any], str]]

FINISHED = "finished"
FAILED = "failed"


@dataclass
class PlannedRun:
    """One execution of a section notebook; `run_dir` is `<out>/runs/<run_id>`."""

    section: str
    row: str
    label: str
    seed: int
    run_id: str
    config: dict[str, Any]
    notebook: Path
    run_dir: Path
    published: float | None = None
    beyond_post: bool = False
    context: bool = False
    status: str = "pending"
    error: str | None = None
    wall_time_s: float | None = None
    extra_rows: list[str] = field(default_factory=list)

    @property
    def output_notebook(self) -> Path:
        return self.run_dir / "run.ipynb"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "run.log"

    @property
    def html_path(self) -> Path:
        return self.run_dir / "run.html"


def is_finished(run_dir: Path) -> bool:
    """Return True when `run_dir/metrics.json` exists, parses and records status "finished"."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and metrics.get("status") == FINISHED


def plan_runs(sections: list[Section], seeds: int, resolve: Resolver, out_dir: str | Path,
              notebooks_dir: str | Path) -> list[PlannedRun]:
    """Return one PlannedRun per run row and seed (seeds 0..seeds-1), without duplicates.

    Two rows whose configurations give the same run id share one run; the second row's id
    is kept in `extra_rows` so the results still list it.

    Raises:
        FileNotFoundError: a section's notebook is missing from `notebooks_dir`.
    """
    out_dir = Path(out_dir)
    notebooks_dir = Path(notebooks_dir)
    planned: dict[str, PlannedRun] = {}

    for section, row in run_rows(sections):
        notebook = notebooks_dir / section.notebook
        if not notebook.is_file():
            raise FileNotFoundError(f"{section.path}: notebook {notebook} not found; "
                                    f"create it or fix 'notebook' in the grid file")
        for seed in range(seeds):
            config, run_id = resolve(row.overrides, seed)
            if run_id in planned:
                planned[run_id].extra_rows.append(row.id)
                continue
            planned[run_id] = _planned(section, row, seed, run_id, config, notebook, out_dir)

    runs = list(planned.values())
    for run in runs:
        if is_finished(run.run_dir):
            run.status = "cached"
    return runs


def _planned(section: Section, row: Row, seed: int, run_id: str, config: dict[str, Any], notebook: Path,
             out_dir: Path) -> PlannedRun:
    return PlannedRun(section=section.key, row=row.id, label=row.label, seed=seed, run_id=run_id,
                      config=config, notebook=notebook, run_dir=out_dir / "runs" / run_id,
                      published=row.published, beyond_post=row.beyond_post, context=row.context)


def make_resolver(profile: str, data: str | None = None, device: str | None = None) -> Resolver:
    """Return a resolver that applies row overrides and the seed to a yolonb profile.

    The data set is fingerprinted once per distinct data configuration, so planning
    reads the annotations (and generates the embedded data set on first use) before any
    run starts: bad data fails here, not in the middle of the grid.
    """
    from yolonb.config import get_profile

    base: dict[str, Any] = {}
    if data is not None:
        base["data_root"] = str(Path(data).expanduser().resolve())
    if device is not None:
        base["device"] = device
    get_profile(profile, **base)  # fail early on a bad profile, data path type or device

    fingerprints: dict[tuple, str] = {}

    def resolve(overrides: dict[str, Any], seed: int) -> tuple[dict[str, Any], str]:
        config = get_profile(profile, **{**base, **overrides, "seed": seed})
        key = (config.data_root, config.train_sets, config.test_sets, config.classes,
               config.synthetic_n_trainval, config.synthetic_n_test, config.synthetic_seed)
        if key not in fingerprints:
            fingerprints[key] = data_fingerprint(config)
        return config.to_dict(), config.run_id(fingerprints[key])

    return resolve


def data_fingerprint(config) -> str:
    """Return the fingerprint of the data set that `config` trains and tests on.

    It comes from the engine's own data loading, so the run id computed here equals the
    one run_experiment writes into metrics.json.
    """
    from yolonb.engine import resolve_data

    data = resolve_data(config)
    logger.info("data %s (%s): fingerprint %s", data.name, data.root, data.fingerprint)
    return data.fingerprint
