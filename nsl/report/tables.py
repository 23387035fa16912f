"""Tables of a Shapley result: top-k rows for loggers, CSV files and markdown.

Only ranked players (:attr:`~nsl.shapley.ShapleyResult.ranked`: enough samples, or exact values) appear in a
ranking; the CSV lists every player and says per row whether it is ranked, has too few samples or none.
"""

from __future__ import annotations

import csv
from pathlib import Path

from nsl.shapley.result import NOT_SAMPLED, ShapleyResult

COLUMNS = ["rank", "filter", "layer", "value", "stderr", "samples"]
#: The CSV's columns: :data:`COLUMNS` and each row's sample status ("ranked", "too few samples", "not sampled").
CSV_COLUMNS = [*COLUMNS, "status"]


def top_rows(result: ShapleyResult, k: int | None = None, negative: bool = False) -> list[list]:
    """Rows ``[rank, filter, layer, value, stderr, samples]`` of the top (or most negative) ``k`` ranked filters.

    Players without enough samples to rank are left out, so there may be fewer than ``k`` rows (none before any
    player is ranked).
    """
    order = result.ranking(descending=not negative)[: result.n_ranked]
    if k is not None:
        order = order[:k]
    return [[rank, *_cells(result, i)] for rank, i in enumerate(order.tolist(), 1)]


def _cells(result: ShapleyResult, i: int) -> list:
    """``[filter, layer, value, stderr, samples]`` of player ``i``."""
    name = result.names[i] if result.names else str(i)
    layer = name.rsplit(":", 1)[0]
    return [name, layer, float(result.values[i]), float(result.stderr[i]), int(result.counts[i])]


def csv_rows(result: ShapleyResult) -> list[list]:
    """Every player as a :data:`CSV_COLUMNS` row: the ranked ones best first with their rank, then the others in
    index order without a rank (and, when never sampled, without a value: there is no estimate)."""
    status = result.sample_status()
    rows = []
    for rank, i in enumerate(result.ranking().tolist(), 1):
        cells = _cells(result, i)
        if status[i] == NOT_SAMPLED:
            cells[2] = cells[3] = ""
        rows.append([rank if rank <= result.n_ranked else "", *cells, status[i]])
    return rows


def write_csv(result: ShapleyResult, path: str | Path) -> Path:
    """All filters as CSV (readable without torch or W&B): ranked ones best first, then the rest, with each row's
    sample status in the ``status`` column. A partial result (Ctrl-C stopped it) has one more column,
    ``interrupted``, true on every row, so the file says so wherever it goes; so has a result of another semivalue
    than Shapley: ``semivalue`` (``banzhaf``, ``beta(1,16)`` ...) on every row."""
    path = Path(path)
    rows = csv_rows(result)
    columns = CSV_COLUMNS
    semivalue = result.semivalue
    if semivalue != "shapley":
        columns, rows = [*columns, "semivalue"], [[*row, semivalue] for row in rows]
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
