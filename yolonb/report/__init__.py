"""The report: tables and figures regenerated from the run folders, and their HTML conversion."""

from .display import (show_class_ap, show_detections, show_loss_shapes, show_notice, show_poly_minima,
                      show_pr_curves, show_provenance, show_run, show_section, show_training_curves)
from .html import external_references, local_references, notebook_to_html
from .published import POST_CITATION, REPORT_TITLE
from .tables import ReportData, load_report_data, section_table, table_html

__all__ = [
    "POST_CITATION", "REPORT_TITLE", "ReportData", "external_references", "load_report_data",
    "local_references", "notebook_to_html", "section_table", "show_class_ap", "show_detections",
    "show_loss_shapes", "show_notice", "show_poly_minima", "show_pr_curves", "show_provenance", "show_run",
    "show_section", "show_training_curves", "table_html",
]
