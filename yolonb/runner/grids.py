"""Read the grid files (one YAML file per section of the post) into tables of rows.

A grid file has `section`, `title`, `notebook`, `order`, `sources` (source key ->
citation), `tables` (each with `key`, `caption` and `rows`) and optionally `companion`
(published numbers without a run). A row is either a run (`key`, `label`, `overrides`,
optional `published`, `source`, `beyond_post`, `context`) or a reference to a row of
another section (`key`, `ref: SECTION/ROW`), which reuses that row's run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

DEFAULT_GRIDS_DIR = Path(__file__).resolve().parents[2] / "grids"

_ROW_KEYS = {"key", "label", "overrides", "published", "source", "beyond_post", "context", "ref"}
_SECTION_KEYS = {"section", "title", "notebook", "order", "sources", "tables", "companion"}


class GridError(ValueError):
    """A grid file that cannot be used; the message names the file, the value and the fix."""


@dataclass(frozen=True)
class Row:
    """One row of a table: a run configuration and the post's number for it.

    `id` is "SECTION/ROW_KEY"; a row that refers to another section's row has that
    row's id in `ref` and takes its label, overrides and published number.
    """

    id: str
    label: str
    overrides: dict[str, Any]
    published: float | None = None
    source: str | None = None
    citation: str | None = None
    beyond_post: bool = False
    context: bool = False
    ref: str | None = None

    @property
    def run_row(self) -> str:
        """Id of the row whose run this row shows (itself unless it is a reference)."""
        return self.ref or self.id


@dataclass(frozen=True)
class Table:
    key: str
    caption: str
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    notebook: str
    order: int
    sources: dict[str, str]
    tables: tuple[Table, ...]
    companion: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    path: Path | None = None


def load_section(path: str | Path) -> Section:
    """Read and check one grid file; references to other sections stay unresolved.

    Raises:
        GridError: an unknown key, a missing field, a published number outside [0, 1]
            or a source key without citation.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise GridError(f"{path}: invalid YAML ({error}); fix the syntax of the grid file") from error
    if not isinstance(data, dict):
        raise GridError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")

    unknown = set(data) - _SECTION_KEYS
    if unknown:
        raise GridError(f"{path}: unknown keys {sorted(unknown)}; allowed keys are {sorted(_SECTION_KEYS)}")
    for name in ("section", "title", "notebook", "tables"):
        if name not in data:
            raise GridError(f"{path}: missing field {name!r}; add it to the grid file")

    section_key = str(data["section"])
    sources = {str(k): str(v) for k, v in (data.get("sources") or {}).items()}
    tables = []
    for table_data in data["tables"]:
        rows = tuple(_parse_row(path, section_key, sources, row) for row in table_data.get("rows", []))
        if not rows:
            raise GridError(f"{path}: table {table_data.get('key')!r} has no rows; add at least one")
        tables.append(Table(key=str(table_data["key"]), caption=str(table_data.get("caption", "")), rows=rows))

    companion = tuple(data.get("companion") or ())
    for item in companion:
        _check_published(path, item.get("label"), item.get("published"))
        if item.get("source") not in sources:
            raise GridError(f"{path}: companion row {item.get('label')!r} names source {item.get('source')!r}, "
                            f"which is not in 'sources' {sorted(sources)}")

    return Section(key=section_key, title=str(data["title"]), notebook=str(data["notebook"]),
                   order=int(data.get("order", 100)), sources=sources, tables=tuple(tables),
                   companion=companion, path=path)


def _check_published(path: Path, label: Any, published: Any) -> None:
    if published is None:
        return
    if not isinstance(published, (int, float)) or not 0.0 <= float(published) <= 1.0:
        raise GridError(f"{path}: row {label!r} has published={published!r}; write the mAP as a fraction in [0, 1]")


