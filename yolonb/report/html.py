"""Convert executed notebooks into self-contained HTML pages with nbconvert."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from yolonb.fileio import write_text

from .math import render_markdown_math

# src="..." or src='...' attributes, and CSS url(...) references.
_SRC_PATTERN = re.compile(r"""\bsrc\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
_URL_PATTERN = re.compile(r"""url\(\s*["']?([^"')]*)["']?\s*\)""", re.IGNORECASE)


def notebook_to_html(notebook_path: str | Path, html_path: str | Path, exclude_input: bool = True) -> Path:
    """Convert an executed notebook to one HTML file and write it atomically.

    Output images are already base64 inside the notebook; `embed_images` also turns
    images referenced from markdown cells (paths relative to the notebook's folder) into
    data URIs, so the page stays whole when moved. Formulas are drawn as embedded SVG
    (see `yolonb.report.math`), so they show without a network.

    Args:
        notebook_path: the executed .ipynb.
        html_path: where to write the page.
        exclude_input: hide code cells' inputs (outputs stay).

    Returns:
        html_path as a Path.
    """
    notebook_path = Path(notebook_path)
    html_path = Path(html_path)
    notebook = nbformat.read(notebook_path, as_version=4)
    drop_default_parameters(notebook)
    draw_formulas(notebook)

    exporter = HTMLExporter(exclude_input=exclude_input, exclude_input_prompt=exclude_input,
                            exclude_output_prompt=exclude_input, embed_images=True)
    resources = {"metadata": {"path": str(notebook_path.parent.resolve()), "name": notebook_path.stem}}
    body, _ = exporter.from_notebook_node(notebook, resources=resources)

    write_text(html_path, body)
    return html_path


def drop_default_parameters(notebook: nbformat.NotebookNode) -> None:
    """Remove the "parameters" cell, in place, when papermill injected the run's own values after it.

    The page then shows only the values the run used, not the notebook's defaults
    that papermill overrode.
    """
    def tags(cell: nbformat.NotebookNode) -> list[str]:
        return cell.get("metadata", {}).get("tags", [])

    if any("injected-parameters" in tags(cell) for cell in notebook.cells):
        notebook.cells = [cell for cell in notebook.cells if "parameters" not in tags(cell)]


def draw_formulas(notebook: nbformat.NotebookNode) -> None:
    """Replace the LaTeX of markdown cells and of markdown outputs with SVG images, in place."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = render_markdown_math(cell.source)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/markdown" in data:
                text = data["text/markdown"]
                data["text/markdown"] = render_markdown_math("".join(text) if isinstance(text, list) else text)


def external_references(html: str) -> list[str]:
    """List `src=` and CSS `url()` targets that are neither data URIs nor fragment links.

    An empty list means the page shows the same when moved to another folder (links
    with href= to other pages are not counted: they are navigation, not content).
    nbconvert's default template loads MathJax and require.js from a CDN by
    `src="https://..."`; those are reported too, so callers filter them as they see fit.
    Formulas do not need MathJax (`draw_formulas`); a formula mathtext cannot draw does.
    """
    targets = _SRC_PATTERN.findall(html) + _URL_PATTERN.findall(html)
    return [target for target in targets if target and not target.startswith(("data:", "#"))]


def local_references(html: str) -> list[str]:
    """External references that point to files rather than to http(s) addresses."""
    return [target for target in external_references(html) if not re.match(r"^(https?:)?//", target)]
