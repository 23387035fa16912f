"""Pooling a multirun over seeds: group runs by their overrides, mean ± sd per group, clear differences.

A multirun such as ``nsl-train -m repair=none,filter_dropout seed=0,1,2`` asks one question (does filter dropout
change the model?) with several seeds per answer. :func:`group_runs` groups the runs by every command-line
override except the seeds (``seed``, ``callbacks.neuron_shapley.seed``, anything named ``*.seed``), read from
each run's ``.hydra/overrides.yaml``. :func:`pooled_text` then gives, per group, mean ± sd over its runs of

- the test metrics of ``metrics.json`` (``test/acc`` ...),
- per game, the value after removing the top-k filters (from the saved removal curves ``<game>_curve.pt``;
  k = the result's ``top_k`` and the curve's last step),
- per game, how concentrated the values are (filters holding half of Σ|value|, Gini of |value|; only for
  results whose filters are all ranked),

and marks in bold the groups that differ clearly from the baseline group (``|Δmean| > sd_a + sd_b``,
:func:`nsl.report.spread.clear`). The baseline is the group given with ``--baseline``, else the one with
``repair=none``, else the one with ``callbacks.filter_dropout.p=0``, else the first. :func:`plot_pooled` draws
one figure per measure (each group's mean ± sd as an error bar, its runs as dots) and, per game, the removal
curves as mean ± sd bands.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nsl.report.plots import new_figure
from nsl.report.spread import Spread, band, clear, spread
from nsl.report.tables import markdown

if TYPE_CHECKING:
    from nsl.report.compare import Run

MISSING = "—"
ALL_RUNS = "all runs"
DEFAULT = "(default)"  # a group that left a varying setting at its configured value
#: Overrides that name a baseline group, tried in this order when no ``--baseline`` is given.
BASELINES = (("repair", "none"), ("callbacks.filter_dropout.p", "0"))
# A comma that separates overrides in a run name, not one inside a [list] value.
_SPLIT = re.compile(r",(?![^\[\]]*\])")


# ------------------------------------------------------------------------------------------------ grouping
def parse_override(text: str) -> tuple[str, str]:
    """``"+trainer.limit_train_batches=4"`` → ``("trainer.limit_train_batches", "4")`` (Hydra's +/++/~ dropped)."""
    key, _, value = str(text).partition("=")
    return key.lstrip("+~"), value


def is_seed(key: str) -> bool:
    """Whether an override only picks a seed (``seed``, ``data.seed``, ``callbacks.neuron_shapley.seed`` ...)."""
    return key == "seed" or key.endswith(".seed")


def run_overrides(run: Run) -> list[tuple[str, str]]:
    """The run's command-line overrides as ``(key, value)``: from ``.hydra/overrides.yaml``, else from its name."""
    texts = run.overrides if run.overrides is not None else [t for t in _SPLIT.split(run.name) if "=" in t]
    return [parse_override(t) for t in texts]


@dataclass
class Group:
    """Runs that differ only in their seeds: ``label`` names what sets the group apart from the others."""

    label: str
    settings: dict[str, str]  # every non-seed override of the group's runs
    runs: list[Run] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.runs]


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by every override except the seeds, in the order first seen; each group labelled by the
    overrides that vary between groups (``"repair=filter_dropout"``), or ``"all runs"`` when none does."""
    by_setting: dict[tuple[tuple[str, str], ...], list[Run]] = {}
    for run in runs:
        setting = tuple((k, v) for k, v in run_overrides(run) if not is_seed(k))
        by_setting.setdefault(tuple(sorted(setting)), []).append(run)
    settings = [dict(s) for s in by_setting]
    ordered_keys = list(dict.fromkeys(k for run in runs for k, _ in run_overrides(run) if not is_seed(k)))
    varying = [k for k in ordered_keys if len({s.get(k) for s in settings}) > 1]
    groups = []
    for setting, members in zip(settings, by_setting.values(), strict=True):
        label = ",".join(f"{k}={setting.get(k, DEFAULT)}" for k in varying) or ALL_RUNS
        groups.append(Group(label, setting, list(members)))
    return groups


def _same(value: str, wanted: str) -> bool:
    try:
        return float(value) == float(wanted)
    except ValueError:
        return value == wanted


def baseline_group(groups: Sequence[Group], baseline: str | None = None) -> tuple[int, str]:
    """Index of the baseline group and why it was chosen.

    ``baseline``: an override such as ``"repair=none"`` (numbers compare by value, so ``p=0`` finds ``p=0.0``);
    ValueError naming the groups when none has it. Default: :data:`BASELINES` in order, else the first group.
    """
    if baseline is not None:
        key, value = parse_override(baseline)
        if not value and "=" not in baseline:
            raise ValueError(f"--baseline={baseline!r}: expected an override such as repair=none.")
        for i, group in enumerate(groups):
            if key in group.settings and _same(group.settings[key], value):
                return i, f"--baseline {baseline}"
        raise ValueError(
            f"--baseline={baseline!r}: no group has that override; the groups are {[g.label for g in groups]}."
        )
    for key, value in BASELINES:
        for i, group in enumerate(groups):
            if key in group.settings and _same(group.settings[key], value):
                return i, f"the group with {key}={value}"
    return 0, "the first group (no group has repair=none or callbacks.filter_dropout.p=0)"


# ------------------------------------------------------------------------------------------------ measures
@dataclass(frozen=True)
class Measure:
    """One pooled quantity: its table label, the number format, and a file-name-safe slug for its figure."""

    label: str
    spec: str
    slug: str


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _stage(key: str) -> str:
    return key.replace("/", "_").split("_")[0]


def removal_ks(runs: Sequence[Run], game: str) -> list[int]:
    """The k of "after removing the top k" for ``game``: each result's ``top_k`` and each curve's last step."""
    ks = set()
    for run in runs:
        curve = run.curves.get(game)
        if curve is None or not curve.removed:
            continue
        result = run.results.get(game)
        if result is not None and result.k in curve.removed and result.k > 0:
            ks.add(int(result.k))
        if curve.removed[-1] > 0:
            ks.add(int(curve.removed[-1]))
    return sorted(ks)


def run_measures(run: Run, removal: dict[str, list[int]]) -> dict[Measure, float]:
    """One run's pooled quantities (NaN where the run has no such number)."""
    from nsl.report.compare import concentration  # compare imports this module

    values: dict[Measure, float] = {}
    for key, value in sorted(run.metrics.items()):
        if _stage(key) == "test":
            values[Measure(key, ".4f", _slug(key))] = float(value)
    for game, result in run.results.items():
        curve = run.curves.get(game)
        for k in removal.get(game, []):
            found = curve is not None and k in curve.removed
            measure = Measure(f"{game}: value after removing the top {k}", ".4f", _slug(f"{game}_top{k}"))
            values[measure] = float(curve.ranked[curve.removed.index(k)]) if found else math.nan
        spread_of = concentration(result)
        half, gini = (math.nan, math.nan) if spread_of is None else spread_of
        values[Measure(f"{game}: filters holding half of Σ abs(value)", ".1f", _slug(f"{game}_half_mass"))] = half
        values[Measure(f"{game}: Gini of abs(value)", ".3f", _slug(f"{game}_gini"))] = gini
    return values