def _parse_row(path: Path, section_key: str, sources: dict[str, str], data: dict) -> Row:
    unknown = set(data) - _ROW_KEYS
    if unknown:
        raise GridError(f"{path}: row {data.get('key')!r} has unknown keys {sorted(unknown)}; "
                        f"allowed keys are {sorted(_ROW_KEYS)}")
    if "key" not in data:
        raise GridError(f"{path}: a row has no 'key'; give every row a key unique in its section")
    row_id = f"{section_key}/{data['key']}"

    if "ref" in data:
        return Row(id=row_id, label="", overrides={}, ref=str(data["ref"]))

    if "label" not in data:
        raise GridError(f"{path}: row {row_id!r} has no 'label'; add the configuration's name as shown in tables")
    _check_published(path, data["label"], data.get("published"))
    source = data.get("source")
    if data.get("published") is not None and source not in sources:
        raise GridError(f"{path}: row {row_id!r} has a published number but source {source!r} is not in "
                        f"'sources' {sorted(sources)}; name where the number comes from")
    published = data.get("published")
    return Row(id=row_id, label=str(data["label"]), overrides=dict(data.get("overrides") or {}),
               published=None if published is None else float(published),
               source=source, citation=sources.get(source) if source else None,
               beyond_post=bool(data.get("beyond_post", False)), context=bool(data.get("context", False)))


def load_grids(grids_dir: str | Path = DEFAULT_GRIDS_DIR) -> list[Section]:
    """Read every `*.yaml` grid in `grids_dir`, resolve references, and sort by `order`.

    Raises:
        GridError: no grid file, two sections with one key, two rows with one id, or a
            reference to a row that does not exist.
    """
    grids_dir = Path(grids_dir)
    paths = sorted(grids_dir.glob("*.yaml"))
    if not paths:
        raise GridError(f"no grid files (*.yaml) found in {grids_dir}; pass the folder that holds them")

    sections = [load_section(path) for path in paths]
    seen: dict[str, Path] = {}
    for section in sections:
        if section.key in seen:
            raise GridError(f"{section.path}: section {section.key!r} is also defined in {seen[section.key]}")
        seen[section.key] = section.path

    rows_by_id: dict[str, Row] = {}
    for section in sections:
        for table in section.tables:
            for row in table.rows:
                if row.ref is None:
                    if row.id in rows_by_id:
                        raise GridError(f"{section.path}: row id {row.id!r} appears twice; keys must be unique")
                    rows_by_id[row.id] = row

    resolved = []
    for section in sections:
        tables = []
        for table in section.tables:
            rows = []
            for row in table.rows:
                if row.ref is not None:
                    if row.ref not in rows_by_id:
                        raise GridError(f"{section.path}: row {row.id!r} refers to {row.ref!r}, which no grid "
                                        f"defines; use SECTION/ROW_KEY of a row with overrides")
                    target = rows_by_id[row.ref]
                    row = Row(id=row.id, label=target.label, overrides=target.overrides,
                              published=target.published, source=target.source, citation=target.citation,
                              beyond_post=target.beyond_post, context=target.context, ref=target.id)
                rows.append(row)
            tables.append(Table(key=table.key, caption=table.caption, rows=tuple(rows)))
        resolved.append(Section(key=section.key, title=section.title, notebook=section.notebook,
                                order=section.order, sources=section.sources, tables=tuple(tables),
                                companion=section.companion, path=section.path))

    return sorted(resolved, key=lambda s: (s.order, s.key))


def select_sections(sections: list[Section], names: list[str] | None) -> list[Section]:
    """Keep the named sections, plus every section that one of them refers to.

    The reference row lives in its own section, so asking for "focal" also runs "reference".
    """
    if not names:
        return sections
    by_key = {section.key: section for section in sections}
    unknown = [name for name in names if name not in by_key]
    if unknown:
        raise GridError(f"unknown section(s) {unknown}; choose from {sorted(by_key)}")

    wanted = set(names)
    for name in names:
        for table in by_key[name].tables:
            for row in table.rows:
                if row.ref is not None:
                    wanted.add(row.ref.split("/", 1)[0])
    return [section for section in sections if section.key in wanted]


def run_rows(sections: list[Section]) -> list[tuple[Section, Row]]:
    """Rows that own a run (references left out), each once, in section order."""
    result = []
    for section in sections:
        for table in section.tables:
            for row in table.rows:
                if row.ref is None:
                    result.append((section, row))
    return result
