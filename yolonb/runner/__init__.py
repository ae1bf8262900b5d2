"""Batch execution of the section notebooks: grids, papermill runs, result cache and results.csv."""

from .grids import GridError, Row, Section, Table, load_grids, select_sections
from .plan import PlannedRun, is_finished, make_resolver, plan_runs
from .results import collect_results, write_plan

__all__ = [
    "GridError", "PlannedRun", "Row", "Section", "Table", "collect_results", "is_finished", "load_grids",
    "make_resolver", "plan_runs", "select_sections", "write_plan",
]