@dataclass
class Pooled:
    """Every measure of every group: ``per_run[g][m]`` the runs' values, ``spreads[g][m]`` their mean ± sd."""

    groups: list[Group]
    baseline: int
    why: str
    measures: list[Measure]
    per_run: list[dict[Measure, list[float]]]
    spreads: list[dict[Measure, Spread]]

    def clear(self, g: int, measure: Measure) -> bool:
        """Group ``g`` differs from the baseline clearly; only judged with at least 2 runs on both sides."""
        a, b = self.spreads[g][measure], self.spreads[self.baseline][measure]
        return g != self.baseline and a.n >= 2 and b.n >= 2 and clear(a, b)


def pool(runs: Sequence[Run], baseline: str | None = None) -> Pooled:
    """Group ``runs`` (:func:`group_runs`), choose the baseline and compute every measure's spread per group."""
    groups = group_runs(runs)
    index, why = baseline_group(groups, baseline)
    removal = {game: removal_ks(runs, game) for game in dict.fromkeys(g for r in runs for g in r.results)}
    measured = [[run_measures(run, removal) for run in group.runs] for group in groups]
    measures = list(dict.fromkeys(m for group in measured for values in group for m in values))
    per_run = [{m: [v.get(m, math.nan) for v in group] for m in measures} for group in measured]
    spreads = [{m: spread(xs) for m, xs in values.items()} for values in per_run]
    return Pooled(groups, index, why, measures, per_run, spreads)


def needs_pooling(runs: Sequence[Run]) -> bool:
    """Whether some group holds more than one run (seeds to pool)."""
    return any(len(g.runs) > 1 for g in group_runs(runs))


# ------------------------------------------------------------------------------------------------ text
def _cell(pooled: Pooled, g: int, measure: Measure) -> str:
    s = pooled.spreads[g][measure]
    if s.n == 0:
        return MISSING
    text = format(s, measure.spec)
    return f"**{text}**" if pooled.clear(g, measure) else text


def pooled_table(pooled: Pooled) -> str:
    """Measures × groups, each cell mean ± sd over the group's runs; bold where clearly unlike the baseline."""
    columns = [""] + [
        f"{g.label}{' (baseline)' if i == pooled.baseline else ''}" for i, g in enumerate(pooled.groups)
    ]
    rows: list[list[Any]] = [["runs", *[", ".join(g.keys) for g in pooled.groups]]]
    for measure in pooled.measures:
        rows.append([measure.label, *[_cell(pooled, g, measure) for g in range(len(pooled.groups))]])
    return markdown(columns, rows)


