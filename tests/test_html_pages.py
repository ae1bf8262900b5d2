"""HTML pages of notebooks: formulas drawn as SVG for offline reading, and run pages' parameters."""

import base64
import logging
import re
from pathlib import Path

import nbformat
import pytest

from yolonb.report.html import notebook_to_html
from yolonb.report.math import formula_svg, render_markdown_math

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
_TAG = re.compile(r"<img[^>]*>")
_SRC = re.compile(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')
_ALT = re.compile(r'alt="([^"]*)"')


def svg_images(html: str) -> list[tuple[str, str]]:
    """(base64 SVG, alt text) of each embedded SVG image, whatever the attribute order."""
    images = []
    for tag in _TAG.findall(html):
        src, alt = _SRC.search(tag), _ALT.search(tag)
        if src and alt:
            images.append((src.group(1), alt.group(1)))
    return images


def test_inline_formula_becomes_svg():
    out = render_markdown_math(r"Loss $-\alpha\,(1 - p_t)^{\gamma}\log p_t$ here.")

    images = svg_images(out)
    assert len(images) == 1
    svg = base64.b64decode(images[0][0]).decode("utf-8")
    assert "<svg" in svg
    assert images[0][1] == r"-\alpha\,(1 - p_t)^{\gamma}\log p_t"
    assert out.startswith("Loss <img")
    assert out.endswith("> here.")
    assert "vertical-align:-" in out


def test_display_formula_is_a_centred_block():
    out = render_markdown_math("Before\n\n$$\\mathrm{FL}(p_t) =\n -\\log p_t$$\n\nAfter")

    assert '<div class="yolonb-math" style="text-align:center' in out
    assert svg_images(out)[0][1] == r"\mathrm{FL}(p_t) = -\log p_t"
    assert "$" not in out


def test_dollars_that_are_not_math_stay():
    text = "It costs $5 and $6; code `$x$` and\n```\na = \"$y$\"\n```\n"

    assert render_markdown_math(text) == text


def test_unsupported_formula_stays_latex(caplog):
    text = r"$\begin{cases} a & b \end{cases}$"

    with caplog.at_level(logging.WARNING, logger="yolonb.report.math"):
        out = render_markdown_math(text)

    assert out == text
    assert "formula left for MathJax" in caplog.text


def test_html_escapes_the_alt_text():
    out = render_markdown_math(r'$a < b$')

    assert 'alt="a &lt; b"' in out


def test_svg_size_grows_with_the_formula():
    _, short_width, height, depth = formula_svg("x")
    _, long_width, _, _ = formula_svg("x + y + z")

    assert long_width > short_width > 0
    assert height > 0
    assert depth >= 0


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.stem)
def test_every_notebook_formula_is_drawn(notebook):
    cells = nbformat.read(notebook, as_version=4).cells

    for cell in cells:
        if cell.cell_type == "markdown":
            assert "$" not in render_markdown_math(cell.source), f"{notebook.name}: a formula outside mathtext's subset"


def test_converted_page_has_no_raw_latex(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(r"Focal loss: $$\mathrm{FL}(p_t) = -\alpha\,(1 - p_t)^{\gamma}\,\log p_t$$"),
        nbformat.v4.new_code_cell("1 + 1", outputs=[nbformat.v4.new_output(
            "display_data", data={"text/markdown": r"with $\gamma = 2$"})]),
    ])
    path = tmp_path / "page.ipynb"
    nbformat.write(notebook, path)

    html = notebook_to_html(path, tmp_path / "page.html").read_text(encoding="utf-8")

    assert r"$$\mathrm{FL}" not in html
    assert r"$\gamma" not in html
    assert len(svg_images(html)) == 2
    assert nbformat.read(path, as_version=4).cells[0].source.startswith("Focal loss: $$")


def test_run_page_shows_injected_parameters_only(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("overrides = {'cls_loss': 'default_loss'}", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("overrides = {'cls_loss': 'injected_loss'}",
                                  metadata={"tags": ["injected-parameters"]}),
    ])
    path = tmp_path / "run.ipynb"
    nbformat.write(notebook, path)

    html = notebook_to_html(path, tmp_path / "run.html", exclude_input=False).read_text(encoding="utf-8")

    assert "injected_loss" in html
    assert "default_loss" not in html


def test_page_without_injection_keeps_parameters(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("overrides = {'cls_loss': 'default_loss'}", metadata={"tags": ["parameters"]}),
    ])
    path = tmp_path / "plain.ipynb"
    nbformat.write(notebook, path)

    html = notebook_to_html(path, tmp_path / "plain.html", exclude_input=False).read_text(encoding="utf-8")

    assert "default_loss" in html
