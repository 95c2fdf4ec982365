"""Printing tables for every GatoForge command: a rich table for people, ``--json`` for tools."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def print_table(rows: Sequence[dict[str, Any]], title: str = "", as_json: bool = False,
                extra: dict[str, Any] | None = None) -> None:
    """Print ``rows`` (dicts with the same keys) as a table, or as JSON with ``as_json``.

    JSON output is ``{"rows": [...], **extra}`` so scripts get the same numbers people see.
    """
    if as_json:
        payload = {"rows": list(rows), **(extra or {})}
        sys.stdout.write(json.dumps(payload, indent=2, default=_jsonable) + "\n")
        return
    table = Table(title=title or None)
    columns = list(rows[0]) if rows else []
    for column in columns:
        table.add_column(column, justify="left" if column in ("task", "domain", "file") else "right")
    for row in rows:
        table.add_row(*(format_cell(row.get(c)) for c in columns))
    console = Console(width=max(120, Console().width))
    console.print(table)
    for key, value in (extra or {}).items():
        console.print(f"{key}: {format_cell(value)}")


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
