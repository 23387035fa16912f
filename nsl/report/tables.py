"""Tables of a Shapley result: top-k rows for loggers, CSV files and markdown."""

from __future__ import annotations

import csv
from pathlib import Path

from nsl.shapley.result import ShapleyResult

COLUMNS = ["rank", "filter", "layer", "value", "stderr", "samples"]


def top_rows(result: ShapleyResult, k: int | None = None, negative: bool = False) -> list[list]:
    """Rows ``[rank, filter, layer, value, stderr, samples]`` of the top (or most negative) ``k`` filters."""
    order = result.ranking(descending=not negative)
    if k is not None:
        order = order[:k]
    rows = []
    for rank, i in enumerate(order.tolist(), 1):
        name = result.names[i] if result.names else str(i)
        layer = name.rsplit(":", 1)[0]
        rows.append([rank, name, layer, float(result.values[i]), float(result.stderr[i]), int(result.counts[i])])
    return rows


def write_csv(result: ShapleyResult, path: str | Path) -> Path:
    """All filters, best first, as CSV (readable without torch or W&B). A partial result (Ctrl-C stopped it) has
    one more column, ``interrupted``, true on every row, so the file says so wherever it goes."""
    path = Path(path)
    rows = top_rows(result)
    columns = COLUMNS
    if result.interrupted:
        columns, rows = [*columns, "interrupted"], [[*row, True] for row in rows]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def markdown(columns: list[str], rows: list[list], floats: str = ".4f") -> str:
    """A GitHub markdown table."""
    def cell(x: object) -> str:
        return format(x, floats) if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
