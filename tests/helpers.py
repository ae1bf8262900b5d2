"""Test helpers shared by the runner, executor and pipeline tests."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

def grid_yaml(caption: str, rows: list[str]) -> str:
    """Return the YAML of a reference-section grid with one table of `rows` (YAML flow mappings)."""
    header = (
        "section: reference\n"
        'title: "Baseline and reference"\n'
        "notebook: reference.ipynb\n"
        'sources: {post: "lvsolo, Focal Loss及其改进, 2024-10-24"}\n'
        "tables:\n"
        "  - key: context\n"
        f'    caption: "{caption}"\n'
        "    rows:\n"
    )
    return header + "".join(f"      - {row}\n" for row in rows)


# A grid of the reference section with the FPN row alone.
ONE_ROW_GRID = grid_yaml("The FPN reference", [
    '{key: fpn, label: "FPN/MultiHeadFPN", overrides: {neck: fpn}, published: 0.7149, source: post}',
])


def write_notebook(path: Path, *code_cells: str) -> Path:
    """Write a notebook with a "parameters" cell (config, out_dir) followed by `code_cells`."""
    notebook = new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [
        new_markdown_cell("# test notebook"),
        new_code_cell("config = None\nout_dir = ''", metadata={"tags": ["parameters"]}),
        *[new_code_cell(source) for source in code_cells],
    ]
    nbformat.write(notebook, path)
    return path
