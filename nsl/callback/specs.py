"""Game specifications for the callback: names or YAML-friendly mappings, turned into games on fresh data.

A spec is a registered game name (see :data:`nsl.games.GAMES`: ``"accuracy"``, ``"class"``, ``"fairness"``,
``"adversarial"``, or any game registered by a plugin) or a mapping such as ``{"kind": "class",
"class_index": 3}`` or ``{"kind": "adversarial", "attack": "fgsm", "name": "fgsm"}``. Keys other than the
reserved ones below go to the game's constructor. What differs between games (culprit sign, tail, data,
DDP sharing, default name) is read from the game class, never decided here. A misspelt option fails here,
naming the key and the options the game's constructor accepts. ``required: false`` makes a game optional: the
callback skips it (with one info line) when the evaluation data cannot support it, e.g. fairness without groups.
``semivalue`` (``"shapley"``, ``"banzhaf"``, ``"beta(α,β)"``; see :mod:`nsl.shapley.semivalues`) sets which values
that game's estimate is about; unset, the callback's ``semivalue`` holds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nsl.games import GAMES, EvalData, ModelGame
from nsl.players import FilterPlayers
from nsl.shapley.semivalues import parse_semivalue
from nsl.validation import check_bool, check_int, check_number, resolve_top_k

RESERVED = (
    "kind", "name", "top_k", "max_evals", "max_rows", "max_seconds", "negative_culprits", "tail", "required",
    "semivalue",
)
# Constructor arguments a spec never sets: the model, players and data come from the callback.
_FROM_CALLBACK = ("self", "model", "players", "inputs", "targets")

__all__ = ["RESERVED", "EvalData", "GameSpec", "game_options", "parse_games", "semivalue_name", "variant_name"]


def semivalue_name(value: object, where: str | None = None) -> str:
    """The canonical name of semivalue ``value`` (``"shapley"`` for ``"beta(1,1)"``, which is Shapley); otherwise a
    ValueError naming the bad value and what is accepted (prefixed by ``where``, e.g. ``"game 'accuracy'"``)."""
    try:
        semivalue = parse_semivalue(value)  # type: ignore[arg-type]
    except ValueError as err:
        raise ValueError(err if where is None else f"{where}: {err}") from None
    return semivalue.name  # canonical: beta(1,1) reads as shapley


def variant_name(result_name: str, semivalue: str) -> str:
    """Where a game's result with a semivalue other than its own is stored, saved and logged: ``accuracy_banzhaf``,
    ``class_3_beta(1,16)`` (what a :class:`~nsl.callback.ShapleyRepair` with its own ``semivalue`` asks for)."""
    return f"{result_name}_{semivalue}"


def game_options(cls: type[ModelGame]) -> tuple[str, ...] | None:
    """The option keys a spec may give to game class ``cls`` (``None``: any, its constructor takes ``**kwargs``
    that do not reach :class:`ModelGame`). Read from the constructors along the class's bases."""
    accepted: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        skip = {*_FROM_CALLBACK, *cls.required_data}
        accepted += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                     and p.name not in skip and p.name not in accepted]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return tuple(accepted)
        if klass is ModelGame:
            break
        if not (isinstance(klass, type) and issubclass(klass, ModelGame)):
            return None
    return tuple(accepted)


@dataclass(frozen=True)
class GameSpec:
    """One game the callback plays: its registry kind, its result name, estimator overrides and game options."""

    kind: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    top_k: int | None = None
    max_evals: int | None = None
    max_seconds: float | None = None
    max_rows: int | None = None  # the estimator's budget in rows (not the game's rows per forward pass)
    negative_culprits: bool = True
    tail: str = "both"
    required: bool = True
    semivalue: str | None = None  # canonical name (see semivalue_name); None: the callback's semivalue

    @property
    def game_class(self) -> type[ModelGame]:
        return GAMES[self.kind]

    def build(
        self,
        model: nn.Module,
        players: FilterPlayers,
        data: EvalData,
        *,
        seed: int = 0,
        share: Callable[[Any], Any] | None = None,
        fixed: Mapping[str, Any] | None = None,
        **defaults: Any,
    ) -> ModelGame:
        """The game on ``data``; ``defaults`` such as ``chunk_size`` are overridden by the spec's options, which
        are overridden by ``fixed`` (what the callback froze, e.g. a picked ``class_index``).

        ``share`` (under DDP: broadcast from rank 0) makes every rank play the same game.
        """
        options = {**defaults, **self.options, **(fixed or {})}
        return self.game_class.from_data(model, players, data, seed=seed, share=share, **options)


def parse_games(games: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]]) -> list[GameSpec]:
    """Specs from names or mappings; fails on unregistered kinds, bad keys and duplicate names."""
    if isinstance(games, (str, Mapping)):
        games = [games]
    if not isinstance(games, Sequence) or len(games) == 0:
        raise ValueError(f"games={games!r} must name at least one game of {GAMES.names()}.")
    specs = [_parse_one(item) for item in games]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"game names must be distinct; {duplicates} appear twice (set 'name' in the mapping).")
    return specs


def _parse_one(item: str | Mapping[str, Any]) -> GameSpec:
    if isinstance(item, str):
        item = {"kind": item}
    if not isinstance(item, Mapping):
        raise ValueError(f"game {item!r} must be one of {GAMES.names()} or a mapping with a 'kind' key.")
    options = dict(item)
    kind = options.pop("kind", None)
    if kind not in GAMES:
        raise ValueError(f"unknown game kind {kind!r} in {dict(item)}; registered: {list(GAMES.names())}.")
    cls = GAMES[kind]
    name = options.pop("name", cls.default_name(kind, options))
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"game name {name!r} must be a non-empty string without '/'.")
    spec = GameSpec(
        kind=kind,
        name=name,
        top_k=options.pop("top_k", None),
        max_evals=options.pop("max_evals", None),
        max_seconds=options.pop("max_seconds", None),
        max_rows=options.pop("max_rows", None),
        negative_culprits=options.pop("negative_culprits", cls.negative_culprits),
        tail=options.pop("tail", cls.default_tail),
        required=options.pop("required", True),
        semivalue=_semivalue_option(name, options.pop("semivalue", None)),
        options=options,
    )
    accepted = game_options(cls)
    unknown = [] if accepted is None else sorted(set(options) - set(accepted))
    if unknown:
        own = sorted(set(accepted or []) - set(RESERVED))  # a reserved key never reaches the game
        raise ValueError(
            f"game {name!r} ({kind}): unknown option(s) {unknown}; {cls.__name__} accepts {own}, "
            f"and every spec the reserved keys {list(RESERVED)}."
        )
    resolve_top_k(spec.top_k, None, name=f"{name}.top_k")  # against N in the callback's dry run
    check_int(f"{name}.max_evals", spec.max_evals, low=1, optional=True)
    check_int(f"{name}.max_rows", spec.max_rows, low=1, optional=True)
    check_number(f"{name}.max_seconds", spec.max_seconds, positive=True, optional=True)
    check_bool(f"{name}.negative_culprits", spec.negative_culprits)
    check_bool(f"{name}.required", spec.required)
    return spec


def _semivalue_option(name: str, value: object) -> str | None:
    """A spec's ``semivalue``, canonical (``None``: unset, the callback's holds)."""
    return None if value is None else semivalue_name(value, f"game {name!r}")
