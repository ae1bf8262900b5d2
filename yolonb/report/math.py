"""Render the LaTeX formulas of markdown cells as embedded SVG, so pages show them offline.

nbconvert's HTML leaves `$...$` for MathJax, which it loads from a CDN: without a
network the reader sees raw LaTeX. matplotlib's mathtext draws a large subset of TeX
math (Greek letters, sub- and superscripts, fractions, \\left( \\right), \\lfloor, \\text)
without a TeX installation, so each formula becomes one SVG image in a data URI. A
formula mathtext cannot parse (an environment such as cases) stays as LaTeX for MathJax
and is logged; the notebooks keep to the subset.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import re

logger = logging.getLogger(__name__)

# JupyterLab's content font size (--jp-content-font-size1, used by nbconvert's lab
# template) is 14 px, which is 10.5 pt.
FONT_SIZE_PT = 10.5

# Fenced code blocks and inline code spans contain literal dollars, so they are left alone.
_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.DOTALL)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
# Pandoc's rule for inline math: no space after the opening or before the closing
# dollar, and no digit right after the closing one (so "$5 and $6" is not math).
_INLINE = re.compile(r"(?<![\\$])\$(?![\s$])(.+?)(?<![\s\\])\$(?!\d)", re.DOTALL)


def render_markdown_math(markdown: str) -> str:
    """Replace `$$...$$` and `$...$` in a markdown text with SVG images of the formulas.

    Args:
        markdown: the source of one markdown cell.

    Returns:
        The text with each formula mathtext can draw replaced by an `<img>` whose alt
        text is the LaTeX source; display formulas are centred blocks.
    """
    parts = _CODE.split(markdown)
    # split() with one group puts the code pieces at the odd indices.
    for index in range(0, len(parts), 2):
        text = _DISPLAY.sub(lambda match: _replace(match, display=True), parts[index])
        parts[index] = _INLINE.sub(lambda match: _replace(match, display=False), text)
    return "".join(parts)


def _replace(match: re.Match, display: bool) -> str:
    latex = " ".join(match.group(1).split())
    try:
        svg, width_pt, height_pt, depth_pt = formula_svg(latex)
    except ValueError as error:
        reason = [line.strip() for line in str(error).splitlines() if line.strip()]
        logger.warning("formula left for MathJax, mathtext cannot draw it: %s (%s)", latex,
                       reason[-1] if reason else type(error).__name__)
        return match.group(0)

    uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    size = f"width:{width_pt:.2f}pt;height:{height_pt:.2f}pt"
    alt = html.escape(latex, quote=True)
    if display:
        return (f'\n\n<div class="yolonb-math" style="text-align:center;margin:0.8em 0">'
                f'<img src="{uri}" alt="{alt}" title="{alt}" style="{size}"></div>\n\n')
    return (f'<img class="yolonb-math" src="{uri}" alt="{alt}" title="{alt}" '
            f'style="{size};vertical-align:-{depth_pt:.2f}pt">')


@functools.lru_cache(maxsize=512)
def formula_svg(latex: str) -> tuple[bytes, float, float, float]:
    """Draw one formula with matplotlib's mathtext.

    Args:
        latex: the formula without dollars, e.g. r"\\alpha (1 - p_t)^{\\gamma}".

    Returns:
        (SVG bytes, width, height, depth below the baseline), sizes in points.

    Raises:
        ValueError: mathtext cannot parse the formula.
    """
    import matplotlib
    from matplotlib import mathtext
    from matplotlib.font_manager import FontProperties

    matplotlib.use("Agg", force=False)
    properties = FontProperties(size=FONT_SIZE_PT, math_fontfamily="cm")
    # At 72 dpi one pixel is one point, so the returned depth is in points.
    parser = mathtext.MathTextParser("path")
    try:
        width, height, depth, _, _ = parser.parse(f"${latex}$", dpi=72, prop=properties)
    except (ValueError, RuntimeError) as error:
        raise ValueError(str(error)) from error

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "yolonb"}):
        mathtext.math_to_image(f"${latex}$", buffer, prop=properties, dpi=72, format="svg")
    return buffer.getvalue(), float(width), float(height), float(depth)
