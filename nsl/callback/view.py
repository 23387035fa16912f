"""What a repair reads of an analysis: a small, named, read-only view that :class:`NeuronShapley` builds.

A callback that acts on the analysis (:class:`~nsl.callback.ShapleyRepair`) reads only this view, not the
analysis callback's members, so the two can change independently; it asks the analysis to do something (play
a game now, run its dry run) through the analysis' methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from torch import nn

from nsl.callback.specs import GameSpec, variant_name
from nsl.games import EvalData
from nsl.players import FilterPlayers
from nsl.shapley import ShapleyResult


@dataclass(frozen=True)
class AnalysisView:
    """A read-only view of a :class:`~nsl.callback.NeuronShapley` analysis, as it stands when built
    (:meth:`NeuronShapley.view <nsl.callback.NeuronShapley.view>`).

    Attributes:
        specs: every game spec, in the analysis' order.
        skipped: spec name -> why the dry run skipped that game.
        results: result name -> the game's latest result (a class game's is ``"class_3"`` once it picked 3).
        result_names: spec name -> result name.
        picked: spec name -> the class a class game picked.
        seed: the analysis' seed.
        output_dir: where the analysis writes its files.
        evaluation_data: the fixed evaluation set, once drawn (``None`` before the dry run).
        dry_run_done: the dry run checked this fit's games.
        model: the model analysed; layers, ablation: how its filters are played (see :attr:`players`).
        semivalues: spec name -> the semivalue that game estimates (``"shapley"`` where absent).
    """

    specs: tuple[GameSpec, ...]
    skipped: Mapping[str, str]
    results: Mapping[str, ShapleyResult]
    result_names: Mapping[str, str]
    picked: Mapping[str, int]
    seed: int
    output_dir: Path
    evaluation_data: EvalData | None
    dry_run_done: bool
    model: nn.Module
    layers: str | Sequence[str] | None = None
    ablation: str = "zero"
    semivalues: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def players(self) -> FilterPlayers:
        """The model's filters as the analysis plays them (built once per view)."""
        return FilterPlayers(self.model, self.layers, self.ablation)

    @property
    def played(self) -> tuple[GameSpec, ...]:
        """The specs the dry run did not skip."""
        return tuple(s for s in self.specs if s.name not in self.skipped)

    def spec(self, name: str) -> GameSpec:
        """The spec of the game whose results are stored under ``name`` (its spec name or its result name)."""
        for spec in self.specs:
            if name in (spec.name, self.result_names.get(spec.name, spec.name)):
                return spec
        raise ValueError(f"game {name!r} is not one of this callback's games {[s.name for s in self.specs]}.")

    def semivalue(self, name: str) -> str:
        """The semivalue game ``name`` (spec or result name) estimates."""
        return self.semivalues.get(self.spec(name).name, "shapley")

    def result(self, name: str, semivalue: str | None = None) -> ShapleyResult | None:
        """The latest result of game ``name`` (spec or result name), ``None`` before its first analysis; with a
        ``semivalue`` (canonical name) other than the game's own, its latest result for that semivalue."""
        if semivalue is not None and semivalue != self.semivalue(name):
            spec = self.spec(name)
            return self.results.get(variant_name(self.result_names.get(spec.name, spec.name), semivalue))
        if name in self.results:
            return self.results[name]
        return self.results.get(self.result_names.get(name, name))


__all__ = ["AnalysisView"]