def verdicts(pooled: Pooled) -> list[str]:
    """Per group other than the baseline, one line: which measures differ clearly, or that none does."""
    base = pooled.groups[pooled.baseline]
    lines = []
    for g, group in enumerate(pooled.groups):
        if g == pooled.baseline:
            continue
        if len(group.runs) < 2 or len(base.runs) < 2:
            lines.append(f"- {group.label}: not judged (fewer than 2 runs here or in the baseline: no spread).")
            continue
        ref = pooled.spreads[pooled.baseline]
        differ = [
            f"{m.label} ({format(pooled.spreads[g][m], m.spec)} vs {format(ref[m], m.spec)})"
            for m in pooled.measures if pooled.clear(g, m)
        ]
        judged = sum(1 for m in pooled.measures if pooled.spreads[g][m].n and ref[m].n)
        if differ:
            lines.append(f"- {group.label}: clearly different from {base.label} in {len(differ)} of {judged} measures: "
                         + "; ".join(differ) + ".")
        else:
            lines.append(f"- {group.label}: no clear difference from {base.label} in any of {judged} measures "
                         "(every gap is within the two spreads).")
    return lines


def pooled_text(runs: Sequence[Run], baseline: str | None = None) -> str:
    """The pooled section of ``nsl-report``: the groups, the table, one verdict line per group."""
    pooled = pool(runs, baseline)
    base = pooled.groups[pooled.baseline]
    parts = [
        "## Pooled over seeds",
        "",
        f"{len(runs)} runs in {len(pooled.groups)} groups (runs that differ only in their seeds). Each cell: mean ± "
        "sample sd over the group's runs; **bold**: differs clearly from the baseline (|Δmean| > sd + sd_baseline). "
        f"Baseline: {base.label} ({pooled.why}).",
        "",
        pooled_table(pooled),
        "",
        *verdicts(pooled),
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ figures
def _colors(n: int) -> list[Any]:
    return [f"C{i % 10}" for i in range(n)]


def plot_measure(pooled: Pooled, measure: Measure, path: Path) -> Path:
    """Each group's mean ± sd of ``measure`` as an error bar, its runs as dots; the baseline drawn first in black."""
    groups = pooled.groups
    fig = new_figure((1.3 * len(groups) + 2.4, 3.4))
    ax = fig.subplots()
    colors = _colors(len(groups))
    for g in range(len(groups)):
        s = pooled.spreads[g][measure]
        color = "black" if g == pooled.baseline else colors[g]
        xs = [x for x in pooled.per_run[g][measure] if not math.isnan(x)]
        ax.scatter(np.full(len(xs), g) + np.linspace(-0.08, 0.08, len(xs)), xs, color=color, alpha=0.45, s=14)
        if s.n:
            ax.errorbar([g], [s.mean], yerr=[s.sd], fmt="o", color=color, capsize=6, markersize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [f"{g.label}\n(baseline)" if i == pooled.baseline else g.label for i, g in enumerate(groups)], fontsize=7
    )
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(measure.label, fontsize=8)
    ax.set_title(f"{measure.label}: mean ± sd over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_removal_bands(pooled: Pooled, game: str, path: Path) -> Path | None:
    """The game's removal curves per group as mean ± sd bands over the group's runs (common steps only)."""
    fig = new_figure((5.5, 3.6))
    ax = fig.subplots()
    drawn = False
    for g, group in enumerate(pooled.groups):
        curves = [r.curves[game] for r in group.runs if game in r.curves]
        if not curves:
            continue
        steps = [k for k in curves[0].removed if all(k in c.removed for c in curves)]
        ys = [[c.ranked[c.removed.index(k)] for k in steps] for c in curves]
        color = "black" if g == pooled.baseline else _colors(len(pooled.groups))[g]
        band(ax, steps, ys, color=color, label=f"{group.label} (n={len(curves)})", marker="o", markersize=3)
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("top filters removed")
    ax.set_ylabel(game)
    ax.set_title(f"{game}: value as the top filters are removed (mean ± sd over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_pooled(runs: Sequence[Run], out: Path, baseline: str | None = None) -> list[Path]:
    """``pooled_<measure>.png`` for every measure and ``pooled_<game>_removal.png`` for every game with curves."""
    pooled = pool(runs, baseline)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_measure(pooled, m, out / f"pooled_{m.slug}.png") for m in pooled.measures
               if any(s.n for s in (pooled.spreads[g][m] for g in range(len(pooled.groups))))]
    for game in dict.fromkeys(g for r in runs for g in r.curves):
        path = plot_removal_bands(pooled, game, out / f"pooled_{_slug(game)}_removal.png")
        if path is not None:
            written.append(path)
    return written


__all__ = [
    "Group",
    "Measure",
    "Pooled",
    "baseline_group",
    "group_runs",
    "is_seed",
    "needs_pooling",
    "parse_override",
    "plot_pooled",
    "pool",
    "pooled_table",
    "pooled_text",
    "run_measures",
]
